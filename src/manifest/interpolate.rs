//! `${params.NAME}` references in param values.

use super::*;

/// Replaces `${params.NAME}`. A string that is exactly one reference takes the referenced
/// value with its type; references inside longer strings are spliced in as text. Other
/// `${...}` forms (such as `${inputs.x}` for shell commands) are left for the stage.
pub(super) fn interpolate(
    v: Value,
    shared: &BTreeMap<String, Value>,
) -> Result<Value, (String, Option<String>)> {
    match v {
        Value::Str(s) => {
            if !s.contains("${params.") {
                return Ok(Value::Str(s));
            }
            let lookup = |name: &str| {
                shared.get(name).cloned().ok_or_else(|| {
                    let known: Vec<&str> = shared.keys().map(String::as_str).collect();
                    let best = known
                        .iter()
                        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
                        .min()
                        .filter(|(d, _)| *d <= 2)
                        .map(|(_, k)| format!("did you mean `params.{k}`?"));
                    (
                        format!("undefined reference `${{params.{name}}}`"),
                        best.or(Some(if known.is_empty() {
                            "there is no [params] table".to_string()
                        } else {
                            format!("defined in [params]: {}", known.join(", "))
                        })),
                    )
                })
            };
            if let Some(name) = s
                .strip_prefix("${params.")
                .and_then(|r| r.strip_suffix('}'))
                && !name.contains('}')
            {
                return lookup(name);
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${params.") {
                out.push_str(&rest[..i]);
                let after = &rest[i + "${params.".len()..];
                let end = after.find('}').ok_or_else(|| {
                    (
                        "unterminated `${params.` reference".to_string(),
                        Some("write ${params.NAME}".to_string()),
                    )
                })?;
                match lookup(&after[..end])? {
                    Value::Str(t) => out.push_str(&t),
                    other => out.push_str(&other.to_string()),
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            Ok(Value::Str(out))
        }
        Value::List(items) => items
            .into_iter()
            .map(|i| interpolate(i, shared))
            .collect::<Result<_, _>>()
            .map(Value::List),
        Value::Table(t) => t
            .into_iter()
            .map(|(k, v)| Ok((k, interpolate(v, shared)?)))
            .collect::<Result<_, _>>()
            .map(Value::Table),
        other => Ok(other),
    }
}

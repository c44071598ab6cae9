//! Parameter values and their canonical form (used in cache keys).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A parameter value after parsing. Tables are `BTreeMap`s so that serialising a value
/// is canonical (sorted keys) whatever order the manifest wrote them in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Table(BTreeMap<String, Value>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::List(_) => "array",
            Value::Table(_) => "table",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Parses a value the way `--set` and `--grid` receive it: as a TOML value when it is
    /// one (`0.1`, `true`, `[1, 2]`, `"quoted"`), otherwise as a bare string.
    pub fn parse_cli(text: &str) -> Value {
        match toml::de::DeValue::parse(text) {
            Ok(v) => from_toml(v.get_ref()).unwrap_or_else(|_| Value::Str(text.to_string())),
            Err(_) => Value::Str(text.to_string()),
        }
    }
}

impl fmt::Display for Value {
    /// TOML-like rendering, used in messages, plans and sweep tables.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::List(l) => {
                write!(f, "[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                write!(f, "]")
            }
            Value::Table(t) if t.is_empty() => write!(f, "{{}}"),
            Value::Table(t) => {
                write!(f, "{{")?;
                for (i, (k, v)) in t.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, " {k} = {v}")?;
                }
                write!(f, " }}")
            }
        }
    }
}

/// Converts a parsed TOML value; fails on values a parameter cannot hold.
pub fn from_toml(v: &toml::de::DeValue<'_>) -> Result<Value, String> {
    use toml::de::DeValue as D;
    Ok(match v {
        D::String(s) => Value::Str(s.to_string()),
        D::Boolean(b) => Value::Bool(*b),
        D::Integer(i) => {
            let digits: String = i.as_str().chars().filter(|c| *c != '_').collect();
            let (neg, body) = match digits.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, digits.trim_start_matches('+')),
            };
            // The parser may or may not keep the 0x/0o/0b prefix in the text.
            let body = match body.get(..2) {
                Some("0x" | "0o" | "0b") if i.radix() != 10 => &body[2..],
                _ => body,
            };
            let mag = i64::from_str_radix(body, i.radix())
                .map_err(|_| format!("integer `{}` does not fit in 64 bits", i.as_str()))?;
            Value::Int(if neg { -mag } else { mag })
        }
        D::Float(x) => {
            let text: String = x.as_str().chars().filter(|c| *c != '_').collect();
            let f: f64 = text
                .parse()
                .map_err(|_| format!("invalid float `{}`", x.as_str()))?;
            if !f.is_finite() {
                return Err(format!(
                    "float `{}` is not finite; parameters must be finite numbers",
                    x.as_str()
                ));
            }
            Value::Float(f)
        }
        D::Datetime(d) => {
            return Err(format!(
                "date-time `{d}` is not a supported parameter type; quote it to pass a string"
            ));
        }
        D::Array(a) => Value::List(
            a.iter()
                .map(|e| from_toml(e.get_ref()))
                .collect::<Result<_, _>>()?,
        ),
        D::Table(t) => Value::Table(
            t.iter()
                .map(|(k, e)| Ok((k.get_ref().to_string(), from_toml(e.get_ref())?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_values_parse_as_toml_or_string() {
        assert_eq!(Value::parse_cli("0.5"), Value::Float(0.5));
        assert_eq!(Value::parse_cli("7"), Value::Int(7));
        assert_eq!(Value::parse_cli("true"), Value::Bool(true));
        assert_eq!(Value::parse_cli("echo hi"), Value::Str("echo hi".into()));
        assert_eq!(
            Value::parse_cli("[1, 2]"),
            Value::List(vec![Value::Int(1), Value::Int(2)])
        );
    }

    #[test]
    fn hex_and_underscored_integers() {
        let v = toml::de::DeValue::parse("0xff").unwrap();
        assert_eq!(from_toml(v.get_ref()), Ok(Value::Int(255)));
        let v = toml::de::DeValue::parse("-1_000").unwrap();
        assert_eq!(from_toml(v.get_ref()), Ok(Value::Int(-1000)));
    }
}

//! The `[sweep]` table and grid axes (`--grid` too).

use super::*;

impl Loader<'_> {
    pub(super) fn sweep(
        &mut self,
        v: &Spanned<DeValue<'_>>,
        stages: &[Stage],
        shared: &BTreeMap<String, Value>,
    ) -> SweepDecl {
        let mut decl = SweepDecl::default();
        let Some(t) = self.table("sweep", v) else {
            return decl;
        };
        for (k, v) in t.iter() {
            match k.get_ref().as_ref() {
                "grid" => {
                    let Some(grid) = self.table("sweep.grid", v) else {
                        continue;
                    };
                    for (gk, gv) in grid.iter() {
                        let o = self.at(&gk.span());
                        let label = gk.get_ref().to_string();
                        let Some(values) = self.value(gv) else {
                            continue;
                        };
                        match grid_axis(&label, values, stages, shared) {
                            Ok(axis) => decl.grid.push(axis),
                            Err((msg, hint)) => {
                                let d = self.map.error(&o, format!("sweep.grid: {msg}"));
                                self.push(match hint {
                                    Some(h) => d.hint(h),
                                    None => d,
                                });
                            }
                        }
                    }
                }
                "metrics" => {
                    let o = self.at(&v.span());
                    match self.value(v) {
                        Some(Value::List(items)) => {
                            for item in items {
                                match item.as_str().and_then(|s| s.split_once('.')) {
                                    Some((st, _)) if stages.iter().any(|s| s.name == st) => {
                                        decl.metrics.push(item.as_str().expect("str").to_string());
                                    }
                                    Some((st, _)) => {
                                        let d = self
                                            .map
                                            .error(&o, format!("sweep.metrics: no stage `{st}`"))
                                            .suggest(st, stages.iter().map(|s| s.name.as_str()));
                                        self.push(d);
                                    }
                                    None => {
                                        self.err(
                                            &o,
                                            format!(
                                                "sweep.metrics: `{item}` is not \"stage.metric\""
                                            ),
                                        );
                                    }
                                }
                            }
                        }
                        Some(other) => {
                            self.err(&o, format!("sweep.metrics must be an array of \"stage.metric\" strings, found {}", other.type_name()));
                        }
                        None => {}
                    }
                }
                other => {
                    let o = self.at(&k.span());
                    let d = self
                        .map
                        .error(&o, format!("unknown key `{other}` in [sweep]"))
                        .suggest(other, ["grid", "metrics"]);
                    self.push(d);
                }
            }
        }
        decl
    }
}

/// Builds a sweep axis for `stage.param` (or `params.name`), checking the target exists and
/// every value has the right type.
pub fn grid_axis(
    label: &str,
    values: Value,
    stages: &[Stage],
    shared: &BTreeMap<String, Value>,
) -> Result<GridAxis, (String, Option<String>)> {
    let (target, param) = label.split_once('.').ok_or_else(|| {
        (
            format!("`{label}` must be stage.param or params.name"),
            None,
        )
    })?;
    let values = match values {
        Value::List(v) if !v.is_empty() => v,
        Value::List(_) => return Err((format!("`{label}` has no values"), None)),
        other => vec![other],
    };
    let ty = if target == "params" {
        let old = shared.get(param).ok_or_else(|| {
            (
                format!("no shared param `{param}`"),
                Some(format!(
                    "shared params: {}",
                    shared.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
            )
        })?;
        type_of_value(old)
    } else {
        let stage = stages.iter().find(|s| s.name == target).ok_or_else(|| {
            let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
            (
                format!("no stage `{target}`"),
                Some(format!("stages: {}", names.join(", "))),
            )
        })?;
        let spec = stage
            .kind
            .params()
            .iter()
            .find(|p| p.name == param)
            .ok_or_else(|| {
                let names: Vec<&str> = stage.kind.params().iter().map(|p| p.name).collect();
                (
                    format!(
                        "stage `{target}` (kind `{}`) has no param `{param}`",
                        stage.kind.name()
                    ),
                    Some(format!("params: {}", names.join(", "))),
                )
            })?;
        spec.ty.clone()
    };
    for v in &values {
        ty.coerce(v.clone())
            .map_err(|e| (format!("`{label}` value {v}: {e}"), None))?;
    }
    Ok(GridAxis {
        target: target.to_string(),
        param: param.to_string(),
        values,
    })
}

/// The type a shared `[params]` value has, so overrides keep it.
pub(super) fn type_of_value(v: &Value) -> ParamType {
    match v {
        Value::Bool(_) => ParamType::Bool,
        Value::Int(_) => ParamType::Int,
        Value::Float(_) => ParamType::Float,
        Value::Str(_) => ParamType::Str,
        Value::List(items) => ParamType::List(Box::new(match items.first().map(type_of_value) {
            Some(t @ (ParamType::Bool | ParamType::Int | ParamType::Float)) => t,
            _ => ParamType::Str,
        })),
        Value::Table(_) => ParamType::Table,
    }
}

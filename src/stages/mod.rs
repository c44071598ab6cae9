//! Stage kinds: one file per kind, each a typed params struct (its param table), a
//! [`KindSchema`] (inputs, outputs, an implementation version that is part of every
//! cache key: bump it when the kind's results change) and a `run`.

mod adjq;
mod convert;
mod eval;
mod pretrain;
mod qat;
pub mod report;
mod select;
mod shell;
mod support;
mod thresholds;

use crate::exec::kind::{Registry, StageKind};
use crate::manifest::schema::Kinds;
use std::sync::LazyLock;

static KINDS: &[&dyn StageKind] = &[
    &convert::Convert,
    &pretrain::Pretrain,
    &qat::Qat,
    &thresholds::Thresholds,
    &adjq::Adjq,
    &select::Select,
    &eval::Eval,
    &report::Report,
    &shell::Shell,
];

/// Every stage kind, for the executor.
pub fn registry() -> Registry {
    Registry(KINDS)
}

/// Every stage kind's schema, for the manifest loader.
pub fn kinds() -> &'static Kinds {
    static SCHEMAS: LazyLock<Kinds> = LazyLock::new(|| registry().kinds());
    &SCHEMAS
}

crate::param_choice!(impl crate::quant::RangePreset, crate::quant::ClipGrad);
crate::param_choice!(
    impl crate::score::metric::MetricRule,
    crate::score::metric::Pairing
);

/// Checks a kind's param table against its struct: the defaults (and a value for each
/// required param) read back into the struct, which writes them out unchanged, and every
/// choice's names are accepted.
#[cfg(test)]
fn check_params<P: crate::manifest::schema::StageParams>() {
    use crate::manifest::Params;
    use crate::manifest::schema::{ParamDefault, ParamType};
    use crate::manifest::value::Value;
    fn sample(ty: &ParamType) -> Value {
        match ty {
            ParamType::Bool => Value::Bool(false),
            ParamType::Int | ParamType::Count => Value::Int(1),
            ParamType::Float => Value::Float(0.5),
            ParamType::Str => Value::Str("x".into()),
            ParamType::Choice(names) => Value::Str(names[0].into()),
            ParamType::List(t) => Value::List(vec![sample(t)]),
            ParamType::Table => Value::Table(Default::default()),
        }
    }
    let table = P::table();
    let mut params = Params::default();
    for spec in table {
        match &spec.default {
            ParamDefault::Value(v) => {
                assert_eq!(spec.ty.coerce(v.clone()).as_ref(), Ok(v), "{}", spec.name);
                params.0.insert(spec.name.into(), v.clone());
            }
            ParamDefault::Required => {
                params.0.insert(spec.name.into(), sample(&spec.ty));
            }
            ParamDefault::Absent => {}
        }
        assert!(!spec.doc.is_empty(), "{} has no doc", spec.name);
    }
    let read = P::from_params(&params).unwrap();
    let mut json = serde_json::to_value(&read).unwrap();
    json.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    let written: Params = serde_json::from_value(json).unwrap();
    assert_eq!(
        written, params,
        "the struct does not write its table's values"
    );
    for spec in table {
        if let ParamType::Choice(names) = &spec.ty {
            for name in *names {
                let mut p = params.clone();
                p.0.insert(spec.name.into(), Value::Str((*name).into()));
                assert!(P::from_params(&p).is_ok(), "{} = {name}", spec.name);
            }
        }
    }
}

//! The declarative half of a stage kind, which the manifest layer owns: its name,
//! version, param table, inputs and outputs ([`KindSchema`]), and the typed params
//! structs the param tables are derived from ([`stage_params!`](crate::stage_params)).
//!
//! The registry of kinds is handed to the manifest loader as [`Kinds`], so the manifest
//! never imports the stages that implement them.

use super::Params;
use super::value::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;

/// The type a stage kind declares for one of its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamType {
    Bool,
    Int,
    /// An integer ≥ 0 (counts, sizes, seeds).
    Count,
    Float,
    Str,
    /// A string restricted to the listed values.
    Choice(&'static [&'static str]),
    /// An array whose elements all have the given type.
    List(Box<ParamType>),
    /// A free-form table (string keys, any values).
    Table,
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamType::Bool => write!(f, "boolean"),
            ParamType::Int => write!(f, "integer"),
            ParamType::Count => write!(f, "integer ≥ 0"),
            ParamType::Float => write!(f, "float"),
            ParamType::Str => write!(f, "string"),
            ParamType::Choice(c) => write!(f, "one of {}", c.join(" | ")),
            ParamType::List(t) => write!(f, "array of {t}"),
            ParamType::Table => write!(f, "table"),
        }
    }
}

impl ParamType {
    /// Checks `v` against this type. Integers widen to floats; nothing else converts.
    pub fn coerce(&self, v: Value) -> Result<Value, String> {
        match (self, v) {
            (ParamType::Bool, v @ Value::Bool(_)) => Ok(v),
            (ParamType::Int, v @ Value::Int(_)) => Ok(v),
            (ParamType::Count, Value::Int(i)) if i < 0 => {
                Err(format!("expected an integer ≥ 0, found `{i}`"))
            }
            (ParamType::Count, v @ Value::Int(_)) => Ok(v),
            (ParamType::Float, Value::Int(i)) => Ok(Value::Float(i as f64)),
            (ParamType::Float, v @ Value::Float(_)) => Ok(v),
            (ParamType::Str, v @ Value::Str(_)) => Ok(v),
            (ParamType::Choice(options), Value::Str(s)) => {
                if options.contains(&s.as_str()) {
                    Ok(Value::Str(s))
                } else {
                    Err(format!(
                        "`{s}` is not allowed here; expected one of {}",
                        options.join(", ")
                    ))
                }
            }
            (ParamType::List(elem), Value::List(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| elem.coerce(item).map_err(|e| format!("element {i}: {e}")))
                .collect::<Result<_, _>>()
                .map(Value::List),
            (ParamType::Table, v @ Value::Table(_)) => Ok(v),
            (ty, v) => Err(format!("expected {ty}, found {} `{v}`", v.type_name())),
        }
    }

    /// Whether a string given on the command line should be taken verbatim for this type
    /// (so `--set s.cmd=true` sets the string "true", not a boolean).
    pub fn wants_string(&self) -> bool {
        matches!(self, ParamType::Str | ParamType::Choice(_))
    }
}

/// Default for a declared parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamDefault {
    /// The manifest must set it.
    Required,
    /// Unset means absent (and absent from the cache key).
    Absent,
    Value(Value),
}

/// One parameter in a stage kind's table.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub default: ParamDefault,
    pub doc: &'static str,
}

/// A Rust type a param field may have, and the manifest type that checks it.
pub trait ParamValue {
    fn param_type() -> ParamType;
    /// `Option<T>`: unset means absent, so the param needs no default.
    const OPTIONAL: bool = false;
}

macro_rules! param_value {
    ($ty:ident: $($rust:ty),+) => {
        $(impl ParamValue for $rust {
            fn param_type() -> ParamType {
                ParamType::$ty
            }
        })+
    };
}
param_value!(Bool: bool);
param_value!(Int: i64);
param_value!(Count: u64, u32, usize);
param_value!(Float: f64);
param_value!(Str: String);
param_value!(Table: BTreeMap<String, Value>);

impl<T: ParamValue> ParamValue for Vec<T> {
    fn param_type() -> ParamType {
        ParamType::List(Box::new(T::param_type()))
    }
}

impl<T: ParamValue> ParamValue for Option<T> {
    fn param_type() -> ParamType {
        T::param_type()
    }
    const OPTIONAL: bool = true;
}

/// A stage kind's typed params (declared with [`stage_params!`](crate::stage_params)):
/// the struct a stage reads and the param table the manifest checks are one declaration.
pub trait StageParams: Serialize + DeserializeOwned {
    /// The param table, in declaration order (shared groups last).
    fn specs() -> Vec<ParamSpec>;

    /// The table, built once.
    fn table() -> &'static [ParamSpec];

    /// Reads validated params (every param with a default is present).
    fn from_params(params: &Params) -> Result<Self, String> {
        let json = serde_json::to_value(params).map_err(|e| e.to_string())?;
        serde_json::from_value(json).map_err(|e| e.to_string())
    }
}

/// The default of a declared param, as the manifest value its Rust default serialises to.
pub fn default_of<T: Serialize>(value: T) -> ParamDefault {
    let json = serde_json::to_value(value).expect("param defaults serialise");
    ParamDefault::Value(serde_json::from_value(json).expect("param defaults are manifest values"))
}

/// The default of a param declared without one: absent for `Option`s, else required.
pub fn no_default<T: ParamValue>() -> ParamDefault {
    if T::OPTIONAL {
        ParamDefault::Absent
    } else {
        ParamDefault::Required
    }
}

/// Declares a stage kind's params struct and derives its param table ([`StageParams`])
/// from it, so each param's type, default and doc are written once:
///
/// ```ignore
/// stage_params! {
///     /// Params of `k`.
///     pub struct KParams {
///         /// training epochs
///         pub epochs: u64 = 1,
///         /// optional file (absent unless set)
///         pub metrics: Option<String>,
///         /// required (no default, not an Option)
///         pub cmd: String,
///     }
///     shared { pub data: DataParams }
/// }
/// ```
///
/// A macro rather than a derive crate (schemars and kin): the table needs our manifest
/// types, choices and defaults as manifest values, which a JSON schema would have to be
/// translated back into.
#[macro_export]
macro_rules! stage_params {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                pub $field:ident : $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
        $(shared { $(pub $sfield:ident : $sty:ty),+ $(,)? })?
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone, Debug, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        pub struct $name {
            $(
                $(#[doc = $doc])+
                pub $field: $ty,
            )*
            $($(
                #[serde(flatten)]
                pub $sfield: $sty,
            )+)?
        }

        impl $crate::manifest::schema::StageParams for $name {
            fn specs() -> Vec<$crate::manifest::schema::ParamSpec> {
                #[allow(unused_mut)]
                let mut specs = vec![$(
                    $crate::manifest::schema::ParamSpec {
                        name: stringify!($field),
                        ty: <$ty as $crate::manifest::schema::ParamValue>::param_type(),
                        default: $crate::stage_params!(@default $ty $(, $default)?),
                        doc: concat!($($doc),+).trim_ascii(),
                    },
                )*];
                $($(specs.extend(
                    <$sty as $crate::manifest::schema::StageParams>::specs(),
                );)+)?
                specs
            }

            fn table() -> &'static [$crate::manifest::schema::ParamSpec] {
                static TABLE: ::std::sync::LazyLock<Vec<$crate::manifest::schema::ParamSpec>> =
                    ::std::sync::LazyLock::new(
                        <$name as $crate::manifest::schema::StageParams>::specs,
                    );
                &TABLE
            }
        }
    };
    (@default $ty:ty, $default:expr) => {{
        let value: $ty = $default.into();
        $crate::manifest::schema::default_of(value)
    }};
    (@default $ty:ty) => {
        $crate::manifest::schema::no_default::<$ty>()
    };
}

/// Declares a string-valued choice as an enum whose variants name their manifest
/// spelling; `NAMES` lists them for the param table.
#[macro_export]
macro_rules! param_choice {
    (
        $(#[doc = $doc:literal])*
        pub enum $name:ident {
            $($(#[doc = $vdoc:literal])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, ::serde::Serialize, ::serde::Deserialize)]
        pub enum $name {
            $($(#[doc = $vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($text),+];
        }

        $crate::param_choice!(impl $name);
    };
    (impl $($name:ty),+) => {
        $(impl $crate::manifest::schema::ParamValue for $name {
            fn param_type() -> $crate::manifest::schema::ParamType {
                $crate::manifest::schema::ParamType::Choice(<$name>::NAMES)
            }
        })+
    };
}

/// The inputs a stage kind accepts.
pub enum InputsSpec {
    /// Only these names (each required or optional).
    Named(&'static [InputSpec]),
    /// Any names (the `shell` kind: its declared deps).
    Any,
}

pub struct InputSpec {
    pub name: &'static str,
    pub required: bool,
    pub doc: &'static str,
}

/// What the manifest, the planner and `runner kinds` know about a stage kind.
pub trait KindSchema: Send + Sync {
    fn name(&self) -> &'static str;
    /// Implementation version; part of the cache key.
    fn version(&self) -> u32;
    /// One-paragraph description for `runner kinds`.
    fn doc(&self) -> &'static str;
    /// The param table (from the kind's [`StageParams`] struct).
    fn params(&self) -> &'static [ParamSpec];
    fn inputs(&self) -> InputsSpec;
    /// Names of the outputs a stage with these (validated) params produces, known before
    /// it runs so that references to them are checked when the manifest loads.
    fn outputs(&self, params: &Params) -> Vec<String>;
    /// Resource slots the stage holds while it runs, e.g. `gpu = 1`.
    fn resources(&self, _params: &Params) -> BTreeMap<String, u32> {
        BTreeMap::new()
    }
    /// Whether the stage computes on the run's tensor backend: on a GPU backend it then
    /// holds one `gpu` slot (unless its manifest entry sets `resources.gpu`).
    fn uses_device(&self) -> bool {
        false
    }
}

/// The stage kinds a manifest may use, handed to the loader.
#[derive(Clone)]
pub struct Kinds(pub Vec<&'static dyn KindSchema>);

impl Kinds {
    pub fn find(&self, name: &str) -> Option<&'static dyn KindSchema> {
        self.0.iter().copied().find(|k| k.name() == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|k| k.name())
    }

    pub fn iter(&self) -> impl Iterator<Item = &'static dyn KindSchema> + '_ {
        self.0.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::param_choice! {
        /// A test choice.
        pub enum Colour {
            Red = "red",
            DarkBlue = "dark_blue",
        }
    }

    crate::stage_params! {
        pub struct Shared {
            /// shared flag
            pub flag: bool = true,
        }
    }

    crate::stage_params! {
        /// Test params.
        pub struct Demo {
            /// a float,
            /// on two lines
            pub lr: f64 = 3e-6,
            /// a count
            pub epochs: u64 = 3u64,
            /// a choice
            pub colour: Colour = Colour::DarkBlue,
            /// a list
            pub outs: Vec<String> = Vec::<String>::new(),
            /// required
            pub cmd: String,
            /// absent unless set
            pub metrics: Option<String>,
            /// a string with a default
            pub title: String = "t",
        }
        shared { pub shared: Shared }
    }

    #[test]
    fn the_table_is_derived_from_the_struct() {
        let table = Demo::table();
        let names: Vec<_> = table.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "lr", "epochs", "colour", "outs", "cmd", "metrics", "title", "flag"
            ]
        );
        assert_eq!(table[0].doc, "a float, on two lines");
        assert_eq!(table[0].default, ParamDefault::Value(Value::Float(3e-6)));
        assert_eq!(table[1].ty, ParamType::Count);
        assert_eq!(table[1].default, ParamDefault::Value(Value::Int(3)));
        assert_eq!(table[2].ty, ParamType::Choice(&["red", "dark_blue"]));
        assert_eq!(
            table[2].default,
            ParamDefault::Value(Value::Str("dark_blue".into()))
        );
        assert_eq!(table[3].ty, ParamType::List(Box::new(ParamType::Str)));
        assert_eq!(table[4].default, ParamDefault::Required);
        assert_eq!(table[5].default, ParamDefault::Absent);
        assert_eq!(
            table[6].default,
            ParamDefault::Value(Value::Str("t".into()))
        );
        assert_eq!(table[7].default, ParamDefault::Value(Value::Bool(true)));

        let mut p = Params::default();
        for s in table {
            if let ParamDefault::Value(v) = &s.default {
                p.0.insert(s.name.into(), v.clone());
            }
        }
        assert!(Demo::from_params(&p).unwrap_err().contains("cmd"));
        p.0.insert("cmd".into(), Value::Str("echo".into()));
        let d = Demo::from_params(&p).unwrap();
        assert_eq!(
            (d.colour, d.epochs, d.metrics, d.shared.flag),
            (Colour::DarkBlue, 3, None, true)
        );
    }

    #[test]
    fn integers_widen_to_float_only_and_counts_are_not_negative() {
        assert_eq!(
            ParamType::Float.coerce(Value::Int(3)),
            Ok(Value::Float(3.0))
        );
        assert!(ParamType::Int.coerce(Value::Float(3.0)).is_err());
        assert!(ParamType::Count.coerce(Value::Int(-1)).is_err());
        assert_eq!(ParamType::Count.coerce(Value::Int(0)), Ok(Value::Int(0)));
        assert!(
            ParamType::Choice(&["a", "b"])
                .coerce(Value::Str("c".into()))
                .is_err()
        );
    }
}

//! Where each stage param's value came from, so `runner diff` can say why two runs
//! differ (an edited line, a template, a `--set` flag, a sweep axis, a default).

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum ParamSource {
    /// The stage's own table.
    Stage { line: usize },
    /// The `[templates.NAME]` table the stage extends.
    Template { name: String, line: usize },
    /// A `${params.NAME}` reference (at `line`); `set` is the flag or sweep axis that set
    /// the shared param, if one did.
    Shared {
        name: String,
        line: usize,
        set: Option<String>,
    },
    /// A `--set STAGE.PARAM=VALUE` flag, as given.
    Set { flag: String },
    /// A sweep grid axis.
    Grid { axis: String },
    /// `[pipeline] defaults`.
    PipelineDefault { line: usize },
    /// The stage kind's default.
    KindDefault,
}

impl fmt::Display for ParamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamSource::Stage { line } => write!(f, "manifest line {line}"),
            ParamSource::Template { name, line } => write!(f, "template `{name}` (line {line})"),
            ParamSource::Shared { name, line, set } => {
                write!(f, "params.{name} (referenced at line {line}")?;
                match set {
                    Some(s) => write!(f, "; set by {s})"),
                    None => write!(f, ")"),
                }
            }
            ParamSource::Set { flag } => write!(f, "{flag}"),
            ParamSource::Grid { axis } => write!(f, "sweep grid {axis}"),
            ParamSource::PipelineDefault { line } => {
                write!(f, "[pipeline] defaults (line {line})")
            }
            ParamSource::KindDefault => write!(f, "kind default"),
        }
    }
}

/// The first shared param a raw string value references (`${params.NAME}`), if any.
pub(super) fn referenced_param(raw: &str) -> Option<&str> {
    let rest = &raw[raw.find("${params.")? + "${params.".len()..];
    Some(&rest[..rest.find('}')?])
}

//! `--set STAGE.PARAM=VALUE` and `--set params.NAME=VALUE`.

use super::*;

/// A `--set target.key=value` override (target is a stage name or `params`).
#[derive(Clone, Debug)]
pub struct Override {
    pub target: String,
    pub key: String,
    pub text: String,
    pub value: Value,
    /// Set by a sweep grid axis rather than a `--set` flag (for provenance).
    pub from_grid: bool,
}

impl Override {
    pub fn parse(flag: &str) -> Result<Override, String> {
        let (path, text) = flag
            .split_once('=')
            .ok_or_else(|| format!("`{flag}` is not of the form stage.param=value"))?;
        let (target, key) = path
            .split_once('.')
            .ok_or_else(|| format!("`{path}` must be stage.param or params.name"))?;
        if target.is_empty() || key.is_empty() {
            return Err(format!("`{path}` must be stage.param or params.name"));
        }
        Ok(Override {
            target: target.to_string(),
            key: key.to_string(),
            text: text.to_string(),
            value: Value::parse_cli(text),
            from_grid: false,
        })
    }

    pub(super) fn flag(&self) -> String {
        format!("--set {}.{}={}", self.target, self.key, self.text)
    }

    /// Where the value came from, as `runner diff` shows it.
    pub(super) fn source(&self) -> ParamSource {
        if self.from_grid {
            ParamSource::Grid {
                axis: format!("{}.{}", self.target, self.key),
            }
        } else {
            ParamSource::Set { flag: self.flag() }
        }
    }

    /// The value as the declared type wants it: a string param takes the text verbatim.
    pub(super) fn typed_for(&self, ty: &ParamType) -> Value {
        if ty.wants_string() {
            Value::Str(self.text.clone())
        } else {
            self.value.clone()
        }
    }
}

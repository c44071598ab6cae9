//! Comparing experiments from the run history: [`table`] lists runs with the params that
//! differ between them and chosen metrics (`runner runs`), [`diff`] says what changed
//! between two runs or two stage records (`runner diff`).

pub mod diff;
pub mod table;

use crate::manifest::value::Value;
use crate::store::runs::{RunLog, RunVariant, StageRun};
use std::collections::BTreeMap;

/// One variant of one logged run: a row of `runner runs`, a side of `runner diff`.
#[derive(Clone, Copy)]
pub struct RunPoint<'a> {
    pub log: &'a RunLog,
    /// Index into `log.variants`; `None` for logs from before run history (no variants).
    pub variant: Option<usize>,
}

impl<'a> RunPoint<'a> {
    /// Every variant of every log, in the logs' order (newest first).
    pub fn all(logs: &'a [RunLog]) -> Vec<RunPoint<'a>> {
        logs.iter()
            .flat_map(|log| {
                let n = log.variants.len();
                let variants: Vec<Option<usize>> = if n == 0 {
                    vec![None]
                } else {
                    (0..n).map(Some).collect()
                };
                variants
                    .into_iter()
                    .map(move |variant| RunPoint { log, variant })
            })
            .collect()
    }

    /// `3`, or `5/2` for the second variant of sweep 5.
    pub fn id(&self) -> String {
        match self.variant {
            Some(i) => self.log.variant_id(i),
            None => self.log.id.clone(),
        }
    }

    pub fn variant(&self) -> Option<&'a RunVariant> {
        self.variant.map(|i| &self.log.variants[i])
    }

    pub fn stages(&self) -> impl Iterator<Item = (&'a String, &'a StageRun)> {
        self.variant().into_iter().flat_map(|v| v.stages.iter())
    }

    pub fn stage(&self, name: &str) -> Option<&'a StageRun> {
        self.variant()?.stages.get(name)
    }

    /// Every param as `stage.param` (and shared ones as `params.NAME`) → value.
    pub fn params(&self) -> BTreeMap<String, &'a Value> {
        let mut out = BTreeMap::new();
        if let Some(v) = self.variant() {
            for (name, value) in &v.shared {
                out.insert(format!("params.{name}"), value);
            }
            for (stage, run) in &v.stages {
                for (param, value) in &run.params.0 {
                    out.insert(format!("{stage}.{param}"), value);
                }
            }
        }
        out
    }

    /// `STAGE.METRIC` of this run, if that stage recorded it.
    pub fn metric(&self, column: &str) -> Option<&'a serde_json::Value> {
        let (stage, metric) = column.split_once('.')?;
        self.stage(stage)?.metrics.get(metric)
    }

    /// ok, failed, interrupted or unfinished (the log was never closed: still running,
    /// or killed).
    pub fn state(&self) -> &'static str {
        if self.log.finished.is_empty() {
            return "unfinished";
        }
        let states: Vec<&str> = self.stages().map(|(_, s)| s.state.as_str()).collect();
        if states.contains(&"failed") {
            "failed"
        } else if states.contains(&"interrupted") || self.log.exit_code == Some(130) {
            "interrupted"
        } else if self.log.exit_code.unwrap_or(0) != 0 {
            "failed"
        } else {
            "ok"
        }
    }

    /// How many of its stages ran (or resumed) rather than came from the cache.
    pub fn ran(&self) -> usize {
        self.stages()
            .filter(|(_, s)| matches!(s.state.as_str(), "ran" | "resumed"))
            .count()
    }

    /// The commit, shortened, with `+` when the tree was dirty.
    pub fn commit(&self) -> String {
        match &self.log.git {
            Some(g) => format!(
                "{}{}",
                &g.commit[..g.commit.len().min(9)],
                if g.dirty { "+" } else { "" }
            ),
            None => "-".into(),
        }
    }
}

/// A JSON metric as a table cell: floats to 4 decimals.
pub fn metric_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `2026-12-03T15:07:40Z` → `2026-12-03 15:07:40`.
pub fn when(rfc3339: &str) -> String {
    rfc3339.replace('T', " ").trim_end_matches('Z').to_string()
}

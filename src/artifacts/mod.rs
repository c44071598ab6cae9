//! Artifact formats stages hand each other, one type and one reader/writer each: the
//! model directory, eval.json, quant_info.json, adjq's metrics.jsonl and selection.json.
//! A consumer tells them apart by the name they were produced under
//! ([`ArtifactKind::of`]), never by sniffing their content.

pub mod model_dir;
pub mod selection;

use crate::quant::info::QuantInfo;
use crate::score::counter::Totals;
use crate::score::metric::PaperMetric;
use crate::train::loss::LossTerms;
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const EVAL: &str = "eval.json";
pub const QUANT_INFO: &str = "quant_info.json";
pub const METRICS: &str = "metrics.jsonl";
pub const SELECTION: &str = "selection.json";

/// Reads a JSON artifact; errors name the file and what it should have been.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid {what}", path.display()))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    Ok(crate::atomic::write_json(path, value)?)
}

/// Reads a JSON-lines artifact; errors name the file and line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| {
                format!("{}:{}: not a valid line of {what}", path.display(), i + 1)
            })
        })
        .collect()
}

/// Writes one JSON line per record.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let mut lines = String::new();
    for r in records {
        lines.push_str(&serde_json::to_string(r)?);
        lines.push('\n');
    }
    crate::atomic::write(path, lines.as_bytes())?;
    Ok(())
}

/// Top-1/top-5 accuracy over the first `limit` validation images (0 = all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub top1: f64,
    pub top5: f64,
    pub images: usize,
}

/// `eval.json`: what an eval stage measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalResult {
    pub model: String,
    pub quantized: bool,
    pub top1: f64,
    pub top5: f64,
    pub images: usize,
    pub paper_metric: PaperMetric,
    /// The official MicroNet totals and score.
    pub official: Totals,
    pub avg_weight_bits: f64,
    pub avg_act_bits: f64,
}

/// One adjq mini-epoch's results (a line of its metrics.jsonl).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MiniEpoch {
    pub epoch: usize,
    pub mini_epoch: usize,
    pub steps: usize,
    pub trained_bits: bool,
    pub loss: LossTerms,
    pub accuracy: Accuracy,
    pub metric: f64,
    pub params: f64,
    pub ops: f64,
    pub avg_weight_bits: f64,
    pub avg_act_bits: f64,
    pub checkpoint: String,
}

/// `selection.json`: which checkpoint a select stage chose, by which rule, among which.
/// Fields in alphabetical order, the order the file has always had.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub candidates: Vec<Candidate>,
    pub chosen: String,
    pub eligible: usize,
    pub max_metric: f64,
    pub metric: f64,
    pub min_top1: f64,
    /// `lowest_metric` or `highest_top1`.
    pub rule: String,
    pub top1: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub checkpoint: String,
    pub metric: f64,
    pub top1: f64,
}

/// What an artifact is, from the name it was produced under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactKind {
    Eval,
    QuantInfo,
    /// A metrics.jsonl (adjq's holds [`MiniEpoch`] lines).
    Metrics,
    Selection,
}

impl ArtifactKind {
    pub fn of(file_name: &str) -> Option<ArtifactKind> {
        Some(match file_name {
            EVAL => ArtifactKind::Eval,
            QUANT_INFO => ArtifactKind::QuantInfo,
            METRICS => ArtifactKind::Metrics,
            SELECTION => ArtifactKind::Selection,
            _ => return None,
        })
    }
}

/// An artifact read as its type.
pub enum Artifact {
    Eval(EvalResult),
    QuantInfo(QuantInfo),
    Curve(Vec<MiniEpoch>),
    Selection(Selection),
}

impl Artifact {
    pub fn read(kind: ArtifactKind, path: &Path) -> Result<Artifact> {
        Ok(match kind {
            ArtifactKind::Eval => Artifact::Eval(read_json(path, EVAL)?),
            ArtifactKind::QuantInfo => Artifact::QuantInfo(read_json(path, QUANT_INFO)?),
            ArtifactKind::Metrics => {
                Artifact::Curve(read_jsonl(path, "metrics.jsonl of an adjq stage")?)
            }
            ArtifactKind::Selection => Artifact::Selection(read_json(path, SELECTION)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_known_by_the_name_they_were_produced_under() {
        assert_eq!(ArtifactKind::of("eval.json"), Some(ArtifactKind::Eval));
        assert_eq!(
            ArtifactKind::of("selection.json"),
            Some(ArtifactKind::Selection)
        );
        assert_eq!(ArtifactKind::of("model"), None);
    }

    #[test]
    fn selection_json_keeps_the_bytes_it_always_had() {
        // select wrote a serde_json object (sorted keys) before it had a type.
        let old = serde_json::json!({
            "rule": "lowest_metric", "min_top1": 0.5, "max_metric": 1e9, "chosen": "e0m1",
            "metric": 0.25, "top1": 0.75, "eligible": 2,
            "candidates": [{"checkpoint": "e0m1", "metric": 0.25, "top1": 0.75}],
        });
        let new = Selection {
            candidates: vec![Candidate {
                checkpoint: "e0m1".into(),
                metric: 0.25,
                top1: 0.75,
            }],
            chosen: "e0m1".into(),
            eligible: 2,
            max_metric: 1e9,
            metric: 0.25,
            min_top1: 0.5,
            rule: "lowest_metric".into(),
            top1: 0.75,
        };
        assert_eq!(
            serde_json::to_string_pretty(&new).unwrap(),
            serde_json::to_string_pretty(&old).unwrap()
        );
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            "{\"top1\": 1, \"top5\": 1, \"images\": 3}\n\n{\"epoch\": 1}\n",
        )
        .unwrap();
        let e = read_jsonl::<Accuracy>(&path, "accuracy").unwrap_err();
        assert!(
            format!("{e:#}").contains("metrics.jsonl:3: not a valid line of accuracy"),
            "{e:#}"
        );
    }
}

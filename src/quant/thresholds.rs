//! `thresholds.json`: the initial per-channel range of every quantization point (the
//! original's `initial_thresholds.json`). Keys are the original's point names
//! (`qnet::point_key`), e.g. `expanded_conv_3/expand/weights`,
//! `expanded_conv_3/expand/swish_input`, `expanded_conv_3/project/output`. Reads ours
//! (`{"points": {name: {min, max}}}`) and the original's file as it is
//! (`{name: {min, max}}`).

use anyhow::{Context, Result, bail};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub points: IndexMap<String, Range>,
}

impl Thresholds {
    pub fn load(path: &Path) -> Result<Thresholds> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read thresholds {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a thresholds file (not JSON)", path.display()))?;
        // Ours wraps the map in `points`; the original's file is the bare map.
        let bare = value.as_object().is_some_and(|o| !o.contains_key("points"));
        let parsed = if bare {
            serde_json::from_value(value).map(|points| Thresholds { points })
        } else {
            serde_json::from_value(value)
        };
        let t: Thresholds = parsed.with_context(|| {
            format!(
                "{}: not a thresholds file ({{\"points\": {{name: {{\"min\": [..], \"max\": [..]}}}}}} or the original's {{name: {{\"min\", \"max\"}}}})",
                path.display()
            )
        })?;
        for (name, r) in &t.points {
            if r.min.len() != r.max.len() {
                bail!(
                    "{}: point `{name}` has {} minima but {} maxima",
                    path.display(),
                    r.min.len(),
                    r.max.len()
                );
            }
            if let Some(c) = (0..r.min.len())
                .find(|&c| r.min[c].is_nan() || r.max[c].is_nan() || r.min[c] > r.max[c])
            {
                bail!(
                    "{}: point `{name}` channel {c}: min {} is not ≤ max {}",
                    path.display(),
                    r.min[c],
                    r.max[c]
                );
            }
        }
        Ok(t)
    }

    /// The range of `point` with `channels` channels, or an error naming what is wrong.
    pub fn get(&self, point: &str, channels: usize) -> Result<&Range> {
        let r = self.points.get(point).with_context(|| {
            format!("thresholds have no entry for quantization point `{point}`")
        })?;
        if r.min.len() != channels {
            bail!(
                "thresholds for `{point}` have {} channels, the model has {channels}",
                r.min.len()
            );
        }
        Ok(r)
    }

    pub fn insert(&mut self, point: String, min: Vec<f32>, max: Vec<f32>) {
        self.points.insert(point, Range { min, max });
    }
}

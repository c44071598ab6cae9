//! Sweeps: expand a grid of param values into variants and tabulate their metrics.

use crate::exec::Outcome;
use crate::exec::plan::{Plan, Settings};
use crate::manifest::diag::ManifestErrors;
use crate::manifest::schema::Kinds;
use crate::manifest::value::Value;
use crate::manifest::{self, GridAxis, Manifest, Override};
use crate::report::plots::{Candidate, Pareto};
use std::path::Path;

/// Parses `--grid stage.param=v1,v2,...` (commas inside brackets or quotes do not split).
pub fn parse_grid_flag(flag: &str) -> Result<(String, Value), String> {
    let (label, list) = flag
        .split_once('=')
        .ok_or_else(|| format!("`{flag}` is not of the form stage.param=v1,v2,..."))?;
    let mut values = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None, 0);
    for (i, c) in list.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            ('[' | '{', None) => depth += 1,
            (']' | '}', None) => depth -= 1,
            (',', None) if depth == 0 => {
                values.push(Value::parse_cli(list[start..i].trim()));
                start = i + 1;
            }
            _ => {}
        }
    }
    values.push(Value::parse_cli(list[start..].trim()));
    Ok((label.to_string(), Value::List(values)))
}

/// Why a sweep could not be expanded: the manifest (or a variant of it) is bad, or the grid.
#[derive(Debug)]
pub enum ExpandError {
    Manifest(ManifestErrors),
    Grid(String),
}

impl From<ManifestErrors> for ExpandError {
    fn from(e: ManifestErrors) -> Self {
        ExpandError::Manifest(e)
    }
}

/// Loads one manifest per grid point. Axes from the command line replace same-named axes
/// of the manifest's `[sweep]` table.
pub fn expand(
    path: &Path,
    base: &[Override],
    cli_axes: &[(String, Value)],
    kinds: &Kinds,
) -> Result<Vec<(Settings, Manifest)>, ExpandError> {
    let first = manifest::load(path, base, kinds)?;
    let mut axes: Vec<GridAxis> = first.sweep.grid.clone();
    for (label, values) in cli_axes {
        let axis = manifest::grid_axis(label, values.clone(), &first.stages, &first.params)
            .map_err(|(msg, hint)| {
                ExpandError::Grid(format!(
                    "--grid {label}: {msg}{}",
                    hint.map(|h| format!("\n  = hint: {h}")).unwrap_or_default()
                ))
            })?;
        axes.retain(|a| a.label() != axis.label());
        axes.push(axis);
    }
    if axes.is_empty() {
        return Err(ExpandError::Grid(format!(
            "nothing to sweep: {} has no [sweep] grid and no --grid was given",
            path.display()
        )));
    }
    let mut points: Vec<Settings> = vec![Vec::new()];
    for axis in &axes {
        points = points
            .into_iter()
            .flat_map(|p| {
                axis.values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push((axis.label(), v.clone()));
                    q
                })
            })
            .collect();
    }
    points
        .into_iter()
        .map(|settings| {
            let mut overrides = base.to_vec();
            for (label, v) in &settings {
                let (target, key) = label.split_once('.').expect("axis labels are stage.param");
                overrides.push(Override {
                    target: target.into(),
                    key: key.into(),
                    text: v
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string()),
                    value: v.clone(),
                    from_grid: true,
                });
            }
            manifest::load(path, &overrides, kinds)
                .map(|m| (settings, m))
                .map_err(ExpandError::Manifest)
        })
        .collect()
}

/// A number with more than four decimals, rounded to four for reading (the CSV keeps
/// every digit); anything else unchanged.
fn short_number(cell: &str) -> String {
    match (cell.split_once('.'), cell.parse::<f64>()) {
        (Some((_, frac)), Ok(x)) if frac.len() > 4 && x.is_finite() => format!("{x:.4}"),
        _ => cell.to_string(),
    }
}

/// The results table: one row per variant, grid settings then the chosen metrics.
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// The first `settings` columns are the grid axes.
    pub settings: usize,
}

/// `metrics` are `stage.metric` names; when empty, every metric of the stages nothing
/// else in the variant reads (the pipeline's final stages).
pub fn table(plan: &Plan, outcomes: &[Outcome], metrics: &[String]) -> Table {
    let metrics: Vec<String> = if metrics.is_empty() {
        let mut found = std::collections::BTreeSet::new();
        for v in &plan.variants {
            for (stage, job) in &v.stages {
                let read = v
                    .stages
                    .values()
                    .any(|j| plan.jobs[*j].upstream().any(|u| u == *job));
                if let (false, Some(rec)) = (read, &outcomes[*job].record) {
                    found.extend(rec.metrics.keys().map(|k| format!("{stage}.{k}")));
                }
            }
        }
        found.into_iter().collect()
    } else {
        metrics.to_vec()
    };
    let mut header: Vec<String> = plan.variants[0]
        .settings
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    let settings = header.len();
    header.extend(metrics.iter().cloned());
    header.push("status".into());
    let rows = plan
        .variants
        .iter()
        .map(|v| {
            let mut row: Vec<String> = v
                .settings
                .iter()
                .map(|(_, val)| {
                    val.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| val.to_string())
                })
                .collect();
            for m in &metrics {
                let (stage, key) = m.split_once('.').unwrap_or((m, ""));
                let cell = v
                    .stages
                    .get(stage)
                    .and_then(|j| outcomes[*j].record.as_ref())
                    .and_then(|r| r.metrics.get(key))
                    .map(|x| match x {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_else(|| "-".into());
                row.push(cell);
            }
            let ok = v.stages.values().all(|j| outcomes[*j].state.ok());
            row.push(if ok { "ok".into() } else { "incomplete".into() });
            row
        })
        .collect();
    Table {
        header,
        rows,
        settings,
    }
}

impl Table {
    /// Accuracy against cost over the variants, when the table has a `*.top1` column and
    /// a cost column (`*.official_score`, else `*.paper_metric`, else `*.metric`).
    pub fn pareto(&self) -> Option<Pareto> {
        // Metric columns only: a grid axis may end in the same name (params.top1).
        let col = |suffix: &str| {
            (self.settings..self.header.len()).find(|&i| self.header[i].ends_with(suffix))
        };
        let y = col(".top1")?;
        let x = col(".official_score")
            .or_else(|| col(".paper_metric"))
            .or_else(|| col(".metric"))?;
        let axes = 0..self.settings;
        let points: Vec<Candidate> = self
            .rows
            .iter()
            .filter_map(|r| {
                let label = axes
                    .clone()
                    .map(|i| {
                        let name = self.header[i].rsplit('.').next().unwrap_or("");
                        format!("{name}={}", r[i])
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                Some(Candidate {
                    label,
                    cost: r[x].parse().ok()?,
                    quality: r[y].parse().ok()?,
                })
            })
            .collect();
        (!points.is_empty()).then(|| Pareto {
            title: format!("sweep: {} against {}", self.header[y], self.header[x]),
            x_label: format!("{} (lower is better)", self.header[x]),
            y_label: format!("{} (higher is better)", self.header[y]),
            points,
        })
    }

    pub fn markdown(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(|c| short_number(c)).collect())
            .collect();
        crate::report::page::markdown_table(&self.header, &rows)
    }

    pub fn csv(&self) -> anyhow::Result<Vec<u8>> {
        crate::report::page::csv_table(&self.header, &self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_of_a_table_uses_top1_against_the_official_score() {
        let row = |b: &str, g: &str, top1: &str, score: &str| {
            [b, g, top1, "0.3", score, "ok"].map(String::from).to_vec()
        };
        let t = Table {
            header: [
                "adjq.beta",
                "adjq.gamma",
                "eval.top1",
                "eval.paper_metric",
                "eval.official_score",
                "status",
            ]
            .map(String::from)
            .to_vec(),
            rows: vec![
                row("10", "0.5", "0.9", "0.5"),
                row("20", "0.5", "0.85", "-"),
                row("20", "0.7", "0.8", "0.4"),
            ],
            settings: 2,
        };
        let p = t.pareto().unwrap();
        // The variant without a score is left out; labels name the settings.
        assert_eq!(p.points.len(), 2);
        assert_eq!(p.points[1].label, "beta=20 gamma=0.7");
        assert_eq!((p.points[1].cost, p.points[1].quality), (0.4, 0.8));
        assert!(p.x_label.starts_with("eval.official_score"));
        // Markdown rounds long numbers for reading; settings and short values stay.
        let md = t.markdown();
        assert!(md.contains("| 10 | 0.5 | 0.9 | 0.3 | 0.5 | ok |"), "{md}");
        assert_eq!(short_number("0.9393939393939394"), "0.9394");
        assert_eq!(short_number("1e-5"), "1e-5");
    }

    #[test]
    fn grid_flag_splits_on_top_level_commas() {
        let (label, v) = parse_grid_flag("a.b=1,[2,3],\"x,y\"").unwrap();
        assert_eq!(label, "a.b");
        assert_eq!(
            v,
            Value::List(vec![
                Value::Int(1),
                Value::List(vec![Value::Int(2), Value::Int(3)]),
                Value::Str("x,y".into())
            ])
        );
    }
}

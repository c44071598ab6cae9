//! `runner runs`: one row per run (per sweep point), newest first; the columns are the
//! params that differ between the listed rows and chosen metrics.

use super::{RunPoint, metric_text, when};
use serde_json::Value as Json;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// The metrics shown when none are asked for: these of each run's last stages (those no
/// other stage reads), when they recorded them.
pub const DEFAULT_METRICS: &[&str] = &[
    "top1",
    "avg_weight_bits",
    "avg_act_bits",
    "paper_metric",
    "official_score",
];

/// Which rows and columns to show.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub pipeline: Option<String>,
    /// Only runs with this stage; the default metrics are then this stage's.
    pub stage: Option<String>,
    pub filters: Vec<Filter>,
    /// `STAGE.METRIC` columns (default: [`DEFAULT_METRICS`] of the last stages).
    pub metrics: Vec<String>,
    /// A column to sort by (default: newest first).
    pub sort: Option<String>,
    pub reverse: bool,
    /// At most this many rows (0: all).
    pub limit: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// `COLUMN=VALUE` (also `!=`, `<`, `<=`, `>`, `>=`; numbers compare as numbers) on a
/// param (`stage.param`, `params.NAME`), a metric (`stage.metric`) or `pipeline`/`state`.
#[derive(Clone, Debug)]
pub struct Filter {
    column: String,
    op: Op,
    value: String,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, String> {
        // Longest operators first, so `<=` is not read as `<`.
        for (sym, op) in [
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("=", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ] {
            if let Some((column, value)) = text.split_once(sym)
                && !column.is_empty()
                && !column.contains(['<', '>', '!', '='])
            {
                return Ok(Filter {
                    column: column.trim().to_string(),
                    op,
                    value: value.trim().to_string(),
                });
            }
        }
        Err(format!(
            "`{text}` is not COLUMN=VALUE (or !=, <, <=, >, >=), e.g. adjq_hi.beta=10 or report.top1>0.9"
        ))
    }

    fn keeps(&self, r: &Row) -> bool {
        let Some(have) = cell(r, &self.column) else {
            return self.op == Op::Ne;
        };
        let want = match self.value.parse::<f64>() {
            Ok(x) => Json::from(x),
            Err(_) => Json::String(self.value.clone()),
        };
        let ord = order(&have, &want);
        match (self.op, ord) {
            (Op::Eq, o) => o == Some(Ordering::Equal),
            (Op::Ne, o) => o != Some(Ordering::Equal),
            (_, None) => false,
            (Op::Lt, Some(o)) => o.is_lt(),
            (Op::Le, Some(o)) => o.is_le(),
            (Op::Gt, Some(o)) => o.is_gt(),
            (Op::Ge, Some(o)) => o.is_ge(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    /// run, started, pipeline, state, ran (stages that ran, not cached), commit.
    Run,
    Param,
    Metric,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Column {
    pub name: String,
    pub kind: ColumnKind,
}

/// The rows and columns a query selected, cells as JSON (`null`: no value).
#[derive(Debug, serde::Serialize)]
pub struct RunsTable {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Json>>,
    /// Rows the limit left out.
    pub omitted: usize,
}

/// A run point with its params flattened once (filters, sorting and cells all read them).
struct Row<'a> {
    point: &'a RunPoint<'a>,
    params: BTreeMap<String, Json>,
}

/// Runs `points` (newest first) through `q`.
pub fn select(points: &[RunPoint], q: &Query) -> RunsTable {
    let mut rows: Vec<Row> = points
        .iter()
        .filter(|p| q.pipeline.as_ref().is_none_or(|n| &p.log.pipeline == n))
        .filter(|p| q.stage.as_ref().is_none_or(|s| p.stage(s).is_some()))
        .map(|point| Row {
            point,
            params: point
                .params()
                .into_iter()
                .map(|(k, v)| (k, serde_json::to_value(v).unwrap_or(Json::Null)))
                .collect(),
        })
        .filter(|r| q.filters.iter().all(|f| f.keeps(r)))
        .collect();
    match &q.sort {
        Some(col) => {
            rows.sort_by(|a, b| compare(cell(a, col).as_ref(), cell(b, col).as_ref(), q.reverse))
        }
        None if q.reverse => rows.reverse(),
        None => {}
    }
    let omitted = if q.limit > 0 && rows.len() > q.limit {
        let n = rows.len() - q.limit;
        rows.truncate(q.limit);
        n
    } else {
        0
    };

    let mut columns: Vec<Column> = ["run", "started"].iter().map(|n| run_column(n)).collect();
    let distinct = |f: &dyn Fn(&RunPoint) -> String| {
        rows.iter()
            .map(|r| f(r.point))
            .collect::<BTreeSet<_>>()
            .len()
            > 1
    };
    if distinct(&|p| p.log.pipeline.clone()) {
        columns.push(run_column("pipeline"));
    }
    columns.push(run_column("state"));
    columns.push(run_column("ran"));
    if distinct(&|p| p.commit()) {
        columns.push(run_column("commit"));
    }
    columns.extend(differing_params(&rows).into_iter().map(|name| Column {
        name,
        kind: ColumnKind::Param,
    }));
    let metrics = if q.metrics.is_empty() {
        default_metrics(&rows, q.stage.as_deref())
    } else {
        q.metrics.clone()
    };
    columns.extend(metrics.into_iter().map(|name| Column {
        name,
        kind: ColumnKind::Metric,
    }));
    let cells = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| typed_cell(r, c).unwrap_or(Json::Null))
                .collect()
        })
        .collect();
    RunsTable {
        columns,
        rows: cells,
        omitted,
    }
}

fn run_column(name: &str) -> Column {
    Column {
        name: name.to_string(),
        kind: ColumnKind::Run,
    }
}

/// Params whose value differs between rows that have them (at least two do): a param of
/// another pipeline's stage alone does not make a column. A stage param that only
/// follows a shared param (`${params.x}`) that has a column is left out.
fn differing_params(rows: &[Row]) -> Vec<String> {
    let mut seen: BTreeMap<&str, Vec<&Json>> = BTreeMap::new();
    let mut follows: BTreeMap<String, String> = BTreeMap::new();
    for r in rows {
        for (name, v) in &r.params {
            seen.entry(name).or_default().push(v);
        }
        for (stage, run) in r.point.stages() {
            for (param, src) in &run.sources {
                if let crate::manifest::ParamSource::Shared { name, .. } = src {
                    follows.insert(format!("{stage}.{param}"), format!("params.{name}"));
                }
            }
        }
    }
    let differs = |vs: &Vec<&Json>| vs.len() >= 2 && vs.iter().any(|v| *v != vs[0]);
    seen.iter()
        .filter(|(name, vs)| {
            differs(vs)
                && !follows
                    .get(**name)
                    .is_some_and(|shared| seen.get(shared.as_str()).is_some_and(differs))
        })
        .map(|(name, _)| name.to_string())
        .collect()
}

/// [`DEFAULT_METRICS`] of `stage`, or else of each row's last stages, that some row has.
fn default_metrics(rows: &[Row], stage: Option<&str>) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    for r in rows {
        for (name, run) in r.point.stages() {
            let wanted = match stage {
                Some(s) => s == name,
                None => run.last,
            };
            if wanted && !stages.contains(name) {
                stages.push(name.clone());
            }
        }
    }
    stages.sort();
    let mut out = Vec::new();
    for s in &stages {
        for m in DEFAULT_METRICS {
            let col = format!("{s}.{m}");
            if rows.iter().any(|r| r.point.metric(&col).is_some()) {
                out.push(col);
            }
        }
    }
    out
}

fn typed_cell(r: &Row, c: &Column) -> Option<Json> {
    match c.kind {
        ColumnKind::Run => run_cell(r.point, &c.name),
        ColumnKind::Param => r.params.get(&c.name).cloned(),
        ColumnKind::Metric => r.point.metric(&c.name).cloned(),
    }
}

fn run_cell(p: &RunPoint, name: &str) -> Option<Json> {
    Some(Json::String(match name {
        "run" => p.id(),
        "started" => when(&p.log.started),
        "pipeline" => p.log.pipeline.clone(),
        "state" => p.state().to_string(),
        "ran" => return Some(Json::from(p.ran())),
        "commit" => p.commit(),
        _ => return None,
    }))
}

/// Any column by name: a run column, else a param, else a metric.
fn cell(r: &Row, name: &str) -> Option<Json> {
    run_cell(r.point, name)
        .or_else(|| r.params.get(name).cloned())
        .or_else(|| r.point.metric(name).cloned())
}

fn json_number(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64(),
        Json::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// Numbers by value, run ids (`5/2`, also against a number) part by part, other text as
/// text; `None` for numbers that do not compare (NaN).
fn order(a: &Json, b: &Json) -> Option<Ordering> {
    let parts = |v: &Json| -> Option<Vec<u64>> {
        match v {
            Json::String(s) => s.split('/').map(|p| p.parse().ok()).collect(),
            Json::Number(n) => {
                let x = n.as_f64()?;
                (x >= 0.0 && x.fract() == 0.0).then(|| vec![x as u64])
            }
            _ => None,
        }
    };
    match (json_number(a), json_number(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y),
        _ => match (parts(a), parts(b)) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => Some(text(a).cmp(&text(b))),
        },
    }
}

/// [`order`] with missing values last, whichever the direction.
fn compare(a: Option<&Json>, b: Option<&Json>, reverse: bool) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a), Some(b)) => {
            let o = order(a, b).unwrap_or(Ordering::Equal);
            if reverse { o.reverse() } else { o }
        }
    }
}

/// A cell as text: strings bare, floats to 4 decimals, `-` for none.
pub fn text(v: &Json) -> String {
    match v {
        Json::Null => "-".into(),
        Json::String(s) => s.clone(),
        other => metric_text(other),
    }
}

impl RunsTable {
    pub fn header(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// Cells as text: params as written, metrics to 4 decimals, `-` for none.
    pub fn text_rows(&self) -> Vec<Vec<String>> {
        self.rows
            .iter()
            .map(|r| {
                r.iter()
                    .zip(&self.columns)
                    .map(|(v, c)| match (c.kind, v) {
                        (ColumnKind::Metric, _) | (_, Json::Null | Json::String(_)) => text(v),
                        _ => v.to_string(),
                    })
                    .collect()
            })
            .collect()
    }

    pub fn markdown(&self) -> String {
        crate::report::page::markdown_table(&self.header(), &self.text_rows())
    }

    /// CSV keeps full precision and leaves missing cells empty: it is for scripts.
    pub fn csv(&self) -> anyhow::Result<Vec<u8>> {
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|v| match v {
                        Json::Null => String::new(),
                        Json::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .collect();
        crate::report::page::csv_table(&self.header(), &rows)
    }

    /// One object per row, `column: value`.
    pub fn json(&self) -> Json {
        Json::Array(
            self.rows
                .iter()
                .map(|r| {
                    Json::Object(
                        self.columns
                            .iter()
                            .zip(r)
                            .map(|(c, v)| (c.name.clone(), v.clone()))
                            .collect(),
                    )
                })
                .collect(),
        )
    }
}

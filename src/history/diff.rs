//! `runner diff A B`: what differs between two runs (or two stage records): the params
//! with where each value came from, the input hashes, the metrics with their deltas.

use super::{RunPoint, metric_text, when};
use crate::manifest::ParamSource;
use crate::manifest::Params;
use crate::store::runs::{RunLog, StageRun};
use crate::store::{InputRecord, Record};
use serde::Serialize;
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What a `runner diff` argument names.
#[derive(Clone, Debug, PartialEq)]
pub enum Selector {
    /// A run (`3`, `last`), a sweep point (`5/2`), optionally one stage of it (`3:eval`).
    Run {
        id: String,
        variant: Option<usize>,
        stage: Option<String>,
    },
    /// A stage record by (a prefix of) its key.
    Record(String),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let bad = || {
            format!(
                "`{text}` names no run: use a run id (3), `last`, a sweep point (5/2), a stage of one (3:eval) or a record key (8+ hex digits)"
            )
        };
        let (run, stage) = match text.split_once(':') {
            Some((r, s)) if !s.is_empty() => (r, Some(s.to_string())),
            Some(_) => return Err(bad()),
            None => (text, None),
        };
        let (id, variant) = match run.split_once('/') {
            Some((id, v)) => (
                id,
                Some(v.parse::<usize>().ok().filter(|&v| v > 0).ok_or_else(bad)?),
            ),
            None => (run, None),
        };
        let numeric = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
        if stage.is_none()
            && variant.is_none()
            && id.len() >= 8
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && !numeric
        {
            return Ok(Selector::Record(id.to_ascii_lowercase()));
        }
        if numeric || id == "last" {
            Ok(Selector::Run {
                id: id.to_string(),
                variant: variant.map(|v| v - 1),
                stage,
            })
        } else {
            Err(bad())
        }
    }
}

/// One side of a diff: a label and the stages compared.
pub struct Side<'a> {
    pub label: String,
    pub log: Option<&'a RunLog>,
    /// Stage name → view; one unnamed entry when comparing single stages.
    stages: BTreeMap<String, StageView>,
}

impl Side<'_> {
    /// One stage (`3:eval`, a record key) rather than a whole run.
    pub fn single_stage(&self) -> bool {
        self.stages.len() == 1 && self.stages.contains_key("")
    }
}

#[derive(Clone)]
struct StageView {
    key: Option<String>,
    params: Params,
    /// From a run log (a param it does not list has its kind's default); records keep none.
    sources: Option<BTreeMap<String, ParamSource>>,
    inputs: BTreeMap<String, InputRecord>,
    metrics: BTreeMap<String, Json>,
}

impl From<&StageRun> for StageView {
    fn from(s: &StageRun) -> StageView {
        StageView {
            key: s.key.clone(),
            params: s.params.clone(),
            sources: Some(s.sources.clone()),
            inputs: s.inputs.clone(),
            metrics: s.metrics.clone(),
        }
    }
}

impl From<&Record> for StageView {
    fn from(r: &Record) -> StageView {
        StageView {
            key: Some(r.key.clone()),
            params: r.params.clone(),
            sources: None,
            inputs: r.inputs.clone(),
            metrics: r.metrics.clone(),
        }
    }
}

/// Finds what `sel` names among `logs` (newest first) and `records`.
pub fn side<'a>(
    sel: &Selector,
    logs: &'a [RunLog],
    records: &dyn Fn(&str) -> Vec<Record>,
) -> Result<Side<'a>, String> {
    match sel {
        Selector::Record(prefix) => {
            let found = records(prefix);
            match found.as_slice() {
                [r] => Ok(Side {
                    label: format!(
                        "record {} (stage `{}`)",
                        r.key.get(..12).unwrap_or(&r.key),
                        r.stage
                    ),
                    log: None,
                    stages: BTreeMap::from([(String::new(), StageView::from(r))]),
                }),
                [] => Err(format!("no record has a key starting with {prefix}")),
                many => Err(format!(
                    "{} records have keys starting with {prefix}: give more digits",
                    many.len()
                )),
            }
        }
        Selector::Run { id, variant, stage } => {
            let log = if id == "last" {
                logs.first()
            } else {
                logs.iter().find(|l| &l.id == id)
            };
            let Some(log) = log else {
                // Eight or more digits and no such run: a key prefix of digits only.
                if id.len() >= 8 && variant.is_none() && stage.is_none() {
                    return side(&Selector::Record(id.clone()), logs, records);
                }
                return Err(format!(
                    "no run {id} in the run history (`runner runs` lists them)"
                ));
            };
            let variant = match (variant, log.variants.len()) {
                (_, 0) => {
                    return Err(format!(
                        "run {id} was logged before run history recorded params: it cannot be compared"
                    ));
                }
                (None, 1) => 0,
                (None, n) => {
                    return Err(format!(
                        "run {} is a sweep of {n} points: name one, {}/1 to {}/{n}",
                        log.id, log.id, log.id
                    ));
                }
                (Some(v), n) if *v < n => *v,
                (Some(v), n) => {
                    return Err(format!(
                        "run {} has {n} points; there is no {}/{}",
                        log.id,
                        log.id,
                        v + 1
                    ));
                }
            };
            let point = RunPoint {
                log,
                variant: Some(variant),
            };
            let started = when(&log.started);
            match stage {
                None => Ok(Side {
                    label: format!("run {} ({started}, {})", point.id(), log.manifest),
                    log: Some(log),
                    stages: point
                        .stages()
                        .map(|(n, s)| (n.clone(), StageView::from(s)))
                        .collect(),
                }),
                Some(s) => {
                    let run = point.stage(s).ok_or_else(|| {
                        let names: Vec<&str> = point.stages().map(|(n, _)| n.as_str()).collect();
                        format!(
                            "run {} has no stage `{s}`; its stages: {}",
                            point.id(),
                            names.join(", ")
                        )
                    })?;
                    Ok(Side {
                        label: format!("stage `{s}` of run {} ({started})", point.id()),
                        log: Some(log),
                        stages: BTreeMap::from([(String::new(), StageView::from(run))]),
                    })
                }
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RunChange {
    pub what: &'static str,
    pub a: String,
    pub b: String,
}

#[derive(Debug, Serialize)]
pub struct ParamChange {
    /// `None` when two single stages are compared.
    pub stage: Option<String>,
    pub param: String,
    pub a: Option<Json>,
    pub b: Option<Json>,
    pub a_source: Option<String>,
    pub b_source: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct InputChange {
    pub stage: Option<String>,
    pub input: String,
    pub a: Option<InputRecord>,
    pub b: Option<InputRecord>,
}

#[derive(Debug, Serialize)]
pub struct MetricChange {
    pub stage: Option<String>,
    pub metric: String,
    pub a: Option<Json>,
    pub b: Option<Json>,
    /// b − a, when both are numbers.
    pub delta: Option<f64>,
}

/// Stages by whether their keys agree.
#[derive(Debug, Default, Serialize)]
pub struct StageSummary {
    pub same_key: Vec<String>,
    pub different_key: Vec<String>,
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Diff {
    pub a: String,
    pub b: String,
    /// Manifest file, commit, `--set` flags, backend, runner version.
    pub run: Vec<RunChange>,
    pub params: Vec<ParamChange>,
    pub inputs: Vec<InputChange>,
    pub metrics: Vec<MetricChange>,
    pub stages: StageSummary,
}

/// Compares `a` with `b`.
pub fn diff(a: &Side, b: &Side) -> Diff {
    let mut d = Diff {
        a: a.label.clone(),
        b: b.label.clone(),
        run: run_changes(a.log, b.log),
        params: Vec::new(),
        inputs: Vec::new(),
        metrics: Vec::new(),
        stages: StageSummary::default(),
    };
    let names: BTreeSet<&String> = a.stages.keys().chain(b.stages.keys()).collect();
    for name in names {
        let stage = (!name.is_empty()).then(|| name.clone());
        let (sa, sb) = match (a.stages.get(name), b.stages.get(name)) {
            (Some(x), Some(y)) => (x, y),
            (Some(_), None) => {
                d.stages.only_a.push(name.clone());
                continue;
            }
            (None, _) => {
                d.stages.only_b.push(name.clone());
                continue;
            }
        };
        if sa.key.is_some() && sa.key == sb.key {
            d.stages.same_key.push(name.clone());
        } else {
            d.stages.different_key.push(name.clone());
        }
        for p in keys(&sa.params.0, &sb.params.0) {
            let (va, vb) = (sa.params.get(p), sb.params.get(p));
            if va != vb {
                let json = |v: Option<&crate::manifest::value::Value>| {
                    v.and_then(|v| serde_json::to_value(v).ok())
                };
                let source = |s: &StageView, v: Option<_>| {
                    v?;
                    Some(match &s.sources {
                        Some(sources) => sources
                            .get(p)
                            .map_or("kind default".into(), |x| x.to_string()),
                        // A record keeps no sources; only run logs do.
                        None => "unknown (a record)".to_string(),
                    })
                };
                d.params.push(ParamChange {
                    stage: stage.clone(),
                    param: p.clone(),
                    a: json(va),
                    b: json(vb),
                    a_source: source(sa, va),
                    b_source: source(sb, vb),
                });
            }
        }
        for i in keys(&sa.inputs, &sb.inputs) {
            let (ia, ib) = (sa.inputs.get(i), sb.inputs.get(i));
            if ia.map(|x| &x.hash) != ib.map(|x| &x.hash) {
                d.inputs.push(InputChange {
                    stage: stage.clone(),
                    input: i.clone(),
                    a: ia.cloned(),
                    b: ib.cloned(),
                });
            }
        }
        for m in keys(&sa.metrics, &sb.metrics) {
            let (ma, mb) = (sa.metrics.get(m), sb.metrics.get(m));
            if ma != mb {
                let delta = match (ma.and_then(Json::as_f64), mb.and_then(Json::as_f64)) {
                    (Some(x), Some(y)) => Some(y - x),
                    _ => None,
                };
                d.metrics.push(MetricChange {
                    stage: stage.clone(),
                    metric: m.clone(),
                    a: ma.cloned(),
                    b: mb.cloned(),
                    delta,
                });
            }
        }
    }
    d
}

fn keys<'m, V>(a: &'m BTreeMap<String, V>, b: &'m BTreeMap<String, V>) -> BTreeSet<&'m String> {
    a.keys().chain(b.keys()).collect()
}

/// One fact about a run, as text.
type RunField = dyn Fn(&RunLog) -> String;

fn run_changes(a: Option<&RunLog>, b: Option<&RunLog>) -> Vec<RunChange> {
    let (Some(a), Some(b)) = (a, b) else {
        return Vec::new();
    };
    let commit = |l: &RunLog| {
        l.git
            .as_ref()
            .map(|g| format!("{}{}", g.commit, if g.dirty { " (dirty)" } else { "" }))
            .unwrap_or_else(|| "-".into())
    };
    let sets = |l: &RunLog| {
        if l.sets.is_empty() {
            "(none)".to_string()
        } else {
            l.sets.join(" ")
        }
    };
    let fields: [(&'static str, &RunField); 6] = [
        ("manifest", &|l| l.manifest.clone()),
        ("manifest content", &|l| {
            l.manifest_hash.chars().take(12).collect()
        }),
        ("commit", &commit),
        ("--set", &sets),
        ("backend", &|l| l.backend.clone()),
        ("runner version", &|l| l.runner_version.clone()),
    ];
    fields
        .iter()
        .filter_map(|(what, f)| {
            let (x, y) = (f(a), f(b));
            (x != y).then_some(RunChange { what, a: x, b: y })
        })
        .collect()
}

fn qualified(stage: &Option<String>, name: &str) -> String {
    match stage {
        Some(s) => format!("{s}.{name}"),
        None => name.to_string(),
    }
}

fn opt(v: &Option<Json>) -> String {
    match v {
        None => "unset".into(),
        Some(Json::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "a: {}\nb: {}", self.a, self.b)?;
        for c in &self.run {
            writeln!(f, "  {}: {} → {}", c.what, c.a, c.b)?;
        }
        writeln!(f, "\nparams ({})", self.params.len())?;
        for p in &self.params {
            write!(
                f,
                "  {}: {} → {}",
                qualified(&p.stage, &p.param),
                opt(&p.a),
                opt(&p.b)
            )?;
            match (&p.a_source, &p.b_source) {
                (None, None) => writeln!(f)?,
                (x, y) => writeln!(
                    f,
                    "   ({} → {})",
                    x.as_deref().unwrap_or("unset"),
                    y.as_deref().unwrap_or("unset")
                )?,
            }
        }
        writeln!(f, "\ninputs ({})", self.inputs.len())?;
        for i in &self.inputs {
            let side = |r: &Option<InputRecord>| match r {
                Some(r) => format!("{} ({})", &r.hash[..12.min(r.hash.len())], r.source),
                None => "none".into(),
            };
            writeln!(
                f,
                "  {}: {} → {}",
                qualified(&i.stage, &i.input),
                side(&i.a),
                side(&i.b)
            )?;
        }
        writeln!(f, "\nmetrics ({})", self.metrics.len())?;
        for m in &self.metrics {
            let value = |v: &Option<Json>| v.as_ref().map_or("-".into(), metric_text);
            write!(
                f,
                "  {}: {} → {}",
                qualified(&m.stage, &m.metric),
                value(&m.a),
                value(&m.b)
            )?;
            let whole = |v: &Option<Json>| v.as_ref().is_some_and(|v| v.is_i64() || v.is_u64());
            match m.delta {
                Some(d) if whole(&m.a) && whole(&m.b) => writeln!(f, " ({d:+})")?,
                Some(d) => writeln!(f, " ({d:+.4})")?,
                None => writeln!(f)?,
            }
        }
        let s = &self.stages;
        if s.same_key.len() + s.different_key.len() + s.only_a.len() + s.only_b.len() > 1 {
            write!(
                f,
                "\nstages: {} with the same key, {} different",
                s.same_key.len(),
                s.different_key.len()
            )?;
            if !s.different_key.is_empty() {
                write!(f, " ({})", s.different_key.join(", "))?;
            }
            for (what, list) in [("only in a", &s.only_a), ("only in b", &s.only_b)] {
                if !list.is_empty() {
                    write!(f, "; {what}: {}", list.join(", "))?;
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

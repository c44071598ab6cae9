//! From manifests to jobs, and from jobs to cache keys.
//!
//! A job is one stage instance. Variants of a sweep share a job whenever kind, params and
//! inputs (paths, or the same upstream jobs) coincide, so shared stages run once. A job's
//! cache key needs its inputs' content hashes, so it is only known once its upstream jobs
//! are resolved: when one of them has to run, the key is decided after it finishes, and an
//! output that comes out byte-identical gives the same key as before (early cutoff).

use crate::graph::Dag;
use crate::manifest::value::Value;
use crate::manifest::{InputRef, Manifest, Stage};
use crate::store::hash::StatCache;
use crate::store::{InputRecord, ObjectRef, Record, Store, cache_key};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Clone, Debug)]
pub enum JobInput {
    Path(PathBuf),
    Job { job: usize, output: String },
}

pub struct Job {
    pub pipeline: String,
    pub stage: Stage,
    pub inputs: BTreeMap<String, JobInput>,
    /// Structural identity (kind, params, input sources) used to share jobs across variants.
    pub spec: String,
}

impl Job {
    pub fn upstream(&self) -> impl Iterator<Item = usize> + '_ {
        self.inputs.values().filter_map(|i| match i {
            JobInput::Job { job, .. } => Some(*job),
            JobInput::Path(_) => None,
        })
    }
}

/// The grid settings (`stage.param`, value) of one variant.
pub type Settings = Vec<(String, Value)>;

/// One point of a sweep grid (or the single variant of a plain run).
pub struct Variant {
    pub settings: Settings,
    /// Stage name → job index.
    pub stages: BTreeMap<String, usize>,
}

/// Jobs in topological order (a job's upstream always has a smaller index).
pub struct Plan {
    pub jobs: Vec<Job>,
    pub variants: Vec<Variant>,
}

impl Plan {
    /// Builds the jobs of `targets` (and their upstream) for every variant.
    pub fn build(variants: &[(Settings, Manifest)], targets: &[String]) -> Result<Plan, String> {
        let mut plan = Plan {
            jobs: Vec::new(),
            variants: Vec::new(),
        };
        let mut by_spec: HashMap<String, usize> = HashMap::new();
        for (settings, m) in variants {
            let dag = Dag::new(m);
            let mut stages = BTreeMap::new();
            for i in dag.select(targets)? {
                let stage = &m.stages[i];
                let inputs: BTreeMap<String, JobInput> = stage
                    .inputs
                    .iter()
                    .map(|(name, r)| {
                        let ji = match r {
                            InputRef::Path(p) => JobInput::Path(p.clone()),
                            InputRef::Stage { stage, output } => JobInput::Job {
                                job: stages[stage],
                                output: output.clone(),
                            },
                        };
                        (name.clone(), ji)
                    })
                    .collect();
                let spec = spec_hash(&m.name, stage, &inputs, &plan.jobs);
                let id = *by_spec.entry(spec.clone()).or_insert_with(|| {
                    plan.jobs.push(Job {
                        pipeline: m.name.clone(),
                        stage: stage.clone(),
                        inputs,
                        spec,
                    });
                    plan.jobs.len() - 1
                });
                stages.insert(stage.name.clone(), id);
            }
            plan.variants.push(Variant {
                settings: settings.clone(),
                stages,
            });
        }
        Ok(plan)
    }

    /// Jobs that read the output of `job`, directly or not.
    pub fn downstream(&self, job: usize) -> Vec<usize> {
        let mut hit = vec![false; self.jobs.len()];
        hit[job] = true;
        let mut out = Vec::new();
        for (i, j) in self.jobs.iter().enumerate().skip(job + 1) {
            if j.upstream().any(|u| hit[u]) {
                hit[i] = true;
                out.push(i);
            }
        }
        out
    }
}

fn spec_hash(
    pipeline: &str,
    stage: &Stage,
    inputs: &BTreeMap<String, JobInput>,
    jobs: &[Job],
) -> String {
    let inputs: BTreeMap<&str, String> = inputs
        .iter()
        .map(|(k, v)| {
            let s = match v {
                JobInput::Path(p) => format!("path:{}", p.display()),
                JobInput::Job { job, output } => format!("job:{}:{output}", jobs[*job].spec),
            };
            (k.as_str(), s)
        })
        .collect();
    let material = serde_json::json!({
        "pipeline": pipeline,
        "stage": stage.name,
        "kind": stage.kind.name(),
        "params": stage.params,
        "inputs": inputs,
    });
    blake3::hash(material.to_string().as_bytes())
        .to_hex()
        .to_string()
}

/// What a job needs, given what is known about its upstream.
#[derive(Clone, Debug)]
pub enum Resolution {
    /// The key is in the store.
    Cached(Box<Record>),
    /// The key is known and not in the store (or forced).
    Run {
        key: String,
        inputs: BTreeMap<String, InputRecord>,
        reason: String,
    },
    /// Upstream jobs must run first; the key is decided after them.
    Waiting(Vec<usize>),
    /// A file input does not exist or cannot be read.
    BadInput(String),
}

/// Hashes file inputs (once per path per process) and computes keys.
pub struct Resolver<'s> {
    pub store: &'s Store,
    stat: StatCache,
    memo: Mutex<HashMap<PathBuf, Result<InputRecord, String>>>,
}

impl<'s> Resolver<'s> {
    pub fn new(store: &'s Store) -> Self {
        Resolver {
            store,
            stat: StatCache::load(&store.stat_cache_path()),
            memo: Mutex::default(),
        }
    }

    /// Persists the stat cache (only if it changed).
    pub fn save(&self) {
        if let Err(e) = self.stat.save() {
            tracing::warn!("cannot save the stat cache: {e}");
        }
    }

    fn path_input(&self, path: &PathBuf) -> Result<InputRecord, String> {
        if let Some(r) = self.memo.lock().expect("poisoned").get(path) {
            return r.clone();
        }
        let r = self
            .stat
            .hash_path(path)
            .map(|(kind, hash)| InputRecord {
                hash,
                kind,
                source: path.display().to_string(),
            })
            .map_err(|e| format!("cannot read {}: {e}", path.display()));
        self.memo
            .lock()
            .expect("poisoned")
            .insert(path.clone(), r.clone());
        r
    }

    /// The content hashes of a job's inputs, or the upstream jobs not yet resolved.
    pub fn inputs(
        &self,
        plan: &Plan,
        job: usize,
        outputs: &HashMap<usize, BTreeMap<String, ObjectRef>>,
    ) -> Result<BTreeMap<String, InputRecord>, Resolution> {
        let j = &plan.jobs[job];
        let mut waiting: Vec<usize> = j.upstream().filter(|u| !outputs.contains_key(u)).collect();
        if !waiting.is_empty() {
            waiting.sort();
            waiting.dedup();
            return Err(Resolution::Waiting(waiting));
        }
        let mut out = BTreeMap::new();
        for (name, input) in &j.inputs {
            let rec = match input {
                JobInput::Path(p) => self.path_input(p).map_err(|e| {
                    Resolution::BadInput(format!("input `{name}` of stage `{}`: {e}", j.stage.name))
                })?,
                JobInput::Job { job: up, output } => {
                    let o = &outputs[up][output];
                    InputRecord {
                        hash: o.hash.clone(),
                        kind: o.kind,
                        source: format!("{}:{output}", plan.jobs[*up].stage.name),
                    }
                }
            };
            out.insert(name.clone(), rec);
        }
        Ok(out)
    }

    /// Decides whether `job` is cached, must run (and why), or must wait.
    pub fn resolve(
        &self,
        plan: &Plan,
        job: usize,
        outputs: &HashMap<usize, BTreeMap<String, ObjectRef>>,
        force: bool,
    ) -> Resolution {
        let inputs = match self.inputs(plan, job, outputs) {
            Ok(i) => i,
            Err(r) => return r,
        };
        let j = &plan.jobs[job];
        let key = cache_key(
            j.stage.kind.name(),
            j.stage.kind.version(),
            &j.stage.params,
            &inputs,
        );
        if !force && let Some(r) = self.store.record(&key) {
            return Resolution::Cached(Box::new(r));
        }
        let reason = if force {
            "forced".to_string()
        } else if let Some(f) = self.store.failed(&key) {
            format!(
                "previous attempt {:?}: {}",
                f.status,
                f.error.unwrap_or_default()
            )
            .to_lowercase()
        } else {
            self.why_new(j, &inputs)
        };
        Resolution::Run {
            key,
            inputs,
            reason,
        }
    }

    /// Explains a cache miss by comparing with the last run of the same stage name.
    fn why_new(&self, j: &Job, inputs: &BTreeMap<String, InputRecord>) -> String {
        let Some(prev) = self.store.last_run(&j.pipeline, &j.stage.name) else {
            return "new: never run".into();
        };
        let changes = diff(&prev, j, inputs);
        if changes.is_empty() {
            "stale: its earlier result is no longer in the store".into()
        } else {
            format!("stale: {}", changes.join("; "))
        }
    }
}

/// Human-readable differences between a previous run and the job as planned now.
pub fn diff(prev: &Record, j: &Job, inputs: &BTreeMap<String, InputRecord>) -> Vec<String> {
    let mut out = Vec::new();
    if prev.kind != j.stage.kind.name() {
        out.push(format!(
            "kind changed: {} -> {}",
            prev.kind,
            j.stage.kind.name()
        ));
    } else if prev.kind_version != j.stage.kind.version() {
        out.push(format!(
            "kind `{}` implementation changed: version {} -> {}",
            prev.kind,
            prev.kind_version,
            j.stage.kind.version()
        ));
    }
    let names: std::collections::BTreeSet<&String> = prev
        .params
        .0
        .keys()
        .chain(j.stage.params.0.keys())
        .collect();
    for n in names {
        match (prev.params.get(n), j.stage.params.get(n)) {
            (Some(a), Some(b)) if a != b => out.push(format!("param {n} changed: {a} -> {b}")),
            (Some(a), None) => out.push(format!("param {n} removed (was {a})")),
            (None, Some(b)) => out.push(format!("param {n} added: {b}")),
            _ => {}
        }
    }
    let names: std::collections::BTreeSet<&String> =
        prev.inputs.keys().chain(inputs.keys()).collect();
    for n in names {
        match (prev.inputs.get(n), inputs.get(n)) {
            (Some(a), Some(b)) if a.hash != b.hash => out.push(format!(
                "input {n} changed ({}: {} -> {})",
                b.source,
                &a.hash[..12],
                &b.hash[..12]
            )),
            (Some(_), None) => out.push(format!("input {n} removed")),
            (None, Some(_)) => out.push(format!("input {n} added")),
            _ => {}
        }
    }
    out
}

/// Resolves every job without running anything: cached jobs contribute their outputs, the
/// rest are reported as they would be decided now (for `--dry-run`, `status`, `gc`).
pub fn resolve_all(
    plan: &Plan,
    resolver: &Resolver,
    force: &dyn Fn(&Job) -> bool,
) -> Vec<Resolution> {
    let mut outputs = HashMap::new();
    let mut out = Vec::with_capacity(plan.jobs.len());
    for (i, j) in plan.jobs.iter().enumerate() {
        let r = resolver.resolve(plan, i, &outputs, force(j));
        if let Resolution::Cached(rec) = &r {
            outputs.insert(i, rec.outputs.clone());
        }
        out.push(r);
    }
    out
}

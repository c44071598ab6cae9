//! Looking at a pipeline without running it: `status`, `explain`, `dag`, `show`.

use super::*;

/// One stage of the plan as it stands now.
#[derive(serde::Serialize)]
pub(super) struct PlanRow {
    stage: String,
    kind: String,
    state: String,
    why: String,
    /// Known when the stage is cached or its inputs are.
    key: Option<String>,
}

/// The plan as it stands now; `status` also shows running and failed keys.
pub(super) fn plan_rows(
    plan: &Plan,
    store: &Store,
    force: &BTreeSet<String>,
    status: bool,
) -> Vec<PlanRow> {
    let resolver = Resolver::new(store);
    let res = plan::resolve_all(plan, &resolver, &|j| force.contains(&j.stage.name));
    let mut rows = Vec::new();
    for (j, r) in plan.jobs.iter().zip(&res) {
        let (state, why, key) = match r {
            Resolution::Cached(rec) => (
                "cached".to_string(),
                format!("{} finished {}", &rec.key[..12], rec.finished),
                Some(rec.key.clone()),
            ),
            Resolution::Run { key, reason, .. } => {
                let failed = store.failed(key).map(|f| f.status);
                let state = if let Some(job) = status.then(|| slurm_job(store, key)).flatten() {
                    job
                } else if status && store.key_busy(key) {
                    "running".into()
                } else if status && failed == Some(store::RunStatus::Interrupted) {
                    "interrupted (will resume)".into()
                } else if status && failed.is_some() {
                    "failed".into()
                } else if status {
                    "out of date".into()
                } else {
                    "will run".into()
                };
                (state, reason.clone(), Some(key.clone()))
            }
            Resolution::Waiting(ups) => {
                let names: Vec<&str> = ups
                    .iter()
                    .map(|u| plan.jobs[*u].stage.name.as_str())
                    .collect();
                (
                    if status { "out of date" } else { "will run" }.to_string(),
                    format!(
                        "upstream changed ({}); may be cut off if their outputs come out identical",
                        names.join(", ")
                    ),
                    None,
                )
            }
            Resolution::BadInput(msg) => ("error".to_string(), msg.clone(), None),
        };
        rows.push(PlanRow {
            stage: j.stage.name.clone(),
            kind: j.stage.kind.name().to_string(),
            state,
            why,
            key,
        });
    }
    rows
}

pub(super) fn print_plan(plan: &Plan, store: &Store, force: &BTreeSet<String>, status: bool) {
    let mut t = new_table(vec!["stage", "kind", "state", "why"]);
    for r in plan_rows(plan, store, force, status) {
        t.add_row(vec![r.stage, r.kind, r.state, r.why]);
    }
    println!("{t}");
}

/// "slurm job ID STATE (reason)" while a Slurm job for `key` is queued or running.
fn slurm_job(store: &Store, key: &str) -> Option<String> {
    let m = exec::slurm::marker(store, key)?;
    let states = exec::slurm::states([m.job_id.as_str()]).ok()?;
    let s = states.get(&m.job_id).filter(|s| s.active())?;
    Some(match s.reason.as_str() {
        "" | "None" => format!("slurm job {} {}", m.job_id, s.state),
        r => format!("slurm job {} {} ({r})", m.job_id, s.state),
    })
}

pub(super) fn stage_job(plan: &Plan, stage: &str) -> Result<usize> {
    plan.variants[0]
        .stages
        .get(stage)
        .copied()
        .ok_or_else(|| usage(format!("no stage `{stage}`")))
}

/// Why a stage would or would not run (`runner explain`).
#[derive(serde::Serialize)]
struct Explanation {
    stage: String,
    kind: String,
    kind_version: u32,
    /// cached, will run, waiting (for upstream stages) or error.
    state: &'static str,
    key: Option<String>,
    reason: String,
    /// The stage's last run (its finish time and key), when it has one.
    last_run: Option<(String, String)>,
    /// Params and inputs that differ from the last run.
    differences: Vec<String>,
}

pub(super) fn explain(a: ExplainArgs, store_flag: Option<&Path>) -> Result<i32> {
    let (store, plan, job, res) =
        resolve_stage(load(&a.stage.manifest)?, &a.stage.stage, store_flag)?;
    let j = &plan.jobs[job];
    let prev = store.last_run(&j.pipeline, &j.stage.name);
    let mut e = Explanation {
        stage: j.stage.name.clone(),
        kind: j.stage.kind.name().to_string(),
        kind_version: j.stage.kind.version(),
        state: "cached",
        key: None,
        reason: String::new(),
        last_run: prev.as_ref().map(|p| (p.finished.clone(), p.key.clone())),
        differences: Vec::new(),
    };
    match &res[job] {
        Resolution::Cached(rec) => {
            e.key = Some(rec.key.clone());
            e.reason = format!(
                "cached: key {} (finished {}, took {:.1}s); nothing to do",
                rec.key, rec.finished, rec.duration_s
            );
        }
        Resolution::Run {
            key,
            inputs,
            reason,
        } => {
            e.state = "will run";
            e.key = Some(key.clone());
            e.reason = reason.clone();
            if let Some(prev) = &prev {
                e.differences = plan::diff(prev, j, inputs);
            }
        }
        Resolution::Waiting(ups) => {
            let names: Vec<&str> = ups
                .iter()
                .map(|u| plan.jobs[*u].stage.name.as_str())
                .collect();
            e.state = "waiting";
            e.reason = format!(
                "key not yet known: upstream stages {} must run first; it is then decided by their outputs",
                names.join(", ")
            );
            if let Some(prev) = &prev {
                for (n, v) in &j.stage.params.0 {
                    if prev.params.get(n) != Some(v) {
                        e.differences.push(format!(
                            "param {n}: {} -> {v}",
                            prev.params
                                .get(n)
                                .map(|x| x.to_string())
                                .unwrap_or("unset".into())
                        ));
                    }
                }
            }
        }
        Resolution::BadInput(msg) => {
            e.state = "error";
            e.reason = format!("cannot run: {msg}");
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(0);
    }
    println!(
        "stage `{}` (kind `{}` v{})",
        e.stage, e.kind, e.kind_version
    );
    match (e.state, &e.key) {
        ("will run", Some(key)) => println!("will run: key {key}\n{}", e.reason),
        _ => println!("{}", e.reason),
    }
    if e.state == "will run"
        && let Some((finished, key)) = &e.last_run
    {
        println!(
            "compared with the last run ({finished}, key {}):",
            &key[..12]
        );
        if e.differences.is_empty() {
            println!("  no differences in params or inputs");
        }
    }
    for line in &e.differences {
        println!("  {line}");
    }
    Ok(0)
}

pub(super) fn show(a: ShowArgs, store_flag: Option<&Path>) -> Result<i32> {
    let (store, plan, job, res) =
        resolve_stage(load(&a.stage.manifest)?, &a.stage.stage, store_flag)?;
    let j = &plan.jobs[job];
    let (rec, current) = match &res[job] {
        Resolution::Cached(r) => ((**r).clone(), true),
        _ => match store.last_run(&j.pipeline, &j.stage.name) {
            Some(r) => (r, false),
            None => bail!(
                "stage `{}` has never run in {}",
                j.stage.name,
                store.root.display()
            ),
        },
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
        return Ok(0);
    }
    if !current {
        println!("note: this is the last run; the stage is out of date now (see `runner explain`)");
    }
    println!(
        "stage     {} ({} v{})",
        rec.stage, rec.kind, rec.kind_version
    );
    println!("key       {}", rec.key);
    println!(
        "status    {:?}{}",
        rec.status,
        rec.error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    println!(
        "ran       {} → {} ({:.1}s{}) on {}{}",
        rec.started,
        rec.finished,
        rec.duration_s,
        rec.peak_rss_bytes
            .map(|b| format!(", peak memory {}", human_bytes(b)))
            .unwrap_or_default(),
        rec.host,
        if rec.resumed { ", resumed" } else { "" }
    );
    println!("log       {}", store.root.join(&rec.log).display());
    println!("params");
    for (k, v) in &rec.params.0 {
        println!("  {k} = {v}");
    }
    println!("inputs");
    for (k, v) in &rec.inputs {
        println!("  {k}: {} ({})", v.source, &v.hash[..12]);
    }
    println!("outputs");
    for (k, o) in &rec.outputs {
        println!(
            "  {k}: {} ({})",
            store.object_path(&o.hash).display(),
            human_bytes(o.bytes)
        );
    }
    if !rec.metrics.is_empty() {
        println!("metrics");
        for (k, v) in &rec.metrics {
            println!("  {k} = {v}");
        }
    }
    // Training stages log one JSON line per (mini-)epoch: show them as a table.
    if let Some(o) = rec.outputs.get("metrics.jsonl") {
        let text = std::fs::read_to_string(store.object_path(&o.hash)).unwrap_or_default();
        if let Some(t) = jsonl_table(&text) {
            println!("training log (metrics.jsonl)\n{t}");
        }
    }
    Ok(0)
}

/// A table of the numeric and boolean fields of JSON lines (nested keys joined by `.`).
pub(super) fn jsonl_table(text: &str) -> Option<Table> {
    fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&key, v, out);
                }
            }
            serde_json::Value::Number(n) => out.push((
                prefix.to_string(),
                match (n.as_u64(), n.as_f64()) {
                    (Some(i), _) => i.to_string(),
                    (_, Some(f)) => format!("{f:.4}"),
                    _ => n.to_string(),
                },
            )),
            serde_json::Value::Bool(b) => out.push((prefix.to_string(), b.to_string())),
            _ => {}
        }
    }
    // Bookkeeping fields that would only widen the table.
    const SKIP: &[&str] = &["steps", "loss.sign", "loss.metric", "accuracy.images"];
    let rows: Vec<Vec<(String, String)>> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let mut out = Vec::new();
            leaves("", &v, &mut out);
            out.retain(|(k, _)| !SKIP.contains(&k.as_str()));
            out
        })
        .collect();
    let header: Vec<String> = rows.first()?.iter().map(|(k, _)| k.clone()).collect();
    let mut t = new_table(header.iter().map(String::as_str).collect());
    for r in &rows {
        t.add_row(
            header
                .iter()
                .map(|h| {
                    r.iter()
                        .find(|(k, _)| k == h)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>(),
        );
    }
    Some(t)
}

/// Plans `stage` (and its upstream) of `m` without running anything: the store, the plan,
/// the stage's job index and every job's resolution.
pub(super) fn resolve_stage(
    m: Manifest,
    stage: &str,
    store_flag: Option<&Path>,
) -> Result<(Store, Plan, usize, Vec<Resolution>)> {
    let store = read_store(&m, store_flag)?;
    let plan = Plan::build(&[(vec![], m)], &[stage.to_string()]).map_err(usage)?;
    let job = stage_job(&plan, stage)?;
    let res = plan::resolve_all(&plan, &Resolver::new(&store), &|_| false);
    Ok((store, plan, job, res))
}

/// The record of `stage`'s current, finished run (and the store holding it).
pub(super) fn finished_record(
    manifest_path: &Path,
    sets: &[Override],
    stage: &str,
    store_flag: Option<&Path>,
) -> Result<(store::Record, Store)> {
    let m = manifest::load(manifest_path, sets, stages::kinds())?;
    let (store, _, job, mut res) = resolve_stage(m, stage, store_flag)?;
    match res.swap_remove(job) {
        Resolution::Cached(r) => Ok((*r, store)),
        _ => bail!(
            "stage `{stage}` has no finished result for the manifest as it is now (with these --set values); run `runner run {} {stage}` first",
            manifest_path.display()
        ),
    }
}

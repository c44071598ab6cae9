//! The child side of stage execution (`runner __exec-stage`): lock the key, run the
//! stage in its work dir, move outputs into the store, write the record last.

use super::context::{Event, Interrupted, Placement, StageContext, send};
use super::kind::Registry;
use crate::manifest::Params;
use crate::store::{InputRecord, Record, RunStatus, Store, hostname, now_rfc3339, remove_tree};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// What the parent tells the child to do (JSON, on stdin or in a file).
#[derive(Debug, Serialize, Deserialize)]
pub struct JobSpec {
    pub pipeline: String,
    pub stage: String,
    pub kind: String,
    pub kind_version: u32,
    pub params: Params,
    pub inputs: BTreeMap<String, InputRecord>,
    pub input_paths: BTreeMap<String, PathBuf>,
    pub key: String,
    pub force: bool,
    pub placement: Placement,
}

/// Exit code of a child that stopped on request (like a shell's 128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Runs the stage `spec_path` (else stdin) describes. SIGINT and SIGTERM stop it at a
/// safe point; so does SIGUSR1, which a Slurm job gets shortly before its time limit
/// (`--signal=B:USR1@…`): the job then requeues itself and resumes where it stopped.
pub fn main(store_root: PathBuf, spec_path: Option<PathBuf>, registry: Registry) -> i32 {
    let interrupted = Arc::new(AtomicBool::new(false));
    let out_of_time = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR1,
    ] {
        let _ = signal_hook::flag::register(sig, interrupted.clone());
    }
    let _ = signal_hook::flag::register(signal_hook::consts::SIGUSR1, out_of_time.clone());
    let from = spec_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "stdin".into());
    let spec: JobSpec = match read_spec(spec_path.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: bad job spec in {from}: {e:#}");
            return 2;
        }
    };
    match run(&store_root, spec, registry, interrupted) {
        Ok(()) => 0,
        Err(e) if e.is::<Interrupted>() => {
            if out_of_time.load(std::sync::atomic::Ordering::Relaxed) {
                requeue_self();
            }
            eprintln!("stage interrupted; its work dir is kept for resume");
            EXIT_INTERRUPTED
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn read_spec(path: Option<&std::path::Path>) -> Result<JobSpec> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)?,
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
    };
    Ok(serde_json::from_str(&text)?)
}

/// This process's peak resident set size so far (`getrusage`; a stage process runs one
/// stage, so it is the stage's).
fn peak_rss_bytes() -> Option<u64> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let max = u64::try_from(usage.ru_maxrss).ok()?;
    // Linux and the BSDs count kilobytes, macOS bytes.
    Some(if cfg!(target_os = "macos") {
        max
    } else {
        max * 1024
    })
}

/// Puts this Slurm job back in the queue (its time is nearly up; the stage resumes from
/// its work dir when the job runs again).
fn requeue_self() {
    let Ok(id) = std::env::var("SLURM_JOB_ID") else {
        return;
    };
    match std::process::Command::new("scontrol")
        .args(["requeue", &id])
        .status()
    {
        Ok(s) if s.success() => eprintln!("time limit near: Slurm job {id} requeued itself"),
        Ok(s) => eprintln!("time limit near: `scontrol requeue {id}` failed ({s})"),
        Err(e) => eprintln!("time limit near: cannot run scontrol: {e}"),
    }
}

fn run(
    store_root: &std::path::Path,
    spec: JobSpec,
    registry: Registry,
    interrupted: Arc<AtomicBool>,
) -> Result<()> {
    let store = Store::open(store_root)?;
    let kind = registry
        .find(&spec.kind)
        .ok_or_else(|| anyhow!("unknown stage kind `{}`", spec.kind))?;
    if kind.version() != spec.kind_version {
        bail!(
            "stage kind `{}` is version {} here but the plan expected {}",
            spec.kind,
            kind.version(),
            spec.kind_version
        );
    }
    let (_lock, waited) = match store.try_lock_key(&spec.key)? {
        Some(lock) => (lock, false),
        None => {
            send(&Event::Waiting);
            (store.lock_key(&spec.key)?, true)
        }
    };
    if (waited || !spec.force) && store.record(&spec.key).is_some() {
        tracing::info!(
            "key {} was computed by another runner; reusing it",
            spec.key
        );
        send(&Event::Done { reused: true });
        return Ok(());
    }

    let work = store.work_dir(&spec.key);
    let resumed = work.exists()
        && std::fs::read_dir(&work)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
    std::fs::create_dir_all(&work)
        .with_context(|| format!("cannot create work dir {}", work.display()))?;
    if resumed {
        let removed = crate::atomic::remove_leftovers(&work)
            .with_context(|| format!("cannot clean the work dir {}", work.display()))?;
        if removed > 0 {
            tracing::info!("removed {removed} half-written files of the interrupted attempt");
        }
    }
    tracing::info!(
        stage = %spec.stage, key = %spec.key, resumed,
        "running in {}", work.display()
    );
    let started = now_rfc3339();
    let t0 = Instant::now();
    let mut ctx = StageContext {
        stage: spec.stage.clone(),
        key: spec.key.clone(),
        params: spec.params.clone(),
        inputs: spec.input_paths.clone(),
        sources: spec
            .inputs
            .iter()
            .map(|(name, rec)| (name.clone(), rec.source.clone()))
            .collect(),
        work_dir: work.clone(),
        resumed,
        log_path: store.root.join(store.log_rel(&spec.key)),
        placement: spec.placement,
        metrics: BTreeMap::new(),
        interrupted,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kind.run(&mut ctx)))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(anyhow!("stage panicked: {msg}"))
        });
    let outputs = result.and_then(|()| {
        let mut outs = BTreeMap::new();
        for name in kind.outputs(&spec.params) {
            let path = ctx.output_path(&name);
            if std::fs::symlink_metadata(&path).is_err() {
                bail!(
                    "stage did not produce its declared output `{name}` ({})",
                    path.display()
                );
            }
            outs.insert(name, store.commit_object(&path)?);
        }
        Ok(outs)
    });
    let (status, error, outputs) = match outputs {
        Ok(o) => (RunStatus::Ok, None, o),
        Err(e) if e.is::<Interrupted>() => (
            RunStatus::Interrupted,
            Some("interrupted".to_string()),
            BTreeMap::new(),
        ),
        Err(e) => (RunStatus::Failed, Some(format!("{e:#}")), BTreeMap::new()),
    };
    let record = Record {
        key: spec.key.clone(),
        pipeline: spec.pipeline,
        stage: spec.stage,
        kind: spec.kind,
        kind_version: spec.kind_version,
        params: spec.params,
        inputs: spec.inputs,
        outputs,
        metrics: std::mem::take(&mut ctx.metrics),
        status: status.clone(),
        error: error.clone(),
        started,
        finished: now_rfc3339(),
        duration_s: t0.elapsed().as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(),
        resumed,
        runner_version: env!("CARGO_PKG_VERSION").to_string(),
        host: hostname(),
        pid: std::process::id(),
        log: store.log_rel(&spec.key),
    };
    store.write_record(&record)?;
    match status {
        RunStatus::Ok => {
            remove_tree(&work)?;
            send(&Event::Done { reused: false });
            Ok(())
        }
        RunStatus::Interrupted => Err(Interrupted.into()),
        RunStatus::Failed => Err(anyhow!(error.unwrap_or_default())),
    }
}

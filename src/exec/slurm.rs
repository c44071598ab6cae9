//! Runs each stage as a Slurm batch job: `sbatch` submits `runner __exec-stage` against
//! the same store (on a filesystem every node mounts), one poller thread follows the jobs
//! with `squeue` and tails their event files, `scancel` stops the jobs this runner
//! submitted. Per key, `store/slurm/<key>/` holds the job's spec, its batch script, the
//! marker of the last submission (`job.json`) and one event file per job id.
//!
//! A key is submitted at most once at a time, across runners on any node: submission
//! happens under the key's submit lock (flock on the shared store), and a runner that
//! finds the marker's job still queued or running follows that job instead of submitting.

use super::context::Event;
use super::launcher::{Exit, Launch, Launcher, Report, open_log};
use crate::manifest::{ClusterRequest, SlurmConfig};
use crate::store::{Store, hostname, now_rfc3339};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Seconds of warning before the time limit: Slurm sends the job USR1, the stage saves
/// its state and requeues itself.
const TIME_LIMIT_WARNING_S: u32 = 120;

/// Polls in a row a job may be missing from `squeue` before it counts as gone (a job
/// just submitted can be briefly unknown to a busy controller).
const MISSING_POLLS: u32 = 3;

/// Where a submitted job was recorded (`store/slurm/<key>/job.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Marker {
    pub job_id: String,
    pub submitted: String,
    /// The runner that submitted it.
    pub host: String,
    pub pid: u32,
}

/// A job's state as `squeue` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobState {
    pub state: String,
    pub reason: String,
}

impl JobState {
    /// Still queued or running (it may yet run the stage).
    pub fn active(&self) -> bool {
        !TERMINAL.contains(&self.state.as_str())
    }

    fn started(&self) -> bool {
        matches!(
            self.state.as_str(),
            "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "SUSPENDED"
        )
    }
}

const TERMINAL: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "SPECIAL_EXIT",
    "REVOKED",
];

/// The directory of `key`'s Slurm files.
pub fn job_dir(store: &Store, key: &str) -> PathBuf {
    store.root.join("slurm").join(key)
}

/// The last job submitted for `key`, if any.
pub fn marker(store: &Store, key: &str) -> Option<Marker> {
    let text = std::fs::read(job_dir(store, key).join("job.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The states of `ids` that Slurm still knows (finished jobs are forgotten after
/// `MinJobAge`; an unknown id is simply absent).
pub fn states<'a>(ids: impl IntoIterator<Item = &'a str>) -> Result<HashMap<String, JobState>> {
    let ids: Vec<&str> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%i|%T|%r", "--jobs"])
        .arg(ids.join(","))
        .output()
        .context("cannot run squeue")?;
    // squeue fails when every listed id is unknown to it: that is "none active".
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Invalid job id") {
            return Ok(HashMap::new());
        }
        bail!("squeue failed: {}", err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut f = line.trim().splitn(3, '|');
            let id = f.next()?.to_string();
            let state = f.next()?.to_string();
            let reason = f.next().unwrap_or("").to_string();
            Some((id, JobState { state, reason }))
        })
        .collect())
}

/// The `sbatch` arguments of one stage's job (before the script): the executor's
/// defaults, then the stage's own request.
fn request_args(config: &SlurmConfig, gpus: u32, cluster: &ClusterRequest) -> Vec<String> {
    let mut args = Vec::new();
    let mut push = |flag: &str, v: &Option<String>| {
        if let Some(v) = v {
            args.push(format!("--{flag}={v}"));
        }
    };
    push("partition", &config.partition);
    push("account", &config.account);
    push("qos", &config.qos);
    push(
        "time",
        &cluster.time.clone().or_else(|| config.time.clone()),
    );
    push("cpus-per-task", &cluster.cpus.map(|c| c.to_string()));
    push("mem", &cluster.mem);
    if gpus > 0 {
        args.push(format!("--gres=gpu:{gpus}"));
    }
    args.extend(config.extra_args.iter().cloned());
    args
}

/// One stage's cluster request, for [`SlurmLauncher::check`].
pub struct Request<'a> {
    pub stage: &'a str,
    pub gpus: u32,
    pub cluster: &'a ClusterRequest,
}

/// Submits stages as Slurm jobs; see the module docs.
pub struct SlurmLauncher {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    config: SlurmConfig,
    /// The `runner` the jobs run.
    exe: PathBuf,
    jobs: Mutex<HashMap<usize, Tracked>>,
    poller_started: AtomicBool,
    stop: AtomicBool,
}

/// What [`Shared::submit`] found or did.
enum Submitted {
    /// This runner submitted job `id`.
    Ours(String),
    /// Another runner's job is queued or running for the key; this one follows it.
    Theirs(String),
    /// The key's record exists already.
    Computed,
}

struct Tracked {
    reports: Sender<(usize, Report)>,
    /// `None` while the job is being submitted.
    slurm_id: Option<String>,
    events: PathBuf,
    /// Bytes of the event file already read.
    offset: u64,
    started: bool,
    /// Submitted by this runner (else another runner's job, followed, never cancelled).
    owned: bool,
    cancel_requested: bool,
    missing: u32,
}

impl Tracked {
    fn report(&self, job: usize, r: Report) {
        let _ = self.reports.send((job, r));
    }
}

impl SlurmLauncher {
    /// Fails when Slurm's commands are not on PATH.
    pub fn new(store: &Store, config: SlurmConfig) -> Result<SlurmLauncher> {
        for tool in ["sbatch", "squeue", "scancel"] {
            if which(tool).is_none() {
                bail!(
                    "--executor slurm needs `{tool}` on PATH, and it is not there; run on a Slurm login node or load Slurm's module (e.g. `module load slurm`)"
                );
            }
        }
        let exe = match &config.runner {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("cannot find this runner's binary")?,
        };
        Ok(SlurmLauncher {
            shared: Arc::new(Shared {
                store: store.clone(),
                config,
                exe,
                jobs: Mutex::default(),
                poller_started: AtomicBool::new(false),
                stop: AtomicBool::new(false),
            }),
        })
    }

    /// Asks Slurm (`sbatch --test-only`) whether it would accept each distinct request,
    /// before anything is submitted; a refusal names the stages and Slurm's message.
    pub fn check(&self, requests: &[Request]) -> Result<()> {
        let mut by_args: BTreeMap<Vec<String>, Vec<&str>> = BTreeMap::new();
        for r in requests {
            by_args
                .entry(request_args(&self.shared.config, r.gpus, r.cluster))
                .or_default()
                .push(r.stage);
        }
        let mut refused = Vec::new();
        for (args, stages) in &by_args {
            let out = Command::new("sbatch")
                .arg("--test-only")
                .args(args)
                .arg(format!("--wrap={}", "true"))
                .output()
                .context("cannot run sbatch")?;
            if !out.status.success() {
                let msg = String::from_utf8_lossy(&out.stderr);
                let msg = msg.trim().trim_start_matches("sbatch: error: ");
                refused.push(format!(
                    "  stage{} {}: Slurm refuses `sbatch {}`: {msg}",
                    if stages.len() > 1 { "s" } else { "" },
                    stages.join(", "),
                    args.join(" ")
                ));
            }
        }
        if !refused.is_empty() {
            bail!(
                "Slurm would not accept these jobs; nothing was submitted:\n{}\n  = hint: check [executor.slurm] and the stages' resources (cpus, mem, time, gpu) against `sinfo`",
                refused.join("\n")
            );
        }
        Ok(())
    }

    fn start_poller(&self) {
        if self.shared.poller_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = self.shared.clone();
        std::thread::spawn(move || shared.poll_loop());
    }
}

impl Drop for SlurmLauncher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

impl Launcher for SlurmLauncher {
    fn launch(&self, job: usize, launch: Launch, reports: Sender<(usize, Report)>) {
        self.shared.jobs.lock().expect("job table").insert(
            job,
            Tracked {
                reports: reports.clone(),
                slurm_id: None,
                events: PathBuf::new(),
                offset: 0,
                started: false,
                owned: true,
                cancel_requested: false,
                missing: 0,
            },
        );
        self.start_poller();
        let shared = self.shared.clone();
        std::thread::spawn(move || {
            let submitted = shared.submit(&launch);
            let mut jobs = shared.jobs.lock().expect("job table");
            let Some(t) = jobs.get_mut(&job) else {
                return;
            };
            let (id, owned) = match submitted {
                Ok(Submitted::Ours(id)) => (id, true),
                Ok(Submitted::Theirs(id)) => (id, false),
                Ok(Submitted::Computed) => {
                    t.report(job, Report::Started);
                    t.report(job, Report::Event(Event::Done { reused: true }));
                    t.report(job, Report::Exited(Exit::code(Some(0))));
                    jobs.remove(&job);
                    return;
                }
                Err(e) => {
                    t.report(job, Report::NotStarted(format!("{e:#}")));
                    jobs.remove(&job);
                    return;
                }
            };
            t.events = job_dir(&shared.store, &launch.spec.key).join(format!("{id}.events"));
            t.slurm_id = Some(id.clone());
            t.owned = owned;
            if !owned {
                t.report(job, Report::Event(Event::Waiting));
            }
            if t.cancel_requested {
                if owned {
                    scancel(&id);
                } else {
                    stop_following(&mut jobs, job);
                }
            }
        });
    }

    fn cancel(&self, job: usize) {
        let mut jobs = self.shared.jobs.lock().expect("job table");
        let Some(t) = jobs.get_mut(&job) else {
            return;
        };
        t.cancel_requested = true;
        match (&t.slurm_id, t.owned) {
            (Some(id), true) => scancel(id),
            // Another runner's job goes on; this runner only stops following it.
            (Some(_), false) => {
                t.report(
                    job,
                    Report::Exited(Exit::code(Some(super::child::EXIT_INTERRUPTED))),
                );
                jobs.remove(&job);
            }
            // Being submitted: cancelled as soon as its id is known.
            (None, _) => {}
        }
    }
}

impl Shared {
    /// Submits `launch` unless its key is already computed or a job for it is already
    /// queued or running.
    fn submit(&self, launch: &Launch) -> Result<Submitted> {
        let spec = &launch.spec;
        let dir = job_dir(&self.store, &spec.key);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let lock_path = dir.join("submit.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        lock.lock().with_context(|| {
            format!(
                "cannot lock {} (does the shared filesystem support flock?)",
                lock_path.display()
            )
        })?;
        // Another runner's job may have finished it since this runner resolved the key.
        if !spec.force && self.store.record(&spec.key).is_some() {
            return Ok(Submitted::Computed);
        }
        if let Some(m) = marker(&self.store, &spec.key)
            && states([m.job_id.as_str()])?
                .get(&m.job_id)
                .is_some_and(JobState::active)
        {
            return Ok(Submitted::Theirs(m.job_id));
        }
        let spec_path = dir.join("spec.json");
        crate::atomic::write_json(&spec_path, spec)
            .with_context(|| format!("cannot write {}", spec_path.display()))?;
        let script = dir.join("job.sh");
        let body = format!(
            "#!/bin/sh\n# Stage `{}` of pipeline `{}` (key {}), written by runner.\nexec {} --store {} __exec-stage --spec {}\n",
            spec.stage,
            spec.pipeline,
            spec.key,
            shell_quote(&self.exe),
            shell_quote(&self.store.root),
            shell_quote(&spec_path),
        );
        crate::atomic::write(&script, body.as_bytes())
            .with_context(|| format!("cannot write {}", script.display()))?;
        let log = self.store.root.join(self.store.log_rel(&spec.key));
        drop(
            open_log(&log, spec)
                .with_context(|| format!("cannot open the stage log {}", log.display()))?,
        );
        let out = Command::new("sbatch")
            .arg("--parsable")
            .arg(format!("--job-name={}/{}", spec.pipeline, spec.stage))
            .arg(format!("--chdir={}", self.store.root.display()))
            .arg(format!("--output={}", dir.join("%j.events").display()))
            .arg(format!("--error={}", log.display()))
            .arg("--open-mode=append")
            .arg("--requeue")
            .arg(format!("--signal=B:USR1@{TIME_LIMIT_WARNING_S}"))
            .args(request_args(&self.config, launch.gpus, &launch.cluster))
            .arg(&script)
            .output()
            .context("cannot run sbatch")?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            return Err(anyhow!(
                "Slurm refused the job: {}",
                msg.trim().trim_start_matches("sbatch: error: ")
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = stdout.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
            bail!("sbatch printed no job id (stdout: {:?})", stdout.trim());
        }
        let m = Marker {
            job_id: id.clone(),
            submitted: now_rfc3339(),
            host: hostname(),
            pid: std::process::id(),
        };
        let marker_path = dir.join("job.json");
        crate::atomic::write_json(&marker_path, &m)
            .with_context(|| format!("cannot write {}", marker_path.display()))?;
        drop(lock);
        Ok(Submitted::Ours(id))
    }

    fn poll_loop(&self) {
        let interval = Duration::from_secs_f64(self.config.poll_seconds);
        while !self.stop.load(Ordering::SeqCst) {
            self.poll_once();
            let mut slept = Duration::ZERO;
            while slept < interval && !self.stop.load(Ordering::SeqCst) {
                let step = Duration::from_millis(50).min(interval - slept);
                std::thread::sleep(step);
                slept += step;
            }
        }
    }

    /// One round: the states of every followed job, their new events, and the end of
    /// those that finished.
    fn poll_once(&self) {
        let ids: BTreeSet<String> = {
            let jobs = self.jobs.lock().expect("job table");
            jobs.values().filter_map(|t| t.slurm_id.clone()).collect()
        };
        if ids.is_empty() {
            return;
        }
        // A controller that does not answer is asked again next round.
        let Ok(states) = states(ids.iter().map(String::as_str)) else {
            return;
        };
        let mut jobs = self.jobs.lock().expect("job table");
        let mut ended = Vec::new();
        for (&job, t) in jobs.iter_mut() {
            let Some(id) = t.slurm_id.clone() else {
                continue;
            };
            let state = states.get(&id);
            if state.is_some_and(JobState::started) && !t.started {
                t.started = true;
                t.report(job, Report::Started);
            }
            self.forward_events(job, t);
            let exit = match state {
                Some(s) if s.active() => {
                    t.missing = 0;
                    continue;
                }
                Some(s) => exit_of(&id, s, t.cancel_requested),
                None => {
                    t.missing += 1;
                    if t.missing < MISSING_POLLS {
                        continue;
                    }
                    Exit {
                        code: None,
                        cause: Some(format!(
                            "Slurm job {id} is no longer known to squeue and left no record"
                        )),
                    }
                }
            };
            if !t.started {
                t.report(job, Report::Started);
            }
            if !t.owned {
                t.report(job, Report::Event(Event::Done { reused: true }));
            }
            t.report(job, Report::Exited(exit));
            ended.push(job);
        }
        for job in ended {
            jobs.remove(&job);
        }
    }

    /// Sends the complete event lines the job wrote since the last round.
    fn forward_events(&self, job: usize, t: &mut Tracked) {
        let Ok(mut f) = File::open(&t.events) else {
            return;
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(t.offset)).is_err() || f.read_to_end(&mut buf).is_err() {
            return;
        }
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        t.offset += complete as u64;
        for line in String::from_utf8_lossy(&buf[..complete]).lines() {
            let Ok(ev) = serde_json::from_str::<Event>(line) else {
                continue;
            };
            // Another runner's job: this one reuses what it computes (reported at the end).
            if !t.owned && matches!(ev, Event::Done { .. }) {
                continue;
            }
            t.report(job, Report::Event(ev));
        }
    }
}

/// How a job that Slurm says has ended ended: completed, cancelled by this runner, or a
/// cause that fails the stage (named with the job id, state and reason).
fn exit_of(id: &str, s: &JobState, cancelled_by_us: bool) -> Exit {
    match s.state.as_str() {
        "COMPLETED" => Exit::code(Some(0)),
        "CANCELLED" if cancelled_by_us => Exit::code(Some(super::child::EXIT_INTERRUPTED)),
        state => {
            let reason = match s.reason.as_str() {
                "" | "None" => String::new(),
                r => format!(" ({r})"),
            };
            Exit {
                code: None,
                cause: Some(format!("Slurm job {id} ended {state}{reason}")),
            }
        }
    }
}

/// Stops following another runner's job (which goes on): to this runner it was interrupted.
fn stop_following(jobs: &mut HashMap<usize, Tracked>, job: usize) {
    if let Some(t) = jobs.remove(&job) {
        t.report(
            job,
            Report::Exited(Exit::code(Some(super::child::EXIT_INTERRUPTED))),
        );
    }
}

fn scancel(id: &str) {
    if let Err(e) = Command::new("scancel").arg(id).status() {
        tracing::warn!("cannot run scancel {id}: {e}");
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// `path` as one word for `sh`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_args_take_the_stage_request_over_the_defaults() {
        let config = SlurmConfig {
            partition: Some("gpu".into()),
            time: Some("1-00:00:00".into()),
            extra_args: vec!["--constraint=a100".into()],
            ..SlurmConfig::default()
        };
        let stage = ClusterRequest {
            cpus: Some(8),
            mem: Some("32G".into()),
            time: Some("12:00:00".into()),
        };
        assert_eq!(
            request_args(&config, 1, &stage),
            [
                "--partition=gpu",
                "--time=12:00:00",
                "--cpus-per-task=8",
                "--mem=32G",
                "--gres=gpu:1",
                "--constraint=a100"
            ]
        );
        assert_eq!(
            request_args(&config, 0, &ClusterRequest::default()),
            ["--partition=gpu", "--time=1-00:00:00", "--constraint=a100"]
        );
    }

    #[test]
    fn ended_jobs_name_their_state() {
        let s = |state: &str, reason: &str| JobState {
            state: state.into(),
            reason: reason.into(),
        };
        assert_eq!(exit_of("7", &s("COMPLETED", "None"), false).code, Some(0));
        let mine = exit_of("7", &s("CANCELLED", "None"), true);
        assert_eq!((mine.code, mine.cause), (Some(130), None));
        assert_eq!(
            exit_of("7", &s("CANCELLED", "None"), false).cause.unwrap(),
            "Slurm job 7 ended CANCELLED"
        );
        assert_eq!(
            exit_of("7", &s("OUT_OF_MEMORY", "OutOfMemory"), false)
                .cause
                .unwrap(),
            "Slurm job 7 ended OUT_OF_MEMORY (OutOfMemory)"
        );
        assert!(s("PENDING", "Priority").active() && !s("TIMEOUT", "").active());
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}

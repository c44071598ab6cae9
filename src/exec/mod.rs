//! Local execution: a scheduler that runs ready jobs in parallel (bounded by `--jobs` and
//! resource slots), each in a child process of this binary, with progress bars, per-stage
//! logs, clean stop on SIGINT/SIGTERM and a summary.

pub mod child;
pub mod context;
pub mod plan;

use crate::store::{Record, RunStatus, Store, now_rfc3339};
use context::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use plan::{Plan, Resolution, Resolver};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Makes `command`'s process get SIGTERM when the thread that spawned it dies, so killing
/// `runner` (even with -9) stops its stages, which then keep their work dirs for resume.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the new process.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub struct RunOptions {
    pub jobs: usize,
    /// Stage names to rerun even when cached.
    pub force: BTreeSet<String>,
    pub keep_going: bool,
    /// Resource slot limits (`gpu` and any declared by the pipeline).
    pub resources: BTreeMap<String, u32>,
    /// Tensor backend the stages use (passed to each stage process).
    pub backend: crate::backend::Backend,
}

#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    Cached,
    Ran {
        resumed: bool,
    },
    /// Another runner computed it while this one waited for the key's lock.
    Reused,
    Failed(String),
    Interrupted,
    /// Not run because an upstream job failed.
    Skipped(String),
    /// Not started because the run stopped early.
    NotRun,
}

impl JobState {
    pub fn ok(&self) -> bool {
        matches!(
            self,
            JobState::Cached | JobState::Ran { .. } | JobState::Reused
        )
    }
}

pub struct Outcome {
    pub state: JobState,
    pub key: Option<String>,
    pub duration: Option<Duration>,
    pub record: Option<Record>,
}

enum Msg {
    Started(usize, u32),
    Event(usize, Event),
    Exited(usize, Option<i32>),
}

struct Running {
    key: String,
    pid: Option<u32>,
    bar: ProgressBar,
    started: Instant,
    resources: BTreeMap<String, u32>,
    reused: bool,
}

/// Runs `plan` to completion (or first failure, or interrupt) and returns one outcome per
/// job. Jobs already in the store are not run; shared jobs run once.
pub fn execute(
    plan: &Plan,
    store: &Store,
    resolver: &Resolver,
    opts: &RunOptions,
    show_progress: bool,
) -> Vec<Outcome> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping exits at once.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, interrupted.clone());
        let _ = signal_hook::flag::register(sig, interrupted.clone());
    }
    let multi = MultiProgress::with_draw_target(if show_progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let say = |line: String| {
        if show_progress {
            multi.suspend(|| eprintln!("{line}"));
        }
    };

    let n = plan.jobs.len();
    let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
    let mut outputs = HashMap::new();
    let mut running: HashMap<usize, Running> = HashMap::new();
    let mut used: BTreeMap<String, u32> = BTreeMap::new();
    let mut stopping = false;
    let (tx, rx) = mpsc::channel::<Msg>();

    loop {
        if interrupted.load(Ordering::Relaxed) && !stopping {
            stopping = true;
            say("stopping: waiting for running stages to save their state (press Ctrl-C again to abort)".into());
            for r in running.values() {
                if let Some(pid) = r.pid {
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
            }
        }
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..n {
                if outcomes[i].is_some() || running.contains_key(&i) {
                    continue;
                }
                let job = &plan.jobs[i];
                if let Some(bad) = job
                    .upstream()
                    .find(|u| outcomes[*u].as_ref().is_some_and(|o| !o.state.ok()))
                {
                    outcomes[i] = Some(Outcome {
                        state: JobState::Skipped(plan.jobs[bad].stage.name.clone()),
                        key: None,
                        duration: None,
                        record: None,
                    });
                    progressed = true;
                    continue;
                }
                if stopping || job.upstream().any(|u| !outputs.contains_key(&u)) {
                    continue;
                }
                match resolver.resolve(plan, i, &outputs, opts.force.contains(&job.stage.name)) {
                    Resolution::Cached(r) => {
                        outputs.insert(i, r.outputs.clone());
                        let _ = store.set_ref(&job.pipeline, &job.stage.name, &r.key);
                        outcomes[i] = Some(Outcome {
                            state: JobState::Cached,
                            key: Some(r.key.clone()),
                            duration: None,
                            record: Some(*r),
                        });
                        progressed = true;
                    }
                    Resolution::BadInput(msg) => {
                        say(format!("✗ {}: {msg}", job.stage.name));
                        outcomes[i] = Some(Outcome {
                            state: JobState::Failed(msg),
                            key: None,
                            duration: None,
                            record: None,
                        });
                        stopping |= !opts.keep_going;
                        progressed = true;
                    }
                    Resolution::Waiting(_) => unreachable!("upstream outputs are all known"),
                    Resolution::Run {
                        key,
                        inputs,
                        reason,
                    } => {
                        let need = &job.stage.resources;
                        let fits = running.len() < opts.jobs.max(1)
                            && need.iter().all(|(r, k)| {
                                used.get(r).copied().unwrap_or(0) + k
                                    <= opts.resources.get(r).copied().unwrap_or(0)
                            });
                        if !fits {
                            continue;
                        }
                        for (r, k) in need {
                            *used.entry(r.clone()).or_default() += k;
                        }
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(spinner_style());
                        bar.set_prefix(job.stage.name.clone());
                        bar.set_message("starting");
                        bar.enable_steady_tick(Duration::from_millis(120));
                        say(format!("▶ {} ({reason})", job.stage.name));
                        let spec = child::JobSpec {
                            pipeline: job.pipeline.clone(),
                            stage: job.stage.name.clone(),
                            kind: job.stage.kind.name().to_string(),
                            kind_version: job.stage.kind.version(),
                            params: job.stage.params.clone(),
                            input_paths: inputs
                                .iter()
                                .map(|(name, rec)| {
                                    let path = match &job.inputs[name] {
                                        plan::JobInput::Path(p) => p.clone(),
                                        plan::JobInput::Job { .. } => store.object_path(&rec.hash),
                                    };
                                    (name.clone(), path)
                                })
                                .collect(),
                            inputs,
                            key: key.clone(),
                            force: opts.force.contains(&job.stage.name),
                        };
                        spawn_child(i, spec, store, opts.backend, tx.clone());
                        running.insert(
                            i,
                            Running {
                                key,
                                pid: None,
                                bar,
                                started: Instant::now(),
                                resources: need.clone(),
                                reused: false,
                            },
                        );
                    }
                }
            }
        }
        if running.is_empty() {
            break;
        }
        let Ok(msg) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        match msg {
            Msg::Started(i, pid) => {
                if let Some(r) = running.get_mut(&i) {
                    r.pid = Some(pid);
                    r.bar.set_message("running");
                    if stopping {
                        // SAFETY: signalling our own child.
                        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                    }
                }
            }
            Msg::Event(i, ev) => {
                let Some(r) = running.get_mut(&i) else {
                    continue;
                };
                match ev {
                    Event::Waiting => r
                        .bar
                        .set_message("waiting: another runner is computing this key"),
                    Event::Done { reused } => r.reused = reused,
                    Event::Progress { pos, len, msg } => {
                        if let Some(len) = len
                            && r.bar.length() != Some(len)
                        {
                            r.bar.set_style(bar_style());
                            r.bar.set_length(len);
                        }
                        r.bar.set_position(pos);
                        r.bar.set_message(msg);
                    }
                }
            }
            Msg::Exited(i, code) => {
                let r = running.remove(&i).expect("exited job was running");
                r.bar.finish_and_clear();
                multi.remove(&r.bar);
                for (res, k) in &r.resources {
                    *used.get_mut(res).expect("acquired") -= k;
                }
                let job = &plan.jobs[i];
                let elapsed = r.started.elapsed();
                let outcome = match store.record(&r.key) {
                    Some(rec) => {
                        outputs.insert(i, rec.outputs.clone());
                        let _ = store.set_ref(&job.pipeline, &job.stage.name, &r.key);
                        let state = if r.reused {
                            JobState::Reused
                        } else {
                            JobState::Ran {
                                resumed: rec.resumed,
                            }
                        };
                        say(format!(
                            "✓ {} ({:.1}s)",
                            job.stage.name,
                            elapsed.as_secs_f64()
                        ));
                        Outcome {
                            state,
                            key: Some(r.key),
                            duration: Some(elapsed),
                            record: Some(rec),
                        }
                    }
                    None => {
                        let failed = store.failed(&r.key);
                        let state = match (&failed, code) {
                            (Some(f), _) if f.status == RunStatus::Interrupted => {
                                JobState::Interrupted
                            }
                            (_, Some(child::EXIT_INTERRUPTED)) => JobState::Interrupted,
                            (Some(f), _) => JobState::Failed(f.error.clone().unwrap_or_default()),
                            (None, code) => JobState::Failed(format!(
                                "stage process {}",
                                code.map(|c| format!("exited with status {c}"))
                                    .unwrap_or_else(|| "was killed".into())
                            )),
                        };
                        if let JobState::Failed(msg) = &state {
                            let log = store.root.join(store.log_rel(&r.key));
                            say(format!(
                                "✗ {}: {msg}\n  log: {}\n{}",
                                job.stage.name,
                                log.display(),
                                log_tail(&log, 12)
                            ));
                            stopping |= !opts.keep_going;
                        }
                        Outcome {
                            state,
                            key: Some(r.key),
                            duration: Some(elapsed),
                            record: failed,
                        }
                    }
                };
                outcomes[i] = Some(outcome);
            }
        }
    }
    resolver.save();
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or(Outcome {
                state: if interrupted.load(Ordering::Relaxed) {
                    JobState::Interrupted
                } else {
                    JobState::NotRun
                },
                key: None,
                duration: None,
                record: None,
            })
        })
        .collect()
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} [{elapsed_precise}] {wide_msg}")
        .expect("valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} [{elapsed_precise}] [{bar:30.cyan/blue}] {pos}/{len} eta {eta} {wide_msg}")
        .expect("valid template")
        .progress_chars("=> ")
}

/// Starts the child for one job on its own thread (which must outlive the child, see
/// [`die_with_parent`]) and forwards its events.
fn spawn_child(
    job: usize,
    spec: child::JobSpec,
    store: &Store,
    backend: crate::backend::Backend,
    tx: mpsc::Sender<Msg>,
) {
    let root = store.root.clone();
    let log_path = store.root.join(store.log_rel(&spec.key));
    std::thread::spawn(move || {
        let exited = |code| {
            let _ = tx.send(Msg::Exited(job, code));
        };
        let log = match open_log(&log_path, &spec) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot open log {}: {e}", log_path.display());
                return exited(Some(1));
            }
        };
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("runner"));
        let mut command = Command::new(exe);
        command
            .arg("__exec-stage")
            .arg("--store")
            .arg(&root)
            .env("ADJQ_BACKEND", backend.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        die_with_parent(&mut command);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot start the stage process: {e}");
                return exited(Some(1));
            }
        };
        let _ = tx.send(Msg::Started(job, child.id()));
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&serde_json::to_vec(&spec).expect("spec serialises"));
        }
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                    let _ = tx.send(Msg::Event(job, ev));
                }
            }
        }
        let code = child.wait().ok().and_then(|s| s.code());
        exited(code)
    });
}

fn open_log(path: &std::path::Path, spec: &child::JobSpec) -> std::io::Result<std::fs::File> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(
        f,
        "=== {} stage `{}` ({}) key {} ===",
        now_rfc3339(),
        spec.stage,
        spec.kind,
        spec.key
    )?;
    Ok(f)
}

/// The last `n` lines of a log, indented, for failure messages.
fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

//! Execution of a plan: the [`scheduler`] decides what may start, the plan's resolver
//! what is cached, a [`launcher::Launcher`] runs the rest (each stage in its own
//! process), a [`reporter::Reporter`] tells the user; SIGINT/SIGTERM stop cleanly.

pub mod child;
pub mod context;
pub mod kind;
pub mod launcher;
pub mod plan;
pub mod reporter;
pub mod run_log;
pub mod scheduler;
pub mod slurm;
pub mod tensorboard_links;

use crate::store::{Record, RunStatus, Store};
use context::{Event, Placement};
use launcher::{Exit, Launch, Launcher, Report};
use plan::{Plan, Resolution, Resolver};
use reporter::Reporter;
use scheduler::{JobNeeds, Scheduler, Step};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use launcher::die_with_parent;

pub struct RunOptions {
    pub jobs: usize,
    /// Stage names to rerun even when cached.
    pub force: BTreeSet<String>,
    pub keep_going: bool,
    /// Resource slot limits (`gpu` and any declared by the pipeline).
    pub resources: BTreeMap<String, u32>,
    /// Tensor backend the stages use (passed to each stage process).
    pub backend: crate::backend::Backend,
    /// Stages run as cluster jobs: the cluster places their GPUs, so `gpu` is not a local
    /// slot and no device index is chosen here.
    pub cluster: bool,
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

struct Running {
    key: String,
    started: Instant,
    reused: bool,
}

impl Outcome {
    fn new(state: JobState) -> Outcome {
        Outcome {
            state,
            key: None,
            duration: None,
            record: None,
        }
    }
}

/// The GPUs job `i` uses: its stage's `gpu` count, else one for a kind that computes on
/// the backend when the backend is a GPU.
pub fn gpus_of(plan: &Plan, i: usize, opts: &RunOptions) -> u32 {
    let stage = &plan.jobs[i].stage;
    match stage.resources.get("gpu") {
        Some(n) => *n,
        None => u32::from(opts.backend.is_gpu() && stage.kind.uses_device()),
    }
}

/// The slots job `i` needs: its stage's, with its GPUs as `gpu` slots when they are local.
fn needs(plan: &Plan, i: usize, opts: &RunOptions) -> JobNeeds {
    let mut resources = plan.jobs[i].stage.resources.clone();
    resources.remove("gpu");
    let gpus = gpus_of(plan, i, opts);
    if gpus > 0 && !opts.cluster {
        resources.insert("gpu".into(), gpus);
    }
    JobNeeds {
        upstream: plan.jobs[i].upstream().collect(),
        resources,
    }
}

/// Runs `plan` to completion (or first failure, or interrupt) and returns one outcome per
/// job. Jobs already in the store are not run; shared jobs run once.
pub fn execute(
    plan: &Plan,
    store: &Store,
    resolver: &Resolver,
    opts: &RunOptions,
    launcher: &dyn Launcher,
    reporter: &dyn Reporter,
) -> Vec<Outcome> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping exits at once.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, interrupted.clone());
        let _ = signal_hook::flag::register(sig, interrupted.clone());
    }
    let n = plan.jobs.len();
    let mut sched = Scheduler::new(
        (0..n).map(|i| needs(plan, i, opts)).collect(),
        &opts.resources,
        opts.jobs,
        opts.keep_going,
    );
    // Several GPUs: each gpu slot is a device; one: the backend's default device.
    let gpus = opts.resources.get("gpu").copied().unwrap_or(0);
    let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
    let mut outputs = HashMap::new();
    let mut running: HashMap<usize, Running> = HashMap::new();
    let (tx, rx) = mpsc::channel::<(usize, Report)>();
    let links = tensorboard_links::Links::new(plan, store);
    let link_outputs = |i: usize, outputs: &BTreeMap<String, crate::store::ObjectRef>| {
        if let Some(o) = outputs.get(crate::report::tensorboard::OUTPUT) {
            links.point(i, &store.object_path(&o.hash));
        }
    };

    loop {
        if interrupted.load(Ordering::Relaxed) && !sched.stopping() {
            sched.cancel();
            reporter.note("stopping: waiting for running stages to save their state (press Ctrl-C again to abort)");
            for &i in running.keys() {
                launcher.cancel(i);
            }
        }
        let mut progressed = true;
        while progressed {
            progressed = false;
            for step in sched.poll() {
                let i = match step {
                    Step::Skipped { job, failed } => {
                        let name = plan.jobs[failed].stage.name.clone();
                        outcomes[job] = Some(Outcome::new(JobState::Skipped(name)));
                        progressed = true;
                        continue;
                    }
                    Step::Ready(i) => i,
                };
                let job = &plan.jobs[i];
                let force = opts.force.contains(&job.stage.name);
                match resolver.resolve(plan, i, &outputs, force) {
                    Resolution::Cached(r) => {
                        link_outputs(i, &r.outputs);
                        outputs.insert(i, r.outputs.clone());
                        let _ = store.set_ref(&job.pipeline, &job.stage.name, &r.key);
                        outcomes[i] = Some(Outcome {
                            key: Some(r.key.clone()),
                            record: Some(*r),
                            ..Outcome::new(JobState::Cached)
                        });
                        sched.finish(i, true);
                        progressed = true;
                    }
                    Resolution::BadInput(msg) => {
                        reporter.failed(&job.stage.name, &msg, None);
                        outcomes[i] = Some(Outcome::new(JobState::Failed(msg)));
                        sched.finish(i, false);
                        progressed = true;
                    }
                    Resolution::Waiting(_) => unreachable!("upstream outputs are all known"),
                    Resolution::Run {
                        key,
                        inputs,
                        reason,
                    } => {
                        let Some(grant) = sched.try_start(i) else {
                            continue;
                        };
                        reporter.started(&job.stage.name, &reason);
                        let device_index = match grant.slots.get("gpu") {
                            Some(slots) if gpus > 1 && !opts.cluster => slots.first().copied(),
                            _ => None,
                        };
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
                            force,
                            placement: Placement {
                                backend: opts.backend,
                                device_index,
                            },
                        };
                        let launch = Launch {
                            spec,
                            gpus: gpus_of(plan, i, opts),
                            cluster: job.stage.cluster.clone(),
                        };
                        launcher.launch(i, launch, tx.clone());
                        // Live curves: the running stage writes its events in its work dir.
                        links.point(
                            i,
                            &store
                                .work_dir(&key)
                                .join(crate::report::tensorboard::OUTPUT),
                        );
                        running.insert(
                            i,
                            Running {
                                key,
                                started: Instant::now(),
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
        let Ok((i, report)) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let stage = &plan.jobs[i].stage.name;
        let Some(r) = running.get_mut(&i) else {
            continue;
        };
        let code = match report {
            Report::Started => {
                reporter.running(stage);
                continue;
            }
            Report::Event(Event::Waiting) => {
                reporter.waiting(stage);
                continue;
            }
            Report::Event(Event::Done { reused }) => {
                r.reused = reused;
                continue;
            }
            Report::Event(Event::Progress { pos, len, msg }) => {
                reporter.progress(stage, pos, len, &msg);
                continue;
            }
            Report::Exited(exit) => Ok(exit),
            Report::NotStarted(msg) => Err(msg),
        };
        let r = running.remove(&i).expect("reporting job is running");
        let outcome = finished(store, plan, i, r, code, reporter);
        sched.finish(i, outcome.state.ok());
        if let Some(rec) = &outcome.record
            && outcome.state.ok()
        {
            link_outputs(i, &rec.outputs);
            outputs.insert(i, rec.outputs.clone());
        }
        outcomes[i] = Some(outcome);
    }
    resolver.save();
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or(Outcome::new(if interrupted.load(Ordering::Relaxed) {
                JobState::Interrupted
            } else {
                JobState::NotRun
            }))
        })
        .collect()
}

/// The outcome of a job whose process ended (`Err`: it never started), from its record;
/// a cluster's cause (cancelled by someone else, timed out, out of memory) makes it a
/// failure that names the cause.
fn finished(
    store: &Store,
    plan: &Plan,
    i: usize,
    r: Running,
    exit: Result<Exit, String>,
    reporter: &dyn Reporter,
) -> Outcome {
    let job = &plan.jobs[i];
    let elapsed = r.started.elapsed();
    if let Some(rec) = store.record(&r.key) {
        let _ = store.set_ref(&job.pipeline, &job.stage.name, &r.key);
        reporter.succeeded(&job.stage.name, elapsed);
        let state = if r.reused {
            JobState::Reused
        } else {
            JobState::Ran {
                resumed: rec.resumed,
            }
        };
        return Outcome {
            state,
            key: Some(r.key),
            duration: Some(elapsed),
            record: Some(rec),
        };
    }
    let failed = store.failed(&r.key);
    let stage_error = failed
        .as_ref()
        .filter(|f| f.status == RunStatus::Failed)
        .and_then(|f| f.error.clone());
    let state = match (&failed, exit) {
        (_, Err(msg)) => JobState::Failed(msg),
        (_, Ok(Exit { cause: Some(c), .. })) => JobState::Failed(match stage_error {
            Some(e) => format!("{c}: {e}"),
            None => c,
        }),
        (Some(f), _) if f.status == RunStatus::Interrupted => JobState::Interrupted,
        (
            _,
            Ok(Exit {
                code: Some(child::EXIT_INTERRUPTED),
                ..
            }),
        ) => JobState::Interrupted,
        (Some(f), _) => JobState::Failed(f.error.clone().unwrap_or_default()),
        (None, Ok(Exit { code, .. })) => JobState::Failed(format!(
            "stage process {}",
            code.map(|c| format!("exited with status {c}"))
                .unwrap_or_else(|| "was killed".into())
        )),
    };
    if let JobState::Failed(msg) = &state {
        let log = store.root.join(store.log_rel(&r.key));
        reporter.failed(&job.stage.name, msg, Some(&log));
    }
    Outcome {
        state,
        key: Some(r.key),
        duration: Some(elapsed),
        record: failed,
    }
}

//! How a job's stage process is started, watched and stopped. [`Launcher`] is the seam
//! between the scheduler and where stages run; [`LocalLauncher`] runs each as a child
//! process of this binary; [`super::slurm::SlurmLauncher`] submits each as a Slurm job.

use super::child::JobSpec;
use super::context::Event;
use crate::manifest::ClusterRequest;
use crate::store::{Store, now_rfc3339};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

/// What a launched job reports, in order: `Started`, any `Event`s, then `Exited`; or
/// only `NotStarted`.
#[derive(Debug)]
pub enum Report {
    Started,
    Event(Event),
    /// The stage process ended.
    Exited(Exit),
    /// The stage process could not be started, and why.
    NotStarted(String),
}

/// How a launched job ended.
#[derive(Debug, Default)]
pub struct Exit {
    /// The stage process's exit code (`None`: killed by a signal, or not known).
    pub code: Option<i32>,
    /// Why the job ended abnormally, as the cluster tells it (job id, state, reason).
    /// The stage then failed, whatever its record says.
    pub cause: Option<String>,
}

impl Exit {
    pub fn code(code: Option<i32>) -> Exit {
        Exit { code, cause: None }
    }
}

/// What to launch: the stage's spec and what its job asks of the machine.
pub struct Launch {
    pub spec: JobSpec,
    /// GPUs the stage uses (a cluster job requests them; the local scheduler counts them
    /// as slots and places the stage on one in `spec.placement`).
    pub gpus: u32,
    pub cluster: ClusterRequest,
}

pub trait Launcher {
    /// Starts job `job` (the executor's index); its reports arrive on `reports` tagged
    /// with `job`. Must not block on the stage.
    fn launch(&self, job: usize, launch: Launch, reports: Sender<(usize, Report)>);
    /// Asks job `job` to stop at a safe point (it keeps its work dir for resume). A job
    /// launched but not yet started is stopped as soon as it starts.
    fn cancel(&self, job: usize);
}

/// Runs each stage as `runner __exec-stage` on this machine: the spec on stdin, events
/// on stdout, stderr into the stage log.
pub struct LocalLauncher {
    store: Store,
    exe: PathBuf,
    /// Pid of each running job; `None` for one cancelled before its process started.
    pids: Arc<Mutex<HashMap<usize, Option<u32>>>>,
}

impl LocalLauncher {
    pub fn new(store: &Store) -> LocalLauncher {
        LocalLauncher {
            store: store.clone(),
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("runner")),
            pids: Arc::default(),
        }
    }
}

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

fn terminate(pid: u32) {
    // SAFETY: signalling a child process we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

impl Launcher for LocalLauncher {
    fn launch(&self, job: usize, launch: Launch, reports: Sender<(usize, Report)>) {
        let spec = launch.spec;
        let log_path = self.store.root.join(self.store.log_rel(&spec.key));
        let root = self.store.root.clone();
        let exe = self.exe.clone();
        let pids = self.pids.clone();
        // The thread that spawns the child must outlive it (see `die_with_parent`).
        std::thread::spawn(move || {
            let report = |r| {
                let _ = reports.send((job, r));
            };
            let log = match open_log(&log_path, &spec) {
                Ok(l) => l,
                Err(e) => {
                    return report(Report::NotStarted(format!(
                        "cannot open the stage log {}: {e}",
                        log_path.display()
                    )));
                }
            };
            let mut command = Command::new(exe);
            command
                .arg("__exec-stage")
                .arg("--store")
                .arg(&root)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log);
            die_with_parent(&mut command);
            let mut child = match command.spawn() {
                Ok(c) => c,
                Err(e) => {
                    return report(Report::NotStarted(format!(
                        "cannot start the stage process: {e}"
                    )));
                }
            };
            let cancelled = {
                let mut pids = pids.lock().expect("pid table");
                let cancelled = pids.get(&job) == Some(&None);
                pids.insert(job, Some(child.id()));
                cancelled
            };
            if cancelled {
                terminate(child.id());
            }
            report(Report::Started);
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(&serde_json::to_vec(&spec).expect("spec serialises"));
            }
            if let Some(stdout) = child.stdout.take() {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                        report(Report::Event(ev));
                    }
                }
            }
            let code = child.wait().ok().and_then(|s| s.code());
            pids.lock().expect("pid table").remove(&job);
            report(Report::Exited(Exit::code(code)));
        });
    }

    fn cancel(&self, job: usize) {
        let mut pids = self.pids.lock().expect("pid table");
        match pids.get(&job) {
            Some(Some(pid)) => terminate(*pid),
            _ => {
                pids.insert(job, None);
            }
        }
    }
}

/// Opens the stage log for appending and writes the header of this attempt.
pub(super) fn open_log(path: &std::path::Path, spec: &JobSpec) -> std::io::Result<std::fs::File> {
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

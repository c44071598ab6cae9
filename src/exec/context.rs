//! What a running stage sees: its params, input paths, where to write outputs, a
//! checkpoint API for resume, progress reporting and the interrupt flag.

use crate::manifest::Params;
use crate::store::atomic;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Messages a stage's child process sends its parent, one JSON object per stdout line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Progress {
        pos: u64,
        len: Option<u64>,
        msg: String,
    },
    /// Another runner holds this key; waiting for it.
    Waiting,
    /// Finished; `reused` when another runner computed the key while this one waited.
    Done { reused: bool },
}

pub fn send(event: &Event) {
    let mut out = std::io::stdout().lock();
    // The parent may be gone (killed); the stage notices through its signal, not here.
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string(event).expect("events serialise")
    );
    let _ = out.flush();
}

/// The error a stage returns when it stopped because it was asked to.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

pub struct StageContext {
    pub stage: String,
    pub key: String,
    pub params: Params,
    pub inputs: BTreeMap<String, PathBuf>,
    pub work_dir: PathBuf,
    /// True when the work dir was left by an interrupted earlier attempt.
    pub resumed: bool,
    /// The stage log file (shell commands write their output here).
    pub log_path: PathBuf,
    pub metrics: BTreeMap<String, serde_json::Value>,
    interrupted: Arc<AtomicBool>,
}

impl StageContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stage: String,
        key: String,
        params: Params,
        inputs: BTreeMap<String, PathBuf>,
        work_dir: PathBuf,
        resumed: bool,
        log_path: PathBuf,
        interrupted: Arc<AtomicBool>,
    ) -> Self {
        StageContext {
            stage,
            key,
            params,
            inputs,
            work_dir,
            resumed,
            log_path,
            metrics: BTreeMap::new(),
            interrupted,
        }
    }

    /// Path of a declared input.
    pub fn input(&self, name: &str) -> Result<&Path> {
        self.inputs
            .get(name)
            .map(PathBuf::as_path)
            .with_context(|| format!("stage `{}` has no input `{name}`", self.stage))
    }

    /// Where the stage must leave its output `name` (a file or a directory).
    pub fn output_path(&self, name: &str) -> PathBuf {
        self.work_dir.join(name)
    }

    fn checkpoint_path(&self, name: &str) -> PathBuf {
        self.work_dir.join(".checkpoints").join(name)
    }

    /// Saves a mid-stage checkpoint atomically; it survives kill -9 and is offered to the
    /// next attempt at the same key through [`Self::load_checkpoint`].
    pub fn save_checkpoint(&self, name: &str, bytes: &[u8]) -> Result<()> {
        atomic::write(&self.checkpoint_path(name), bytes)
            .with_context(|| format!("cannot save checkpoint `{name}`"))
    }

    pub fn load_checkpoint(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.checkpoint_path(name)).ok()
    }

    pub fn set_metric(&mut self, name: &str, value: impl Into<serde_json::Value>) {
        self.metrics.insert(name.to_string(), value.into());
    }

    pub fn progress(&self, pos: u64, len: Option<u64>, msg: impl Into<String>) {
        send(&Event::Progress {
            pos,
            len,
            msg: msg.into(),
        });
    }

    /// Whether SIGINT/SIGTERM arrived; long loops check this and stop at a safe point.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// `Err(Interrupted)` once a stop was requested (save a checkpoint first).
    pub fn check_interrupted(&self) -> Result<()> {
        if self.interrupted() {
            bail!(Interrupted);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_survive_a_new_context() {
        let dir = tempfile::tempdir().unwrap();
        let make = || {
            StageContext::new(
                "s".into(),
                "k".into(),
                Params::default(),
                BTreeMap::new(),
                dir.path().to_path_buf(),
                true,
                dir.path().join("log"),
                Arc::new(AtomicBool::new(false)),
            )
        };
        let ctx = make();
        assert_eq!(ctx.load_checkpoint("step"), None);
        ctx.save_checkpoint("step", b"41").unwrap();
        ctx.save_checkpoint("step", b"42").unwrap();
        // A later attempt (new process, same work dir) sees the last saved state.
        assert_eq!(make().load_checkpoint("step").as_deref(), Some(&b"42"[..]));
        assert!(ctx.check_interrupted().is_ok());
        ctx.interrupted.store(true, Ordering::Relaxed);
        assert!(ctx.check_interrupted().unwrap_err().is::<Interrupted>());
    }
}

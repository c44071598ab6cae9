//! What a running stage sees: its params, input paths, where to write outputs, its
//! device, resume state, progress reporting and the interrupt flag.

use crate::atomic;
use crate::backend::Backend;
use crate::manifest::Params;
use crate::manifest::schema::StageParams;
use anyhow::{Context, Result, bail};
use burn::prelude::Device;
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

/// Where a stage runs: the backend and, when the pipeline has several `gpu` slots, the
/// index of the GPU whose slot the scheduler gave it (else the backend's default device).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub backend: Backend,
    pub device_index: Option<usize>,
}

impl Placement {
    pub fn device(&self) -> Result<Device> {
        self.backend.device(self.device_index)
    }
}

pub struct StageContext {
    pub stage: String,
    pub key: String,
    pub params: Params,
    pub inputs: BTreeMap<String, PathBuf>,
    /// Where each input came from: its path, or `STAGE:OUTPUT`.
    pub sources: BTreeMap<String, String>,
    pub work_dir: PathBuf,
    /// True when the work dir was left by an interrupted earlier attempt.
    pub resumed: bool,
    /// The stage log file (shell commands write their output here).
    pub log_path: PathBuf,
    pub placement: Placement,
    /// Metrics the stage reports (into its record); empty at the start.
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// Set by SIGINT/SIGTERM; read through [`StageContext::interrupted`].
    pub interrupted: Arc<AtomicBool>,
}

impl StageContext {
    /// The stage's params as its kind's typed struct.
    pub fn params<P: StageParams>(&self) -> Result<P> {
        P::from_params(&self.params)
            .map_err(|e| anyhow::anyhow!("stage `{}`: bad params: {e}", self.stage))
    }

    /// The device the stage computes on.
    pub fn device(&self) -> Result<Device> {
        self.placement.device()
    }

    /// Path of a declared input.
    pub fn input(&self, name: &str) -> Result<&Path> {
        self.inputs
            .get(name)
            .map(PathBuf::as_path)
            .with_context(|| format!("stage `{}` has no input `{name}`", self.stage))
    }

    /// The file name input `name` was produced under (an upstream output's name, or the
    /// given path's file name): what the artifact is, since stored objects are nameless.
    pub fn input_file_name(&self, name: &str) -> Option<&str> {
        let source = self.sources.get(name)?;
        let tail = source.rsplit(':').next().unwrap_or(source);
        Path::new(tail).file_name()?.to_str()
    }

    /// Where the stage must leave its output `name` (a file or a directory).
    pub fn output_path(&self, name: &str) -> PathBuf {
        self.work_dir.join(name)
    }

    fn states_dir(&self) -> PathBuf {
        self.work_dir.join(".checkpoints")
    }

    /// The directory of the latest complete resume state an earlier attempt at this key
    /// saved with [`Self::save_state`], if any.
    pub fn latest_state(&self) -> Option<PathBuf> {
        let name = std::fs::read_to_string(self.states_dir().join("latest")).ok()?;
        let dir = self.states_dir().join(name.trim());
        dir.is_dir().then_some(dir)
    }

    /// Saves resume state: `write` fills a fresh directory, which an atomically written
    /// pointer then names, so a kill at any moment leaves the previous complete state in
    /// force; the previous one is then removed.
    pub fn save_state(&self, tag: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let name = format!("state-{tag}");
        let dir = self.states_dir().join(&name);
        let saved = (|| -> Result<()> {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(&dir)?;
            write(&dir)?;
            atomic::sync_tree(&dir)?;
            let previous = self.latest_state();
            atomic::write(&self.states_dir().join("latest"), name.as_bytes())?;
            if let Some(p) = previous
                && p != dir
            {
                let _ = std::fs::remove_dir_all(p);
            }
            Ok(())
        })();
        saved.with_context(|| format!("cannot save resume state `{name}`"))
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
    fn resume_states_survive_a_new_context_and_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let make = || StageContext {
            stage: "s".into(),
            key: "k".into(),
            params: Params::default(),
            inputs: BTreeMap::new(),
            sources: BTreeMap::new(),
            work_dir: dir.path().to_path_buf(),
            resumed: true,
            log_path: dir.path().join("log"),
            placement: Placement::default(),
            metrics: BTreeMap::new(),
            interrupted: Arc::new(AtomicBool::new(false)),
        };
        let mut ctx = make();
        ctx.sources
            .insert("e".into(), "eval_float:eval.json".into());
        ctx.sources
            .insert("p".into(), "/data/x:y/quant_info.json".into());
        assert_eq!(ctx.input_file_name("e"), Some("eval.json"));
        assert_eq!(ctx.input_file_name("p"), Some("quant_info.json"));
        assert_eq!(ctx.input_file_name("missing"), None);
        assert_eq!(ctx.latest_state(), None);
        ctx.save_state("1", |d| Ok(std::fs::write(d.join("x"), "41")?))
            .unwrap();
        ctx.save_state("2", |d| Ok(std::fs::write(d.join("x"), "42")?))
            .unwrap();
        // A failed save leaves the last complete state in force.
        assert!(ctx.save_state("3", |_| bail!("disk full")).is_err());
        // A later attempt (new process, same work dir) sees the last complete state only.
        let latest = make().latest_state().unwrap();
        assert_eq!(std::fs::read_to_string(latest.join("x")).unwrap(), "42");
        assert!(!dir.path().join(".checkpoints/state-1").exists());
        assert!(ctx.check_interrupted().is_ok());
        ctx.interrupted.store(true, Ordering::Relaxed);
        assert!(ctx.check_interrupted().unwrap_err().is::<Interrupted>());
    }
}

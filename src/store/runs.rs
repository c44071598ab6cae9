//! Run history: `runs/<id>.json`, one log per `runner run` or `runner sweep`, holding
//! what `runner runs` and `runner diff` compare (params and where they came from, input
//! hashes, metrics), so history outlives `gc` of the records themselves.

use super::{InputRecord, Store, read_json, stem};
use crate::atomic;
use crate::manifest::value::Value;
use crate::manifest::{ParamSource, Params};
use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// One `runner run` / `runner sweep` invocation. Logs written before run history existed
/// hold only the manifest, pipeline, times and keys; the rest defaults to empty.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunLog {
    /// The file name's stem: a number counting up from 1 in each store.
    #[serde(skip)]
    pub id: String,
    /// `run` or `sweep`.
    #[serde(default)]
    pub command: String,
    pub manifest: String,
    /// blake3 of the manifest file's bytes.
    #[serde(default)]
    pub manifest_hash: String,
    pub pipeline: String,
    /// The `--set` flags, as given.
    #[serde(default)]
    pub sets: Vec<String>,
    #[serde(default)]
    pub runner_version: String,
    /// The git commit of the repository holding the manifest, if it is in one.
    #[serde(default)]
    pub git: Option<GitState>,
    #[serde(default)]
    pub backend: String,
    #[serde(default)]
    pub executor: String,
    pub started: String,
    /// Empty while the run goes on, and for ever if it was killed.
    pub finished: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Every key the run resolved (cached or computed): what `gc --keep-runs` keeps.
    pub keys: Vec<String>,
    /// One per sweep point; a plain run has one, with no settings.
    #[serde(default)]
    pub variants: Vec<RunVariant>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GitState {
    pub commit: String,
    /// Tracked files differ from the commit.
    pub dirty: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunVariant {
    /// The grid settings (`stage.param`, value) of this sweep point.
    pub settings: Vec<(String, Value)>,
    /// `[params]` as this variant resolved them.
    pub shared: BTreeMap<String, Value>,
    pub stages: BTreeMap<String, StageRun>,
}

/// One stage of one variant, as the run planned and finished it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StageRun {
    pub kind: String,
    /// cached, ran, resumed, reused, failed, interrupted, skipped, not run; `planned`
    /// until the run finishes.
    pub state: String,
    pub key: Option<String>,
    pub params: Params,
    /// Where each param's value came from; a param not listed has its kind's default.
    pub sources: BTreeMap<String, ParamSource>,
    /// As they entered the key (known once the stage was resolved).
    pub inputs: BTreeMap<String, InputRecord>,
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// No stage of the variant reads this one's outputs.
    pub last: bool,
}

impl RunLog {
    /// `id`, or `id/N` for the Nth (from 1) variant of a sweep.
    pub fn variant_id(&self, index: usize) -> String {
        if self.command == "sweep" {
            format!("{}/{}", self.id, index + 1)
        } else {
            self.id.clone()
        }
    }
}

impl Store {
    fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// Claims the next run id and writes the log as it starts (finished empty); the
    /// caller rewrites it with [`Store::write_run_log`] when the run ends.
    pub fn start_run_log(&self, log: &mut RunLog) -> Result<()> {
        let dir = self.runs_dir();
        let mut n = numbered_logs(&dir).map(|(n, _)| n).max().unwrap_or(0);
        // Another runner may claim the same number first: creating the file exclusively
        // decides, and the loser takes the next one.
        loop {
            n += 1;
            let path = dir.join(format!("{n}.json"));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
        }
        log.id = n.to_string();
        self.write_run_log(log)
    }

    /// Rewrites the log of a run [`Store::start_run_log`] started. Compact JSON: a store
    /// holds hundreds of these and `runner runs` reads them all.
    pub fn write_run_log(&self, log: &RunLog) -> Result<()> {
        let path = self.runs_dir().join(format!("{}.json", log.id));
        let bytes = serde_json::to_vec(log).context("run log serialises")?;
        atomic::write(&path, &bytes)
            .with_context(|| format!("cannot write the run log {}", path.display()))
    }

    /// Every readable run log, newest first (an empty file is a run that is starting).
    /// Parsed in parallel: hundreds of logs are most of what `runner runs` does.
    pub fn run_logs(&self) -> Vec<RunLog> {
        let paths: Vec<PathBuf> = fs::read_dir(self.runs_dir())
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        let mut logs: Vec<RunLog> = paths
            .par_iter()
            .filter_map(|p| {
                let mut log: RunLog = read_json(p)?;
                log.id = stem(p);
                Some(log)
            })
            .collect();
        // Numbered ids count up; logs named by time (before ids) come by start time.
        logs.sort_by(|a, b| {
            let order = |l: &RunLog| (l.started.clone(), l.id.parse::<u64>().unwrap_or(0));
            order(b).cmp(&order(a))
        });
        logs
    }
}

fn numbered_logs(dir: &Path) -> impl Iterator<Item = (u64, PathBuf)> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| Some((stem(&p).parse::<u64>().ok()?, p)))
}

impl GitState {
    /// The commit checked out where `dir` is, and whether tracked files differ from it;
    /// `None` outside a git repository or without git.
    pub fn of(dir: &Path) -> Option<GitState> {
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let commit = git(&["rev-parse", "HEAD"])?;
        let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
        Some(GitState { commit, dirty })
    }
}

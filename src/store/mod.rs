//! The content-addressed artifact store.
//!
//! Layout under the store root:
//! - `objects/ab/<blake3>`: read-only outputs (files or directory trees), named by content.
//! - `records/<key>.json`: one record per successful stage run, written last; its presence
//!   is what makes a key cached.
//! - `failed/<key>.json`: the latest failed or interrupted attempt at a key.
//! - `refs/<pipeline>/<stage>.json`: the key a stage name last resolved to (for `explain`).
//! - `runs/<n>.json`: one log per `runner run` or `runner sweep` (the run history that
//!   `runner runs` and `runner diff` read, and `gc --keep-runs` keeps the keys of).
//! - `work/<key>/`: a running stage's work dir; it survives interruption (resume).
//! - `tensorboard/<pipeline>/<stage>[/<sweep point>]`: symlinks to training stages' event
//!   directories (in `work/` while they run, in `objects/` after), for TensorBoard.
//! - `logs/<key>.log`, `locks/<key>.lock`, `cache/stat.json`, `tmp/`.
//!
//! Objects enter by rename, never by copy; the record is written atomically after them, so
//! kill -9 at any point leaves at worst unreferenced objects (collected by `gc`).

pub mod gc;
pub mod hash;
pub mod runs;
pub mod verify;

pub use runs::RunLog;

use crate::atomic;
use crate::manifest::Params;
use anyhow::{Context, Result};
use hash::ObjectKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// A stored output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub hash: String,
    pub kind: ObjectKind,
    pub bytes: u64,
}

/// A stage input as it entered the cache key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    pub hash: String,
    pub kind: ObjectKind,
    /// The path, or `stage:output` for another stage's output.
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Ok,
    Failed,
    Interrupted,
}

/// Everything about one stage run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub pipeline: String,
    pub stage: String,
    pub kind: String,
    pub kind_version: u32,
    pub params: Params,
    pub inputs: BTreeMap<String, InputRecord>,
    pub outputs: BTreeMap<String, ObjectRef>,
    pub metrics: BTreeMap<String, serde_json::Value>,
    pub status: RunStatus,
    pub error: Option<String>,
    pub started: String,
    pub finished: String,
    pub duration_s: f64,
    /// The stage process's peak resident memory (this attempt's), when the OS tells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// True when the run continued from a work dir an interrupted run left.
    pub resumed: bool,
    pub runner_version: String,
    pub host: String,
    pub pid: u32,
    /// Log file, relative to the store root.
    pub log: String,
}

/// The material a cache key is the hash of.
#[derive(Serialize)]
struct KeyMaterial<'a> {
    kind: &'a str,
    kind_version: u32,
    params: &'a Params,
    inputs: BTreeMap<&'a str, &'a str>,
}

/// blake3 over kind, kind version, canonical params and input content hashes.
pub fn cache_key(
    kind: &str,
    kind_version: u32,
    params: &Params,
    inputs: &BTreeMap<String, InputRecord>,
) -> String {
    let material = KeyMaterial {
        kind,
        kind_version,
        params,
        inputs: inputs
            .iter()
            .map(|(k, v)| (k.as_str(), v.hash.as_str()))
            .collect(),
    };
    let json = serde_json::to_vec(&material).expect("params serialise");
    blake3::hash(&json).to_hex().to_string()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefEntry {
    pub key: String,
}

#[derive(Clone, Debug)]
pub struct Store {
    pub root: PathBuf,
}

impl Store {
    /// Opens (creating) the store at `root`, made absolute: stages run in their work dirs,
    /// where a relative store path would name nothing.
    pub fn open(root: &Path) -> Result<Store> {
        let store = Store::at(root)?;
        let root = &store.root;
        for sub in [
            "objects", "records", "failed", "refs", "runs", "work", "logs", "locks", "cache", "tmp",
        ] {
            let p = root.join(sub);
            fs::create_dir_all(&p)
                .with_context(|| format!("cannot create store directory {}", p.display()))?;
        }
        Ok(store)
    }

    /// The store at `root` (made absolute) as it is, creating nothing: for commands that
    /// only look (a missing store reads as empty).
    pub fn at(root: &Path) -> Result<Store> {
        let root = std::path::absolute(root)
            .with_context(|| format!("cannot resolve the store path {}", root.display()))?;
        Ok(Store { root })
    }

    /// Records (else failed attempts) whose key starts with `prefix`, one per key.
    pub fn records_with_prefix(&self, prefix: &str) -> Vec<Record> {
        let mut by_key: BTreeMap<String, Record> = BTreeMap::new();
        // `records/` last, so a success wins over an older failed attempt at its key.
        for dir in ["failed", "records"] {
            for e in fs::read_dir(self.root.join(dir))
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.file_name().to_string_lossy().starts_with(prefix)
                    && let Some(r) = read_json::<Record>(&e.path())
                {
                    by_key.insert(r.key.clone(), r);
                }
            }
        }
        by_key.into_values().collect()
    }

    /// Whether `root` holds a store (one [`Store::open`] made): commands that only read or
    /// trim a store check this first, so a mistyped path is not made into an empty store.
    pub fn exists_at(root: &Path) -> bool {
        root.join("records").is_dir() && root.join("objects").is_dir()
    }

    /// The TensorBoard tree: `PIPELINE/STAGE[/SWEEP-POINT]` links to event directories.
    pub fn tensorboard_dir(&self) -> PathBuf {
        self.root.join("tensorboard")
    }

    pub fn object_path(&self, hash: &str) -> PathBuf {
        self.root.join("objects").join(&hash[..2]).join(hash)
    }

    pub fn record_path(&self, key: &str) -> PathBuf {
        self.root.join("records").join(format!("{key}.json"))
    }

    pub fn failed_path(&self, key: &str) -> PathBuf {
        self.root.join("failed").join(format!("{key}.json"))
    }

    pub fn work_dir(&self, key: &str) -> PathBuf {
        self.root.join("work").join(key)
    }

    pub fn log_rel(&self, key: &str) -> String {
        format!("logs/{key}.log")
    }

    pub fn stat_cache_path(&self) -> PathBuf {
        self.root.join("cache").join("stat.json")
    }

    fn ref_path(&self, pipeline: &str, stage: &str) -> PathBuf {
        self.root
            .join("refs")
            .join(pipeline)
            .join(format!("{stage}.json"))
    }

    /// The record of a successful run of `key`, if any. A record whose objects are gone
    /// (deleted by hand) does not count.
    pub fn record(&self, key: &str) -> Option<Record> {
        let r: Record = read_json(&self.record_path(key))?;
        r.outputs
            .values()
            .all(|o| self.object_path(&o.hash).exists())
            .then_some(r)
    }

    pub fn failed(&self, key: &str) -> Option<Record> {
        read_json(&self.failed_path(key))
    }

    pub fn write_record(&self, r: &Record) -> Result<()> {
        let path = match r.status {
            RunStatus::Ok => self.record_path(&r.key),
            _ => self.failed_path(&r.key),
        };
        atomic::write_json(&path, r)
            .with_context(|| format!("cannot write record {}", path.display()))?;
        if r.status == RunStatus::Ok {
            let _ = fs::remove_file(self.failed_path(&r.key));
        }
        Ok(())
    }

    /// The key `stage` of `pipeline` last resolved to.
    pub fn get_ref(&self, pipeline: &str, stage: &str) -> Option<String> {
        read_json::<RefEntry>(&self.ref_path(pipeline, stage)).map(|r| r.key)
    }

    /// The record (successful or not) of the run `stage` of `pipeline` last resolved to.
    pub fn last_run(&self, pipeline: &str, stage: &str) -> Option<Record> {
        let key = self.get_ref(pipeline, stage)?;
        self.record(&key).or_else(|| self.failed(&key))
    }

    pub fn set_ref(&self, pipeline: &str, stage: &str, key: &str) -> Result<()> {
        if self.get_ref(pipeline, stage).as_deref() == Some(key) {
            return Ok(());
        }
        atomic::write_json(
            &self.ref_path(pipeline, stage),
            &RefEntry {
                key: key.to_string(),
            },
        )?;
        Ok(())
    }

    /// Moves a finished output into the store (by rename), making it read-only. If the same
    /// content is already stored, the new copy is discarded.
    pub fn commit_object(&self, src: &Path) -> Result<ObjectRef> {
        let (kind, hash) = hash::StatCache::none()
            .hash_path(src)
            .with_context(|| format!("cannot hash output {}", src.display()))?;
        let bytes = tree_size(src);
        let dest = self.object_path(&hash);
        if dest.exists() {
            remove_tree(src)?;
        } else {
            atomic::sync_tree(src)?;
            set_readonly(src, true)?;
            let parent = dest.parent().expect("object path has a parent");
            fs::create_dir_all(parent)?;
            fs::rename(src, &dest).with_context(|| {
                format!(
                    "cannot move {} into the store at {}",
                    src.display(),
                    dest.display()
                )
            })?;
            atomic::sync_dir(parent)?;
        }
        Ok(ObjectRef { hash, kind, bytes })
    }

    /// The lock of `key` if no other process holds it.
    pub fn try_lock_key(&self, key: &str) -> Result<Option<File>> {
        let f = self.lock_file(key)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// Blocks until this process holds the lock of `key`.
    pub fn lock_key(&self, key: &str) -> Result<File> {
        let f = self.lock_file(key)?;
        f.lock()?;
        Ok(f)
    }

    /// Whether another process is computing `key` right now.
    pub fn key_busy(&self, key: &str) -> bool {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        match File::open(path) {
            Ok(f) => matches!(f.try_lock_shared(), Err(fs::TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }

    fn lock_file(&self, key: &str) -> Result<File> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open lock {}", path.display()))
    }

    /// Held (shared) by every runner using the store; `gc` and `verify` take it exclusively
    /// so they never delete what a running stage is about to use.
    pub fn use_lock(&self, exclusive: bool) -> Result<File> {
        let path = self.root.join("store.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let res = if exclusive {
            f.try_lock()
        } else {
            f.try_lock_shared()
        };
        match res {
            Ok(()) => Ok(f),
            Err(fs::TryLockError::WouldBlock) if exclusive => anyhow::bail!(
                "the store {} is in use by a running `runner`; wait for it to finish",
                self.root.display()
            ),
            Err(fs::TryLockError::WouldBlock) => {
                f.lock_shared()?;
                Ok(f)
            }
            Err(fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// Every successful record, in no particular order.
    pub fn records(&self) -> Vec<Record> {
        list_json(&self.root.join("records"))
    }
}

/// A file name without its extension (a key, a run id).
pub(crate) fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn list_json<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| read_json(&e.path()))
                .collect()
        })
        .unwrap_or_default()
}

/// Total bytes of the files under `path`.
pub fn tree_size(path: &Path) -> u64 {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => fs::read_dir(path)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| tree_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Sets or clears write permission on a file or tree.
pub fn set_readonly(path: &Path, readonly: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() && !readonly {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() | 0o700))?;
    }
    if meta.is_dir() {
        for e in fs::read_dir(path)? {
            set_readonly(&e?.path(), readonly)?;
        }
    }
    let mode = meta.permissions().mode();
    let new = if readonly {
        mode & !0o222
    } else {
        mode | 0o200
    };
    fs::set_permissions(path, fs::Permissions::from_mode(new))
}

use std::os::unix::fs::MetadataExt;

/// Removes a file or tree, read-only or not.
pub fn remove_tree(path: &Path) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        set_readonly(path, false)?;
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .with_context(|| format!("cannot remove {}", path.display()))
}

/// Current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

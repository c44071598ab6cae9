//! Content hashing: blake3 over files (memory-mapped, multi-threaded for big ones) and
//! directories (a Merkle tree of names and child hashes), plus a stat cache so an
//! unchanged dataset is never read twice.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Above this size a file is hashed with all cores.
const PARALLEL_THRESHOLD: u64 = 8 << 20;
/// Files modified this recently are not cached: a write in the same timestamp tick after
/// hashing would otherwise go unnoticed.
const RACY_WINDOW_NS: i128 = 2_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    File,
    Dir,
}

/// Hashes one file's bytes.
pub fn hash_file(path: &Path) -> io::Result<String> {
    let len = fs::metadata(path)?.len();
    let mut h = blake3::Hasher::new();
    if len >= PARALLEL_THRESHOLD {
        h.update_mmap_rayon(path)?;
    } else {
        h.update_mmap(path)?;
    }
    Ok(h.finalize().to_hex().to_string())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StatEntry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    hash: String,
}

/// `(path, size, mtime, ctime, inode) → hash`, persisted in the store.
pub struct StatCache {
    file: Option<PathBuf>,
    entries: Mutex<HashMap<PathBuf, StatEntry>>,
    dirty: Mutex<bool>,
}

fn nanos(secs: i64, nsec: i64) -> i128 {
    secs as i128 * 1_000_000_000 + nsec as i128
}

impl StatCache {
    /// A cache persisted at `file` (a missing or unreadable file starts empty).
    pub fn load(file: &Path) -> StatCache {
        let entries = fs::read(file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        StatCache {
            file: Some(file.to_path_buf()),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// A cache that is never saved (for hashing outputs, which are hashed once).
    pub fn none() -> StatCache {
        StatCache {
            file: None,
            entries: Mutex::default(),
            dirty: Mutex::new(false),
        }
    }

    pub fn save(&self) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !*self.dirty.lock().expect("poisoned") {
            return Ok(());
        }
        let entries = self.entries.lock().expect("poisoned");
        crate::atomic::write(
            file,
            &serde_json::to_vec(&*entries).map_err(io::Error::other)?,
        )
    }

    fn cached_file_hash(&self, path: &Path, meta: &fs::Metadata) -> io::Result<String> {
        let abs = std::path::absolute(path)?;
        let mtime_ns = nanos(meta.mtime(), meta.mtime_nsec());
        let ctime_ns = nanos(meta.ctime(), meta.ctime_nsec());
        if self.file.is_some()
            && let Some(e) = self.entries.lock().expect("poisoned").get(&abs)
            && e.size == meta.len()
            && e.mtime_ns == mtime_ns
            && e.ctime_ns == ctime_ns
            && e.ino == meta.ino()
        {
            return Ok(e.hash.clone());
        }
        let hash = hash_file(path)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        if self.file.is_some() && now - mtime_ns.max(ctime_ns) > RACY_WINDOW_NS {
            self.entries.lock().expect("poisoned").insert(
                abs,
                StatEntry {
                    size: meta.len(),
                    mtime_ns,
                    ctime_ns,
                    ino: meta.ino(),
                    hash: hash.clone(),
                },
            );
            *self.dirty.lock().expect("poisoned") = true;
        }
        Ok(hash)
    }

    /// Hashes a file or directory (following symlinks).
    pub fn hash_path(&self, path: &Path) -> io::Result<(ObjectKind, String)> {
        let meta = fs::metadata(path)?;
        if meta.is_dir() {
            Ok((ObjectKind::Dir, self.hash_dir(path)?))
        } else {
            Ok((ObjectKind::File, self.cached_file_hash(path, &meta)?))
        }
    }

    /// Merkle hash: blake3 over sorted lines `<f|x|d> <child hash> <name>`, where `x` marks
    /// an executable file. Files are hashed in parallel.
    fn hash_dir(&self, dir: &Path) -> io::Result<String> {
        let mut entries: Vec<(String, PathBuf, fs::Metadata)> = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().into_string().map_err(|n| {
                io::Error::other(format!("non-UTF-8 file name {n:?} in {}", dir.display()))
            })?;
            let path = e.path();
            let meta = fs::metadata(&path)?;
            entries.push((name, path, meta));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let children: Vec<String> = entries
            .par_iter()
            .map(|(name, path, meta)| {
                let (tag, hash) = if meta.is_dir() {
                    ('d', self.hash_dir(path)?)
                } else {
                    let tag = if meta.mode() & 0o111 != 0 { 'x' } else { 'f' };
                    (tag, self.cached_file_hash(path, meta)?)
                };
                Ok(format!("{tag} {hash} {name}\n"))
            })
            .collect::<io::Result<_>>()?;
        let mut h = blake3::Hasher::new();
        h.update(b"adjq-tree-v1\n");
        for c in &children {
            h.update(c.as_bytes());
        }
        Ok(h.finalize().to_hex().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hash_is_blake3_of_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        fs::write(&p, b"hello").unwrap();
        assert_eq!(
            hash_file(&p).unwrap(),
            blake3::hash(b"hello").to_hex().to_string()
        );
    }

    #[test]
    fn dir_hash_depends_on_names_and_content_not_mtime() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        for d in [&d1, &d2] {
            fs::create_dir(d.path().join("sub")).unwrap();
            fs::write(d.path().join("sub/x"), b"1").unwrap();
            fs::write(d.path().join("y"), b"2").unwrap();
        }
        let c = StatCache::none();
        let h1 = c.hash_path(d1.path()).unwrap();
        assert_eq!(h1, c.hash_path(d2.path()).unwrap());
        fs::rename(d2.path().join("y"), d2.path().join("z")).unwrap();
        assert_ne!(h1, c.hash_path(d2.path()).unwrap());
        fs::write(d1.path().join("sub/x"), b"3").unwrap();
        assert_ne!(h1.1, c.hash_path(d1.path()).unwrap().1);
    }
}

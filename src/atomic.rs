//! Crash-safe file writes: temp file in the same directory, fsync, rename, fsync dir.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// The name prefix of [`write`]'s temp files (tempfile adds 6 random alphanumerics).
const TEMP_PREFIX: &str = ".tmp-";
const TEMP_RANDOM_LEN: usize = 6;

/// Writes `bytes` to `path` so that readers see either the old file or the whole new one,
/// even across kill -9 or power loss.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .rand_bytes(TEMP_RANDOM_LEN)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write(path, &bytes)
}

/// Removes, under `dir`, the temp files of [`write`]s that a kill -9 cut short (they are
/// deleted only when the writing process lives to drop them). A stage resuming in its
/// work dir calls this first, so no half-written leftover ends up in an output.
pub fn remove_leftovers(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            removed += remove_leftovers(&entry.path())?;
        } else if kind.is_file() && is_temp_name(&entry.file_name().to_string_lossy()) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX).is_some_and(|rest| {
        rest.len() == TEMP_RANDOM_LEN && rest.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

/// Makes a rename or create in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsyncs every file under `path` (a file or a directory tree) before it is renamed into
/// the store, so a committed object is never missing data after a crash.
pub fn sync_tree(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            sync_tree(&entry?.path())?;
        }
        sync_dir(path)
    } else if meta.is_file() {
        File::open(path)?.sync_all()
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// What a write killed before its rename leaves is removed; everything else stays,
    /// including files that merely start like a temp file.
    #[test]
    fn leftovers_of_cut_short_writes_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("checkpoints/e0m3");
        super::write(&nested.join("model.json"), b"{}").unwrap();
        let leftover = tempfile::Builder::new()
            .prefix(super::TEMP_PREFIX)
            .rand_bytes(super::TEMP_RANDOM_LEN)
            .tempfile_in(&nested)
            .unwrap()
            .keep()
            .unwrap()
            .1;
        let kept = [".tmp-notes.txt", ".tmp-", "tmp-abcdef", "model.json"];
        for name in &kept[..3] {
            std::fs::write(nested.join(name), b"x").unwrap();
        }
        assert_eq!(super::remove_leftovers(dir.path()).unwrap(), 1);
        assert!(!leftover.exists());
        for name in kept {
            assert!(nested.join(name).exists(), "{name} was removed");
        }
    }

    /// A resumed stage reads back the metrics it wrote before the interruption: every f64
    /// must survive JSON text exactly, or the resumed outputs differ in the last digit
    /// (serde_json parses floats exactly only with its `float_roundtrip` feature).
    #[test]
    fn f64_values_survive_json_text_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.json");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut values = vec![1.855_397_299_579_952_1, 0.1, 1.0 / 3.0, 6.02e23, 5e-324];
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let v = f64::from_bits(state >> 2);
            if v.is_finite() {
                values.push(v);
            }
            values.push((state >> 11) as f64 / (1u64 << 53) as f64 * 10.0);
        }
        super::write_json(&path, &values).unwrap();
        let back: Vec<f64> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let differ = values
            .iter()
            .zip(&back)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differ, 0, "{differ} of {} values changed", values.len());
    }
}

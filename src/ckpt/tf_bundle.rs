//! TensorFlow V2 checkpoints ("tensor bundles", tensorflow/core/util/tensor_bundle/):
//! `PREFIX.index`, an SSTable of name → `BundleEntryProto` (plus the header under the empty
//! key), and `PREFIX.data-NNNNN-of-MMMMM` shards holding the tensor bytes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::error::{CkptError, Result};
use super::proto::{self, BundleEntry, read_varint};
use super::sstable::{self, TableError, mask};
use super::tensor::{DType, Data, Tensor, TensorMap};
use super::{Contents, Unreadable};

/// The bundle format version this reader implements (`kTensorBundleVersion`).
const READER_VERSION: i32 = 1;

/// The state file `tf.train.Checkpoint`/`Saver` keep next to their checkpoints.
const STATE_FILE: &str = "checkpoint";

/// Whether `path` names a bundle: its prefix, its `.index`, or a directory with a state file.
pub fn is_bundle(path: &Path) -> bool {
    if path.is_dir() {
        return path.join(STATE_FILE).is_file();
    }
    path.extension().is_some_and(|e| e == "index") || with_suffix(path, ".index").is_file()
}

/// The checkpoint prefix that `path` names (see [`is_bundle`]).
pub fn resolve_prefix(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        let state = path.join(STATE_FILE);
        let text = fs::read_to_string(&state).map_err(CkptError::io(&state))?;
        let latest = latest_checkpoint(&text)
            .ok_or_else(|| CkptError::format(&state, "no `model_checkpoint_path: \"...\"` line"))?;
        // Relative paths are relative to the state file's directory, as in TF. An absolute
        // one often names the machine that wrote it; then look beside the state file.
        let named = path.join(&latest);
        let beside = Path::new(&latest).file_name().map(|f| path.join(f));
        return Ok(match beside {
            Some(b) if !with_suffix(&named, ".index").is_file() => b,
            _ => named,
        });
    }
    let s = path.as_os_str().to_string_lossy();
    Ok(match s.strip_suffix(".index") {
        Some(prefix) => PathBuf::from(prefix),
        None => path.to_path_buf(),
    })
}

/// The `model_checkpoint_path` of a `CheckpointState` text proto.
fn latest_checkpoint(state: &str) -> Option<String> {
    state.lines().find_map(|line| {
        let value = line.trim().strip_prefix("model_checkpoint_path:")?.trim();
        let quoted = value.strip_prefix('"')?.strip_suffix('"')?;
        Some(quoted.replace("\\\"", "\"").replace("\\\\", "\\"))
    })
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Reads every tensor of the checkpoint `path` names, checking every crc on the way; a
/// tensor this reader cannot load is an error naming it.
pub fn read(path: &Path) -> Result<TensorMap> {
    read_bundle(path, false).map(|c| c.tensors)
}

/// Reads every tensor it can, and lists the rest (unsupported dtypes, partitioned
/// variables) with their dtype, shape, size and why; damage is still an error.
pub fn read_contents(path: &Path) -> Result<Contents> {
    read_bundle(path, true)
}

fn read_bundle(path: &Path, lenient: bool) -> Result<Contents> {
    let prefix = resolve_prefix(path)?;
    let index_path = with_suffix(&prefix, ".index");
    let index = fs::read(&index_path).map_err(CkptError::io(&index_path))?;
    let entries = sstable::read_table(&index).map_err(|e| match e {
        TableError::BlockCrc {
            offset,
            stored,
            computed,
        } => CkptError::BlockCrc {
            path: index_path.clone(),
            offset,
            stored,
            computed,
        },
        other => CkptError::format(&index_path, other.to_string()),
    })?;

    let mut entries = entries.into_iter();
    let header = match entries.next() {
        Some((key, value)) if key.is_empty() => proto::decode_header(&value)
            .map_err(|e| CkptError::format(&index_path, format!("bundle header: {e}")))?,
        _ => return Err(CkptError::format(&index_path, "no bundle header entry")),
    };
    if header.endianness != 0 {
        return Err(CkptError::format(
            &index_path,
            "big-endian bundles are not supported",
        ));
    }
    if header.min_consumer > READER_VERSION {
        return Err(CkptError::format(
            &index_path,
            format!(
                "bundle needs reader version {} (this reader is {READER_VERSION})",
                header.min_consumer
            ),
        ));
    }
    let num_shards = header.num_shards;
    if num_shards < 1 {
        return Err(CkptError::format(
            &index_path,
            format!("bundle header says {num_shards} shards"),
        ));
    }

    let mut shards = Shards {
        prefix: &prefix,
        num_shards,
        open: HashMap::new(),
    };
    let mut out = Contents::default();
    for (key, value) in entries {
        let name = String::from_utf8_lossy(&key).into_owned();
        let entry = proto::decode_entry(&value)
            .map_err(|e| CkptError::format(&index_path, format!("entry `{name}`: {e}")))?;
        if lenient && let Some(u) = unreadable(&name, &entry) {
            out.unreadable.push(u);
            continue;
        }
        let tensor = read_entry(&index_path, &mut shards, &name, &entry)?;
        out.tensors.insert(name, tensor);
    }
    Ok(out)
}

/// Why an entry cannot be loaded, if it cannot (what [`read_entry`] refuses before
/// reading any data).
fn unreadable(name: &str, entry: &BundleEntry) -> Option<Unreadable> {
    let why = if entry.num_slices > 0 {
        "a partitioned (sliced) variable".to_string()
    } else if tf_dtype(entry.dtype).is_none() {
        format!("unsupported dtype {}", tf_dtype_name(entry.dtype))
    } else {
        return None;
    };
    Some(Unreadable {
        name: name.to_string(),
        dtype: tf_dtype(entry.dtype)
            .map(|d| d.to_string())
            .unwrap_or_else(|| tf_dtype_label(entry.dtype).to_string()),
        shape: entry
            .shape
            .iter()
            .flatten()
            .map(|&d| d.max(0) as usize)
            .collect(),
        bytes: entry.size.max(0) as usize,
        why,
    })
}

/// Data shard files, opened on first use.
struct Shards<'a> {
    prefix: &'a Path,
    num_shards: i32,
    open: HashMap<i32, (PathBuf, File, u64)>,
}

impl Shards<'_> {
    /// The bytes `[offset, offset + size)` of shard `id`, and that shard's path.
    fn read(&mut self, name: &str, id: i32, offset: u64, size: u64) -> Result<(PathBuf, Vec<u8>)> {
        if !self.open.contains_key(&id) {
            let path = with_suffix(
                self.prefix,
                &format!(".data-{id:05}-of-{:05}", self.num_shards),
            );
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(CkptError::MissingShard {
                        path,
                        name: name.to_string(),
                    });
                }
                Err(e) => return Err(CkptError::io(&path)(e)),
            };
            let len = file.metadata().map_err(CkptError::io(&path))?.len();
            self.open.insert(id, (path, file, len));
        }
        let (path, file, len) = &self.open[&id];
        let end = offset.checked_add(size).filter(|&e| e <= *len);
        if end.is_none() {
            return Err(CkptError::Truncated {
                path: path.clone(),
                name: name.to_string(),
                start: offset,
                end: offset.saturating_add(size),
                len: *len,
            });
        }
        // The range lies within the file, so the allocation is bounded by its size.
        let mut buf = vec![0; size as usize];
        let mut f = file;
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(CkptError::io(path))?;
        Ok((path.clone(), buf))
    }
}

fn read_entry(
    index_path: &Path,
    shards: &mut Shards<'_>,
    name: &str,
    entry: &BundleEntry,
) -> Result<Tensor> {
    let bad = |msg: String| CkptError::format(index_path, format!("tensor `{name}`: {msg}"));
    if entry.num_slices > 0 {
        return Err(bad(
            "partitioned (sliced) variables are not supported".into()
        ));
    }
    let dtype = tf_dtype(entry.dtype).ok_or_else(|| CkptError::UnsupportedDtype {
        path: index_path.to_path_buf(),
        name: name.to_string(),
        dtype: tf_dtype_name(entry.dtype),
    })?;
    let dims = entry
        .shape
        .as_ref()
        .ok_or_else(|| bad("unknown rank".into()))?;
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| bad(format!("negative dimension in shape {dims:?}")))?;
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if !(0..shards.num_shards).contains(&entry.shard_id) {
        return Err(bad(format!(
            "shard {} of {}",
            entry.shard_id, shards.num_shards
        )));
    }
    let (offset, size) = match (u64::try_from(entry.offset), u64::try_from(entry.size)) {
        (Ok(o), Ok(s)) => (o, s),
        _ => return Err(bad("negative offset or size".into())),
    };
    if let Some(elem) = dtype.size() {
        let want = numel.checked_mul(elem).map(|n| n as u64);
        if want != Some(size) {
            return Err(bad(format!(
                "{size} bytes stored but shape {shape:?} of {dtype} needs {}",
                numel.saturating_mul(elem)
            )));
        }
    }

    let (shard_path, bytes) = shards.read(name, entry.shard_id, offset, size)?;
    let crc_error = |stored, computed| CkptError::EntryCrc {
        path: shard_path.clone(),
        name: name.to_string(),
        stored,
        computed,
    };
    let data = if dtype == DType::String {
        let (strings, crc) = decode_strings(&bytes, numel).map_err(|e| match e {
            StringError::LengthCrc { stored, computed } => crc_error(stored, computed),
            StringError::Malformed(msg) => bad(msg.into()),
        })?;
        if mask(crc) != entry.crc32c {
            return Err(crc_error(entry.crc32c, mask(crc)));
        }
        Data::Strings(strings)
    } else {
        let computed = mask(crc32c::crc32c(&bytes));
        if computed != entry.crc32c {
            return Err(crc_error(entry.crc32c, computed));
        }
        Data::Bytes(bytes)
    };
    Ok(Tensor { dtype, shape, data })
}

enum StringError {
    LengthCrc { stored: u32, computed: u32 },
    Malformed(&'static str),
}

/// Decodes a string tensor as tensor_bundle.cc's `WriteStringTensor` lays it out:
/// the varint64 length of every element, a u32 masked crc32c of those lengths, then the
/// element bytes. The returned (unmasked) crc covers what the entry's crc covers: each
/// length as a little-endian u32 (u64 above u32::MAX; not the varint bytes), the stored
/// length checksum, and the element bytes.
fn decode_strings(
    buf: &[u8],
    numel: usize,
) -> std::result::Result<(Vec<Vec<u8>>, u32), StringError> {
    if buf.is_empty() && numel == 0 {
        // TF's reader accepts an empty record for an empty tensor.
        return Ok((Vec::new(), 0));
    }
    let mut rest = buf;
    let mut crc = 0;
    let mut lens = Vec::new();
    for _ in 0..numel {
        let len = read_varint(&mut rest)
            .map_err(|_| StringError::Malformed("string lengths run past the data"))?;
        crc = match u32::try_from(len) {
            Ok(l) => crc32c::crc32c_append(crc, &l.to_le_bytes()),
            Err(_) => crc32c::crc32c_append(crc, &len.to_le_bytes()),
        };
        lens.push(len);
    }
    let (stored, tail) = rest.split_first_chunk::<4>().ok_or(StringError::Malformed(
        "no length checksum after the string lengths",
    ))?;
    if u32::from_le_bytes(*stored) != mask(crc) {
        return Err(StringError::LengthCrc {
            stored: u32::from_le_bytes(*stored),
            computed: mask(crc),
        });
    }
    crc = crc32c::crc32c_append(crc, stored);
    rest = tail;
    let mut strings = Vec::with_capacity(lens.len());
    for len in lens {
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= rest.len())
            .ok_or(StringError::Malformed("string bytes run past the data"))?;
        let (s, tail) = rest.split_at(len);
        crc = crc32c::crc32c_append(crc, s);
        strings.push(s.to_vec());
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(StringError::Malformed("bytes left after the last string"));
    }
    Ok((strings, crc))
}

/// `tensorflow.DataType` values this reader supports.
fn tf_dtype(v: i32) -> Option<DType> {
    use DType::*;
    Some(match v {
        1 => F32,
        2 => F64,
        3 => I32,
        4 => U8,
        5 => I16,
        6 => I8,
        7 => String,
        9 => I64,
        10 => Bool,
        14 => BF16,
        17 => U16,
        19 => F16,
        22 => U32,
        23 => U64,
        _ => return None,
    })
}

/// A readable name for a `DataType` value this reader does not support, with the value.
fn tf_dtype_name(v: i32) -> String {
    format!("{} (DataType {v})", tf_dtype_label(v))
}

/// TF's name of a `DataType` value this reader does not support.
fn tf_dtype_label(v: i32) -> &'static str {
    match v {
        8 => "complex64",
        11 => "qint8",
        12 => "quint8",
        13 => "qint32",
        15 => "qint16",
        16 => "quint16",
        18 => "complex128",
        20 => "resource",
        21 => "variant",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_names_the_latest_checkpoint() {
        let text = "model_checkpoint_path: \"model.ckpt-10\"\nall_model_checkpoint_paths: \"x\"\n";
        assert_eq!(latest_checkpoint(text).as_deref(), Some("model.ckpt-10"));
        assert_eq!(latest_checkpoint("all_model_checkpoint_paths: \"x\""), None);
    }

    #[test]
    fn string_layout_round_trips_and_checks_the_length_crc() {
        // Two strings, "a" and "bcd", laid out as WriteStringTensor does.
        let lens_crc =
            crc32c::crc32c_append(crc32c::crc32c(&1u32.to_le_bytes()), &3u32.to_le_bytes());
        let mut buf = vec![1, 3];
        buf.extend(mask(lens_crc).to_le_bytes());
        buf.extend(b"abcd");
        let (s, _) = decode_strings(&buf, 2).ok().unwrap();
        assert_eq!(s, vec![b"a".to_vec(), b"bcd".to_vec()]);
        buf[0] = 2;
        assert!(matches!(
            decode_strings(&buf, 2),
            Err(StringError::LengthCrc { .. })
        ));
    }
}

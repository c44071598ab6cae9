//! Checkpoint reading: TensorFlow V2 bundles, PyTorch `.pth`/`.pt` and safetensors, all
//! into one [`TensorMap`]; safetensors writing. Format detection and a summary for
//! `runner inspect-ckpt`.

mod error;
mod pickle_scan;
pub mod proto;
pub mod pytorch;
pub mod safetensors;
pub mod sstable;
mod tensor;
pub mod tf_bundle;

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

pub use error::{CkptError, Result};
pub use tensor::{DType, Data, Tensor, TensorMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// TensorFlow V2 checkpoint (`.index` + `.data-*` tensor bundle).
    TfBundle,
    /// PyTorch `torch.save` file: zip (1.6+), legacy, tar or plain pickle.
    PyTorch,
    Safetensors,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::TfBundle => "tensorflow",
            Format::PyTorch => "pytorch",
            Format::Safetensors => "safetensors",
        })
    }
}

/// How many leading bytes [`detect_bytes`] looks at.
pub const SNIFF_LEN: usize = 64;

/// The format of the checkpoint at `path`: a TF bundle by its prefix, `.index` or a
/// directory with a `checkpoint` state file; other files by their first bytes.
pub fn detect_format(path: &Path) -> Result<Format> {
    if tf_bundle::is_bundle(path) {
        return Ok(Format::TfBundle);
    }
    if path.is_dir() {
        return Err(CkptError::UnknownFormat {
            path: path.to_path_buf(),
            why: "a directory without a TensorFlow `checkpoint` state file".into(),
        });
    }
    let mut head = Vec::with_capacity(SNIFF_LEN);
    File::open(path)
        .and_then(|f| f.take(SNIFF_LEN as u64).read_to_end(&mut head))
        .map_err(CkptError::io(path))?;
    detect_bytes(&head).ok_or_else(|| CkptError::UnknownFormat {
        path: path.to_path_buf(),
        why: "no safetensors header, zip or pickle magic, nor a TF `.index` beside it".into(),
    })
}

/// Sniffs a file's leading bytes (safetensors, zip or pickle).
pub fn detect_bytes(head: &[u8]) -> Option<Format> {
    // safetensors: u64 LE header length, then the JSON header's `{`. Checked before pickle
    // because a 128-byte header starts with 0x80, pickle's PROTO opcode.
    if let Some(len) = head.first_chunk::<8>().map(|b| u64::from_le_bytes(*b))
        && len <= 100_000_000
        && head.get(8) == Some(&b'{')
    {
        return Some(Format::Safetensors);
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Some(Format::PyTorch); // torch.save's zip container
    }
    // Pickle protocol 2+ (legacy torch.save writes its magic number as the first pickle).
    if let [0x80, 2..=5, ..] = head {
        return Some(Format::PyTorch);
    }
    None
}

/// Reads every tensor of the checkpoint at `path`, checking checksums where the format
/// has them.
pub fn read(path: &Path, format: Format) -> Result<TensorMap> {
    match format {
        Format::TfBundle => tf_bundle::read(path),
        Format::PyTorch => pytorch::read(path),
        Format::Safetensors => safetensors::read(path).map(|(tensors, _)| tensors),
    }
}

/// A tensor a checkpoint holds that this reader cannot load.
#[derive(Clone, Debug, PartialEq)]
pub struct Unreadable {
    pub name: String,
    /// The dtype as the checkpoint names it.
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Stored data bytes.
    pub bytes: usize,
    pub why: String,
}

/// What a checkpoint holds: the tensors loaded, and those that cannot be.
#[derive(Clone, Debug, Default)]
pub struct Contents {
    pub tensors: TensorMap,
    pub unreadable: Vec<Unreadable>,
}

/// Reads every tensor that can be loaded and lists the others (see [`Unreadable`]); a
/// damaged file is still an error. Every format lists its unloadable tensors, PyTorch only
/// in its zip container (see [`pytorch`]).
pub fn read_contents(path: &Path, format: Format) -> Result<Contents> {
    match format {
        Format::TfBundle => tf_bundle::read_contents(path),
        Format::Safetensors => safetensors::read_contents(path),
        Format::PyTorch => pytorch::read_contents(path),
    }
}

/// One tensor in an [`Inspection`].
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub numel: usize,
    pub bytes: usize,
}

/// What a checkpoint holds, for `runner inspect-ckpt`.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub format: Format,
    pub rows: Vec<Row>,
    /// Tensors listed but not loadable.
    pub unreadable: Vec<Unreadable>,
}

impl Inspection {
    /// Floating-point elements over all tensors (what a model's parameter count counts).
    pub fn params(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.dtype.is_float())
            .map(|r| r.numel)
            .sum()
    }

    /// Data bytes over all tensors, the unloadable ones included.
    pub fn bytes(&self) -> usize {
        self.rows.iter().map(|r| r.bytes).sum::<usize>()
            + self.unreadable.iter().map(|u| u.bytes).sum::<usize>()
    }
}

/// Reads the checkpoint (detecting the format unless given) and lists its tensors.
pub fn inspect(path: &Path, format: Option<Format>) -> Result<Inspection> {
    let format = match format {
        Some(f) => f,
        None => detect_format(path)?,
    };
    let contents = read_contents(path, format)?;
    let rows = contents
        .tensors
        .into_iter()
        .map(|(name, t)| Row {
            numel: t.numel(),
            bytes: t.byte_len(),
            name,
            dtype: t.dtype,
            shape: t.shape,
        })
        .collect();
    Ok(Inspection {
        format,
        rows,
        unreadable: contents.unreadable,
    })
}

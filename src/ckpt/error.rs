//! The one error type of checkpoint reading and writing; every message names the file.

use std::io;
use std::path::PathBuf;

use super::DType;

pub type Result<T> = std::result::Result<T, CkptError>;

#[derive(Debug, thiserror::Error)]
pub enum CkptError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    /// A structural problem: bad magic, malformed block or protobuf, inconsistent sizes.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },

    #[error("{}: not a checkpoint this reader knows ({why})", path.display())]
    UnknownFormat { path: PathBuf, why: String },

    #[error(
        "{}: corrupt table block at offset {offset}: crc32c {computed:#010x} does not match the stored {stored:#010x}",
        path.display()
    )]
    BlockCrc {
        path: PathBuf,
        offset: u64,
        stored: u32,
        computed: u32,
    },

    #[error(
        "{}: tensor `{name}`: crc32c {computed:#010x} of its data does not match the index's {stored:#010x}",
        path.display()
    )]
    EntryCrc {
        path: PathBuf,
        name: String,
        stored: u32,
        computed: u32,
    },

    #[error("{}: data shard of tensor `{name}` is missing", path.display())]
    MissingShard { path: PathBuf, name: String },

    #[error(
        "{}: truncated: tensor `{name}` needs bytes {start}..{end} but the file has {len}",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        name: String,
        start: u64,
        end: u64,
        len: u64,
    },

    #[error("{}: tensor `{name}`: unsupported dtype {dtype}", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    /// A conversion the tensor's dtype does not allow (strings or bools to numbers).
    #[error("cannot convert a {dtype} tensor to {target}")]
    Convert { dtype: DType, target: &'static str },
}

impl CkptError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

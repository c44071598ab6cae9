//! Errors of the data pipeline. Every error about a record names its file and index.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why one record (or one image file) could not be used.
#[derive(Debug, Error)]
pub enum BadRecord {
    #[error("length crc32c mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    LengthCrc { stored: u32, computed: u32 },
    #[error("data crc32c mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    DataCrc { stored: u32, computed: u32 },
    #[error("truncated: {0}")]
    Truncated(&'static str),
    #[error("read failed: {0}")]
    Io(#[source] io::Error),
    #[error("malformed tf.train.Example: {0}")]
    Example(String),
    #[error("missing feature {0:?}")]
    MissingFeature(String),
    #[error("feature {key:?}: {reason}")]
    BadFeature { key: String, reason: String },
    #[error("label {label} (raw {raw}, label_offset {offset}) is outside 0..{num_classes}")]
    LabelOutOfRange {
        label: i64,
        raw: i64,
        offset: i64,
        num_classes: i64,
    },
    #[error("undecodable image: {0}")]
    Image(String),
}

/// Errors of the data pipeline.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("{}: record {index}: {reason}", path.display())]
    Record {
        path: PathBuf,
        index: u64,
        reason: BadRecord,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no files match {0:?}")]
    NoFiles(String),
    #[error("invalid file pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("invalid data configuration: {0}")]
    Config(String),
    #[error("data loader thread failed: {0}")]
    Internal(String),
}

/// What to do with a record that cannot be used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRecord {
    /// Stop with an error naming the file and record index.
    #[default]
    Error,
    /// Leave the record out of its batch, count it, and report it.
    Skip,
}

impl OnBadRecord {
    /// The names a manifest writes (`on_bad_record = "skip"`).
    pub const NAMES: &'static [&'static str] = &["error", "skip"];
}

impl DataError {
    pub(crate) fn record(path: impl Into<PathBuf>, index: u64, reason: BadRecord) -> Self {
        DataError::Record {
            path: path.into(),
            index,
            reason,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

//! A dataset as an ordered list of shards with known record counts (TFRecord files, or
//! one image file per shard for ImageFolder), plus how to turn a record into a
//! labelled image.

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::error::{BadRecord, DataError, OnBadRecord, Result};
use super::folder::{Folder, scan_folder};
use super::image::{Image, decode_into};
use super::schema::ExampleSchema;
use super::tfrecord::{self, Compression, RecordReader, SkipRead};

/// One shard: a TFRecord file, or a single image file.
#[derive(Clone, Debug)]
pub struct Shard {
    pub path: PathBuf,
    /// Usable records (those before a framing error, if any).
    pub records: u64,
    /// Global index of the shard's first record.
    pub first_index: u64,
}

#[derive(Debug)]
enum Kind {
    TfRecord {
        compression: Compression,
        schema: ExampleSchema,
    },
    /// Label of each shard (= file).
    Folder { labels: Vec<i64> },
}

#[derive(Debug)]
pub struct Dataset {
    shards: Vec<Shard>,
    kind: Kind,
    classes: Option<Vec<String>>,
    /// Framing errors found while counting records (only kept with `OnBadRecord::Skip`).
    skipped_at_open: Vec<DataError>,
    /// Records any loader of this dataset skipped, by (file, index): each counts once
    /// however many epochs meet it.
    skipped: std::sync::Mutex<std::collections::BTreeSet<(PathBuf, u64)>>,
}

fn with_offsets(list: impl IntoIterator<Item = (PathBuf, u64)>) -> Vec<Shard> {
    let mut next = 0;
    list.into_iter()
        .map(|(path, records)| {
            let s = Shard {
                path,
                records,
                first_index: next,
            };
            next += records;
            s
        })
        .collect()
}

impl Dataset {
    /// TFRecord shards matching `pattern` (e.g. `data/train-*-of-*`), counted by
    /// reading their headers. A framing error (bad length crc, truncation) fails here,
    /// or with `Skip` ends that shard early and is reported by `skipped_at_open`.
    pub fn tfrecord(
        pattern: &str,
        compression: Compression,
        schema: ExampleSchema,
        on_bad: OnBadRecord,
    ) -> Result<Dataset> {
        Self::tfrecord_files(
            &tfrecord::expand_pattern(pattern)?,
            compression,
            schema,
            on_bad,
        )
    }

    /// Like [`Dataset::tfrecord`], for an explicit file list (kept in the given order).
    pub fn tfrecord_files(
        files: &[PathBuf],
        compression: Compression,
        schema: ExampleSchema,
        on_bad: OnBadRecord,
    ) -> Result<Dataset> {
        let scans = files
            .par_iter()
            .map(|f| tfrecord::scan(f, compression))
            .collect::<Result<Vec<_>>>()?;
        let mut skipped_at_open = Vec::new();
        let mut counts = Vec::new();
        for (file, scan) in files.iter().zip(scans) {
            if let Some(e) = scan.error {
                match on_bad {
                    OnBadRecord::Error => return Err(e),
                    OnBadRecord::Skip => {
                        tracing::warn!("skipping the rest of a shard: {e}");
                        skipped_at_open.push(e);
                    }
                }
            }
            counts.push((file.clone(), scan.records));
        }
        Ok(Dataset {
            shards: with_offsets(counts),
            kind: Kind::TfRecord {
                compression,
                schema,
            },
            classes: None,
            skipped_at_open,
            skipped: Default::default(),
        })
    }

    /// An ImageFolder tree: `root/<class>/*.{jpg,jpeg,png}`, class ids by sorted name.
    pub fn image_folder(root: &Path) -> Result<Dataset> {
        let Folder { classes, items } = scan_folder(root)?;
        let labels = items.iter().map(|(_, l)| *l).collect();
        Ok(Dataset {
            shards: with_offsets(items.into_iter().map(|(p, _)| (p, 1))),
            kind: Kind::Folder { labels },
            classes: Some(classes),
            skipped_at_open: Vec::new(),
            skipped: Default::default(),
        })
    }

    /// Images with their labels (class indices), from a list file: one shard each, in
    /// the given order.
    pub fn image_list(items: Vec<(PathBuf, i64)>) -> Dataset {
        let labels = items.iter().map(|(_, l)| *l).collect();
        Dataset {
            shards: with_offsets(items.into_iter().map(|(p, _)| (p, 1))),
            kind: Kind::Folder { labels },
            classes: None,
            skipped_at_open: Vec::new(),
            skipped: Default::default(),
        }
    }

    /// How many classes the labels span, where the layout says without decoding (folder
    /// classes, or the largest listed label + 1); 0 for TFRecords.
    pub fn label_count(&self) -> usize {
        match (&self.kind, &self.classes) {
            (_, Some(c)) => c.len(),
            (Kind::Folder { labels }, None) => labels.iter().max().map_or(0, |m| *m as usize + 1),
            (Kind::TfRecord { .. }, None) => 0,
        }
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Total usable records.
    pub fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.records).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class names, for ImageFolder datasets.
    pub fn classes(&self) -> Option<&[String]> {
        self.classes.as_deref()
    }

    pub fn skipped_at_open(&self) -> &[DataError] {
        &self.skipped_at_open
    }

    /// Notes a record a loader skipped (with `OnBadRecord::Skip`).
    pub(crate) fn note_skipped(&self, e: &DataError) {
        if let DataError::Record { path, index, .. } = e {
            self.skipped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert((path.clone(), *index));
        }
    }

    /// Distinct records skipped so far, at open and by every loader.
    pub fn skipped_records(&self) -> usize {
        self.skipped_at_open.len()
            + self
                .skipped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len()
    }

    pub(crate) fn open_shard(&self, shard: usize) -> Result<ShardReader> {
        let path = &self.shards[shard].path;
        Ok(match &self.kind {
            Kind::TfRecord { compression, .. } => ShardReader::Records {
                reader: tfrecord::open(path, *compression)?,
                broken: false,
            },
            Kind::Folder { .. } => ShardReader::File(path.clone()),
        })
    }

    /// Turns one raw record into a decoded image (in `img`) and returns its label.
    pub(crate) fn decode(
        &self,
        shard: usize,
        raw: &[u8],
        img: &mut Image,
    ) -> Result<i64, BadRecord> {
        match &self.kind {
            Kind::TfRecord { schema, .. } => {
                let rec = schema.extract(raw)?;
                decode_into(&rec.encoded, img)?;
                if let Some((h, w)) = rec.declared_size
                    && (h, w) != (img.height as i64, img.width as i64)
                {
                    return Err(BadRecord::Image(format!(
                        "decoded {}x{} but the record declares {w}x{h}",
                        img.width, img.height
                    )));
                }
                Ok(rec.label)
            }
            Kind::Folder { labels } => {
                decode_into(raw, img)?;
                Ok(labels[shard])
            }
        }
    }
}

/// Sequential access to one shard's records.
pub(crate) enum ShardReader {
    Records {
        reader: RecordReader<Box<dyn SkipRead + Send>>,
        /// After an error that loses the framing, later records cannot be found.
        broken: bool,
    },
    File(PathBuf),
}

impl ShardReader {
    /// Reads (`want`) or skips the next record; skipping returns an empty Vec.
    pub(crate) fn next(&mut self, index: u64, want: bool) -> Result<Vec<u8>> {
        match self {
            ShardReader::Records { reader, broken } => {
                if *broken {
                    return Err(DataError::record(
                        reader.path(),
                        index,
                        BadRecord::Truncated("unreadable after an earlier error in this file"),
                    ));
                }
                let before = reader.index();
                let result = if want {
                    reader.read_record()
                } else {
                    reader.skip_record().map(|more| more.then(Vec::new))
                };
                // Framing is intact only if the reader moved past this record.
                *broken = reader.index() == before;
                result?.ok_or_else(|| {
                    DataError::record(
                        reader.path(),
                        index,
                        BadRecord::Truncated("file ends before its counted records"),
                    )
                })
            }
            ShardReader::File(path) if want => fs::read(&*path)
                .map_err(|e| DataError::record(path.clone(), index, BadRecord::Io(e))),
            ShardReader::File(_) => Ok(Vec::new()),
        }
    }
}

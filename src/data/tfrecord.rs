//! TFRecord files: framing, crc32c checks, plain and GZIP input, shard globs, writing.
//!
//! Each record is `u64 length (LE) | u32 masked_crc(length) | data | u32 masked_crc(data)`
//! with `masked(c) = rotr(c, 15) + 0xa282ead8`, exactly as TensorFlow writes it.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

use super::error::{BadRecord, DataError, Result};

const MASK_DELTA: u32 = 0xa282_ead8;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// TensorFlow's masked crc32c.
pub fn masked_crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
        .rotate_right(15)
        .wrapping_add(MASK_DELTA)
}

/// How a TFRecord file is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Sniff the gzip magic bytes (a plain TFRecord cannot start with a valid gzip header
    /// and a matching length crc at the same time in practice).
    #[default]
    Auto,
    None,
    Gzip,
}

/// A byte source that can skip forward, by seeking where possible.
pub trait SkipRead: Read {
    fn skip_bytes(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut self.take(n), &mut io::sink())?;
        if copied < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// A plain file that knows its length, so skipping past the end is caught as truncation.
pub struct PlainFile {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
}

impl Read for PlainFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl SkipRead for PlainFile {
    fn skip_bytes(&mut self, n: u64) -> io::Result<()> {
        let end = self.pos.saturating_add(n);
        if end > self.len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.inner.seek_relative(n as i64)?;
        self.pos = end;
        Ok(())
    }
}

impl SkipRead for BufReader<MultiGzDecoder<File>> {}
impl SkipRead for &[u8] {}
impl<T: SkipRead + ?Sized> SkipRead for Box<T> {
    fn skip_bytes(&mut self, n: u64) -> io::Result<()> {
        (**self).skip_bytes(n)
    }
}

/// Reads records one after another, checking both crcs.
pub struct RecordReader<R> {
    inner: R,
    path: PathBuf,
    index: u64,
}

/// Open a TFRecord file for reading.
pub fn open(
    path: &Path,
    compression: Compression,
) -> Result<RecordReader<Box<dyn SkipRead + Send>>> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let gzip = match compression {
        Compression::None => false,
        Compression::Gzip => true,
        Compression::Auto => {
            let mut magic = [0u8; 2];
            let n = read_full(&mut file, &mut magic).map_err(|e| DataError::io(path, e))?;
            file.rewind().map_err(|e| DataError::io(path, e))?;
            n == 2 && magic == GZIP_MAGIC
        }
    };
    let inner: Box<dyn SkipRead + Send> = if gzip {
        Box::new(BufReader::with_capacity(1 << 16, MultiGzDecoder::new(file)))
    } else {
        let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        Box::new(PlainFile {
            inner: BufReader::with_capacity(1 << 16, file),
            pos: 0,
            len,
        })
    };
    Ok(RecordReader::new(inner, path))
}

/// Like `read_exact`, but returns how many bytes were read before EOF.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: SkipRead> RecordReader<R> {
    /// `path` is only used to name the file in errors.
    pub fn new(inner: R, path: impl Into<PathBuf>) -> Self {
        RecordReader {
            inner,
            path: path.into(),
            index: 0,
        }
    }

    /// The file name used in errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Index (in this file) of the record the next read returns.
    pub fn index(&self) -> u64 {
        self.index
    }

    fn bad(&self, reason: BadRecord) -> DataError {
        DataError::record(&self.path, self.index, reason)
    }

    /// Reads and checks a header; `None` at a clean end of file.
    fn header(&mut self) -> Result<Option<u64>> {
        let mut h = [0u8; 12];
        let n = read_full(&mut self.inner, &mut h).map_err(|e| self.bad(BadRecord::Io(e)))?;
        match n {
            0 => return Ok(None),
            12 => {}
            _ => return Err(self.bad(BadRecord::Truncated("file ends inside the record header"))),
        }
        let stored = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        let computed = masked_crc(&h[..8]);
        if stored != computed {
            return Err(self.bad(BadRecord::LengthCrc { stored, computed }));
        }
        Ok(Some(u64::from_le_bytes(
            h[..8].try_into().expect("8 bytes"),
        )))
    }

    /// Reads the next record into `buf`; `Ok(false)` at a clean end of file.
    pub fn read_into(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        let Some(len) = self.header()? else {
            return Ok(false);
        };
        buf.clear();
        // Grow with the data actually present, so a huge bogus length cannot allocate.
        let got = (&mut self.inner)
            .take(len)
            .read_to_end(buf)
            .map_err(|e| self.bad(BadRecord::Io(e)))?;
        let mut crc = [0u8; 4];
        if got as u64 != len
            || read_full(&mut self.inner, &mut crc).map_err(|e| self.bad(BadRecord::Io(e)))? != 4
        {
            return Err(self.bad(BadRecord::Truncated("file ends inside the record data")));
        }
        let stored = u32::from_le_bytes(crc);
        let computed = masked_crc(buf);
        let index = self.index;
        // The record was consumed whole, so later records keep their indices.
        self.index += 1;
        if stored != computed {
            return Err(DataError::record(
                &self.path,
                index,
                BadRecord::DataCrc { stored, computed },
            ));
        }
        Ok(true)
    }

    /// The next record, or `None` at a clean end of file.
    pub fn read_record(&mut self) -> Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        Ok(self.read_into(&mut buf)?.then_some(buf))
    }

    /// Skips the next record without reading (or checking) its data.
    pub fn skip_record(&mut self) -> Result<bool> {
        let Some(len) = self.header()? else {
            return Ok(false);
        };
        self.inner
            .skip_bytes(len.saturating_add(4))
            .map_err(|_| self.bad(BadRecord::Truncated("file ends inside the record data")))?;
        self.index += 1;
        Ok(true)
    }
}

impl<R: SkipRead> Iterator for RecordReader<R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read_record().transpose()
    }
}

/// The outcome of counting a file's records from their headers.
#[derive(Debug)]
pub struct Scan {
    /// Records with a valid frame, before the first framing error.
    pub records: u64,
    /// The framing error that ended the scan early (the rest of the file is unreachable,
    /// since a bad length leaves no way to find the next record).
    pub error: Option<DataError>,
}

/// Counts records by reading headers and skipping data (seeking, for plain files).
pub fn scan(path: &Path, compression: Compression) -> Result<Scan> {
    let mut reader = open(path, compression)?;
    loop {
        match reader.skip_record() {
            Ok(true) => {}
            Ok(false) => {
                return Ok(Scan {
                    records: reader.index(),
                    error: None,
                });
            }
            Err(e) => {
                return Ok(Scan {
                    records: reader.index(),
                    error: Some(e),
                });
            }
        }
    }
}

/// Writes TFRecord framing around each record.
pub struct RecordWriter<W: Write> {
    inner: W,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(inner: W) -> Self {
        RecordWriter { inner }
    }

    pub fn write_record(&mut self, data: &[u8]) -> io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.inner.write_all(&len)?;
        self.inner.write_all(&masked_crc(&len).to_le_bytes())?;
        self.inner.write_all(data)?;
        self.inner.write_all(&masked_crc(data).to_le_bytes())
    }

    /// Flushes and returns the inner writer (finish a `GzEncoder` yourself).
    pub fn into_inner(mut self) -> io::Result<W> {
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// Expands a shard pattern such as `dir/train-*-of-*` into its sorted file list.
pub fn expand_pattern(pattern: &str) -> Result<Vec<PathBuf>> {
    let paths = glob::glob(pattern).map_err(|e| DataError::Pattern {
        pattern: pattern.to_string(),
        reason: e.to_string(),
    })?;
    let mut files = Vec::new();
    for p in paths {
        let p =
            p.map_err(|e| DataError::io(e.path().to_path_buf(), io::Error::other(e.to_string())))?;
        if p.is_file() {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(DataError::NoFiles(pattern.to_string()));
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(records: &[&[u8]]) -> Vec<u8> {
        let mut w = RecordWriter::new(Vec::new());
        for r in records {
            w.write_record(r).unwrap();
        }
        w.into_inner().unwrap()
    }

    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("") = 0, so the masked value is the delta itself.
        assert_eq!(masked_crc(b""), MASK_DELTA);
        // Known crc32c test vector.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn roundtrip_and_skip() {
        let bytes = framed(&[b"a", b"", b"hello world"]);
        let all: Vec<_> = RecordReader::new(bytes.as_slice(), "mem")
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(all, vec![b"a".to_vec(), vec![], b"hello world".to_vec()]);
        let mut r = RecordReader::new(bytes.as_slice(), "mem");
        assert!(r.skip_record().unwrap());
        assert!(r.skip_record().unwrap());
        assert_eq!(r.read_record().unwrap().unwrap(), b"hello world");
        assert!(r.read_record().unwrap().is_none());
    }

    #[test]
    fn errors_name_file_and_index() {
        let mut bytes = framed(&[b"abc", b"def"]);
        let second_data = 16 + 3 + 12;
        bytes[second_data] ^= 1;
        let mut r = RecordReader::new(bytes.as_slice(), "x/shard");
        assert!(r.read_record().unwrap().is_some());
        let e = r.read_record().unwrap_err().to_string();
        assert!(
            e.starts_with("x/shard: record 1: data crc32c mismatch"),
            "{e}"
        );
    }
}

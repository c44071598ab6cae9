//! TensorBoard event files: TFRecord-framed `tensorflow.Event` protos with scalar
//! summaries, encoded by hand (four fields are all TensorBoard needs), so curves written
//! by any stage open in TensorBoard itself.

use crate::data::RecordWriter;
use anyhow::{Context, Result};
use std::fs::File;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct EventWriter {
    out: RecordWriter<File>,
}

fn varint(mut v: u64, buf: &mut Vec<u8>) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(field: u32, wire: u8, buf: &mut Vec<u8>) {
    varint(((field as u64) << 3) | wire as u64, buf);
}

fn bytes_field(field: u32, data: &[u8], buf: &mut Vec<u8>) {
    key(field, 2, buf);
    varint(data.len() as u64, buf);
    buf.extend_from_slice(data);
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 }.
fn event(step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    key(1, 1, &mut e);
    e.extend_from_slice(&now().to_le_bytes());
    key(2, 0, &mut e);
    varint(step as u64, &mut e);
    body(&mut e);
    e
}

impl EventWriter {
    /// Creates (or truncates) `dir/events.out.tfevents.0.adjq` with the version header
    /// event. Stages rewrite the whole file from their records, so a resumed stage's
    /// curves have no duplicated steps.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("events.out.tfevents.0.adjq");
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = EventWriter {
            out: RecordWriter::new(file),
        };
        let header = event(0, |e| bytes_field(3, b"brain.Event:2", e));
        w.out.write_record(&header)?;
        Ok(w)
    }

    /// Scalars of one step: Summary { value = 1: Value { tag = 1, simple_value = 2 } }.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut value = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut value);
            key(2, 5, &mut value);
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            bytes_field(1, &value, &mut summary);
        }
        let record = event(step, |e| bytes_field(5, &summary, e));
        self.out.write_record(&record)?;
        Ok(())
    }
}

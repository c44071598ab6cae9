//! TensorBoard event files: TFRecord-framed `tensorflow.Event` protos with scalar
//! summaries and an HParams session, encoded by hand (a handful of fields is all
//! TensorBoard reads; a protobuf code generator would be a build step for that).
//!
//! Events are appended as they happen, each with the wall time it happened at, so a
//! running stage's curves are live and TensorBoard's relative and wall-time axes are
//! true. A resumed stage first drops what the interrupted attempt wrote past its last
//! saved state, so every step appears once.

use crate::ckpt::proto::{Fields, Value};
use crate::data::{RecordReader, RecordWriter};
use anyhow::{Context, Result};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The output name of the event directory training stages write.
pub const OUTPUT: &str = "tensorboard";
/// The one event file a stage writes (TensorBoard reads every `*tfevents*` file).
pub const FILE: &str = "events.out.tfevents.0.adjq";

const SESSION_START_TAG: &str = "_hparams_/session_start_info";
const SESSION_END_TAG: &str = "_hparams_/session_end_info";
/// Tag prefix of the stage's final metrics (written when it finishes).
const FINAL_PREFIX: &str = "final/";

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

fn double_field(field: u32, v: f64, buf: &mut Vec<u8>) {
    key(field, 1, buf);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 }.
fn event(wall_time: f64, step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    double_field(1, wall_time, &mut e);
    key(2, 0, &mut e);
    varint(step as u64, &mut e);
    body(&mut e);
    e
}

/// Summary.Value of the HParams plugin: tag = 1, tensor = 8 (an empty float tensor, as
/// TensorBoard's own writer gives), metadata = 9 { plugin_data = 1 { plugin_name = 1,
/// content = 2: HParamsPluginData } }.
fn hparams_value(tag: &str, plugin_data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    bytes_field(1, tag.as_bytes(), &mut v);
    // TensorProto { dtype = 1: DT_FLOAT, tensor_shape = 2 { dim = 2 { } } }.
    bytes_field(8, &[0x08, 0x01, 0x12, 0x02, 0x12, 0x00], &mut v);
    let mut plugin = Vec::new();
    bytes_field(1, b"hparams", &mut plugin);
    bytes_field(2, plugin_data, &mut plugin);
    let mut meta = Vec::new();
    bytes_field(1, &plugin, &mut meta);
    bytes_field(9, &meta, &mut v);
    let mut summary = Vec::new();
    bytes_field(1, &v, &mut summary);
    summary
}

/// An HParams session start: HParamsPluginData { session_start_info = 3 { hparams = 1
/// (map of google.protobuf.Value: number 2, string 3, bool 4), group_name = 4,
/// start_time_secs = 5 } }. Lists and objects go in as their JSON text.
fn session_start(hparams: &BTreeMap<String, Json>, group: &str, start: f64) -> Vec<u8> {
    let mut info = Vec::new();
    for (name, value) in hparams {
        let mut v = Vec::new();
        match value {
            Json::Bool(b) => {
                key(4, 0, &mut v);
                varint(u64::from(*b), &mut v);
            }
            Json::Number(n) => double_field(2, n.as_f64().unwrap_or(f64::NAN), &mut v),
            Json::String(s) => bytes_field(3, s.as_bytes(), &mut v),
            other => bytes_field(3, other.to_string().as_bytes(), &mut v),
        }
        let mut entry = Vec::new();
        bytes_field(1, name.as_bytes(), &mut entry);
        bytes_field(2, &v, &mut entry);
        bytes_field(1, &entry, &mut info);
    }
    bytes_field(4, group.as_bytes(), &mut info);
    double_field(5, start, &mut info);
    let mut data = Vec::new();
    bytes_field(3, &info, &mut data);
    hparams_value(SESSION_START_TAG, &data)
}

/// HParamsPluginData { session_end_info = 4 { status = 1: STATUS_SUCCESS, end_time_secs = 2 } }.
fn session_end(end: f64) -> Vec<u8> {
    let mut info = vec![0x08, 0x01];
    double_field(2, end, &mut info);
    let mut data = Vec::new();
    bytes_field(4, &info, &mut data);
    hparams_value(SESSION_END_TAG, &data)
}

/// Summary { value = 1: Value { tag = 1, simple_value = 2 } } of scalars.
fn scalar_summary<'a>(values: impl IntoIterator<Item = (&'a str, f64)>) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, v) in values {
        let mut value = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut value);
        key(2, 5, &mut value);
        value.extend_from_slice(&(v as f32).to_le_bytes());
        bytes_field(1, &value, &mut summary);
    }
    summary
}

/// The step of an encoded event, and whether it holds what [`EventWriter::finish`]
/// writes (final metrics, the session end); `None` if it does not decode.
fn step_and_finish(event: &[u8]) -> Option<(i64, bool)> {
    let mut fields = Fields(event);
    let (mut step, mut finish) = (0, false);
    while let Some((field, value)) = fields.next_field().ok()? {
        match (field, value) {
            (2, Value::Varint(s)) => step = s as i64,
            (5, Value::Bytes(summary)) => {
                let mut values = Fields(summary);
                while let Some((_, v)) = values.next_field().ok()? {
                    let Value::Bytes(v) = v else { continue };
                    let mut parts = Fields(v);
                    while let Some((f, tag)) = parts.next_field().ok()? {
                        if let (1, Value::Bytes(tag)) = (f, tag) {
                            finish |= tag.starts_with(FINAL_PREFIX.as_bytes())
                                || tag == SESSION_END_TAG.as_bytes();
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some((step, finish))
}

impl EventWriter {
    /// Opens `dir`'s event file to append the events of steps from `next_step` on. A
    /// file an interrupted attempt left is kept up to `next_step` (its wall times stay),
    /// without a torn last record; a new one starts with the version header and an
    /// HParams session of `hparams` (a stage's params) in group `group`.
    pub fn resume(
        dir: &Path,
        next_step: i64,
        hparams: &BTreeMap<String, Json>,
        group: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let mut kept = Vec::new();
        if let Ok(bytes) = std::fs::read(&path) {
            let reader = RecordReader::new(bytes.as_slice(), &path);
            for record in reader.map_while(|r| r.ok()) {
                match step_and_finish(&record) {
                    Some((step, false)) if step < next_step => kept.push(record),
                    _ => {}
                }
            }
        }
        let fresh = kept.is_empty();
        let mut framed = RecordWriter::new(Vec::new());
        for r in &kept {
            framed.write_record(r)?;
        }
        crate::atomic::write(&path, &framed.into_inner()?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let mut w = EventWriter {
            out: RecordWriter::new(std::fs::OpenOptions::new().append(true).open(&path)?),
        };
        if fresh {
            let t = now();
            w.write(&event(t, 0, |e| bytes_field(3, b"brain.Event:2", e)))?;
            let start = session_start(hparams, group, t);
            w.write(&event(t, 0, |e| bytes_field(5, &start, e)))?;
        }
        Ok(w)
    }

    /// One record, straight to the file (unbuffered, so TensorBoard sees it at once).
    fn write(&mut self, record: &[u8]) -> Result<()> {
        Ok(self.out.write_record(record)?)
    }

    /// Scalars of one step, stamped now.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f64)]) -> Result<()> {
        let summary = scalar_summary(values.iter().copied());
        self.write(&event(now(), step, |e| bytes_field(5, &summary, e)))
    }

    /// The stage's numeric final metrics as `final/NAME` scalars at `step`, and the end
    /// of its HParams session (success), so the HParams dashboard can compare stages.
    pub fn finish(&mut self, step: i64, metrics: &BTreeMap<String, Json>) -> Result<()> {
        // Where an attempt resumed says nothing about the result.
        let tags: Vec<(String, f64)> = metrics
            .iter()
            .filter(|(k, _)| !k.starts_with("resumed_at"))
            .filter_map(|(k, v)| Some((format!("{FINAL_PREFIX}{k}"), v.as_f64()?)))
            .collect();
        let t = now();
        let summary = scalar_summary(tags.iter().map(|(k, v)| (k.as_str(), *v)));
        self.write(&event(t, step, |e| bytes_field(5, &summary, e)))?;
        let end = session_end(t);
        self.write(&event(t, step, |e| bytes_field(5, &end, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    // Reference bytes from the real TensorBoard 2.21.0 (protobuf 7.36.2):
    // `summary_v2.hparams_pb({"beta": 10.0}, trial_id="t/adjq_hi",
    // start_time_secs=1700000000.5).SerializeToString()`, the same with {"on": True} and
    // {"name": "x"} (trial "g", time 2.0), and `_summary_pb(SESSION_END_INFO_TAG, ...)` of
    // SessionEndInfo(status=STATUS_SUCCESS, end_time_secs=1700000100.25).
    #[test]
    fn hparams_summaries_match_tensorboards_own_bytes() {
        let one = |name: &str, v: Json| BTreeMap::from([(name.to_string(), v)]);
        assert_eq!(
            hex(&session_start(
                &one("beta", serde_json::json!(10.0)),
                "t/adjq_hi",
                1700000000.5
            )),
            "0a5e0a1c5f68706172616d735f2f73657373696f6e5f73746172745f696e666f42060801120212004a360a340a0768706172616d7312291a270a110a046265746112091100000000000024402209742f61646a715f68692900002040fc54d941"
        );
        assert_eq!(
            hex(&session_start(
                &one("on", serde_json::json!(true)),
                "g",
                2.0
            )),
            "0a4d0a1c5f68706172616d735f2f73657373696f6e5f73746172745f696e666f42060801120212004a250a230a0768706172616d7312181a160a080a026f6e12022001220167290000000000000040"
        );
        assert_eq!(
            hex(&session_start(
                &one("name", serde_json::json!("x")),
                "g",
                2.0
            )),
            "0a500a1c5f68706172616d735f2f73657373696f6e5f73746172745f696e666f42060801120212004a280a260a0768706172616d73121b1a190a0b0a046e616d6512031a0178220167290000000000000040"
        );
        assert_eq!(
            hex(&session_end(1700000100.25)),
            "0a400a1a5f68706172616d735f2f73657373696f6e5f656e645f696e666f42060801120212004a1a0a180a0768706172616d73120d220b08011100001059fc54d941"
        );
    }

    fn steps(dir: &Path) -> Vec<(i64, bool)> {
        let bytes = std::fs::read(dir.join(FILE)).unwrap();
        RecordReader::new(bytes.as_slice(), dir)
            .map(|r| step_and_finish(&r.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn a_resumed_writer_keeps_earlier_steps_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let params = BTreeMap::new();
        let mut w = EventWriter::resume(dir.path(), 1, &params, "g").unwrap();
        for step in 1..=4 {
            w.scalars(step, &[("loss", step as f64)]).unwrap();
        }
        w.finish(
            4,
            &BTreeMap::from([("top1".into(), serde_json::json!(0.5))]),
        )
        .unwrap();
        drop(w);
        // A torn last record (kill -9 mid-write) is dropped too.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        f.write_all(&[9, 0, 0]).unwrap();
        drop(f);
        // The saved state was after step 2: steps 3, 4 and the finish go.
        let mut w = EventWriter::resume(dir.path(), 3, &params, "g").unwrap();
        assert_eq!(
            steps(dir.path()),
            [(0, false), (0, false), (1, false), (2, false)]
        );
        w.scalars(3, &[("loss", 3.0)]).unwrap();
        assert_eq!(steps(dir.path()).last(), Some(&(3, false)));
    }
}

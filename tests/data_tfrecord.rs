//! TFRecord/Example reading against TensorFlow-written fixtures, and bad-data handling.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use adjq::data::tfrecord::{self, expand_pattern};
use adjq::data::{
    Compression, Cursor, Dataset, Example, ExampleSchema, Feature, Loader, LoaderConfig,
    OnBadRecord, RecordReader, RecordWriter, image,
};
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/digits")
}

fn read_all(path: &Path) -> Vec<Vec<u8>> {
    tfrecord::open(path, Compression::Auto)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

struct Row {
    file: String,
    index: usize,
    filename: String,
    label: i64,
    jpeg_len: usize,
}

fn manifest_rows() -> Vec<Row> {
    let csv = fs::read_to_string(fixtures().join("records.csv")).unwrap();
    csv.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Row {
                file: f[0].into(),
                index: f[1].parse().unwrap(),
                filename: f[3].into(),
                label: f[4].parse().unwrap(),
                jpeg_len: f[5].parse().unwrap(),
            }
        })
        .collect()
}

fn bytes_feature(ex: &Example, key: &str) -> Vec<u8> {
    match &ex.features[key] {
        Feature::Bytes(v) => v[0].clone(),
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn fixture_matches_manifest() {
    let rows = manifest_rows();
    let manifest = fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    assert!(manifest.contains("\"total_records\": 1797"));
    assert_eq!(rows.len(), 1797);
    let mut by_file: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        by_file.entry(&r.file).or_default().push(r);
    }
    let schema = ExampleSchema::default();
    let mut max_diff = 0u8;
    for (file, want) in by_file {
        let records = read_all(&fixtures().join(file));
        assert_eq!(records.len(), want.len(), "{file}");
        for (rec, row) in records.iter().zip(want) {
            let ex = Example::parse(rec).unwrap();
            // Our encoder reproduces TF's deterministic serialization byte for byte.
            assert_eq!(&ex.encode(), rec, "{file} record {}", row.index);
            assert_eq!(
                bytes_feature(&ex, "image/filename"),
                row.filename.as_bytes()
            );
            let li = schema.extract(rec).unwrap();
            assert_eq!(li.label, row.label - 1, "Slim label_offset 1");
            assert_eq!(li.encoded.len(), row.jpeg_len);
            assert_eq!(li.declared_size, Some((32, 32)));
            assert_eq!(li.filename.as_deref(), Some(row.filename.as_str()));
            assert_eq!(li.synset, Some(format!("d{}", row.label - 1)));
            let ours = image::decode(&li.encoded).unwrap();
            assert_eq!((ours.width, ours.height), (32, 32));
            // Independent decoder for comparison.
            let mut other = jpeg_decoder::Decoder::new(li.encoded.as_slice());
            let theirs = other.decode().unwrap();
            assert_eq!(theirs.len(), ours.rgb.len());
            for (a, b) in ours.rgb.iter().zip(&theirs) {
                max_diff = max_diff.max(a.abs_diff(*b));
            }
        }
    }
    // Both use accurate integer IDCTs; rounding and chroma upsampling differ (we saw 1).
    assert!(
        max_diff <= 2,
        "zune-jpeg vs jpeg-decoder differ by {max_diff}"
    );
}

#[test]
fn validation_bboxes_are_empty_lists() {
    let rec = &read_all(&fixtures().join("validation-00000-of-00001"))[0];
    let ex = Example::parse(rec).unwrap();
    assert_eq!(
        ex.features["image/object/bbox/xmin"],
        Feature::Float(vec![])
    );
    assert_eq!(
        ex.features["image/object/bbox/label"],
        Feature::Int64(vec![])
    );
    let train = &read_all(&fixtures().join("train-00000-of-00002"))[0];
    let Feature::Float(xmin) = &Example::parse(train).unwrap().features["image/object/bbox/xmin"]
    else {
        panic!("float list")
    };
    assert_eq!(xmin.len(), 1);
}

#[test]
fn gzip_reads_identically() {
    let plain = read_all(&fixtures().join("validation-00000-of-00001"));
    let gz = read_all(&fixtures().join("validation-00000-of-00001.gz"));
    assert_eq!(plain.len(), 297);
    assert_eq!(plain, gz);
    let explicit: Vec<_> = tfrecord::open(
        &fixtures().join("validation-00000-of-00001.gz"),
        Compression::Gzip,
    )
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap();
    assert_eq!(plain, explicit);
    let ds = Dataset::tfrecord(
        fixtures().join("validation-*.gz").to_str().unwrap(),
        Compression::Auto,
        ExampleSchema::default(),
        OnBadRecord::Error,
    )
    .unwrap();
    assert_eq!(ds.len(), 297);
}

#[test]
fn shard_glob_is_sorted_and_counted() {
    let files = expand_pattern(fixtures().join("train-*-of-*").to_str().unwrap()).unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["train-00000-of-00002", "train-00001-of-00002"]);
    let ds = Dataset::tfrecord(
        fixtures().join("train-*-of-*").to_str().unwrap(),
        Compression::Auto,
        ExampleSchema::default(),
        OnBadRecord::Error,
    )
    .unwrap();
    assert_eq!(ds.len(), 1500);
    assert_eq!(ds.shards()[1].first_index, 750);
    assert!(expand_pattern(fixtures().join("nothing-*").to_str().unwrap()).is_err());
}

// ---- bad data -------------------------------------------------------------------

const BAD: usize = 5;
const N: usize = 20;

/// The first N validation records, with record BAD's Example changed by `edit`, then
/// the framed file bytes changed by `corrupt(bytes, offset of record BAD)`.
fn variant(
    dir: &Path,
    name: &str,
    edit: impl Fn(&mut Example),
    corrupt: impl Fn(&mut Vec<u8>, usize),
) -> PathBuf {
    let records = read_all(&fixtures().join("validation-00000-of-00001"));
    let mut w = RecordWriter::new(Vec::new());
    for (i, rec) in records.iter().take(N).enumerate() {
        let mut ex = Example::parse(rec).unwrap();
        if i == BAD {
            edit(&mut ex);
        }
        w.write_record(&ex.encode()).unwrap();
    }
    let mut bytes = w.into_inner().unwrap();
    let offset = records[..BAD].iter().map(|r| r.len() + 16).sum();
    corrupt(&mut bytes, offset);
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

fn no_edit(_: &mut Example) {}
fn no_corrupt(_: &mut Vec<u8>, _: usize) {}

fn cases(dir: &Path) -> Vec<(&'static str, PathBuf, &'static str)> {
    vec![
        (
            "length crc",
            variant(dir, "len-crc", no_edit, |b, off| b[off + 9] ^= 0x10),
            "length crc32c mismatch",
        ),
        (
            "data crc",
            variant(dir, "data-crc", no_edit, |b, off| {
                let len = u64::from_le_bytes(b[off..off + 8].try_into().unwrap()) as usize;
                b[off + 12 + len] ^= 1;
            }),
            "data crc32c mismatch",
        ),
        (
            "truncation",
            variant(dir, "truncated", no_edit, |b, off| b.truncate(off + 40)),
            "truncated",
        ),
        (
            "bad jpeg",
            variant(
                dir,
                "bad-jpeg",
                |ex| {
                    let mut jpeg = bytes_feature(ex, "image/encoded");
                    jpeg.truncate(jpeg.len() / 2);
                    ex.features
                        .insert("image/encoded".into(), Feature::Bytes(vec![jpeg]));
                },
                no_corrupt,
            ),
            "undecodable image",
        ),
        (
            "missing label",
            variant(
                dir,
                "no-label",
                |ex| {
                    ex.features.remove("image/class/label");
                },
                no_corrupt,
            ),
            "missing feature \"image/class/label\"",
        ),
    ]
}

fn eval_cfg(on_bad: OnBadRecord) -> LoaderConfig {
    LoaderConfig {
        on_bad_record: on_bad,
        ..LoaderConfig::eval(8, 32)
    }
}

fn open(path: &Path, on_bad: OnBadRecord) -> Result<Dataset, adjq::data::DataError> {
    Dataset::tfrecord_files(
        &[path.to_path_buf()],
        Compression::Auto,
        ExampleSchema::default(),
        on_bad,
    )
}

#[test]
fn bad_records_are_errors_naming_file_and_index() {
    let dir = tempfile::tempdir().unwrap();
    for (what, path, reason) in cases(dir.path()) {
        let err = match open(&path, OnBadRecord::Error) {
            Err(e) => e,
            Ok(ds) => {
                let loader = Loader::new(
                    Arc::new(ds),
                    eval_cfg(OnBadRecord::Error),
                    Cursor::default(),
                )
                .unwrap();
                let mut errors = loader.filter_map(Result::err);
                errors.next().unwrap_or_else(|| panic!("{what}: no error"))
            }
        };
        let msg = err.to_string();
        let want = format!("{}: record {BAD}: ", path.display());
        assert!(
            msg.starts_with(&want) && msg.contains(reason),
            "{what}: {msg}"
        );
    }
}

#[test]
fn bad_records_can_be_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    for (what, path, _) in cases(dir.path()) {
        let ds = Arc::new(open(&path, OnBadRecord::Skip).unwrap());
        let mut loader =
            Loader::new(ds.clone(), eval_cfg(OnBadRecord::Skip), Cursor::default()).unwrap();
        let batches: Vec<_> = loader.by_ref().map(Result::unwrap).collect();
        let images: usize = batches.iter().map(|b| b.labels.len()).sum();
        // Framing errors lose the rest of the file; content errors lose one record.
        let expect = if ds.len() < N as u64 { BAD } else { N - 1 };
        assert_eq!(images, expect, "{what}");
        assert!(
            batches.iter().all(|b| !b.indices.contains(&(BAD as u64))),
            "{what}"
        );
        let skipped = loader.skipped();
        assert_eq!(skipped.len(), 1, "{what}: {skipped:?}");
        assert!(
            skipped[0].contains(&format!("record {BAD}: ")),
            "{what}: {skipped:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        for rec in RecordReader::new(bytes.as_slice(), "fuzz").take(8) {
            let _ = rec;
        }
        let _ = Example::parse(&bytes);
        let _ = ExampleSchema::default().extract(&bytes);
        let _ = image::decode(&bytes);
    }

    #[test]
    fn framed_garbage_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        // Valid framing around arbitrary payloads reaches the Example parser.
        let mut w = RecordWriter::new(Vec::new());
        w.write_record(&payload).unwrap();
        let framed = w.into_inner().unwrap();
        let mut r = RecordReader::new(framed.as_slice(), "fuzz");
        let rec = r.read_record().unwrap().unwrap();
        prop_assert_eq!(&rec, &payload);
        let _ = ExampleSchema::default().extract(&rec);
    }
}

#[test]
fn bundled_demo_digits_match_the_tensorflow_fixture() {
    // data/digits is written by examples/make_digits.rs from the same sklearn pixels.
    let ours_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits");
    let schema = ExampleSchema::default();
    let mut max_diff = 0u8;
    for file in [
        "train-00000-of-00002",
        "train-00001-of-00002",
        "validation-00000-of-00001",
    ] {
        let ours = read_all(&ours_dir.join(file));
        let tf = read_all(&fixtures().join(file));
        assert_eq!(ours.len(), tf.len(), "{file}");
        for (a, b) in ours.iter().zip(&tf) {
            let (ea, eb) = (Example::parse(a).unwrap(), Example::parse(b).unwrap());
            // Same features apart from the JPEG bytes.
            let strip = |mut e: Example| {
                e.features.remove("image/encoded");
                e
            };
            assert_eq!(strip(ea.clone()), strip(eb.clone()));
            let (ia, ib) = (schema.extract(a).unwrap(), schema.extract(b).unwrap());
            let (pa, pb) = (
                image::decode(&ia.encoded).unwrap(),
                image::decode(&ib.encoded).unwrap(),
            );
            assert_eq!((pa.width, pa.height), (pb.width, pb.height));
            for (x, y) in pa.rgb.iter().zip(&pb.rgb) {
                max_diff = max_diff.max(x.abs_diff(*y));
            }
        }
    }
    assert!(
        max_diff <= 4,
        "our JPEGs decode {max_diff} levels away from TF's"
    );
}

//! TensorFlow V2 checkpoint reading against checkpoints TensorFlow 2.21 wrote
//! (tests/fixtures/tf/PROVENANCE.md), and the errors for damaged ones.

use std::fs;
use std::path::{Path, PathBuf};

use adjq::ckpt::{self, CkptError, DType, Data, Format, TensorMap, proto, sstable};
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tf")
        .join(rel)
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn read_tf(path: &Path) -> TensorMap {
    ckpt::read(path, Format::TfBundle).unwrap_or_else(|e| panic!("{e}"))
}

/// Every tensor against `variables.json`: same order, dtype, shape, sums and first values.
fn check_against_variables_json(dir: &str) -> TensorMap {
    let expected = json(&fixture(&format!("{dir}/variables.json")));
    let vars = expected["variables"].as_array().unwrap();
    let map = read_tf(&fixture(dir));
    let names: Vec<_> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(map.keys().map(String::as_str).collect::<Vec<_>>(), names);
    for v in vars {
        let name = v["name"].as_str().unwrap();
        let t = &map[name];
        assert_eq!(t.dtype.name(), v["dtype"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = serde_json::from_value(v["shape"].clone()).unwrap();
        assert_eq!(t.shape, shape, "{name}");
        let values = t.to_f64_vec().unwrap();
        assert_eq!(values.len(), t.numel());
        let sum: f64 = values.iter().sum();
        let sum_sq: f64 = values.iter().map(|x| x * x).sum();
        // numpy sums pairwise, we sum in order: equal up to float64 rounding.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(close(sum, v["sum"].as_f64().unwrap()), "{name}: sum {sum}");
        assert!(
            close(sum_sq, v["sum_sq"].as_f64().unwrap()),
            "{name}: sum_sq"
        );
        for (i, want) in v["first4"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            if t.dtype == DType::F32 {
                // Decimals of the f32 widened to f64: exact after casting back.
                assert_eq!(values[i] as f32, want as f32, "{name}[{i}]");
            } else {
                assert_eq!(values[i], want, "{name}[{i}]");
            }
        }
    }
    map
}

#[test]
fn b0_random_reads_back_exactly() {
    let map = check_against_variables_json("efficientnet-b0-random");
    assert_eq!(map.len(), 312);
    let step = &map["global_step"];
    assert_eq!((step.dtype, step.shape.as_slice()), (DType::I64, &[][..]));
    assert_eq!(step.to_i64_vec().unwrap(), [218_750]);
    let stem = &map["efficientnet-b0/stem/conv2d/kernel"];
    assert_eq!(
        (stem.dtype, stem.shape.as_slice()),
        (DType::F32, &[3, 3, 3, 32][..])
    );
    let floats: usize = map
        .values()
        .filter(|t| t.dtype == DType::F32)
        .map(|t| t.numel())
        .sum();
    assert_eq!(floats, 5_330_564);
    let bytes: usize = map.values().map(|t| t.byte_len()).sum();
    assert_eq!(
        bytes as u64,
        fs::metadata(fixture(
            "efficientnet-b0-random/model.ckpt.data-00000-of-00001"
        ))
        .unwrap()
        .len()
    );
}

#[test]
fn ema_subset_has_distinct_shadow_values() {
    let map = check_against_variables_json("efficientnet-b0-ema-subset");
    assert_eq!(map.len(), 49);
    let shadows: Vec<_> = map
        .keys()
        .filter(|k| k.ends_with("/ExponentialMovingAverage"))
        .collect();
    assert_eq!(shadows.len(), 24);
    for shadow in shadows {
        let base = shadow.strip_suffix("/ExponentialMovingAverage").unwrap();
        let (b, s) = (&map[base], &map[shadow.as_str()]);
        assert_eq!((b.dtype, &b.shape), (s.dtype, &s.shape), "{base}");
        assert_ne!(b.data, s.data, "{shadow} must hold its own values");
    }
}

#[test]
fn prefix_index_and_directory_name_the_same_checkpoint() {
    let dir = fixture("efficientnet-b0-ema-subset");
    let by_dir = read_tf(&dir);
    for p in [dir.join("model.ckpt"), dir.join("model.ckpt.index")] {
        assert_eq!(ckpt::detect_format(&p).unwrap(), Format::TfBundle);
        assert_eq!(read_tf(&p), by_dir);
    }
    assert_eq!(ckpt::detect_format(&dir).unwrap(), Format::TfBundle);
}

/// Two shards, every supported dtype, strings (one longer than 127 bytes: a 2-byte varint
/// length) and an empty tensor, against TF's own values.
#[test]
fn all_dtypes_over_two_shards() {
    let expected = json(&fixture("dtypes/expected.json"));
    let map = read_tf(&fixture("dtypes"));
    let tensors = expected["tensors"].as_array().unwrap();
    assert_eq!(map.len(), tensors.len());
    for e in tensors {
        let name = e["name"].as_str().unwrap();
        let t = &map[name];
        assert_eq!(t.dtype.name(), e["dtype"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = serde_json::from_value(e["shape"].clone()).unwrap();
        assert_eq!(t.shape, shape, "{name}");
        let want = e["values"].as_array().unwrap();
        match (t.dtype, &t.data) {
            (DType::String, Data::Strings(s)) => {
                let hex: Vec<String> = s
                    .iter()
                    .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
                    .collect();
                assert_eq!(
                    hex,
                    want.iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>()
                );
            }
            (DType::Bool, Data::Bytes(b)) => {
                assert_eq!(
                    b.iter().map(|&x| x != 0).collect::<Vec<_>>(),
                    want.iter()
                        .map(|v| v.as_bool().unwrap())
                        .collect::<Vec<_>>()
                );
            }
            (dt, _) if dt.is_float() => {
                assert_eq!(
                    t.to_f64_vec().unwrap(),
                    want.iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>(),
                    "{name}"
                );
            }
            _ => {
                assert_eq!(
                    t.to_i64_vec().unwrap(),
                    want.iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>(),
                    "{name}"
                );
            }
        }
    }
}

/// A scratch copy of a fixture checkpoint directory.
fn scratch(dir: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in fs::read_dir(fixture(dir)).unwrap() {
        let f = f.unwrap().path();
        fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    tmp
}

fn read_err(dir: &Path) -> CkptError {
    ckpt::read(dir, Format::TfBundle).expect_err("damaged checkpoint must not read")
}

/// The (name, offset, size) of every tensor, from the index through the public parsers.
fn entries(index: &Path) -> Vec<(String, u64, u64)> {
    sstable::read_table(&fs::read(index).unwrap())
        .unwrap()
        .into_iter()
        .skip(1)
        .map(|(k, v)| {
            let e = proto::decode_entry(&v).unwrap();
            (
                String::from_utf8(k).unwrap(),
                e.offset as u64,
                e.size as u64,
            )
        })
        .collect()
}

const DATA: &str = "model.ckpt.data-00000-of-00001";

#[test]
fn flipped_data_byte_is_an_entry_crc_error_naming_the_tensor() {
    let tmp = scratch("efficientnet-b0-ema-subset");
    let data = tmp.path().join(DATA);
    let mut bytes = fs::read(&data).unwrap();
    let at = bytes.len() as u64 / 2;
    let (victim, _, _) = entries(&tmp.path().join("model.ckpt.index"))
        .into_iter()
        .find(|(_, off, size)| (*off..off + size).contains(&at))
        .unwrap();
    bytes[at as usize] ^= 0x01;
    fs::write(&data, bytes).unwrap();
    match read_err(tmp.path()) {
        CkptError::EntryCrc {
            path,
            name,
            stored,
            computed,
        } => {
            assert_eq!((path, &name), (data, &victim));
            assert_ne!(stored, computed);
        }
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn flipped_index_byte_is_a_block_crc_error() {
    let tmp = scratch("efficientnet-b0-ema-subset");
    let index = tmp.path().join("model.ckpt.index");
    let mut bytes = fs::read(&index).unwrap();
    bytes[20] ^= 0x40; // inside the first data block
    fs::write(&index, bytes).unwrap();
    let e = read_err(tmp.path());
    assert!(
        matches!(&e, CkptError::BlockCrc { path, offset: 0, .. } if *path == index),
        "{e}"
    );
    assert!(e.to_string().contains("model.ckpt.index"), "{e}");
}

#[test]
fn missing_shard_names_the_file() {
    let tmp = scratch("dtypes");
    let shard = tmp.path().join("model.ckpt.data-00001-of-00002");
    fs::remove_file(&shard).unwrap();
    let e = read_err(tmp.path());
    assert!(
        matches!(&e, CkptError::MissingShard { path, .. } if *path == shard),
        "{e}"
    );
    assert!(
        e.to_string().contains("model.ckpt.data-00001-of-00002"),
        "{e}"
    );
}

#[test]
fn truncated_data_file_names_the_first_tensor_past_the_end() {
    let tmp = scratch("efficientnet-b0-ema-subset");
    let data = tmp.path().join(DATA);
    let len = fs::metadata(&data).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    // Tensors are read in key order; the first whose range passes the new end fails.
    let (victim, off, size) = entries(&tmp.path().join("model.ckpt.index"))
        .into_iter()
        .find(|(_, off, size)| off + size > len - 100)
        .unwrap();
    match read_err(tmp.path()) {
        CkptError::Truncated {
            path,
            name,
            start,
            end,
            len: got,
        } => {
            assert_eq!(
                (path, name, start, end, got),
                (data, victim, off, off + size, len - 100)
            );
        }
        e => panic!("unexpected {e}"),
    }
}

// ---- hand-built indexes, for what TensorFlow never writes ----

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A block of entries (no prefix sharing, one restart) plus its 5-byte trailer.
fn block(entries: &[(&[u8], &[u8])], kind: u8) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in entries {
        varint(0, &mut b);
        varint(k.len() as u64, &mut b);
        varint(v.len() as u64, &mut b);
        b.extend_from_slice(k);
        b.extend_from_slice(v);
    }
    b.extend(0u32.to_le_bytes());
    b.extend(1u32.to_le_bytes());
    b.push(kind);
    let crc = sstable::mask(crc32c::crc32c(&b));
    b.extend(crc.to_le_bytes());
    b
}

/// A one-data-block table holding `entries` (sorted keys), compression byte `kind`.
fn table(entries: &[(&[u8], &[u8])], kind: u8) -> Vec<u8> {
    let data = block(entries, kind);
    let mut handle = Vec::new();
    varint(0, &mut handle);
    varint(data.len() as u64 - 5, &mut handle);
    let last = entries.last().unwrap().0;
    let meta = block(&[], 0);
    let index = block(&[(last, &handle)], 0);
    let mut file = [data.clone(), meta.clone(), index.clone()].concat();
    let mut footer = Vec::new();
    varint(data.len() as u64, &mut footer);
    varint(meta.len() as u64 - 5, &mut footer);
    varint((data.len() + meta.len()) as u64, &mut footer);
    varint(index.len() as u64 - 5, &mut footer);
    footer.resize(40, 0);
    footer.extend(sstable::MAGIC.to_le_bytes());
    file.extend(footer);
    file
}

/// A header for one shard and one entry of DataType `dtype`, 8 bytes at offset 0.
fn one_entry_index(dtype: u64, kind: u8) -> Vec<u8> {
    let header = [0x08, 0x01]; // num_shards = 1
    let mut entry = vec![0x08];
    varint(dtype, &mut entry);
    entry.extend([0x12, 0x04, 0x12, 0x02, 0x08, 0x01]); // shape [1]
    entry.extend([0x28, 0x08]); // size 8
    table(&[(b"", &header), (b"w", &entry)], kind)
}

#[test]
fn unsupported_dtype_names_tensor_and_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("m.index"), one_entry_index(8, 0)).unwrap();
    fs::write(tmp.path().join("m.data-00000-of-00001"), [0u8; 8]).unwrap();
    let e = read_err(&tmp.path().join("m"));
    assert!(
        matches!(&e, CkptError::UnsupportedDtype { name, .. } if name == "w"),
        "{e}"
    );
    assert!(e.to_string().contains("complex64"), "{e}");
}

#[test]
fn hand_built_table_reads_and_compressed_blocks_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m");
    fs::write(tmp.path().join("m.data-00000-of-00001"), 7i64.to_le_bytes()).unwrap();
    // DT_INT64 with crc 0 in the entry: the data crc check must catch it.
    fs::write(tmp.path().join("m.index"), one_entry_index(9, 0)).unwrap();
    assert!(matches!(read_err(&p), CkptError::EntryCrc { name, .. } if name == "w"));
    fs::write(tmp.path().join("m.index"), one_entry_index(9, 1)).unwrap();
    let e = read_err(&p);
    assert!(e.to_string().contains("compressed"), "{e}");
}

#[test]
fn state_file_with_a_foreign_absolute_path_falls_back_to_its_directory() {
    let tmp = scratch("efficientnet-b0-ema-subset");
    fs::write(
        tmp.path().join("checkpoint"),
        "model_checkpoint_path: \"/elsewhere/train/model.ckpt\"\n",
    )
    .unwrap();
    assert_eq!(read_tf(tmp.path()).len(), 49);
    fs::remove_file(tmp.path().join("checkpoint")).unwrap();
    let e = ckpt::detect_format(tmp.path()).unwrap_err();
    assert!(matches!(e, CkptError::UnknownFormat { .. }), "{e}");
}

/// A checkpoint TensorFlow wrote with complex64 and complex128 tensors beside float,
/// string and int64 ones (`tests/fixtures/tf/exotic`): inspection lists all six (name,
/// dtype, shape) and marks the two it cannot load; the others load with their values; a
/// strict read names the first unloadable tensor.
#[test]
fn unloadable_tensors_are_listed_beside_the_loadable_ones() {
    let dir = fixture("exotic");
    let expected = json(&dir.join("expected.json"));
    let ins = ckpt::inspect(&dir, Some(Format::TfBundle)).unwrap();
    let mut listed: Vec<(String, String, Vec<usize>)> = ins
        .rows
        .iter()
        .map(|r| (r.name.clone(), r.dtype.to_string(), r.shape.clone()))
        .chain(
            ins.unreadable
                .iter()
                .map(|u| (u.name.clone(), u.dtype.clone(), u.shape.clone())),
        )
        .collect();
    listed.sort();
    let want: Vec<(String, String, Vec<usize>)> = expected["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t["shape"].as_array().unwrap();
            (
                t["name"].as_str().unwrap().to_string(),
                t["dtype"].as_str().unwrap().to_string(),
                shape.iter().map(|d| d.as_u64().unwrap() as usize).collect(),
            )
        })
        .collect();
    assert_eq!(listed, want);
    let unreadable: Vec<&str> = ins.unreadable.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(unreadable, ["spectrum", "wide_spectrum"]);
    assert!(
        ins.unreadable[0]
            .why
            .contains("unsupported dtype complex64")
    );
    assert_eq!((ins.unreadable[0].bytes, ins.unreadable[1].bytes), (16, 32));

    let contents = ckpt::read_contents(&dir, Format::TfBundle).unwrap();
    for t in expected["tensors"].as_array().unwrap() {
        if let Some(values) = t["values"].as_array() {
            let got = contents.tensors[t["name"].as_str().unwrap()]
                .to_f32_vec()
                .unwrap();
            let want: Vec<f32> = values.iter().map(|v| v.as_f64().unwrap() as f32).collect();
            assert_eq!(got, want);
        }
    }
    let e = ckpt::read(&dir, Format::TfBundle).unwrap_err();
    assert!(
        matches!(&e, CkptError::UnsupportedDtype { name, .. } if name == "spectrum"),
        "{e}"
    );
}

/// `runner inspect-ckpt` prints every tensor, the unloadable ones marked, and succeeds.
#[test]
fn inspect_ckpt_marks_unloadable_tensors() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["inspect-ckpt"])
        .arg(fixture("exotic"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("cannot be loaded: unsupported dtype complex128 (DataType 18)"),
        "{text}"
    );
    assert!(text.contains("6 tensors (2 cannot be loaded)"), "{text}");
}

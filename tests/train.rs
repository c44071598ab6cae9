//! The adjq trainer and its schedules on the tiny EfficientNet with synthetic batches.
//! Everything runs on the CPU backend (flex), where training is deterministic for a fixed
//! seed: the resume and repeatability tests compare weights bit for bit.

use adjq::ckpt::TensorMap;
use adjq::model::{EfficientNet, EfficientNetConfig};
use adjq::quant::qnet::Observe;
use adjq::quant::{QConfig, QEfficientNet};
use adjq::score::metric::MetricConfig;
use adjq::train::adjq::{AdjqConfig, AdjqTrainer, TermLog};
use adjq::train::loss::{LossTerms, adjq_loss};
use adjq::train::schedule::{LrSchedule, PrecisionSchedule, SwaSchedule};
use adjq::train::swa::Swa;
use burn::prelude::*;
use burn::tensor::Distribution;

/// Tests run in parallel and share the device RNG: seeding and drawing hold this lock so
/// a seed always gives the same values.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ad() -> Device {
    Device::flex().autodiff()
}

/// Tiny float model with batch-norm statistics from one batch, folded (plain device).
fn tiny_float(seed: u64) -> EfficientNet {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let d = ad();
    d.seed(seed);
    let mut cfg = EfficientNetConfig::preset("efficientnet-tiny").unwrap();
    cfg.bn_momentum = 0.0;
    let model = EfficientNet::new(&cfg, &d);
    let _ = model.forward(Tensor::random(
        [16, 3, 32, 32],
        Distribution::Normal(0.0, 1.0),
        &d,
    ));
    model.valid().fold_bn()
}

fn batches(n: usize, seed: u64) -> Vec<(Tensor<4>, Tensor<1, Int>)> {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let d = ad();
    d.seed(seed);
    (0..n)
        .map(|i| {
            let x = Tensor::random([8, 3, 32, 32], Distribution::Normal(0.0, 1.0), &d);
            let y: Vec<i64> = (0..8).map(|j| ((i * 3 + j * 7) % 10) as i64).collect();
            (x, Tensor::<1, Int>::from_ints(y.as_slice(), &d))
        })
        .collect()
}

fn config(alpha: f32, beta: f32, lr: f64, lr_bits: f64) -> AdjqConfig {
    AdjqConfig {
        alpha,
        beta,
        target: 0.0,
        metric: MetricConfig {
            params_baseline: 2e4,
            ops_baseline: 2e6,
            gamma: 0.7,
            ..Default::default()
        },
        lr: LrSchedule { lr, decay: None },
        lr_bits,
    }
}

fn trainer(cfg: AdjqConfig) -> AdjqTrainer {
    let float = tiny_float(11);
    let probe = QEfficientNet::for_calibration(&float, &QConfig::default()).unwrap();
    let mut obs = Observe::default();
    probe.forward_with(batches(1, 99)[0].0.clone().inner(), &mut obs);
    let q = QEfficientNet::from_float(&float, &obs.thresholds, &QConfig::default())
        .unwrap()
        .to_device(&ad())
        .train();
    AdjqTrainer::new(q, float, cfg)
}

fn split(map: &TensorMap, bits: bool) -> Vec<(String, Vec<f32>)> {
    map.iter()
        .filter(|(k, _)| k.ends_with(".bit_scale") == bits)
        .map(|(k, t)| (k.clone(), t.to_f32_vec().unwrap()))
        .collect()
}

#[test]
fn loss_terms_match_a_hand_computation() {
    let d = ad();
    let s = Tensor::<2>::from_floats([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], &d);
    let t = Tensor::<2>::from_floats([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], &d);
    let y = Tensor::<1, Int>::from_ints([2, 0], &d);
    let e = 1e-5f64;
    let distill = 0.01
        * ((e.sqrt() + (1.0 + e).sqrt() + (4.0 + e).sqrt()) + (2.0 * e.sqrt() + (1.0 + e).sqrt()))
        / 2.0;
    let ce = (((1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 3.0) + 3f64.ln()) / 2.0;
    for (m, sign) in [(0.5f32, 1.0f64), (0.1, -1.0)] {
        let metric = Tensor::<1>::from_floats([m], &d);
        let (total, terms) = adjq_loss(s.clone(), t.clone(), y.clone(), metric, 2.0, 3.0, 0.18);
        let terms =
            LossTerms::from_values(adjq::quant::host_f32(terms).try_into().expect("5 terms"));
        assert!(
            (terms.distill as f64 - distill).abs() < 1e-6,
            "{terms:?} vs {distill}"
        );
        assert!(
            (terms.cross_entropy as f64 - ce).abs() < 1e-5,
            "{terms:?} vs {ce}"
        );
        assert_eq!(
            terms.sign as f64, sign,
            "the metric term's sign flips at the target"
        );
        let expected = distill + 2.0 * ce + sign * 3.0 * m as f64;
        assert!((total.into_scalar::<f32>() as f64 - expected).abs() < 1e-5);
    }
}

#[test]
fn beta_drives_the_metric_down_and_changes_bits() {
    let mut t = trainer(config(0.1, 50.0, 1e-4, 0.05));
    let before = adjq::quant::info::QuantInfo::of(t.model());
    let data = batches(6, 1);
    let first = t.step(data[0].0.clone(), data[0].1.clone(), true);
    let mut last = first.clone();
    for (x, y) in &data[1..] {
        last = t.step(x.clone(), y.clone(), true);
    }
    assert!(
        last.read_terms().metric < first.read_terms().metric,
        "metric {} → {}",
        first.read_terms().metric,
        last.read_terms().metric
    );
    let after = adjq::quant::info::QuantInfo::of(t.model());
    assert!(
        after.avg_weight_bits < before.avg_weight_bits,
        "{} → {}",
        before.avg_weight_bits,
        after.avg_weight_bits
    );
}

#[test]
fn the_official_rule_also_drives_its_score_down() {
    let mut cfg = config(0.1, 50.0, 1e-4, 0.05);
    cfg.metric.rule = adjq::score::metric::MetricRule::Official;
    let mut t = trainer(cfg);
    let data = batches(5, 7);
    let first = t.step(data[0].0.clone(), data[0].1.clone(), true);
    let mut last = first.clone();
    for (x, y) in &data[1..] {
        last = t.step(x.clone(), y.clone(), true);
    }
    assert!(
        last.read_terms().metric < first.read_terms().metric,
        "official score {} → {}",
        first.read_terms().metric,
        last.read_terms().metric
    );
}

#[test]
fn finetune_keeps_bits_and_lr_zero_moves_only_bit_scales() {
    let data = batches(3, 2);
    // Precision frozen: bit scales untouched, weights move.
    let mut t = trainer(config(1.0, 50.0, 1e-3, 0.05));
    let start = t.snapshot();
    for (x, y) in &data {
        t.step(x.clone(), y.clone(), false);
    }
    let end = t.snapshot();
    assert_eq!(split(&start, true), split(&end, true));
    assert_ne!(split(&start, false), split(&end, false));
    // First optimizer at lr 0: only the bit scales move.
    let mut t = trainer(config(1.0, 50.0, 0.0, 0.05));
    let start = t.snapshot();
    for (x, y) in &data {
        t.step(x.clone(), y.clone(), true);
    }
    let end = t.snapshot();
    assert_eq!(split(&start, false), split(&end, false));
    assert_ne!(split(&start, true), split(&end, true));
}

#[test]
fn training_is_repeatable_and_resumes_bit_identically() {
    let data = batches(4, 3);
    let run = |t: &mut AdjqTrainer, range: std::ops::Range<usize>| {
        for i in range {
            t.step(data[i].0.clone(), data[i].1.clone(), i % 2 == 0);
        }
    };
    let cfg = AdjqConfig {
        lr: LrSchedule {
            lr: 1e-3,
            decay: Some((0.01, 2)),
        },
        ..config(1.0, 5.0, 1e-3, 0.01)
    };
    let mut straight = trainer(cfg.clone());
    run(&mut straight, 0..4);
    let mut again = trainer(cfg.clone());
    run(&mut again, 0..4);
    assert_eq!(
        straight.snapshot(),
        again.snapshot(),
        "same seed, same weights"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut first = trainer(cfg.clone());
    run(&mut first, 0..2);
    first.save_state(dir.path()).unwrap();
    drop(first);
    let mut resumed = trainer(cfg);
    resumed.load_state(dir.path()).unwrap();
    assert_eq!(resumed.step, 2);
    run(&mut resumed, 2..4);
    assert_eq!(
        straight.snapshot(),
        resumed.snapshot(),
        "resumed run ends with the same weights"
    );
}

/// A non-finite loss shows at the next read of the summed terms (the step itself reads
/// nothing back), naming the steps since the last good read; every later read fails too.
/// A step run after it, on the non-finite update, runs (the CPU quantizer's clip does not
/// panic on a NaN range) and the next read still names the bad step.
#[test]
fn a_nan_loss_stops_with_the_steps_and_term_named() {
    let mut t = trainer(config(1.0, 1.0, 1e-3, 0.01));
    let mut log = TermLog::default();
    let data = batches(3, 4);
    log.add(&t.step(data[0].0.clone(), data[0].1.clone(), true));
    let good = log.read().unwrap();
    assert!(good.sums.total.is_finite() && good.sums.total == good.last.total);
    let bad = data[1].0.clone().mul_scalar(f32::NAN);
    log.add(&t.step(bad, data[1].1.clone(), true));
    let err = log.read().unwrap_err().to_string();
    assert!(
        err.starts_with("step 1:") && err.contains("total loss term") && err.contains("stopping"),
        "{err}"
    );
    assert_eq!(log.read().unwrap_err().to_string(), err);
    log.add(&t.step(data[2].0.clone(), data[2].1.clone(), true));
    let next = log.read().unwrap_err().to_string();
    assert!(next.starts_with("steps 1–2:"), "{next}");
}

/// The log's sums are the host f32 sums of each step's terms in step order, bit for bit,
/// and its last terms the last step's: what metrics.jsonl averaged before the sums moved
/// to the device.
#[test]
fn the_term_log_sums_like_the_host() {
    let mut t = trainer(config(1.0, 5.0, 1e-3, 0.01));
    let mut log = TermLog::default();
    assert_eq!(log.read().unwrap(), Default::default());
    let mut host = LossTerms::default();
    for (i, (x, y)) in batches(4, 8).into_iter().enumerate() {
        let s = t.step(x, y, true);
        log.add(&s);
        let v = s.read_terms();
        host.total += v.total;
        host.distill += v.distill;
        host.cross_entropy += v.cross_entropy;
        if i % 2 == 1 {
            let read = log.read().unwrap();
            let bits = |l: LossTerms| [l.total, l.distill, l.cross_entropy].map(f32::to_bits);
            assert_eq!(bits(read.sums), bits(host), "{read:?} vs {host:?}");
            assert_eq!(read.last, v);
        }
    }
}

#[test]
fn swa_output_is_the_mean_of_the_recorded_snapshots() {
    let data = batches(3, 6);
    let mut t = trainer(config(1.0, 1.0, 1e-2, 0.01));
    let mut swa = Swa::default();
    let mut snaps = Vec::new();
    for (x, y) in &data {
        t.step(x.clone(), y.clone(), true);
        let s = t.snapshot();
        swa.record(&s).unwrap();
        snaps.push(s);
    }
    let avg = swa.average().unwrap();
    for (name, tensor) in &avg {
        let got = tensor.to_f32_vec().unwrap();
        let vals: Vec<Vec<f32>> = snaps
            .iter()
            .map(|s| s[name].to_f32_vec().unwrap())
            .collect();
        for (i, g) in got.iter().enumerate() {
            let mean = vals.iter().map(|v| v[i] as f64).sum::<f64>() / 3.0;
            assert!(
                (*g as f64 - mean).abs() <= 1e-6 * mean.abs().max(1.0),
                "{name}[{i}]"
            );
        }
    }
    t.set_values(&avg).unwrap();
    assert_eq!(t.snapshot(), avg);
}

#[test]
fn precision_lr_and_swa_schedules() {
    let iterative = PrecisionSchedule {
        finetune: false,
        warm_up_epoch: 0.0,
        iterative: true,
        freq: 2,
    };
    let on: Vec<usize> = (0..10)
        .filter(|&k| iterative.trains_precision(0, k))
        .collect();
    assert_eq!(on, vec![0, 2, 4, 6, 8]);
    let warm = PrecisionSchedule {
        warm_up_epoch: 0.5,
        iterative: false,
        ..iterative
    };
    let on: Vec<usize> = (0..10).filter(|&k| warm.trains_precision(0, k)).collect();
    assert_eq!(on, vec![5, 6, 7, 8, 9]);
    assert!((0..10).all(|k| warm.trains_precision(1, k)));
    let finetune = PrecisionSchedule {
        finetune: true,
        ..iterative
    };
    assert!((0..3).all(|e| (0..10).all(|k| !finetune.trains_precision(e, k))));

    let lr = LrSchedule {
        lr: 1.0,
        decay: Some((0.1, 4)),
    };
    let (l0, r0) = lr.at(0);
    assert!((l0 - (1.0 + 1e-7)).abs() < 1e-12 && !r0);
    let (l2, _) = lr.at(2);
    let expected = (-0.2f64).exp() * (std::f64::consts::PI * 2.0 / 16.0).cos() + 1e-7;
    assert!((l2 - expected).abs() < 1e-12);
    assert!(lr.at(4).1, "state reset every R steps");

    let swa = SwaSchedule {
        delay: 0.2,
        freq: 0.1,
    };
    let rec: Vec<usize> = (0..10).filter(|&k| swa.records_after(0, k)).collect();
    assert_eq!(rec, vec![2, 3, 4, 5, 6, 7, 8, 9]);
    let sparse = SwaSchedule {
        delay: 0.0,
        freq: 0.3,
    };
    let rec: Vec<usize> = (0..10).filter(|&k| sparse.records_after(1, k)).collect();
    assert_eq!(rec, vec![3, 6, 9]);
}

/// TF1's `AdamOptimizer` run by real TensorFlow (`tests/fixtures/tf/tf1_adam.json`): six
/// steps with fed gradients (tiny ones where ε matters, zeros, large ones) and a changing
/// lr; our variables, slots and β powers equal TF's bit for bit after every step.
#[test]
fn tf1_adam_matches_tensorflow_bit_for_bit() {
    use adjq::train::tf_adam::{TfAdam, TfAdamState};
    use burn::optim::Optimizer;
    let text = std::fs::read_to_string("tests/fixtures/tf/tf1_adam.json").unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let d = Device::flex();
    let values = |v: &serde_json::Value| -> Vec<f32> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let tensor = |v: &serde_json::Value| Tensor::<1>::from_floats(values(v).as_slice(), &d);
    let host = |t: &Tensor<1>| adjq::quant::host_f32(t.clone());
    let opt = TfAdam::default();
    let mut vars = [tensor(&doc["initial"]["v1"]), tensor(&doc["initial"]["v2"])];
    let mut states: [Option<TfAdamState<1>>; 2] = [None, None];
    for step in doc["steps"].as_array().unwrap() {
        let lr = step["lr"].as_f64().unwrap();
        let after = &step["after"];
        for (k, (name, grad)) in [("v1", "g1"), ("v2", "g2")].into_iter().enumerate() {
            let (v, s) = opt.step(lr, vars[k].clone(), tensor(&step[grad]), states[k].take());
            let s = s.expect("Adam keeps state");
            let at = format!("step {} {name}", step["step"]);
            assert_eq!(host(&v), values(&after[name]), "{at}: variable");
            assert_eq!(host(&s.m), values(&after[format!("m_{name}")]), "{at}: m");
            assert_eq!(host(&s.v), values(&after[format!("v_{name}")]), "{at}: v");
            // TF's powers are per optimizer and advance after the step.
            assert_eq!(
                s.beta1_power,
                values(&after["beta1_power"])[0],
                "{at}: β1^t"
            );
            assert_eq!(
                s.beta2_power,
                values(&after["beta2_power"])[0],
                "{at}: β2^t"
            );
            vars[k] = v;
            states[k] = Some(s);
        }
    }
}

/// A stage started from a checkpoint continues its Adam states, as the original's
/// `saver.restore` does: a trainer built anew from the checkpoint's values and optimizer
/// files ends bit-identical to one that never stopped (fixed lr: a new stage counts its
/// steps from 0, as the original does); started fresh, it does not.
#[test]
fn a_checkpoint_carries_both_adam_states() {
    let data = batches(4, 21);
    let run = |t: &mut AdjqTrainer, range: std::ops::Range<usize>| {
        for i in range {
            t.step(data[i].0.clone(), data[i].1.clone(), i % 2 == 0);
        }
    };
    let cfg = config(1.0, 5.0, 1e-3, 0.01);
    let mut straight = trainer(cfg.clone());
    run(&mut straight, 0..4);
    let dir = tempfile::tempdir().unwrap();
    let mut first = trainer(cfg.clone());
    run(&mut first, 0..2);
    first.save_optimizers(dir.path()).unwrap();
    let values = first.snapshot();
    drop(first);

    let mut next = trainer(cfg.clone());
    next.set_values(&values).unwrap();
    assert!(next.load_optimizers(dir.path()).unwrap());
    run(&mut next, 2..4);
    assert_eq!(straight.snapshot(), next.snapshot());

    let mut fresh = trainer(cfg);
    fresh.set_values(&values).unwrap();
    run(&mut fresh, 2..4);
    assert_ne!(straight.snapshot(), fresh.snapshot());
    let empty = tempfile::tempdir().unwrap();
    assert!(!fresh.load_optimizers(empty.path()).unwrap());
}

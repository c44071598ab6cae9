//! One `adjq` training step on EfficientNet-B0 at 224×224, batch 25 (the original's):
//! the quantized student's forward + backward (adjustable quantizer on every weight, conv
//! input, swish input and bias; learned bits), the float teacher's forward, the paper
//! metric, and both Adam updates. Prints ms/step and images/s for every backend this
//! build has. `benches/torch_adjq_step.py` is the same step in PyTorch eager; run both in
//! one session (benches/README.md).
//!
//!     RAYON_NUM_THREADS=2 cargo bench --bench adjq_step [--features wgpu] [-- flex|wgpu ...]

use adjq::backend::Backend;
use adjq::model::{EfficientNet, EfficientNetConfig};
use adjq::quant::qnet::Observe;
use adjq::quant::{QConfig, QEfficientNet};
use adjq::score::metric::MetricConfig;
use adjq::train::adjq::{AdjqConfig, AdjqTrainer};
use adjq::train::schedule::LrSchedule;
use burn::prelude::*;
use burn::tensor::Distribution;
use std::time::Instant;

const BATCH: usize = 25;

fn main() {
    // As `runner` does (see adjq::malloc).
    adjq::malloc::keep_freed_blocks();
    println!(
        "| step (B0 @ 224, batch {BATCH}) | backend | ms / step | images/s |\n|---|---|---|---|"
    );
    for backend in Backend::from_bench_args().expect("backends to run") {
        bench(backend);
    }
}

fn bench(backend: Backend) {
    let started = Instant::now();
    let plain = backend.device(None).expect("backend device");
    let device = plain.clone().autodiff();
    plain.seed(0);
    let cfg = EfficientNetConfig::preset("efficientnet-b0").expect("preset");
    let teacher = EfficientNet::new(&cfg, &plain);
    let folded = teacher.clone().fold_bn();
    let x = Tensor::<4>::random([BATCH, 3, 224, 224], Distribution::Normal(0.0, 1.0), &plain);
    let labels: Vec<i64> = (0..BATCH as i64).map(|i| (i * 37) % 1000).collect();
    let probe = QEfficientNet::for_calibration(&folded, &QConfig::default()).expect("probe");
    let mut obs = Observe::default();
    probe.forward_with(x.clone(), &mut obs);
    let student = QEfficientNet::from_float(&folded, &obs.thresholds, &QConfig::default())
        .expect("quantized model")
        .to_device(&device)
        .train();
    let mut trainer = AdjqTrainer::new(
        student,
        teacher,
        AdjqConfig {
            alpha: 7.0,
            beta: 85.0,
            target: 0.18,
            metric: MetricConfig::default(),
            lr: LrSchedule {
                lr: 3e-6,
                decay: None,
            },
            lr_bits: 1e-3,
        },
    );
    eprintln!(
        "{backend}: models built and calibrated in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let x = x.to_device(&device);
    let y = Tensor::<1, Int>::from_ints(labels.as_slice(), &device);
    let mut count = 0;
    let mut step = || {
        let t = Instant::now();
        // The step reads nothing back; the sync makes the time the device's.
        let stats = trainer.step(x.clone(), y.clone(), true);
        device.sync().expect("device finishes its queue");
        count += 1;
        // Progress on stderr: the first steps of a GPU include kernel compilation.
        eprintln!(
            "{backend}: step {count} {:.0} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
        stats
    };
    // A GPU compiles and autotunes its kernels during the first steps.
    let (warm_up, iters) = if backend == Backend::Flex {
        (2, 4)
    } else {
        (3, 10)
    };
    for _ in 0..warm_up {
        step();
    }
    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..iters {
        last = Some(step());
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0 / iters as f64;
    let terms = last.expect("timed steps").read_terms();
    assert!(terms.total.is_finite(), "a finite loss: {terms:?}");
    println!(
        "| adjq step, burn | {backend} | {ms:.0} | {:.1} |",
        BATCH as f64 * 1000.0 / ms
    );
}

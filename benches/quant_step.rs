//! Forward + backward of the quantized EfficientNet-B0 (adjustable quantizer on every
//! weight, conv input, swish input and bias; learned bits) at 224×224, batch 8, CPU (flex),
//! relative to the float (BN-folded) B0's forward + backward in the same run; on every
//! backend this build has (flex; wgpu with `--features wgpu`).
//!
//!     RAYON_NUM_THREADS=2 cargo bench --bench quant_step [--features wgpu] [-- flex|wgpu ...]

use adjq::backend::Backend;
use adjq::model::{EfficientNet, EfficientNetConfig};
use adjq::quant::qnet::Observe;
use adjq::quant::{QConfig, QEfficientNet};
use burn::prelude::*;
use burn::tensor::Distribution;
use std::time::Instant;

const BATCH: usize = 8;
const ITERS: usize = 3;

fn time(label: &str, backend: Backend, mut step: impl FnMut()) -> f64 {
    step(); // warm-up
    let t0 = Instant::now();
    for _ in 0..ITERS {
        step();
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0 / ITERS as f64;
    println!("| {label} | {backend} | {BATCH} | {ms:.0} |");
    ms
}

fn main() {
    println!("| model (B0 @ 224) | backend | batch | ms / forward+backward |\n|---|---|---|---|");
    for backend in Backend::from_bench_args().expect("backends to run") {
        bench(backend);
    }
}

fn bench(backend: Backend) {
    let device = backend.device().expect("backend device").autodiff();
    device.seed(0);
    let cfg = EfficientNetConfig::preset("efficientnet-b0").expect("preset");
    let float = EfficientNet::new(&cfg, &device).valid().fold_bn();
    let x = Tensor::<4>::random(
        [BATCH, 3, 224, 224],
        Distribution::Normal(0.0, 1.0),
        &device,
    );

    let probe = QEfficientNet::for_calibration(&float, &QConfig::default()).expect("probe");
    let mut obs = Observe::default();
    probe.forward_with(x.clone().inner(), &mut obs);
    let quant = QEfficientNet::from_float(&float, &obs.thresholds, &QConfig::default())
        .expect("quantized model")
        .to_device(&device)
        .train();
    let float = float.to_device(&device).train();

    let f = time("float, BN folded", backend, || {
        let _ = float.forward(x.clone()).mean().backward();
        device.sync().expect("device finishes its queue");
    });
    let q = time("quantized (adjustable, learned bits)", backend, || {
        let _ = quant.forward(x.clone()).mean().backward();
        device.sync().expect("device finishes its queue");
    });
    println!("| quantized / float | {backend} | | {:.2}× |", q / f);
}

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
/// Timed rounds; each times one float and one quantized step, alternating, so drift on
/// a shared machine (page cache, allocator, neighbours) hits both alike.
const ROUNDS: usize = 5;

fn timed(step: &mut dyn FnMut()) -> f64 {
    let t0 = Instant::now();
    step();
    t0.elapsed().as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // As `runner` does (see adjq::malloc).
    adjq::malloc::keep_freed_blocks();
    println!(
        "| model (B0 @ 224) | backend | batch | median ms / forward+backward |\n|---|---|---|---|"
    );
    for backend in Backend::from_bench_args().expect("backends to run") {
        bench(backend);
    }
}

fn bench(backend: Backend) {
    let device = backend.device(None).expect("backend device").autodiff();
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

    let mut float_step = || {
        let _ = float.forward(x.clone()).mean().backward();
        device.sync().expect("device finishes its queue");
    };
    let mut quant_step = || {
        let _ = quant.forward(x.clone()).mean().backward();
        device.sync().expect("device finishes its queue");
    };
    // Warm-up (a GPU compiles its kernels here).
    float_step();
    quant_step();
    let (mut f, mut q) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        f.push(timed(&mut float_step));
        q.push(timed(&mut quant_step));
    }
    let (f, q) = (median(f), median(q));
    println!("| float, BN folded | {backend} | {BATCH} | {f:.0} |");
    println!("| quantized (adjustable, learned bits) | {backend} | {BATCH} | {q:.0} |");
    println!("| quantized / float | {backend} | | {:.2}× |", q / f);
}

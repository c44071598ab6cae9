//! Float EfficientNet-B0 forward at 224×224, batch 1 and 16, on every backend this build
//! has (flex; wgpu with `--features wgpu`): latency and throughput. Compare with `benches/torch_b0_forward.py` (PyTorch eager, same
//! architecture, same threads) run right after; see benches/README.md.
//!
//!     RAYON_NUM_THREADS=2 cargo bench --bench model_forward [--features wgpu] [-- flex|wgpu ...]

use adjq::backend::Backend;
use adjq::model::{EfficientNet, EfficientNetConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use std::time::Instant;

fn main() {
    // As `runner` does (see adjq::malloc).
    adjq::malloc::keep_freed_blocks();
    println!("| backend | batch | ms / forward | images/s |\n|---|---|---|---|");
    for backend in Backend::from_bench_args().expect("backends to run") {
        bench(backend);
    }
}

fn bench(backend: Backend) {
    let device = backend.device(None).expect("backend device");
    device.seed(0);
    let cfg = EfficientNetConfig::preset("efficientnet-b0").expect("preset");
    let model = EfficientNet::new(&cfg, &device).valid();
    for (batch, iters) in [(1usize, 20usize), (16, 5)] {
        let x = Tensor::<4>::random(
            [batch, 3, 224, 224],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        for _ in 0..2 {
            let _ = model.forward(x.clone()).into_data();
        }
        let t0 = Instant::now();
        for _ in 0..iters {
            // into_data waits for the result.
            let _ = model.forward(x.clone()).into_data();
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0 / iters as f64;
        println!(
            "| burn {backend} | {batch} | {ms:.1} | {:.1} |",
            batch as f64 * 1000.0 / ms
        );
    }
}

//! The depthwise kernels on each of EfficientNet-B0's depthwise shapes at 224×224, as many
//! planes as a batch of 25 has, one thread, one plane reused (so in cache): where the
//! narrow-plane loops (output rows ≤ 32) and the tap-by-tap ones stand, for tuning
//! `NARROW_WIDTH` in `src/depthwise.rs`.
//!
//!     cargo bench -p adjq-kernels --bench depthwise_planes

use adjq_kernels::depthwise::{Plane, Window, filter_grad, forward, input_grad};
use std::hint::black_box;
use std::time::Instant;

/// (input size, k, stride, planes in a batch of 25) of B0's depthwise convs.
const SHAPES: [(usize, usize, usize, usize); 11] = [
    (112, 3, 1, 32 * 25),
    (112, 3, 2, 96 * 25),
    (56, 3, 1, 144 * 25),
    (56, 5, 2, 144 * 25),
    (28, 5, 1, 240 * 25),
    (28, 3, 2, 240 * 25),
    (14, 3, 1, 480 * 50),
    (14, 5, 1, 480 * 25 + 672 * 50),
    (14, 5, 2, 672 * 25),
    (7, 5, 1, 1152 * 75),
    (7, 3, 1, 1152 * 25),
];

/// TF-same padding: output ⌈size/stride⌉, the padding's odd pixel after.
fn same(size: usize, k: usize, stride: usize) -> Window {
    let out = size.div_ceil(stride);
    let pad = ((out - 1) * stride + k).saturating_sub(size) / 2;
    Window {
        stride,
        pad_top: pad,
        pad_left: pad,
        out_h: out,
        out_w: out,
    }
}

/// Milliseconds for `planes` calls of `op`, the best of three.
fn best_ms(planes: usize, mut op: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..planes {
                op();
            }
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    println!("| input | k | stride | forward ms | input grad ms | filter grad ms |");
    println!("|---|---|---|---|---|---|");
    let mut totals = [0.0; 3];
    for (size, k, stride, planes) in SHAPES {
        let d = Plane {
            h: size,
            w: size,
            k,
        };
        let w = same(size, k, stride);
        let x: Vec<f32> = (0..size * size).map(|i| (i as f32 * 0.37).sin()).collect();
        let f: Vec<f32> = (0..k * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let g: Vec<f32> = (0..w.out_h * w.out_w)
            .map(|i| (i as f32 * 0.21).sin())
            .collect();
        let (mut out, mut dx, mut acc) =
            (vec![0.0; g.len()], vec![0.0; x.len()], vec![0.0; k * k + 1]);
        let mut scratch = Vec::new();
        let ms = [
            best_ms(planes, || {
                forward(&x, &f, 0.5, &d, &w, &mut scratch, black_box(&mut out))
            }),
            best_ms(planes, || {
                input_grad(&g, &f, &d, &w, &mut scratch, black_box(&mut dx))
            }),
            best_ms(planes, || {
                filter_grad(&g, &x, &d, &w, &mut scratch, black_box(&mut acc))
            }),
        ];
        for (t, m) in totals.iter_mut().zip(ms) {
            *t += m;
        }
        println!(
            "| {size}×{size} | {k} | {stride} | {:.1} | {:.1} | {:.1} |",
            ms[0], ms[1], ms[2]
        );
    }
    let [a, b, c] = totals;
    println!("| all | | | {a:.0} | {b:.0} | {c:.0} |");
}

//! Helpers of the tests of our own ops against burn's (here and in `quant::fused`).

use burn::prelude::*;

/// Values spread over [lo, hi) from a fixed hash of their index: tests run in parallel,
/// so the backend's global RNG could be reseeded by another test midway.
pub fn spread(n: usize, salt: f32, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = ((i as f32 + salt) * 12.9898).sin() * 43_758.547;
            lo + (hi - lo) * (h - h.floor())
        })
        .collect()
}

/// A tensor's values on the host.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 after convert")
}

/// Largest |a − b| relative to the largest |b| (1 when b is all small).
pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

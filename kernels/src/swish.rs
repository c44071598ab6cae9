//! Swish, x·σ(x), and its gradient over slices, with a vectorised exp. The loops are
//! compiled for AVX2 too and that copy is picked at run time; without fused
//! multiply-adds both give the same bits.

use crate::Slot;
use std::mem::MaybeUninit;

/// Elements per step of the main loops: two AVX2 registers, so two independent exp
/// chains overlap (0.93 vs 1.23 ns per element for the forward; AVX-512 registers
/// measured no faster).
const WIDE: usize = 16;
/// Elements per step of the rest, so that short runs (7×7 planes) pad to 8, not 16.
const LANES: usize = 8;

/// e^x for `L` lanes, to about 1 ulp (Cephes' `expf`: x = n·ln 2 + r, a degree-6
/// polynomial in r, 2^n put into the exponent bits). Branch-free, so it vectorises; no
/// fused multiply-adds, so every SIMD width gives the same bits. NaN stays NaN; below
/// −87.3 the result is 2^−126-ish (σ rounds it away), above 88.7 infinity.
///
/// Why our own: no crate gives a vector exp chosen at run time on stable Rust (`wide`
/// fixes its SIMD width at compile time, and our portable builds target baseline x86-64).
#[inline(always)]
fn exp<const L: usize>(x: [f32; L]) -> [f32; L] {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so n·C1 is exact.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding it rounds to an integer and leaves that integer in the low bits.
    const SHIFT: f32 = 12_582_912.0;
    const P: [f32; 6] = [
        1.987_569_2e-4,
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    let mut out = [0f32; L];
    for i in 0..L {
        let v = x[i];
        let v = v.clamp(-87.336_55, 88.722_83);
        let t = v * LOG2E + SHIFT;
        let n = t - SHIFT;
        let r = v - n * C1 - n * C2;
        let mut p = P[0];
        for c in &P[1..] {
            p = p * r + c;
        }
        let e = p * (r * r) + r + 1.0;
        // n sits in t's low mantissa bits; 2^n has exponent bits n + 127.
        let n_int = t.to_bits().wrapping_sub(SHIFT.to_bits());
        let two_n = f32::from_bits(n_int.wrapping_add(127) << 23);
        out[i] = e * two_n;
    }
    out
}

/// σ(x) for `L` lanes.
#[inline(always)]
fn sigmoid<const L: usize>(x: [f32; L]) -> [f32; L] {
    let e = exp(x.map(|v| -v));
    e.map(|e| 1.0 / (1.0 + e))
}

/// What one loop computes from `L` lanes of each of its `I` inputs: `K` results. A
/// trait with inlined functions, not a closure: a closure was left uninlined, so it ran
/// as a call compiled without AVX2 (five times slower).
trait Lanes<const I: usize, const K: usize> {
    fn lanes<const L: usize>(inputs: [[f32; L]; I]) -> [[f32; L]; K];
}

/// Runs `F` on the `inputs` `L` elements at a time from `start` while whole runs of `L`
/// remain, storing its `K` results into `outs`; returns where it stopped. Every run
/// stores exactly `L` lanes, so the body stays in vector registers (a store loop of
/// variable length made it scalar).
#[inline(always)]
fn map_runs<F: Lanes<I, K>, S: Slot, const I: usize, const K: usize, const L: usize>(
    inputs: [&[f32]; I],
    outs: &mut [&mut [S]; K],
    mut start: usize,
) -> usize {
    while start + L <= outs[0].len() {
        let xs =
            inputs.map(|x| -> [f32; L] { x[start..start + L].try_into().expect("a full run") });
        store(outs, start, L, F::lanes(xs));
        start += L;
    }
    start
}

/// Runs `F` over the `inputs` and stores its `K` results into `outs`: [`WIDE`] lanes at
/// a time, then [`LANES`], then the last few zero-padded to [`LANES`] (only the real
/// elements stored). Each element's result is the same at any lane count.
#[inline(always)]
fn map_lanes<F: Lanes<I, K>, S: Slot, const I: usize, const K: usize>(
    inputs: [&[f32]; I],
    mut outs: [&mut [S]; K],
) {
    let start = map_runs::<F, S, I, K, WIDE>(inputs, &mut outs, 0);
    let full = map_runs::<F, S, I, K, LANES>(inputs, &mut outs, start);
    if full < outs[0].len() {
        let len = outs[0].len() - full;
        let xs = inputs.map(|x| {
            let mut run = [0f32; LANES];
            run[..len].copy_from_slice(&x[full..]);
            run
        });
        store(&mut outs, full, len, F::lanes(xs));
    }
}

/// The first `len` lanes of each result into its output from `start` (`len` is `L` but
/// for the last run: a constant length keeps the stores vectorised).
#[inline(always)]
fn store<S: Slot, const K: usize, const L: usize>(
    outs: &mut [&mut [S]; K],
    start: usize,
    len: usize,
    ys: [[f32; L]; K],
) {
    for (out, y) in outs.iter_mut().zip(ys) {
        for (o, v) in out[start..start + len].iter_mut().zip(y) {
            o.set(v);
        }
    }
}

/// swish's gradient for upstream `g` at `x`, given s = σ(x).
#[inline(always)]
fn grad_one(g: f32, x: f32, s: f32) -> f32 {
    g * (s * (1.0 + x * (1.0 - s)))
}

/// y = x·σ(x).
struct Swish;

impl Lanes<1, 1> for Swish {
    #[inline(always)]
    fn lanes<const L: usize>([x]: [[f32; L]; 1]) -> [[f32; L]; 1] {
        let s = sigmoid(x);
        [std::array::from_fn(|i| x[i] * s[i])]
    }
}

/// y = x·σ(x) and σ(x).
struct SwishKeepingSigmoid;

impl Lanes<1, 2> for SwishKeepingSigmoid {
    #[inline(always)]
    fn lanes<const L: usize>([x]: [[f32; L]; 1]) -> [[f32; L]; 2] {
        let s = sigmoid(x);
        [std::array::from_fn(|i| x[i] * s[i]), s]
    }
}

/// dx from (g, x).
struct SwishGrad;

impl Lanes<2, 1> for SwishGrad {
    #[inline(always)]
    fn lanes<const L: usize>([g, x]: [[f32; L]; 2]) -> [[f32; L]; 1] {
        let s = sigmoid(x);
        [std::array::from_fn(|i| grad_one(g[i], x[i], s[i]))]
    }
}

#[inline(always)]
fn forward_portable<S: Slot>(x: &[f32], y: &mut [S]) {
    map_lanes::<Swish, S, 1, 1>([x], [y]);
}

#[inline(always)]
fn forward_keeping_sigmoid_portable<S: Slot>(x: &[f32], y: &mut [S], sigmoid: &mut [S]) {
    map_lanes::<SwishKeepingSigmoid, S, 1, 2>([x], [y, sigmoid]);
}

#[inline(always)]
fn backward_portable<S: Slot>(g: &[f32], x: &[f32], dx: &mut [S]) {
    map_lanes::<SwishGrad, S, 2, 1>([g, x], [dx]);
}

#[inline(always)]
fn backward_from_sigmoid_portable<S: Slot>(g: &[f32], x: &[f32], sigmoid: &[f32], dx: &mut [S]) {
    for (((d, &g), &x), &s) in dx.iter_mut().zip(g).zip(x).zip(sigmoid) {
        d.set(grad_one(g, x, s));
    }
}

with_avx2_copies! {
    fn forward_dispatch<S: Slot>(x: &[f32], y: &mut [S]) = forward_portable;
    fn forward_keeping_sigmoid_dispatch<S: Slot>(x: &[f32], y: &mut [S], sigmoid: &mut [S])
        = forward_keeping_sigmoid_portable;
    fn backward_dispatch<S: Slot>(g: &[f32], x: &[f32], dx: &mut [S]) = backward_portable;
    fn backward_from_sigmoid_dispatch<S: Slot>(g: &[f32], x: &[f32], sigmoid: &[f32], dx: &mut [S])
        = backward_from_sigmoid_portable;
}

// The public entry points are concrete (an f32 or an uninitialized output), so that
// they are compiled here, optimized, and not instantiated unoptimized in a debug caller.

fn forward<S: Slot>(x: &[f32], y: &mut [S]) {
    assert_eq!(x.len(), y.len(), "swish input and output lengths");
    forward_dispatch(x, y)
}

fn backward<S: Slot>(g: &[f32], x: &[f32], dx: &mut [S]) {
    assert!(
        g.len() == x.len() && dx.len() == x.len(),
        "swish gradient lengths"
    );
    backward_dispatch(g, x, dx)
}

/// y = x·σ(x), elementwise.
pub fn forward_slice(x: &[f32], y: &mut [f32]) {
    forward(x, y)
}

/// [`forward_slice`] into a fresh buffer.
pub fn forward_uninit(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    forward(x, y)
}

/// y = x·σ(x) and σ(x) itself, elementwise, for a backward that follows
/// ([`backward_from_sigmoid`]) without a second exp.
pub fn forward_keeping_sigmoid(x: &[f32], y: &mut [f32], sigmoid: &mut [f32]) {
    assert!(
        y.len() == x.len() && sigmoid.len() == x.len(),
        "swish input and output lengths"
    );
    forward_keeping_sigmoid_dispatch(x, y, sigmoid)
}

/// dx = g·σ(x)·(1 + x·(1 − σ(x))), elementwise, into a fresh buffer: swish's gradient
/// for the upstream `g`.
pub fn backward_uninit(g: &[f32], x: &[f32], dx: &mut [MaybeUninit<f32>]) {
    backward(g, x, dx)
}

/// swish's gradient given σ(x) (from [`forward_keeping_sigmoid`]): the bits of
/// [`backward_uninit`].
pub fn backward_from_sigmoid(g: &[f32], x: &[f32], sigmoid: &[f32], dx: &mut [f32]) {
    assert!(
        g.len() == x.len() && sigmoid.len() == x.len() && dx.len() == x.len(),
        "swish gradient lengths"
    );
    backward_from_sigmoid_dispatch(g, x, sigmoid, dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulps_of_libm() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let ours = exp([x; LANES])[0];
            let want = (x as f64).exp();
            let ulp = f64::from(f32::EPSILON) * want.abs();
            worst = worst.max((f64::from(ours) - want).abs() / ulp);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert!(exp([f32::NAN; LANES])[0].is_nan());
        assert_eq!(exp([0.0; LANES])[0], 1.0);
    }

    /// The AVX2 copy and the baseline loops give the same bits (no FMA contraction).
    #[test]
    fn every_simd_width_gives_the_same_bits() {
        let x: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) / 17.0).collect();
        let g: Vec<f32> = (0..1003).map(|i| ((i % 11) as f32 - 5.0) / 5.0).collect();
        let (mut a, mut b) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        forward_slice(&x, &mut a);
        forward_portable(&x, &mut b);
        assert_eq!(a, b);
        backward(&g, &x, &mut a);
        backward_portable(&g, &x, &mut b);
        assert_eq!(a, b);
    }

    /// Keeping σ(x) from the forward gives the bits of recomputing it, forward and back.
    #[test]
    fn the_kept_sigmoid_gives_the_same_bits() {
        let x: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) / 17.0).collect();
        let g: Vec<f32> = (0..1003).map(|i| ((i % 11) as f32 - 5.0) / 5.0).collect();
        let n = x.len();
        let (mut y, mut sigmoid, mut want) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        forward_keeping_sigmoid(&x, &mut y, &mut sigmoid);
        forward_slice(&x, &mut want);
        assert_eq!(y, want);
        let mut fresh = vec![0f32; n];
        forward_keeping_sigmoid_portable(&x, &mut fresh, &mut want);
        assert_eq!(sigmoid, want, "AVX2 and baseline σ");
        let mut dx = vec![0f32; n];
        backward_from_sigmoid(&g, &x, &sigmoid, &mut dx);
        backward(&g, &x, &mut want);
        assert_eq!(dx, want);
        backward_from_sigmoid_portable(&g, &x, &sigmoid, &mut dx);
        assert_eq!(dx, want, "baseline");
    }
}

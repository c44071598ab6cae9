//! The adjustable quantizer's per-element step over one channel's run of elements,
//! y = (clip(round(x·S) − z, 0, L) + z)·inv, and its gradients. Eight lanes at a time and
//! branch-free, so the loops vectorise; compiled for AVX2 too and that copy picked at run
//! time (no fused multiply-adds: both give the same bits).

use crate::Slot;
use std::mem::MaybeUninit;

/// Eight lanes at a time, so the compiler vectorises the loops.
const LANES: usize = 8;

/// One channel's constants: S = L / W, z = round(lo·S), L = 2^b − 1 and inv = 1 / S.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub step_inv: f32,
    pub zero: f32,
    pub levels: f32,
    pub inv: f32,
}

/// The sums of one run's backward, in f64: ∂S, ∂z, ∂L and ∂inv.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RangeGrads {
    pub step_inv: f64,
    pub zero: f64,
    pub levels: f64,
    pub inv: f64,
}

impl std::ops::AddAssign for RangeGrads {
    fn add_assign(&mut self, o: Self) {
        self.step_inv += o.step_inv;
        self.zero += o.zero;
        self.levels += o.levels;
        self.inv += o.inv;
    }
}

/// Round half to even, like burn's `round`: how one copy of the loops does it.
trait RoundEven {
    fn round(v: f32) -> f32;
}

/// Without the libm call that `f32::round_ties_even` becomes on baseline x86-64 (no
/// SSE4.1): adding and removing 2^23 (with v's sign) leaves the nearest integer under the
/// default rounding mode; from 2^23 up every f32 is an integer already.
struct ByMagicNumber;

impl RoundEven for ByMagicNumber {
    #[inline(always)]
    fn round(v: f32) -> f32 {
        const TWO_23: f32 = 8_388_608.0;
        let m = TWO_23.copysign(v);
        let r = (v + m) - m;
        if v.abs() >= TWO_23 { v } else { r }
    }
}

/// SSE4.1's `roundps` where the forward is compiled for AVX2: one instruction for the
/// seven above, the same result (forward 0.41 -> 0.31 ns per element on 14×14 planes).
/// The backward keeps [`ByMagicNumber`]: with this, the compiler left most of its loop
/// scalar (three times slower).
struct ByInstruction;

impl RoundEven for ByInstruction {
    #[inline(always)]
    fn round(v: f32) -> f32 {
        v.round_ties_even()
    }
}

/// u clipped to [0, l], as `u.clamp(0.0, l)` for every finite u and l ≥ 0, but without
/// its panic when a non-finite update has made l NaN (a NaN u stays NaN).
#[inline(always)]
fn clip(u: f32, l: f32) -> f32 {
    let c = if u > l { l } else { u };
    if u < 0.0 { 0.0 } else { c }
}

/// round(x·S) − z: the element's level before the clip.
#[inline(always)]
fn level<R: RoundEven>(v: f32, r: &Range) -> f32 {
    R::round(v * r.step_inv) - r.zero
}

#[inline(always)]
fn forward_one<R: RoundEven>(v: f32, r: &Range) -> f32 {
    (clip(level::<R>(v, r), r.levels) + r.zero) * r.inv
}

/// One element's input gradient and its terms of the four sums, for upstream g. Inside
/// 0 ≤ u ≤ L the gradient goes to x and S; outside, to z (and to L above it).
#[inline(always)]
fn backward_one<R: RoundEven>(v: f32, g: f32, r: &Range) -> (f32, [f32; 4]) {
    let u = level::<R>(v, r);
    let gi = g * r.inv;
    let inside = u >= 0.0 && u <= r.levels;
    let dx = if inside { gi * r.step_inv } else { 0.0 };
    let ds = if inside { gi * v } else { 0.0 };
    let dz = if inside { 0.0 } else { gi };
    let dl = if u > r.levels { gi } else { 0.0 };
    let dinv = g * (clip(u, r.levels) + r.zero);
    (dx, [ds, dz, dl, dinv])
}

/// y = q(x) or, `SCALED`, y = q(x·scale).
#[inline(always)]
fn forward_portable<S: Slot, R: RoundEven, const SCALED: bool>(
    x: &[f32],
    scale: f32,
    r: &Range,
    y: &mut [S],
) {
    for (y, &v) in y.iter_mut().zip(x) {
        let v = if SCALED { v * scale } else { v };
        y.set(forward_one::<R>(v, r));
    }
}

/// Chunks of [`LANES`] elements whose sums [`backward_portable`] keeps in f32 before adding
/// them into its f64 lanes: converting every term to f64 made the backward five times the
/// forward's cost; 16 f32 terms per lane lose at most a few ulp of f32.
const F32_CHUNKS: usize = 16;

/// How a copy of the backward does one chunk of [`LANES`] elements: ∂x into `dx`, and
/// each lane's terms (∂S, ∂z, ∂L, ∂inv and, `SCALED`, ∂scale) added to `block`.
trait BackwardChunk {
    fn chunk<S: Slot, const SCALED: bool>(
        x: &[f32],
        g: &[f32],
        scale: f32,
        r: &Range,
        dx: &mut [S],
        block: &mut [[f32; LANES]; 5],
    );
}

/// Lane by lane, rounding with the magic number: the compiler vectorises this.
struct LaneByLane;

impl BackwardChunk for LaneByLane {
    #[inline(always)]
    fn chunk<S: Slot, const SCALED: bool>(
        x: &[f32],
        g: &[f32],
        scale: f32,
        r: &Range,
        dx: &mut [S],
        block: &mut [[f32; LANES]; 5],
    ) {
        for i in 0..LANES {
            let v = if SCALED { x[i] * scale } else { x[i] };
            let (d, terms) = backward_one::<ByMagicNumber>(v, g[i], r);
            dx[i].set(if SCALED { d * scale } else { d });
            for k in 0..4 {
                block[k][i] += terms[k];
            }
            if SCALED {
                block[4][i] += d * x[i];
            }
        }
    }
}

/// The backward of y = q(x) or, `SCALED`, of y = q(x·scale): ∂x, the range's sums and
/// (`SCALED`) ∂scale = Σ ∂(x·scale)·x.
#[inline(always)]
fn backward_portable<S: Slot, C: BackwardChunk, const SCALED: bool>(
    g: &[f32],
    x: &[f32],
    scale: f32,
    r: &Range,
    dx: &mut [S],
) -> (RangeGrads, f64) {
    // Lane i sums elements i, i + 8, … (in f32 over a block of F32_CHUNKS chunks, then in
    // f64); the lanes are added in order at the end.
    let mut lanes = [[0f64; LANES]; 5];
    let full = x.len() / LANES * LANES;
    let block = LANES * F32_CHUNKS;
    for ((dx, x), g) in dx[..full]
        .chunks_mut(block)
        .zip(x[..full].chunks(block))
        .zip(g[..full].chunks(block))
    {
        let mut block_lanes = [[0f32; LANES]; 5];
        for ((dx, x), g) in dx
            .chunks_exact_mut(LANES)
            .zip(x.chunks_exact(LANES))
            .zip(g.chunks_exact(LANES))
        {
            C::chunk::<S, SCALED>(x, g, scale, r, dx, &mut block_lanes);
        }
        for (lane, block_lane) in lanes.iter_mut().zip(block_lanes) {
            for i in 0..LANES {
                lane[i] += f64::from(block_lane[i]);
            }
        }
    }
    let mut sums = lanes.map(|lane| lane.iter().sum::<f64>());
    for ((dx, &x), &g) in dx[full..].iter_mut().zip(&x[full..]).zip(&g[full..]) {
        let v = if SCALED { x * scale } else { x };
        let (d, terms) = backward_one::<ByMagicNumber>(v, g, r);
        dx.set(if SCALED { d * scale } else { d });
        for (s, t) in sums.iter_mut().zip(terms) {
            *s += f64::from(t);
        }
        if SCALED {
            sums[4] += f64::from(d * x);
        }
    }
    let [step_inv, zero, levels, inv, scale] = sums;
    let range = RangeGrads {
        step_inv,
        zero,
        levels,
        inv,
    };
    (range, scale)
}

// The loops twice, as `with_avx2_copies!` makes them elsewhere, but with the rounding
// chosen per copy (a type argument the macro does not pass).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[target_feature(enable = "avx2")]
    pub fn forward<S: Slot, const SCALED: bool>(x: &[f32], scale: f32, r: &Range, y: &mut [S]) {
        forward_portable::<S, ByInstruction, SCALED>(x, scale, r, y)
    }

    #[target_feature(enable = "avx2")]
    pub fn backward<S: Slot, const SCALED: bool>(
        g: &[f32],
        x: &[f32],
        scale: f32,
        r: &Range,
        dx: &mut [S],
    ) -> (RangeGrads, f64) {
        backward_portable::<S, Intrinsics, SCALED>(g, x, scale, r, dx)
    }

    /// [`LaneByLane`] in AVX2 instructions, rounding with `roundps`: the compiler's own
    /// vector code for the lanes with that rounding went scalar. The same operations per
    /// lane in the same order, so the same bits (a −0 from `roundps` where the magic
    /// number gives +0 changes no result: it only reaches them through u − z and clip(u) + z).
    struct Intrinsics;

    impl BackwardChunk for Intrinsics {
        #[inline(always)]
        fn chunk<S: Slot, const SCALED: bool>(
            x: &[f32],
            g: &[f32],
            scale: f32,
            r: &Range,
            dx: &mut [S],
            block: &mut [[f32; LANES]; 5],
        ) {
            use std::arch::x86_64::*;
            assert!(x.len() == LANES && g.len() == LANES && dx.len() == LANES);
            // SAFETY: only `backward` above, compiled for AVX2 and run where the CPU has
            // it, instantiates this; every load and store is of LANES elements of slices
            // of that length (checked just above); an `S` is an f32 in memory.
            unsafe {
                let xv = _mm256_loadu_ps(x.as_ptr());
                let gv = _mm256_loadu_ps(g.as_ptr());
                let sc = _mm256_set1_ps(scale);
                let (s, z) = (_mm256_set1_ps(r.step_inv), _mm256_set1_ps(r.zero));
                let (l, inv) = (_mm256_set1_ps(r.levels), _mm256_set1_ps(r.inv));
                let zero = _mm256_setzero_ps();
                let v = if SCALED { _mm256_mul_ps(xv, sc) } else { xv };
                let rounded = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_mul_ps(v, s),
                );
                let u = _mm256_sub_ps(rounded, z);
                let gi = _mm256_mul_ps(gv, inv);
                let inside = _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_GE_OQ>(u, zero),
                    _mm256_cmp_ps::<_CMP_LE_OQ>(u, l),
                );
                let above = _mm256_cmp_ps::<_CMP_GT_OQ>(u, l);
                let d = _mm256_and_ps(inside, _mm256_mul_ps(gi, s));
                let ds = _mm256_and_ps(inside, _mm256_mul_ps(gi, v));
                let dz = _mm256_andnot_ps(inside, gi);
                let dl = _mm256_and_ps(above, gi);
                // clip(u, L): L above it, 0 below 0 (a NaN u stays NaN).
                let capped = _mm256_blendv_ps(u, l, above);
                let clipped = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(u, zero), capped);
                let dinv = _mm256_mul_ps(gv, _mm256_add_ps(clipped, z));
                let out = if SCALED { _mm256_mul_ps(d, sc) } else { d };
                _mm256_storeu_ps(dx.as_mut_ptr().cast::<f32>(), out);
                let terms = [ds, dz, dl, dinv, _mm256_mul_ps(d, xv)];
                let count = if SCALED { 5 } else { 4 };
                for (lane, t) in block.iter_mut().zip(terms).take(count) {
                    let sum = _mm256_add_ps(_mm256_loadu_ps(lane.as_ptr()), t);
                    _mm256_storeu_ps(lane.as_mut_ptr(), sum);
                }
            }
        }
    }
}

fn forward_dispatch<S: Slot, const SCALED: bool>(x: &[f32], scale: f32, r: &Range, y: &mut [S]) {
    assert_eq!(x.len(), y.len(), "quantizer input and output lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2::forward::<S, SCALED>(x, scale, r, y) };
    }
    forward_portable::<S, ByMagicNumber, SCALED>(x, scale, r, y)
}

fn backward_dispatch<S: Slot, const SCALED: bool>(
    g: &[f32],
    x: &[f32],
    scale: f32,
    r: &Range,
    dx: &mut [S],
) -> (RangeGrads, f64) {
    assert!(
        g.len() == x.len() && dx.len() == x.len(),
        "quantizer gradient lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2::backward::<S, SCALED>(g, x, scale, r, dx) };
    }
    backward_portable::<S, LaneByLane, SCALED>(g, x, scale, r, dx)
}

// The public entry points are concrete (an f32 or an uninitialized output), so that
// they are compiled here, optimized, and not instantiated unoptimized in a debug caller.

/// y = (clip(round(x·S) − z, 0, L) + z)·inv for one channel's run `x`.
pub fn forward(x: &[f32], r: &Range, y: &mut [f32]) {
    forward_dispatch::<_, false>(x, 1.0, r, y)
}

/// [`forward`] into a fresh buffer.
pub fn forward_uninit(x: &[f32], r: &Range, y: &mut [MaybeUninit<f32>]) {
    forward_dispatch::<_, false>(x, 1.0, r, y)
}

/// [`forward`] of x·`scale`, into a fresh buffer (an SE gate's product quantized).
pub fn forward_scaled_uninit(x: &[f32], scale: f32, r: &Range, y: &mut [MaybeUninit<f32>]) {
    forward_dispatch::<_, true>(x, scale, r, y)
}

/// The gradient of one channel's run for the upstream `g`: ∂x into `dx` and the run's
/// sums ∂S = Σ inside·g·inv·x, ∂z = Σ (1 − inside)·g·inv, ∂L = Σ (u > L)·g·inv and
/// ∂inv = Σ g·(clip(u) + z), where u = round(x·S) − z and inside = 0 ≤ u ≤ L.
pub fn backward(g: &[f32], x: &[f32], r: &Range, dx: &mut [f32]) -> RangeGrads {
    backward_dispatch::<_, false>(g, x, 1.0, r, dx).0
}

/// [`backward`] into a fresh buffer.
pub fn backward_uninit(g: &[f32], x: &[f32], r: &Range, dx: &mut [MaybeUninit<f32>]) -> RangeGrads {
    backward_dispatch::<_, false>(g, x, 1.0, r, dx).0
}

/// The gradient of [`forward_scaled_uninit`]: with d the quantizer's input gradient at
/// x·`scale`, ∂x = d·scale into `dx`, the range's sums at x·scale, and ∂scale = Σ d·x.
pub fn backward_scaled_uninit(
    g: &[f32],
    x: &[f32],
    scale: f32,
    r: &Range,
    dx: &mut [MaybeUninit<f32>],
) -> (RangeGrads, f64) {
    backward_dispatch::<_, true>(g, x, scale, r, dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Range = Range {
        step_inv: 7.5,
        zero: -3.0,
        levels: 15.0,
        inv: 1.0 / 7.5,
    };

    fn inputs(n: usize) -> (Vec<f32>, Vec<f32>) {
        let x = (0..n).map(|i| (i as f32 - n as f32 / 2.0) / 13.0).collect();
        let g = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
        (x, g)
    }

    /// Each element by hand: the clip's three cases and their gradients.
    #[test]
    fn hand_worked_elements() {
        // u = round(x·7.5) + 3: x = 0.2 → 5 (inside), x = −1 → −5 (below; −7.5 rounds
        // to even −8), x = 2 → 18 (above L = 15).
        let x = [0.2, -1.0, 2.0];
        let mut y = [0f32; 3];
        forward(&x, &R, &mut y);
        assert_eq!(y, [2.0 * R.inv, -3.0 * R.inv, 12.0 * R.inv]);
        let mut dx = [0f32; 3];
        let s = backward(&[1.0, 1.0, 1.0], &x, &R, &mut dx);
        let gi = R.inv;
        assert_eq!(dx, [gi * 7.5, 0.0, 0.0]);
        assert_eq!(s.step_inv, f64::from(gi * 0.2));
        assert_eq!(s.zero, 2.0 * f64::from(gi));
        assert_eq!(s.levels, f64::from(gi));
        assert_eq!(s.inv, 2.0 + -3.0 + 12.0);
    }

    /// Ties round to even, as burn's `round` does, on both sides of 2^22 and 2^23.
    #[test]
    fn round_half_to_even_everywhere() {
        for v in [
            0.5f32,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            0.49999997,
            3.7,
            -3.7,
            4_194_303.5,
            4_194_304.5,
            8_388_609.0,
            1e20,
            -1e20,
            0.0,
            -0.0,
            f32::INFINITY,
        ] {
            assert_eq!(ByMagicNumber::round(v), v.round_ties_even(), "{v}");
        }
        assert!(ByMagicNumber::round(f32::NAN).is_nan());
    }

    /// A NaN bound (after a non-finite update) is no panic: nothing is clipped above it,
    /// and a NaN input stays NaN, for the trainer's read-back of the loss to report.
    #[test]
    fn nan_levels_and_inputs_run_on() {
        let r = Range {
            levels: f32::NAN,
            ..R
        };
        let x = [2.0, f32::NAN];
        let mut y = [0f32; 2];
        forward(&x, &r, &mut y);
        assert_eq!(y[0], 15.0 * R.inv);
        assert!(y[1].is_nan());
        let mut dx = [0f32; 2];
        let s = backward(&[1.0, 1.0], &x, &r, &mut dx);
        assert!(s.inv.is_nan());
    }

    /// The lane sums equal one sequential f64 sum to f64 rounding, and the element
    /// results are the scalar ones exactly.
    #[test]
    fn matches_the_scalar_definition() {
        let (x, g) = inputs(1003);
        let mut dx = vec![0f32; x.len()];
        let s = backward(&g, &x, &R, &mut dx);
        let (mut want, mut magnitude) = ([0f64; 4], [0f64; 4]);
        for (i, (&v, &gv)) in x.iter().zip(&g).enumerate() {
            let (d, terms) = backward_one::<ByMagicNumber>(v, gv, &R);
            assert_eq!(dx[i], d);
            for ((w, m), t) in want.iter_mut().zip(&mut magnitude).zip(terms) {
                *w += f64::from(t);
                *m += f64::from(t.abs());
            }
        }
        // Blocks of 16 terms per lane are summed in f32: each partial sum is off by at
        // most 16 f32 roundings of its magnitude.
        let got = [s.step_inv, s.zero, s.levels, s.inv];
        for ((a, b), m) in got.iter().zip(want).zip(magnitude) {
            let bound = 16.0 * f64::from(f32::EPSILON) * m;
            assert!((a - b).abs() <= bound, "{a} vs {b} (bound {bound})");
            assert_ne!(*a, 0.0, "the inputs reach every term");
        }
    }

    /// The AVX2 copy and the baseline loops give the same bits.
    #[test]
    fn every_simd_width_gives_the_same_bits() {
        let (mut x, g) = inputs(1003);
        // Products in (−0.5, 0), which `roundps` takes to −0 and the magic number to +0.
        x[..40]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = -0.001 * i as f32);
        // With z = +0 and −0 besides R's, unscaled and scaled.
        for zero in [R.zero, 0.0, -0.0] {
            let r = Range { zero, ..R };
            let (mut a, mut b) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            forward(&x, &r, &mut a);
            forward_portable::<_, ByMagicNumber, false>(&x, 1.0, &r, &mut b);
            assert_eq!(bits(&a), bits(&b), "forward, z = {zero}");
            for scale in [None, Some(0.37)] {
                let (sa, sb) = match scale {
                    None => (
                        (backward(&g, &x, &r, &mut a), 0.0),
                        backward_portable::<_, LaneByLane, false>(&g, &x, 1.0, &r, &mut b),
                    ),
                    Some(c) => (
                        backward_dispatch::<_, true>(&g, &x, c, &r, &mut a),
                        backward_portable::<_, LaneByLane, true>(&g, &x, c, &r, &mut b),
                    ),
                };
                assert_eq!(bits(&a), bits(&b), "∂x, z = {zero}, scale {scale:?}");
                assert_eq!(sa, sb, "sums, z = {zero}, scale {scale:?}");
            }
        }
    }

    /// Bit patterns, so that −0 and +0 differ.
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// The scaled loops are the plain ones on x·scale: the same bits for y, ∂x (times
    /// the scale) and the range's sums, and ∂scale the sum of the input gradient times x.
    #[test]
    fn scaled_runs_are_the_plain_ones_on_the_product() {
        let (x, g) = inputs(1003);
        let scale = 0.37;
        let product: Vec<f32> = x.iter().map(|v| v * scale).collect();
        let uninit = |n: usize| vec![MaybeUninit::<f32>::uninit(); n];
        // SAFETY (both reads): the kernels write every element.
        let read = |v: Vec<MaybeUninit<f32>>| -> Vec<f32> {
            v.into_iter().map(|e| unsafe { e.assume_init() }).collect()
        };
        let (mut y, mut want) = (uninit(x.len()), vec![0f32; x.len()]);
        forward_scaled_uninit(&x, scale, &R, &mut y);
        forward(&product, &R, &mut want);
        assert_eq!(read(y), want);
        let mut dx = uninit(x.len());
        let (sums, dscale) = backward_scaled_uninit(&g, &x, scale, &R, &mut dx);
        let mut d = vec![0f32; x.len()];
        assert_eq!(sums, backward(&g, &product, &R, &mut d));
        let want_dx: Vec<f32> = d.iter().map(|d| d * scale).collect();
        assert_eq!(read(dx), want_dx);
        let exact: f64 = d.iter().zip(&x).map(|(d, x)| f64::from(d * x)).sum();
        let magnitude: f64 = d
            .iter()
            .zip(&x)
            .map(|(d, x)| f64::from((d * x).abs()))
            .sum();
        assert!((dscale - exact).abs() <= 16.0 * f64::from(f32::EPSILON) * magnitude);
        assert_ne!(dscale, 0.0);
    }
}

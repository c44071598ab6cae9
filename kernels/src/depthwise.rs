//! Depthwise convolution (one k×k filter per channel) on one plane of one channel:
//! forward, input gradient and filter gradient, any (asymmetric) padding by index
//! arithmetic, strided reads regrouped so every inner loop is a contiguous slice. The
//! loops are compiled for AVX2 too and that copy is picked at run time; without fused
//! multiply-adds both give the same bits.

/// Where the filter sits: stride, padding before each axis (top, left) and the output
/// size (the padding after follows from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

/// One plane's shape: h×w pixels, a k×k filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plane {
    pub h: usize,
    pub w: usize,
    pub k: usize,
}

/// The span of output columns `ox` whose input column `ox·s + kx − pad` lies in `0..w`.
#[inline]
fn columns(kx: usize, w: usize, win: &Window) -> std::ops::Range<usize> {
    let s = win.stride;
    let lo = win.pad_left.saturating_sub(kx).div_ceil(s);
    let hi = (w + win.pad_left)
        .saturating_sub(kx)
        .div_ceil(s)
        .min(win.out_w);
    lo..hi
}

/// The input row an output row `oy` reads through filter row `ky`, if inside.
#[inline]
fn input_row(oy: usize, ky: usize, h: usize, win: &Window) -> Option<usize> {
    (oy * win.stride + ky)
        .checked_sub(win.pad_top)
        .filter(|&iy| iy < h)
}

/// Phase length of a row of `w` columns at stride `s`.
fn phase_len(w: usize, s: usize) -> usize {
    w.div_ceil(s)
}

/// `x` (an h×w plane) with its columns regrouped by their phase modulo the stride `s`,
/// into `buf`: phase p holds columns p, p + s, p + 2s, … of every row, in rows of ⌈w/s⌉,
/// so the columns one filter tap reads at stride s are a contiguous slice, which the
/// compiler vectorizes. At stride 1 this is the plane itself (and is not made).
fn to_phases(x: &[f32], h: usize, w: usize, s: usize, buf: &mut Vec<f32>) {
    let pw = phase_len(w, s);
    buf.clear();
    buf.resize(s * h * pw, 0.0);
    for p in 0..s {
        for iy in 0..h {
            let row = &x[iy * w..(iy + 1) * w];
            let out = &mut buf[(p * h + iy) * pw..(p * h + iy + 1) * pw];
            for (o, &v) in out.iter_mut().zip(row.iter().skip(p).step_by(s)) {
                *o = v;
            }
        }
    }
}

/// Plane `x` phased for `stride` ([`to_phases`]) in `buf`, or `x` itself at stride 1.
fn phased<'a>(x: &'a [f32], d: &Plane, stride: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
    if stride == 1 {
        return x;
    }
    to_phases(x, d.h, d.w, stride, buf);
    buf
}

/// The inverse of [`to_phases`]: the phased plane `buf` back into `x`.
fn from_phases(buf: &[f32], h: usize, w: usize, s: usize, x: &mut [f32]) {
    let pw = phase_len(w, s);
    for p in 0..s {
        for iy in 0..h {
            let row = &mut x[iy * w..(iy + 1) * w];
            let src = &buf[(p * h + iy) * pw..(p * h + iy + 1) * pw];
            for (o, &v) in row.iter_mut().skip(p).step_by(s).zip(src) {
                *o = v;
            }
        }
    }
}

/// Calls `f(oy, tap, columns, input)` for every output row `oy` and filter tap
/// `tap = ky·k + kx` whose input row is inside: `columns` are the output columns the tap
/// reaches, `input` the matching range of the phased input plane ([`to_phases`]).
#[inline(always)]
fn for_each_tap(
    d: &Plane,
    win: &Window,
    mut f: impl FnMut(usize, usize, std::ops::Range<usize>, std::ops::Range<usize>),
) {
    let (s, k) = (win.stride, d.k);
    let pw = phase_len(d.w, s);
    for oy in 0..win.out_h {
        for ky in 0..k {
            let Some(iy) = input_row(oy, ky, d.h, win) else {
                continue;
            };
            for kx in 0..k {
                let cols = columns(kx, d.w, win);
                if cols.is_empty() {
                    continue;
                }
                // Input column `first`, then every s-th: in phase first % s, from
                // index first / s on.
                let first = cols.start * s + kx - win.pad_left;
                let start = ((first % s) * d.h + iy) * pw + first / s;
                let input = start..start + cols.len();
                f(oy, ky * k + kx, cols, input);
            }
        }
    }
}

/// One output plane from its (phased) input plane: bias, then each filter tap added over
/// the output columns it reaches.
#[inline(always)]
fn forward_plane_impl(
    x: &[f32],
    filter: &[f32],
    bias: f32,
    d: &Plane,
    win: &Window,
    out: &mut [f32],
) {
    out.fill(bias);
    let ow = win.out_w;
    for_each_tap(d, win, |oy, tap, cols, input| {
        let f = filter[tap];
        let row = &mut out[oy * ow..(oy + 1) * ow];
        for (y, &v) in row[cols].iter_mut().zip(&x[input]) {
            *y += f * v;
        }
    });
}

/// One plane's input gradient, phased: each output gradient spread back over the taps.
#[inline(always)]
fn input_grad_plane_impl(g: &[f32], filter: &[f32], d: &Plane, win: &Window, dx: &mut [f32]) {
    dx.fill(0.0);
    let ow = win.out_w;
    for_each_tap(d, win, |oy, tap, cols, input| {
        let f = filter[tap];
        let grow = &g[oy * ow..(oy + 1) * ow];
        for (v, &gv) in dx[input].iter_mut().zip(&grow[cols]) {
            *v += f * gv;
        }
    });
}

/// One plane's contribution to its channel's filter gradient (k·k sums) and bias
/// gradient, added into `acc` (f64: a channel sums N·Ho·Wo terms); `x` phased.
#[inline(always)]
fn filter_grad_plane_impl(g: &[f32], x: &[f32], d: &Plane, win: &Window, acc: &mut [f64]) {
    acc[d.k * d.k] += bias_grad(g, win);
    let ow = win.out_w;
    for_each_tap(d, win, |oy, tap, cols, input| {
        let grow = &g[oy * ow..(oy + 1) * ow];
        acc[tap] += f64::from(dot(&grow[cols], &x[input]));
    });
}

/// One plane's bias gradient: Σ g, each row summed in f64.
#[inline(always)]
fn bias_grad(g: &[f32], win: &Window) -> f64 {
    g.chunks_exact(win.out_w)
        .map(|row| row.iter().map(|&v| f64::from(v)).sum::<f64>())
        .sum()
}

/// Lanes of the narrow-plane loops: eight f32 (one AVX2 register).
const LANES: usize = 8;

/// Output rows up to this wide (times the stride) take the narrow-plane filter gradient:
/// on B0's 7-, 14- and 28-wide planes the tap-by-tap dot products are mostly tails and
/// horizontal sums, and strided planes skip the phasing (measured on B0's shapes: 2.3×
/// faster in all; 56-wide planes at stride 1 are faster tap by tap).
const NARROW_WIDTH: usize = 32;

/// Whether a plane takes [`filter_grad_narrow_impl`].
fn narrow(d: &Plane, win: &Window) -> bool {
    d.k <= LANES && (1..=NARROW_WIDTH * win.stride).contains(&win.out_w) && win.out_h > 0
}

/// Row length of the zero-padded plane [`pad_plane`] makes: every output column's
/// window starts in it and eight lanes from there fit.
fn padded_width(win: &Window) -> usize {
    (win.out_w - 1) * win.stride + LANES
}

/// `x` (an h×w plane) zero-padded into `buf`, unphased: row r, column c hold input pixel
/// (r − pad_top, c − pad_left) or zero; rows (out_h − 1)·s + k, [`padded_width`] columns.
fn pad_plane(x: &[f32], d: &Plane, win: &Window, buf: &mut Vec<f32>) {
    let (rows, wp) = ((win.out_h - 1) * win.stride + d.k, padded_width(win));
    buf.clear();
    buf.resize(rows * wp, 0.0);
    for (r, out) in buf.chunks_exact_mut(wp).enumerate() {
        let Some(iy) = r.checked_sub(win.pad_top).filter(|&iy| iy < d.h) else {
            continue;
        };
        let row = &x[iy * d.w..(iy + 1) * d.w];
        // Input columns from (pad_left − c)⁺ on land at c ≥ pad_left.
        let skip = win.pad_left.min(wp);
        for (o, &v) in out[skip..].iter_mut().zip(row) {
            *o = v;
        }
    }
}

/// The filter gradient of a narrow plane from its padded input ([`pad_plane`]): for each
/// output pixel and filter row, its gradient times the eight input pixels from its
/// window's start, so lane kx sums tap (ky, kx) (lanes past k read padding and are
/// dropped); each row's f32 lanes are added into f64 ones.
#[inline(always)]
fn filter_grad_narrow_impl(g: &[f32], xp: &[f32], d: &Plane, win: &Window, acc: &mut [f64]) {
    let (s, k, wp) = (win.stride, d.k, padded_width(win));
    acc[k * k] += bias_grad(g, win);
    let mut sums = [[0f64; LANES]; LANES];
    for (oy, grow) in g.chunks_exact(win.out_w).enumerate() {
        for (ky, sum) in sums.iter_mut().enumerate().take(k) {
            let row = &xp[(oy * s + ky) * wp..(oy * s + ky + 1) * wp];
            let mut lanes = [0f32; LANES];
            for (ox, &gv) in grow.iter().enumerate() {
                let xs: &[f32; LANES] = row[ox * s..ox * s + LANES]
                    .try_into()
                    .expect("padded rows hold eight lanes past every window start");
                for l in 0..LANES {
                    lanes[l] += gv * xs[l];
                }
            }
            for (total, lane) in sum.iter_mut().zip(lanes) {
                *total += f64::from(lane);
            }
        }
    }
    for ky in 0..k {
        for kx in 0..k {
            acc[ky * k + kx] += sums[ky][kx];
        }
    }
}

/// The plane kernels compiled for AVX2 (eight f32 lanes per instruction), picked at run
/// time; without FMA they give the baseline build's bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Plane, Window};

    #[target_feature(enable = "avx2")]
    pub fn forward(x: &[f32], f: &[f32], b: f32, d: &Plane, w: &Window, out: &mut [f32]) {
        super::forward_plane_impl(x, f, b, d, w, out)
    }

    #[target_feature(enable = "avx2")]
    pub fn input_grad(g: &[f32], f: &[f32], d: &Plane, w: &Window, dx: &mut [f32]) {
        super::input_grad_plane_impl(g, f, d, w, dx)
    }

    #[target_feature(enable = "avx2")]
    pub fn filter_grad(g: &[f32], x: &[f32], d: &Plane, w: &Window, acc: &mut [f64]) {
        super::filter_grad_plane_impl(g, x, d, w, acc)
    }

    #[target_feature(enable = "avx2")]
    pub fn filter_grad_narrow(g: &[f32], xp: &[f32], d: &Plane, w: &Window, acc: &mut [f64]) {
        super::filter_grad_narrow_impl(g, xp, d, w, acc)
    }
}

fn forward_phased(x: &[f32], f: &[f32], b: f32, d: &Plane, w: &Window, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2::forward(x, f, b, d, w, out) };
    }
    forward_plane_impl(x, f, b, d, w, out)
}

fn input_grad_phased(g: &[f32], f: &[f32], d: &Plane, w: &Window, dx: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2::input_grad(g, f, d, w, dx) };
    }
    input_grad_plane_impl(g, f, d, w, dx)
}

fn filter_grad_phased(g: &[f32], x: &[f32], d: &Plane, w: &Window, acc: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2::filter_grad(g, x, d, w, acc) };
    }
    filter_grad_plane_impl(g, x, d, w, acc)
}

fn filter_grad_narrow(g: &[f32], xp: &[f32], d: &Plane, w: &Window, acc: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2::filter_grad_narrow(g, xp, d, w, acc) };
    }
    filter_grad_narrow_impl(g, xp, d, w, acc)
}

/// One output plane from input plane `x`, filter `f` and bias `b`; `scratch` holds the
/// phased input at stride > 1 (reuse it across planes).
pub fn forward(
    x: &[f32],
    f: &[f32],
    b: f32,
    d: &Plane,
    w: &Window,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    let x = phased(x, d, w.stride, scratch);
    forward_phased(x, f, b, d, w, out)
}

/// One plane's input gradient `dx` for the output gradient `g` and filter `f`; `scratch`
/// holds it phased at stride > 1.
pub fn input_grad(
    g: &[f32],
    f: &[f32],
    d: &Plane,
    w: &Window,
    scratch: &mut Vec<f32>,
    dx: &mut [f32],
) {
    if w.stride == 1 {
        return input_grad_phased(g, f, d, w, dx);
    }
    scratch.clear();
    scratch.resize(w.stride * d.h * phase_len(d.w, w.stride), 0.0);
    input_grad_phased(g, f, d, w, scratch);
    from_phases(scratch, d.h, d.w, w.stride, dx);
}

/// Adds one plane's filter gradient (k·k sums) and bias gradient (the last of `acc`) for
/// the output gradient `g` and the input plane `x`; `scratch` as for [`forward`].
pub fn filter_grad(
    g: &[f32],
    x: &[f32],
    d: &Plane,
    w: &Window,
    scratch: &mut Vec<f32>,
    acc: &mut [f64],
) {
    if narrow(d, w) {
        pad_plane(x, d, w, scratch);
        return filter_grad_narrow(g, scratch, d, w, acc);
    }
    let x = phased(x, d, w.stride, scratch);
    filter_grad_phased(g, x, d, w, acc)
}

/// A dot product in eight lanes (a plain `sum` is one serial chain the compiler may not
/// reorder, so it does not vectorize). Inlined so the AVX2 copies get an AVX2 dot.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += xa[i] * xb[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 copy and the baseline loops give the same bits (no FMA contraction).
    #[test]
    fn every_simd_width_gives_the_same_bits() {
        let d = Plane { h: 13, w: 11, k: 5 };
        let win = Window {
            stride: 2,
            pad_top: 1,
            pad_left: 2,
            out_h: 7,
            out_w: 6,
        };
        let x: Vec<f32> = (0..d.h * d.w)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let f: Vec<f32> = (0..d.k * d.k).map(|i| (i as f32 - 12.0) / 7.0).collect();
        let g: Vec<f32> = (0..win.out_h * win.out_w)
            .map(|i| ((i % 9) as f32 - 4.0) / 3.0)
            .collect();
        let mut buf = Vec::new();
        let xp = phased(&x, &d, win.stride, &mut buf).to_vec();
        let (mut a, mut b) = (vec![0f32; g.len()], vec![0f32; g.len()]);
        forward_phased(&xp, &f, 0.5, &d, &win, &mut a);
        forward_plane_impl(&xp, &f, 0.5, &d, &win, &mut b);
        assert_eq!(a, b);
        let (mut a, mut b) = (vec![0f32; xp.len()], vec![0f32; xp.len()]);
        input_grad_phased(&g, &f, &d, &win, &mut a);
        input_grad_plane_impl(&g, &f, &d, &win, &mut b);
        assert_eq!(a, b);
        let (mut a, mut b) = (vec![0f64; 26], vec![0f64; 26]);
        filter_grad_phased(&g, &xp, &d, &win, &mut a);
        filter_grad_plane_impl(&g, &xp, &d, &win, &mut b);
        assert_eq!(a, b);
        let mut padded = Vec::new();
        pad_plane(&x, &d, &win, &mut padded);
        let (mut a, mut b) = (vec![0f64; 26], vec![0f64; 26]);
        filter_grad_narrow(&g, &padded, &d, &win, &mut a);
        filter_grad_narrow_impl(&g, &padded, &d, &win, &mut b);
        assert_eq!(a, b);
    }

    /// Both filter-gradient loops (narrow planes, tap by tap) against the definition summed
    /// in f64, within the f32 rounding of the per-row sums; the public entry routes each
    /// shape to one of them.
    #[test]
    fn filter_grad_equals_the_definition() {
        for (h, w, k, stride, pad_top, pad_left) in [
            (7, 7, 5, 1, 2, 2),
            (14, 14, 3, 2, 0, 0),
            (13, 11, 5, 2, 1, 2),
            (6, 80, 3, 1, 1, 1),
            (9, 40, 5, 2, 2, 1),
            (2, 1, 5, 1, 2, 2),
            (4, 9, 7, 1, 3, 3),
        ] {
            let d = Plane { h, w, k };
            let out = |size: usize, pad: usize| (size + 2 * pad - k) / stride + 1;
            let win = Window {
                stride,
                pad_top,
                pad_left,
                out_h: out(h, pad_top),
                out_w: out(w, pad_left),
            };
            let x: Vec<f32> = (0..h * w)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let g: Vec<f32> = (0..win.out_h * win.out_w)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
                .collect();
            let (mut want, mut magnitude) = (vec![0f64; k * k + 1], vec![0f64; k * k + 1]);
            for oy in 0..win.out_h {
                for ox in 0..win.out_w {
                    let gv = f64::from(g[oy * win.out_w + ox]);
                    want[k * k] += gv;
                    magnitude[k * k] += gv.abs();
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * stride + ky).checked_sub(pad_top).filter(|&v| v < h);
                            let ix = (ox * stride + kx).checked_sub(pad_left).filter(|&v| v < w);
                            if let (Some(iy), Some(ix)) = (iy, ix) {
                                let t = gv * f64::from(x[iy * w + ix]);
                                want[ky * k + kx] += t;
                                magnitude[ky * k + kx] += t.abs();
                            }
                        }
                    }
                }
            }
            let mut buf = Vec::new();
            let mut routed = vec![0f64; k * k + 1];
            filter_grad(&g, &x, &d, &win, &mut buf, &mut routed);
            let xp = phased(&x, &d, stride, &mut buf).to_vec();
            let mut tap_by_tap = vec![0f64; k * k + 1];
            filter_grad_plane_impl(&g, &xp, &d, &win, &mut tap_by_tap);
            pad_plane(&x, &d, &win, &mut buf);
            let mut narrow_loop = vec![0f64; k * k + 1];
            filter_grad_narrow_impl(&g, &buf, &d, &win, &mut narrow_loop);
            for got in [&routed, &tap_by_tap, &narrow_loop] {
                for ((a, b), m) in got.iter().zip(&want).zip(&magnitude) {
                    let bound = 64.0 * f64::from(f32::EPSILON) * m;
                    assert!(
                        (a - b).abs() <= bound,
                        "{h}x{w}, k {k}, stride {stride}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// The forward equals the direct definition bit for bit (bias, then the taps in
    /// (ky, kx) order), on wide planes, planes narrower than the filter and both strides.
    #[test]
    fn forward_equals_the_direct_definition() {
        for (h, w, k, stride, pad_top, pad_left) in [
            (5, 75, 3, 1, 1, 1),
            (6, 80, 5, 2, 1, 2),
            (7, 70, 5, 1, 2, 2),
            (4, 33, 3, 2, 0, 0),
            (3, 130, 3, 1, 0, 1),
            (2, 1, 5, 1, 2, 2),
            (3, 2, 5, 2, 1, 2),
        ] {
            let d = Plane { h, w, k };
            let out = |size: usize, pad: usize| (size + 2 * pad - k) / stride + 1;
            let win = Window {
                stride,
                pad_top,
                pad_left,
                out_h: out(h, pad_top),
                out_w: out(w, pad_left),
            };
            let x: Vec<f32> = (0..h * w)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let f: Vec<f32> = (0..k * k).map(|i| (i as f32 - 12.0) / 7.0).collect();
            let mut want = vec![0f32; win.out_h * win.out_w];
            for oy in 0..win.out_h {
                for ox in 0..win.out_w {
                    let mut acc = 0.25f32;
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * stride + ky).checked_sub(pad_top).filter(|&v| v < h);
                            let ix = (ox * stride + kx).checked_sub(pad_left).filter(|&v| v < w);
                            if let (Some(iy), Some(ix)) = (iy, ix) {
                                acc += f[ky * k + kx] * x[iy * w + ix];
                            }
                        }
                    }
                    want[oy * win.out_w + ox] = acc;
                }
            }
            let mut got = vec![f32::NAN; want.len()];
            forward(&x, &f, 0.25, &d, &win, &mut Vec::new(), &mut got);
            assert_eq!(got, want, "{h}x{w}, k {k}, stride {stride}");
            // The baseline (non-AVX2) loops too.
            let mut buf = Vec::new();
            let xp = phased(&x, &d, stride, &mut buf);
            forward_plane_impl(xp, &f, 0.25, &d, &win, &mut got);
            assert_eq!(got, want, "{h}x{w}, k {k}, stride {stride}, baseline");
        }
    }
}

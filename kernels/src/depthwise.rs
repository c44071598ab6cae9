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

/// Output rows up to this wide take the narrow-plane loops: on B0's 7-, 14- and 28-wide
/// planes the tap-by-tap loops are mostly edge cases, tails and horizontal sums, and
/// strided planes skip the phasing (measured on B0's shapes with
/// `benches/depthwise_planes.rs`; 56-wide planes are about as fast tap by tap).
const NARROW_WIDTH: usize = 32;

/// The longest row the narrow loops hold, in whole lanes: an output row, or at stride 1
/// an input row (at most k − 1 more than the output's).
const MAX_NARROW_ROW: usize = NARROW_WIDTH + LANES;

/// Whether a plane takes the narrow-plane loops ([`forward_narrow_impl`],
/// [`gather_grad_impl`], [`scatter_grad_impl`], [`filter_grad_narrow_impl`]).
fn narrow(d: &Plane, win: &Window) -> bool {
    let rows_fit = win.stride > 1 || whole_lanes(d.w) <= MAX_NARROW_ROW;
    d.k <= LANES && (1..=NARROW_WIDTH).contains(&win.out_w) && win.out_h > 0 && rows_fit
}

/// `n` rounded up to whole lanes.
fn whole_lanes(n: usize) -> usize {
    n.div_ceil(LANES) * LANES
}

/// A zero-padded copy of an h×w plane: padded row r, column c hold pixel
/// (r − top, c − left), or zero outside the plane. Split into `phases` column phases
/// (phase p holds columns p, p + phases, …, like [`to_phases`]), each row `len` long.
#[derive(Clone, Copy)]
struct Padded {
    phases: usize,
    rows: usize,
    len: usize,
    top: usize,
    left: usize,
    h: usize,
    w: usize,
}

impl Padded {
    /// The input of [`filter_grad_narrow_impl`]: unphased, eight lanes from every window's
    /// start.
    fn unphased(d: &Plane, win: &Window) -> Self {
        Padded {
            phases: 1,
            rows: (win.out_h - 1) * win.stride + d.k,
            len: (win.out_w - 1) * win.stride + LANES,
            top: win.pad_top,
            left: win.pad_left,
            h: d.h,
            w: d.w,
        }
    }

    /// The input of [`forward_narrow_impl`], or the input gradient [`scatter_grad_impl`]
    /// writes: phased by the stride, a whole output row from every tap's first column.
    fn phased(d: &Plane, win: &Window) -> Self {
        Padded {
            phases: win.stride,
            rows: (win.out_h - 1) * win.stride + d.k,
            len: whole_lanes(win.out_w) + (d.k - 1) / win.stride,
            top: win.pad_top,
            left: win.pad_left,
            h: d.h,
            w: d.w,
        }
    }

    /// The output gradient (out_h×out_w) for [`gather_grad_impl`] at stride 1, padded by
    /// k − 1 on the top and left: input pixel (iy, ix) reads tap (ky, kx) at padded row
    /// iy + pad_top + k − 1 − ky, column ix + pad_left + k − 1 − kx.
    fn gradient(d: &Plane, win: &Window) -> Self {
        Padded {
            phases: 1,
            rows: d.h + win.pad_top + d.k - 1,
            len: whole_lanes(d.w) + win.pad_left + d.k - 1,
            top: d.k - 1,
            left: d.k - 1,
            h: win.out_h,
            w: win.out_w,
        }
    }

    fn size(&self) -> usize {
        self.phases * self.rows * self.len
    }

    /// Where column `c` (phase c mod phases) of padded row `r` is.
    fn at(&self, r: usize, c: usize) -> usize {
        ((c % self.phases) * self.rows + r) * self.len + c / self.phases
    }

    /// For each padded row inside the plane: its place in the padded buffer, the run
    /// `j0..j1` of its positions inside the plane, and where in the plane the first of
    /// them is (the rest follow every `phases` columns).
    fn runs(&self) -> impl Iterator<Item = (usize, std::ops::Range<usize>, usize)> + '_ {
        (0..self.phases * self.rows).filter_map(move |i| {
            let (p, r) = (i / self.rows, i % self.rows);
            let iy = r.checked_sub(self.top).filter(|&iy| iy < self.h)?;
            // Position j is column p + phases·j − left.
            let j0 = self.left.saturating_sub(p).div_ceil(self.phases);
            let j1 = (self.w + self.left)
                .saturating_sub(p)
                .div_ceil(self.phases)
                .min(self.len);
            (j0 < j1).then(|| {
                (
                    i * self.len,
                    j0..j1,
                    iy * self.w + p + self.phases * j0 - self.left,
                )
            })
        })
    }

    /// Plane `x` padded into `buf`.
    fn fill(&self, x: &[f32], buf: &mut Vec<f32>) {
        buf.clear();
        buf.resize(self.size(), 0.0);
        for (row, js, first) in self.runs() {
            let dst = &mut buf[row + js.start..row + js.end];
            for (v, &px) in dst.iter_mut().zip(x[first..].iter().step_by(self.phases)) {
                *v = px;
            }
        }
    }

    /// The inverse of [`Padded::fill`]: the plane's pixels of `buf` into `x`, zero where
    /// the padded plane does not reach.
    fn unpad(&self, buf: &[f32], x: &mut [f32]) {
        x.fill(0.0);
        for (row, js, first) in self.runs() {
            let src = &buf[row + js.start..row + js.end];
            for (px, &v) in x[first..].iter_mut().step_by(self.phases).zip(src) {
                *px = v;
            }
        }
    }
}

/// `row += f · src[start..]` over the row's whole lanes.
#[inline(always)]
fn add_scaled(row: &mut [f32], f: f32, src: &[f32], start: usize) {
    let n = row.len();
    for (y, &v) in row.iter_mut().zip(&src[start..start + n]) {
        *y += f * v;
    }
}

/// One narrow output plane from its padded input (`Padded::phased`): each row in
/// registers, bias then every tap in (ky, kx) order over whole lanes (taps on padding add
/// zero), so the bits of the tap-by-tap loops.
#[inline(always)]
fn forward_narrow_impl(
    xq: &[f32],
    filter: &[f32],
    bias: f32,
    d: &Plane,
    win: &Window,
    out: &mut [f32],
) {
    let (s, k) = (win.stride, d.k);
    let pad = Padded::phased(d, win);
    let mut row = [0f32; MAX_NARROW_ROW];
    let row = &mut row[..whole_lanes(win.out_w)];
    for (oy, out_row) in out.chunks_exact_mut(win.out_w).enumerate() {
        row.fill(bias);
        for ky in 0..k {
            for kx in 0..k {
                add_scaled(row, filter[ky * k + kx], xq, pad.at(oy * s + ky, kx));
            }
        }
        out_row.copy_from_slice(&row[..win.out_w]);
    }
}

/// A narrow plane's input gradient at stride 1 from the padded output gradient
/// (`Padded::gradient`): each input row in registers, its taps gathered with ky falling
/// and kx rising, the order in which the tap-by-tap loops add them (output row rising),
/// so the same bits.
#[inline(always)]
fn gather_grad_impl(gq: &[f32], filter: &[f32], d: &Plane, win: &Window, dx: &mut [f32]) {
    let k = d.k;
    let pad = Padded::gradient(d, win);
    let mut row = [0f32; MAX_NARROW_ROW];
    let row = &mut row[..whole_lanes(d.w)];
    for (iy, dx_row) in dx.chunks_exact_mut(d.w).enumerate() {
        row.fill(0.0);
        for ky in (0..k).rev() {
            let r = iy + win.pad_top + k - 1 - ky;
            for kx in 0..k {
                let c = win.pad_left + k - 1 - kx;
                add_scaled(row, filter[ky * k + kx], gq, pad.at(r, c));
            }
        }
        dx_row.copy_from_slice(&row[..d.w]);
    }
}

/// A narrow plane's input gradient at stride > 1, into its padded form `dq`
/// (`Padded::phased`, zeroed): each output gradient row (zero-padded to whole lanes)
/// spread over the taps in (oy, ky, kx) order, so the bits of the tap-by-tap loops.
#[inline(always)]
fn scatter_grad_impl(g: &[f32], filter: &[f32], d: &Plane, win: &Window, dq: &mut [f32]) {
    let (s, k, n) = (win.stride, d.k, whole_lanes(win.out_w));
    let pad = Padded::phased(d, win);
    let mut row = [0f32; MAX_NARROW_ROW];
    for (oy, grow) in g.chunks_exact(win.out_w).enumerate() {
        row[..win.out_w].copy_from_slice(grow);
        for ky in 0..k {
            for kx in 0..k {
                let f = filter[ky * k + kx];
                let at = pad.at(oy * s + ky, kx);
                add_scaled(&mut dq[at..at + n], f, &row[..n], 0);
            }
        }
    }
}

/// The filter gradient of a narrow plane from its padded input (`Padded::unphased`): for each
/// output pixel and filter row, its gradient times the eight input pixels from its
/// window's start, so lane kx sums tap (ky, kx) (lanes past k read padding and are
/// dropped); each row's f32 lanes are added into f64 ones.
#[inline(always)]
fn filter_grad_narrow_impl(g: &[f32], xp: &[f32], d: &Plane, win: &Window, acc: &mut [f64]) {
    let (s, k, wp) = (win.stride, d.k, Padded::unphased(d, win).len);
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

// The plane loops' AVX2 copies and their dispatch.
with_avx2_copies! {
    fn forward_phased(x: &[f32], f: &[f32], b: f32, d: &Plane, w: &Window, out: &mut [f32])
        = forward_plane_impl;
    fn forward_narrow(x: &[f32], f: &[f32], b: f32, d: &Plane, w: &Window, out: &mut [f32])
        = forward_narrow_impl;
    fn input_grad_phased(g: &[f32], f: &[f32], d: &Plane, w: &Window, dx: &mut [f32])
        = input_grad_plane_impl;
    fn gather_grad(gq: &[f32], f: &[f32], d: &Plane, w: &Window, dx: &mut [f32])
        = gather_grad_impl;
    fn scatter_grad(g: &[f32], f: &[f32], d: &Plane, w: &Window, dq: &mut [f32])
        = scatter_grad_impl;
    fn filter_grad_phased(g: &[f32], x: &[f32], d: &Plane, w: &Window, acc: &mut [f64])
        = filter_grad_plane_impl;
    fn filter_grad_narrow(g: &[f32], x: &[f32], d: &Plane, w: &Window, acc: &mut [f64])
        = filter_grad_narrow_impl;
}

/// One output plane from input plane `x`, filter `f` and bias `b`; `scratch` holds the
/// phased (or padded) input (reuse it across planes).
pub fn forward(
    x: &[f32],
    f: &[f32],
    b: f32,
    d: &Plane,
    w: &Window,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    if narrow(d, w) {
        Padded::phased(d, w).fill(x, scratch);
        return forward_narrow(scratch, f, b, d, w, out);
    }
    let x = phased(x, d, w.stride, scratch);
    forward_phased(x, f, b, d, w, out)
}

/// One plane's input gradient `dx` for the output gradient `g` and filter `f`; `scratch`
/// holds it phased (or padded) before it is written to `dx`.
pub fn input_grad(
    g: &[f32],
    f: &[f32],
    d: &Plane,
    w: &Window,
    scratch: &mut Vec<f32>,
    dx: &mut [f32],
) {
    match (narrow(d, w), w.stride) {
        (true, 1) => {
            Padded::gradient(d, w).fill(g, scratch);
            gather_grad(scratch, f, d, w, dx);
        }
        (true, _) => {
            let pad = Padded::phased(d, w);
            scratch.clear();
            scratch.resize(pad.size(), 0.0);
            scatter_grad(g, f, d, w, scratch);
            pad.unpad(scratch, dx);
        }
        (false, 1) => input_grad_phased(g, f, d, w, dx),
        (false, s) => {
            scratch.clear();
            scratch.resize(s * d.h * phase_len(d.w, s), 0.0);
            input_grad_phased(g, f, d, w, scratch);
            from_phases(scratch, d.h, d.w, s, dx);
        }
    }
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
        Padded::unphased(d, w).fill(x, scratch);
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
        // The narrow-plane loops (this plane is narrow; at stride 1 too).
        let mut padded = Vec::new();
        Padded::unphased(&d, &win).fill(&x, &mut padded);
        let (mut a, mut b) = (vec![0f64; 26], vec![0f64; 26]);
        filter_grad_narrow(&g, &padded, &d, &win, &mut a);
        filter_grad_narrow_impl(&g, &padded, &d, &win, &mut b);
        assert_eq!(a, b);
        Padded::phased(&d, &win).fill(&x, &mut padded);
        let (mut a, mut b) = (vec![0f32; g.len()], vec![0f32; g.len()]);
        forward_narrow(&padded, &f, 0.5, &d, &win, &mut a);
        forward_narrow_impl(&padded, &f, 0.5, &d, &win, &mut b);
        assert_eq!(a, b);
        let size = Padded::phased(&d, &win).size();
        let (mut a, mut b) = (vec![0f32; size], vec![0f32; size]);
        scatter_grad(&g, &f, &d, &win, &mut a);
        scatter_grad_impl(&g, &f, &d, &win, &mut b);
        assert_eq!(a, b);
        let win = Window {
            stride: 1,
            out_h: 13,
            out_w: 11,
            ..win
        };
        let g: Vec<f32> = (0..13 * 11).map(|i| ((i % 9) as f32 - 4.0) / 3.0).collect();
        Padded::gradient(&d, &win).fill(&g, &mut padded);
        let (mut a, mut b) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        gather_grad(&padded, &f, &d, &win, &mut a);
        gather_grad_impl(&padded, &f, &d, &win, &mut b);
        assert_eq!(a, b);
    }

    /// Planes with their output windows: both strides, k 3/5/7, asymmetric and no
    /// padding, planes narrower than the filter, narrow rows and wide ones (full
    /// register-width runs plus edges).
    fn shapes() -> Vec<(Plane, Window)> {
        [
            (7, 7, 5, 1, 2, 2),
            (14, 14, 3, 2, 0, 0),
            (13, 11, 5, 2, 1, 2),
            (6, 80, 3, 1, 1, 1),
            (9, 40, 5, 2, 2, 1),
            (2, 1, 5, 1, 2, 2),
            (3, 2, 5, 2, 1, 2),
            (4, 9, 7, 1, 3, 3),
            (5, 30, 3, 1, 0, 2),
            (8, 12, 3, 2, 0, 1),
            (5, 75, 3, 1, 1, 1),
            (6, 80, 5, 2, 1, 2),
            (7, 70, 5, 1, 2, 2),
            (4, 33, 3, 2, 0, 0),
            (3, 130, 3, 1, 0, 1),
        ]
        .into_iter()
        .map(|(h, w, k, stride, pad_top, pad_left)| {
            let out = |size: usize, pad: usize| (size + 2 * pad - k) / stride + 1;
            let win = Window {
                stride,
                pad_top,
                pad_left,
                out_h: out(h, pad_top),
                out_w: out(w, pad_left),
            };
            (Plane { h, w, k }, win)
        })
        .collect()
    }

    /// The input gradient, whichever loops a shape takes, has the bits of the tap-by-tap
    /// loops (the narrow ones add the same products in the same order).
    #[test]
    fn input_grad_has_the_bits_of_the_tap_by_tap_loops() {
        for (d, win) in shapes() {
            let f: Vec<f32> = (0..d.k * d.k).map(|i| (i as f32 - 12.0) / 7.0).collect();
            let g: Vec<f32> = (0..win.out_h * win.out_w)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
                .collect();
            let mut got = vec![f32::NAN; d.h * d.w];
            input_grad(&g, &f, &d, &win, &mut Vec::new(), &mut got);
            let pw = phase_len(d.w, win.stride);
            let mut phased_dx = vec![0f32; win.stride * d.h * pw];
            input_grad_plane_impl(&g, &f, &d, &win, &mut phased_dx);
            let mut want = vec![0f32; d.h * d.w];
            from_phases(&phased_dx, d.h, d.w, win.stride, &mut want);
            assert_eq!(got, want, "{d:?} {win:?}");
        }
    }

    /// The direct definition's indexing: `f(tap, input index)` for every tap of output
    /// (oy, ox) that reads inside the plane, taps in (ky, kx) order.
    fn direct_taps(d: &Plane, win: &Window, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
        for ky in 0..d.k {
            for kx in 0..d.k {
                let iy = (oy * win.stride + ky).checked_sub(win.pad_top);
                let ix = (ox * win.stride + kx).checked_sub(win.pad_left);
                if let (Some(iy), Some(ix)) = (iy.filter(|&v| v < d.h), ix.filter(|&v| v < d.w)) {
                    f(ky * d.k + kx, iy * d.w + ix);
                }
            }
        }
    }

    /// A test plane's input pixels.
    fn plane_values(d: &Plane) -> Vec<f32> {
        (0..d.h * d.w)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect()
    }

    /// Both filter-gradient loops (narrow planes, tap by tap) against the definition summed
    /// in f64, within the f32 rounding of the per-row sums; the public entry routes each
    /// shape to one of them.
    #[test]
    fn filter_grad_equals_the_definition() {
        for (d, win) in shapes() {
            let kk = d.k * d.k;
            let x = plane_values(&d);
            let g: Vec<f32> = (0..win.out_h * win.out_w)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
                .collect();
            let (mut want, mut magnitude) = (vec![0f64; kk + 1], vec![0f64; kk + 1]);
            for oy in 0..win.out_h {
                for ox in 0..win.out_w {
                    let gv = f64::from(g[oy * win.out_w + ox]);
                    want[kk] += gv;
                    magnitude[kk] += gv.abs();
                    direct_taps(&d, &win, oy, ox, |tap, at| {
                        let t = gv * f64::from(x[at]);
                        want[tap] += t;
                        magnitude[tap] += t.abs();
                    });
                }
            }
            let mut buf = Vec::new();
            let mut routed = vec![0f64; kk + 1];
            filter_grad(&g, &x, &d, &win, &mut buf, &mut routed);
            let xp = phased(&x, &d, win.stride, &mut buf).to_vec();
            let mut tap_by_tap = vec![0f64; kk + 1];
            filter_grad_plane_impl(&g, &xp, &d, &win, &mut tap_by_tap);
            Padded::unphased(&d, &win).fill(&x, &mut buf);
            let mut narrow_loop = vec![0f64; kk + 1];
            filter_grad_narrow_impl(&g, &buf, &d, &win, &mut narrow_loop);
            for got in [&routed, &tap_by_tap, &narrow_loop] {
                for ((a, b), m) in got.iter().zip(&want).zip(&magnitude) {
                    let bound = 64.0 * f64::from(f32::EPSILON) * m;
                    assert!((a - b).abs() <= bound, "{d:?} {win:?}: {a} vs {b}");
                }
            }
        }
    }

    /// The forward equals the direct definition bit for bit (bias, then the taps in
    /// (ky, kx) order), through the routed loops and the tap-by-tap ones.
    #[test]
    fn forward_equals_the_direct_definition() {
        for (d, win) in shapes() {
            let x = plane_values(&d);
            let f: Vec<f32> = (0..d.k * d.k).map(|i| (i as f32 - 12.0) / 7.0).collect();
            let mut want = vec![0f32; win.out_h * win.out_w];
            for oy in 0..win.out_h {
                for ox in 0..win.out_w {
                    let mut acc = 0.25f32;
                    direct_taps(&d, &win, oy, ox, |tap, at| acc += f[tap] * x[at]);
                    want[oy * win.out_w + ox] = acc;
                }
            }
            let mut got = vec![f32::NAN; want.len()];
            forward(&x, &f, 0.25, &d, &win, &mut Vec::new(), &mut got);
            assert_eq!(got, want, "{d:?} {win:?}");
            // The tap-by-tap (baseline, non-AVX2) loops too.
            let mut buf = Vec::new();
            let xp = phased(&x, &d, win.stride, &mut buf);
            forward_plane_impl(xp, &f, 0.25, &d, &win, &mut got);
            assert_eq!(got, want, "{d:?} {win:?}, tap by tap");
        }
    }
}

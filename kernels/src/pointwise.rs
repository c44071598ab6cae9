//! 1×1 convolutions of NCHW batches as matrix products on the `gemm` crate (the GEMM
//! burn's CPU backend uses): y[n] = W·x[n] + b with x[n] as `[C_in, H·W]`, and its
//! gradients ∂x[n] = Wᵀ·g[n], ∂W = Σₙ g[n]·x[n]ᵀ (summed into one buffer, batch in
//! order), ∂b = Σ g. Transposes are strides, so nothing is copied.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The shape of one call: x `[batch, c_in, hw]`, W `[c_out, c_in]`, y `[batch, c_out, hw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    /// Pixels per plane (H·W).
    pub hw: usize,
}

/// A row-major matrix view: its start and its row and column strides, in elements.
#[derive(Clone, Copy)]
struct View {
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl View {
    fn row_major(rows: usize, cols: usize) -> View {
        View {
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    fn t(self) -> View {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn len(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return 0;
        }
        (self.rows - 1) * self.row_stride as usize + (self.cols - 1) * self.col_stride as usize + 1
    }
}

/// Where a product goes: over an uninitialized buffer, or added to initialized values.
enum Dst<'a> {
    Overwrite(&'a mut [MaybeUninit<f32>]),
    Accumulate(&'a mut [f32]),
}

/// dst = lhs·rhs or dst += lhs·rhs, checked against the slices' lengths.
fn matmul(
    (dst, d): (Dst, View),
    (lhs, l): (&[f32], View),
    (rhs, r): (&[f32], View),
    parallelism: Parallelism,
) {
    let (ptr, len, accumulate) = match dst {
        Dst::Overwrite(s) => (s.as_mut_ptr().cast::<f32>(), s.len(), false),
        Dst::Accumulate(s) => (s.as_mut_ptr(), s.len(), true),
    };
    assert!(
        l.cols == r.rows && d.rows == l.rows && d.cols == r.cols,
        "matmul shapes"
    );
    assert!(
        len >= d.len() && lhs.len() >= l.len() && rhs.len() >= r.len(),
        "matmul views exceed their buffers"
    );
    // SAFETY: the three views lie inside their slices (asserted above), dst does not
    // alias the inputs (it was a `&mut`), and the shapes agree. Without `accumulate` gemm
    // only writes dst (its alpha is then zero and dst is never read), so dst may be
    // uninitialized; with k = 0 it writes zeros.
    unsafe {
        gemm(
            d.rows,
            d.cols,
            l.cols,
            ptr,
            d.col_stride,
            d.row_stride,
            accumulate,
            lhs.as_ptr(),
            l.col_stride,
            l.row_stride,
            rhs.as_ptr(),
            r.col_stride,
            r.row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Runs `f(n, out_n, parallelism)` for every batch item n and its part `out_n` of `out`
/// (items of `len`): items in parallel, each GEMM on one thread, when there are enough of
/// them; else in turn, each GEMM parallel inside.
fn per_item<T: Send>(out: &mut [T], len: usize, f: impl Fn(usize, &mut [T], Parallelism) + Sync) {
    if out.len() / len >= rayon::current_num_threads() {
        out.par_chunks_mut(len)
            .enumerate()
            .for_each(|(n, o)| f(n, o, Parallelism::None));
    } else {
        out.chunks_mut(len)
            .enumerate()
            .for_each(|(n, o)| f(n, o, Parallelism::Rayon(0)));
    }
}

/// Item `n` of a buffer of items of `len` elements.
fn item(buf: &[f32], n: usize, len: usize) -> &[f32] {
    &buf[n * len..(n + 1) * len]
}

/// Batch groups of the weight gradient: each group sums its items in order into its own
/// buffer, the groups run in parallel and are added in order. A fixed number, so the
/// sums are the same for any thread count (training is deterministic on CPU).
const WEIGHT_GRAD_GROUPS: usize = 4;

impl Dims {
    fn check(&self, x: usize, w: usize, y: usize) {
        assert!(
            x == self.batch * self.c_in * self.hw
                && y == self.batch * self.c_out * self.hw
                && w == self.c_out * self.c_in,
            "pointwise conv: buffers of {x}, {w} and {y} elements do not fit {self:?}"
        );
    }

    fn w(&self) -> View {
        View::row_major(self.c_out, self.c_in)
    }

    fn x(&self) -> View {
        View::row_major(self.c_in, self.hw)
    }

    fn y(&self) -> View {
        View::row_major(self.c_out, self.hw)
    }
}

/// y[n] = b + W·x[n] for every batch item; writes every element of `y`.
pub fn forward(x: &[f32], w: &[f32], bias: &[f32], d: &Dims, y: &mut [MaybeUninit<f32>]) {
    d.check(x.len(), w.len(), y.len());
    assert_eq!(bias.len(), d.c_out, "pointwise conv: bias length");
    let y_len = d.c_out * d.hw;
    if y_len == 0 {
        return;
    }
    per_item(y, y_len, |n, yn, par| {
        for (row, &b) in yn.chunks_mut(d.hw).zip(bias) {
            row.iter_mut().for_each(|v| {
                v.write(b);
            });
        }
        // SAFETY: every row of yn was written just above.
        let yn = unsafe { yn.assume_init_mut() };
        let xn = item(x, n, d.c_in * d.hw);
        matmul((Dst::Accumulate(yn), d.y()), (w, d.w()), (xn, d.x()), par);
    });
}

/// ∂x[n] = Wᵀ·g[n] for every batch item; writes every element of `dx`.
pub fn input_grad(g: &[f32], w: &[f32], d: &Dims, dx: &mut [MaybeUninit<f32>]) {
    d.check(dx.len(), w.len(), g.len());
    let x_len = d.c_in * d.hw;
    if x_len == 0 {
        return;
    }
    per_item(dx, x_len, |n, dxn, par| {
        let gn = item(g, n, d.c_out * d.hw);
        matmul(
            (Dst::Overwrite(dxn), d.x()),
            (w, d.w().t()),
            (gn, d.y()),
            par,
        );
    });
}

/// ∂W = Σₙ g[n]·x[n]ᵀ, `[c_out, c_in]`.
pub fn weight_grad(g: &[f32], x: &[f32], d: &Dims) -> Vec<f32> {
    let w_len = d.c_out * d.c_in;
    d.check(x.len(), w_len, g.len());
    let per_group = d.batch.div_ceil(WEIGHT_GRAD_GROUPS).max(1);
    let groups: Vec<Vec<f32>> = (0..d.batch)
        .step_by(per_group)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|first| {
            let mut dw = vec![0f32; w_len];
            for n in first..(first + per_group).min(d.batch) {
                let gn = item(g, n, d.c_out * d.hw);
                let xn = item(x, n, d.c_in * d.hw);
                let (dst, par) = (Dst::Accumulate(&mut dw), Parallelism::Rayon(0));
                matmul((dst, d.w()), (gn, d.y()), (xn, d.x().t()), par);
            }
            dw
        })
        .collect();
    let mut groups = groups.into_iter();
    let mut dw = groups.next().unwrap_or_else(|| vec![0f32; w_len]);
    for group in groups {
        for (a, b) in dw.iter_mut().zip(group) {
            *a += b;
        }
    }
    dw
}

/// ∂b = Σ over batch and pixels of g, per output channel (in f64, batch in order).
pub fn bias_grad(g: &[f32], d: &Dims) -> Vec<f32> {
    assert_eq!(
        g.len(),
        d.batch * d.c_out * d.hw,
        "pointwise conv: gradient length"
    );
    (0..d.c_out)
        .into_par_iter()
        .map(|c| {
            (0..d.batch)
                .map(|n| {
                    let start = (n * d.c_out + c) * d.hw;
                    g[start..start + d.hw]
                        .iter()
                        .map(|&v| f64::from(v))
                        .sum::<f64>()
                })
                .sum::<f64>() as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, salt: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * salt).sin() * 2.0).collect()
    }

    /// The definitions as loops, in f64.
    fn naive(x: &[f32], w: &[f32], b: &[f32], g: &[f32], d: &Dims) -> [Vec<f64>; 4] {
        let Dims {
            batch,
            c_in,
            c_out,
            hw,
        } = *d;
        let mut y = vec![0f64; batch * c_out * hw];
        let mut dx = vec![0f64; batch * c_in * hw];
        let mut dw = vec![0f64; c_out * c_in];
        let mut db = vec![0f64; c_out];
        for n in 0..batch {
            for co in 0..c_out {
                for p in 0..hw {
                    let yi = (n * c_out + co) * hw + p;
                    y[yi] = f64::from(b[co]);
                    db[co] += f64::from(g[yi]);
                    for ci in 0..c_in {
                        let xi = (n * c_in + ci) * hw + p;
                        let wi = co * c_in + ci;
                        y[yi] += f64::from(w[wi]) * f64::from(x[xi]);
                        dx[xi] += f64::from(w[wi]) * f64::from(g[yi]);
                        dw[wi] += f64::from(g[yi]) * f64::from(x[xi]);
                    }
                }
            }
        }
        [y, dx, dw, db]
    }

    /// The output `f` writes into a buffer of `len` NaNs.
    fn run(f: impl FnOnce(&mut [MaybeUninit<f32>]), len: usize) -> Vec<f32> {
        let mut out = vec![MaybeUninit::new(f32::NAN); len];
        f(&mut out);
        // SAFETY: every element was initialized (to NaN) on creation.
        out.into_iter()
            .map(|v| unsafe { v.assume_init() })
            .collect()
    }

    fn close(ours: &[f32], want: &[f64], what: &str, d: &Dims) {
        assert_eq!(ours.len(), want.len());
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (a, b) in ours.iter().zip(want) {
            assert!(
                (f64::from(*a) - b).abs() <= 1e-5 * scale,
                "{what} of {d:?}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn forward_and_gradients_equal_the_definition() {
        for d in [
            Dims {
                batch: 3,
                c_in: 5,
                c_out: 7,
                hw: 6,
            },
            Dims {
                batch: 1,
                c_in: 4,
                c_out: 2,
                hw: 1,
            },
            Dims {
                batch: 9,
                c_in: 3,
                c_out: 8,
                hw: 1,
            },
            Dims {
                batch: 2,
                c_in: 33,
                c_out: 17,
                hw: 45,
            },
        ] {
            let x = values(d.batch * d.c_in * d.hw, 0.37);
            let w = values(d.c_out * d.c_in, 1.3);
            let b = values(d.c_out, 2.1);
            let g = values(d.batch * d.c_out * d.hw, 0.71);
            let [y_want, dx_want, dw_want, db_want] = naive(&x, &w, &b, &g, &d);
            close(
                &run(|y| forward(&x, &w, &b, &d, y), y_want.len()),
                &y_want,
                "y",
                &d,
            );
            let dx = run(|dx| input_grad(&g, &w, &d, dx), dx_want.len());
            close(&dx, &dx_want, "∂x", &d);
            close(&weight_grad(&g, &x, &d), &dw_want, "∂W", &d);
            close(&bias_grad(&g, &d), &db_want, "∂b", &d);
        }
    }

    /// The same bits on one thread as on several.
    #[test]
    fn thread_count_does_not_change_the_bits() {
        let d = Dims {
            batch: 7,
            c_in: 40,
            c_out: 24,
            hw: 30,
        };
        let x = values(d.batch * d.c_in * d.hw, 0.37);
        let w = values(d.c_out * d.c_in, 1.3);
        let b = values(d.c_out, 2.1);
        let g = values(d.batch * d.c_out * d.hw, 0.71);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let y = run(|y| forward(&x, &w, &b, &d, y), g.len());
                let dx = run(|dx| input_grad(&g, &w, &d, dx), x.len());
                (y, dx, weight_grad(&g, &x, &d), bias_grad(&g, &d))
            })
        };
        assert_eq!(run(1), run(3));
    }
}

//! Depthwise convolution (one k×k filter per channel) as one op on the CPU backend,
//! forward and backward, with any (asymmetric) padding done by index arithmetic.
//!
//! Why our own: burn's generic path, which flex takes for the backward, pads a TF-same
//! input with a copy, takes the input gradient through a grouped transposed conv, and the
//! weight gradient through one conv plus a slice-assign per channel (1,152 of them in
//! B0's widest layer). Here each pass is one walk over the planes. burn's `conv2d` stays
//! the definition, the test reference and the path of every other backend.

use super::flex_io::{contiguous_f32, dims, f32s, from_vec, output, zeroed};
pub use adjq_kernels::depthwise::Window;
use adjq_kernels::depthwise::{self as kernels, Plane};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::FlexTensor;
use burn::backend::{
    Backend as BackendOps, ExtensionType, Flex, backend_extension, tensor::FloatTensor,
};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

/// The op's name in messages.
const OP: &str = "depthwise";

#[backend_extension(Flex, Autodiff)]
pub trait DepthwiseOps: BackendOps {
    /// y[n, c] = x[n, c] ⋆ w[c] + b[c] for x `[N, C, H, W]`, w `[C, 1, k, k]`, b `[C]`.
    fn depthwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        window: Window,
    ) -> FloatTensor<Self>;

    /// Gradients of x, w and b for the upstream gradient `grad`.
    fn depthwise_conv_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        window: Window,
    ) -> DepthwiseGrads<Self>;
}

/// The gradients of the op's inputs.
#[derive(ExtensionType)]
pub struct DepthwiseGrads<B: BackendOps> {
    pub x: FloatTensor<B>,
    pub weight: FloatTensor<B>,
    pub bias: FloatTensor<B>,
}

/// Whether a conv of `x` with `weight` can take the op: f32 on the CPU backend (with or
/// without autodiff), one filter per channel.
pub fn supports(x: &Tensor<4>, weight: &Tensor<4>) -> bool {
    let [cout, cin_per_group, ..] = weight.dims();
    x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && x.device().inner() == Device::flex()
        && cin_per_group == 1
        && cout == x.dims()[1]
}

/// The depthwise conv of `x` (`[N, C, H, W]`) with `weight` (`[C, 1, k, k]`) and `bias`
/// (`[C]`) at `stride`, padded (before, after) per spatial axis as in burn's
/// `ConvOptions`; callers check [`supports`] first.
pub fn conv(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    pads: [(usize, usize); 2],
) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let k = weight.dims()[2];
    let out =
        |size: usize, (before, after): (usize, usize)| (size + before + after - k) / stride + 1;
    let window = Window {
        stride,
        pad_top: pads[0].0,
        pad_left: pads[1].0,
        out_h: out(h, pads[0]),
        out_w: out(w, pads[1]),
    };
    Tensor::from_dispatch(<burn::backend::Dispatch as DepthwiseOps>::depthwise_conv(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        window,
    ))
}

/// Shapes of one call: x `[N, C, H, W]`, filter side k.
struct Dims {
    batch: usize,
    channels: usize,
    plane: Plane,
}

impl Dims {
    fn of(x: &FlexTensor, weight: &FlexTensor) -> Dims {
        let [n, c, h, w]: [usize; 4] = x.layout().shape().dims();
        let [cw, one, k, k2]: [usize; 4] = weight.layout().shape().dims();
        assert!(
            cw == c && one == 1 && k == k2,
            "depthwise conv: weight {:?} does not fit input {:?}",
            [cw, one, k, k2],
            [n, c, h, w]
        );
        Dims {
            batch: n,
            channels: c,
            plane: Plane { h, w, k },
        }
    }

    /// Elements of an input plane, an output plane and a filter.
    fn sizes(&self, win: &Window) -> (usize, usize, usize) {
        let Plane { h, w, k } = self.plane;
        (h * w, win.out_h * win.out_w, k * k)
    }
}

impl DepthwiseOps for Flex {
    fn depthwise_conv(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        win: Window,
    ) -> FlexTensor {
        let (x, weight, bias) = (
            contiguous_f32(&x, OP),
            contiguous_f32(&weight, OP),
            contiguous_f32(&bias, OP),
        );
        let d = Dims::of(&x, &weight);
        let shape = [d.batch, d.channels, win.out_h, win.out_w];
        let (xs, ws, bs) = (f32s(&x), f32s(&weight), f32s(&bias));
        let (plane_in, plane_out, kk) = d.sizes(&win);
        // SAFETY: the planes cover the output and each is zeroed, then written (or, with
        // no input, the whole output is zeroed).
        unsafe {
            output(&shape, |out| {
                if plane_out == 0 || xs.is_empty() {
                    zeroed(out);
                    return;
                }
                out.par_chunks_mut(plane_out)
                    .zip(xs.par_chunks(plane_in))
                    .enumerate()
                    .for_each_init(Vec::new, |scratch, (p, (out, x))| {
                        let c = p % d.channels;
                        let f = &ws[c * kk..(c + 1) * kk];
                        let out = zeroed(out);
                        kernels::forward(x, f, bs[c], &d.plane, &win, scratch, out);
                    });
            })
        }
    }

    fn depthwise_conv_backward(
        grad: FlexTensor,
        x: FlexTensor,
        weight: FlexTensor,
        win: Window,
    ) -> DepthwiseGrads<Flex> {
        let (grad, x, weight) = (
            contiguous_f32(&grad, OP),
            contiguous_f32(&x, OP),
            contiguous_f32(&weight, OP),
        );
        let d = Dims::of(&x, &weight);
        let (gs, xs, ws) = (f32s(&grad), f32s(&x), f32s(&weight));
        let (plane_in, plane_out, kk) = d.sizes(&win);
        // SAFETY: the planes cover the output and each is zeroed, then written. (With no
        // output pixels there are no planes, and the input gradient is all zeros.)
        let grad_x = unsafe {
            output(&dims(&x), |grad_x| {
                if plane_out == 0 || xs.is_empty() {
                    zeroed(grad_x);
                    return;
                }
                grad_x
                    .par_chunks_mut(plane_in)
                    .zip(gs.par_chunks(plane_out))
                    .enumerate()
                    .for_each_init(Vec::new, |scratch, (p, (dx, g))| {
                        let c = p % d.channels;
                        let f = &ws[c * kk..(c + 1) * kk];
                        kernels::input_grad(g, f, &d.plane, &win, scratch, zeroed(dx));
                    });
            })
        };
        // One task per channel, its planes in batch order: the same sums for any thread
        // count (training is deterministic on CPU).
        let sums: Vec<Vec<f64>> = (0..d.channels)
            .into_par_iter()
            .map_init(Vec::new, |scratch, c| {
                let mut acc = vec![0f64; kk + 1];
                if plane_out > 0 {
                    for n in 0..d.batch {
                        let p = n * d.channels + c;
                        let g = &gs[p * plane_out..(p + 1) * plane_out];
                        let x = &xs[p * plane_in..(p + 1) * plane_in];
                        kernels::filter_grad(g, x, &d.plane, &win, scratch, &mut acc);
                    }
                }
                acc
            })
            .collect();
        let filter: Vec<f32> = sums
            .iter()
            .flat_map(|s| s[..kk].iter().map(|&v| v as f32))
            .collect();
        let bias: Vec<f32> = sums.iter().map(|s| s[kk] as f32).collect();
        let k = d.plane.k;
        DepthwiseGrads {
            x: grad_x,
            weight: from_vec(filter, &[d.channels, 1, k, k]),
            bias: from_vec(bias, &[d.channels]),
        }
    }
}

/// The autodiff node: forward on the inner backend, backward through its
/// `depthwise_conv_backward`.
impl<B: BackendOps + DepthwiseOps, C: CheckpointStrategy> DepthwiseOps for Autodiff<B, C> {
    fn depthwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        window: Window,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct DepthwiseBackward;

        impl<B: BackendOps + DepthwiseOps> Backward<B, 3> for DepthwiseBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, Window);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (x, weight, window) = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let g = B::depthwise_conv_backward(grad, x, weight, window);
                for (parent, g) in ops.parents.into_iter().zip([g.x, g.weight, g.bias]) {
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, g);
                    }
                }
            }
        }

        let parents = [x.node(), weight.node(), bias.node()];
        let (x, weight, bias) = (
            x.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
        );
        let y = B::depthwise_conv(x.clone(), weight.clone(), bias, window);
        match DepthwiseBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, weight, window), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn depthwise_conv_backward(
        _grad: FloatTensor<Self>,
        _x: FloatTensor<Self>,
        _weight: FloatTensor<Self>,
        _window: Window,
    ) -> DepthwiseGrads<Self> {
        unreachable!("the depthwise conv's backward is not itself differentiated")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{rel_diff, spread, values};
    use burn::tensor::TensorData;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;

    /// y, ∂x, ∂w, ∂b of sum(y · probe), by our op or by burn's grouped conv2d.
    fn run(
        shape: [usize; 4],
        k: usize,
        stride: usize,
        pads: [(usize, usize); 2],
        ours: bool,
    ) -> [Vec<f32>; 4] {
        let device = Device::flex().autodiff();
        let c = shape[1];
        let tensor = |n: usize, salt: f32, dims: [usize; 4]| {
            Tensor::<4>::from_data(TensorData::new(spread(n, salt, -1.0, 1.0), dims), &device)
        };
        let x = tensor(shape.iter().product(), 0.5, shape).require_grad();
        let w = tensor(c * k * k, 3.25, [c, 1, k, k]).require_grad();
        let b = Tensor::<1>::from_data(TensorData::new(spread(c, 9.5, -1.0, 1.0), [c]), &device)
            .require_grad();
        let y = if ours {
            assert!(supports(&x, &w));
            conv(x.clone(), w.clone(), b.clone(), stride, pads)
        } else {
            let opts = ConvOptions::new_with_padding([stride; 2], pads, [1, 1], c);
            conv2d(x.clone(), w.clone(), Some(b.clone()), opts)
        };
        let probe = tensor(y.dims().iter().product(), 7.75, y.dims());
        let grads = (y.clone() * probe).sum().backward();
        [
            values(y),
            values(x.grad(&grads).unwrap()),
            values(w.grad(&grads).unwrap()),
            values(b.grad(&grads).unwrap()),
        ]
    }

    fn check(shape: [usize; 4], k: usize, stride: usize, pads: [(usize, usize); 2]) {
        let ours = run(shape, k, stride, pads, true);
        let burn = run(shape, k, stride, pads, false);
        for (what, (a, b)) in ["y", "∂x", "∂w", "∂b"].iter().zip(ours.iter().zip(&burn)) {
            let d = rel_diff(a, b);
            assert!(
                d < 1e-5,
                "{shape:?} k{k} s{stride} {pads:?}: {what} differs by {d}"
            );
        }
    }

    #[test]
    fn equals_burn_s_conv_forward_and_every_gradient() {
        use crate::model::config::Padding;
        for (k, stride) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
            for size in [1, 2, 7, 8, 13] {
                for padding in [Padding::Same, Padding::Symmetric] {
                    let pads = [padding.pads(size, k, stride); 2];
                    check([2, 3, size, size], k, stride, pads);
                }
            }
        }
        // Non-square, unpadded and lopsided windows.
        check([1, 4, 9, 6], 3, 2, [(1, 1), (0, 1)]);
        check([3, 2, 6, 11], 5, 1, [(0, 0), (0, 0)]);
        check([2, 2, 10, 10], 3, 2, [(0, 1), (2, 0)]);
    }

    #[test]
    fn without_autodiff_gives_the_same_values() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new(spread(2 * 3 * 8 * 8, 1.5, -2.0, 2.0), [2, 3, 8, 8]),
            &device,
        );
        let w = Tensor::<4>::from_data(
            TensorData::new(spread(27, 2.5, -1.0, 1.0), [3, 1, 3, 3]),
            &device,
        );
        let b = Tensor::<1>::from_floats([0.5, -0.25, 0.0], &device);
        let ours = conv(x.clone(), w.clone(), b.clone(), 2, [(0, 1), (0, 1)]);
        let opts = ConvOptions::new_with_padding([2, 2], [(0, 1), (0, 1)], [1, 1], 3);
        let burn = conv2d(x, w, Some(b), opts);
        assert!(rel_diff(&values(ours), &values(burn)) < 1e-6);
    }
}

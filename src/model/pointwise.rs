//! 1×1 convolutions as one op on the CPU backend: matrix products on the `gemm` crate
//! (`adjq_kernels::pointwise`), forward and backward.
//!
//! Why: burn takes a conv's filter gradient as another conv, of the input by the output
//! gradient, with the batch as channels and the whole image as the kernel; for a 1×1 conv
//! that is a matrix-vector product per input channel over a copied input (a sixth of the
//! B0 training step). A batched `matmul` of burn's was better but still took the filter
//! gradient per batch item and then summed them, added the bias as another op, and
//! zero-filled and copied every output (burn-flex's `FlexTensor::empty`). Here y[n] =
//! b + W·x[n], ∂x[n] = Wᵀ·g[n] and ∂W = Σₙ g[n]·x[n]ᵀ are GEMMs straight on the tensors'
//! buffers. Other backends keep burn's conv, which stays the definition and the test
//! reference.

use super::flex_io::{contiguous_f32, dims, f32s, from_vec, output};
use adjq_kernels::pointwise::{self as kernels, Dims};
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

/// The op's name in messages.
const OP: &str = "1×1 conv";

#[backend_extension(Flex, Autodiff)]
pub trait PointwiseOps: BackendOps {
    /// y[n] = b + W·x[n] for x `[N, C_in, H, W]`, W `[C_out, C_in, 1, 1]`, b `[C_out]`.
    fn pointwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Gradients of x, W and b for the upstream gradient `grad`.
    fn pointwise_conv_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
    ) -> PointwiseGrads<Self>;
}

/// The gradients of the op's inputs.
#[derive(ExtensionType)]
pub struct PointwiseGrads<B: BackendOps> {
    pub x: FloatTensor<B>,
    pub weight: FloatTensor<B>,
    pub bias: FloatTensor<B>,
}

/// Whether a conv of `x` with `weight` at `stride` can go this way: a dense 1×1 filter at
/// stride 1 (no padding to speak of), f32 on the CPU backend.
pub fn supports(x: &Tensor<4>, weight: &Tensor<4>, stride: usize, groups: usize) -> bool {
    let [_, cin, kh, kw] = weight.dims();
    kh == 1
        && kw == 1
        && stride == 1
        && groups == 1
        && cin == x.dims()[1]
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && x.device().inner() == Device::flex()
}

/// The 1×1 conv of `x` (`[N, C_in, H, W]`) by `weight` (`[C_out, C_in, 1, 1]`) plus
/// `bias` (`[C_out]`); callers check [`supports`] first.
pub fn conv(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &x.device()));
    Tensor::from_dispatch(<burn::backend::Dispatch as PointwiseOps>::pointwise_conv(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// The GEMM shapes of x `[N, C_in, H, W]` and W `[C_out, C_in, 1, 1]`.
fn dims_of(x: &FlexTensor, weight: &FlexTensor) -> Dims {
    let [n, c_in, h, w]: [usize; 4] = x.layout().shape().dims();
    let [c_out, cw, kh, kw]: [usize; 4] = weight.layout().shape().dims();
    assert!(
        cw == c_in && kh == 1 && kw == 1,
        "1×1 conv: weight {:?} does not fit input {:?}",
        [c_out, cw, kh, kw],
        [n, c_in, h, w]
    );
    Dims {
        batch: n,
        c_in,
        c_out,
        hw: h * w,
    }
}

impl PointwiseOps for Flex {
    fn pointwise_conv(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let [x, weight, bias] = [x, weight, bias].map(|t| contiguous_f32(&t, OP));
        let d = dims_of(&x, &weight);
        let mut shape = dims(&x);
        shape[1] = d.c_out;
        // SAFETY: the kernel writes every element of y.
        unsafe {
            output(&shape, |y| {
                kernels::forward(f32s(&x), f32s(&weight), f32s(&bias), &d, y)
            })
        }
    }

    fn pointwise_conv_backward(
        grad: FlexTensor,
        x: FlexTensor,
        weight: FlexTensor,
    ) -> PointwiseGrads<Flex> {
        let [grad, x, weight] = [grad, x, weight].map(|t| contiguous_f32(&t, OP));
        let d = dims_of(&x, &weight);
        let (gs, xs) = (f32s(&grad), f32s(&x));
        PointwiseGrads {
            // SAFETY: the kernel writes every element of dx.
            x: unsafe {
                output(&dims(&x), |dx| {
                    kernels::input_grad(gs, f32s(&weight), &d, dx)
                })
            },
            weight: from_vec(kernels::weight_grad(gs, xs, &d), &dims(&weight)),
            bias: from_vec(kernels::bias_grad(gs, &d), &[d.c_out]),
        }
    }
}

/// The autodiff node: forward on the inner backend, backward through its
/// `pointwise_conv_backward`.
impl<B: BackendOps + PointwiseOps, C: CheckpointStrategy> PointwiseOps for Autodiff<B, C> {
    fn pointwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct PointwiseBackward;

        impl<B: BackendOps + PointwiseOps> Backward<B, 3> for PointwiseBackward {
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (x, weight) = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let g = B::pointwise_conv_backward(grad, x, weight);
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
        let y = B::pointwise_conv(x.clone(), weight.clone(), bias);
        match PointwiseBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, weight), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn pointwise_conv_backward(
        _grad: FloatTensor<Self>,
        _x: FloatTensor<Self>,
        _weight: FloatTensor<Self>,
    ) -> PointwiseGrads<Self> {
        unreachable!("the 1×1 conv's backward is not itself differentiated")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{rel_diff, spread, values};
    use burn::tensor::TensorData;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;

    /// Forward and the gradients of x, W and b equal burn's conv2d's.
    #[test]
    fn equals_burn_s_conv_forward_and_every_gradient() {
        let device = Device::flex().autodiff();
        for (shape, cout, bias) in [
            ([2, 5, 7, 6], 3, true),
            ([3, 4, 1, 1], 6, true),
            ([1, 8, 4, 4], 8, false),
        ] {
            let cin = shape[1];
            let t = |v: Vec<f32>, dims: Vec<usize>| {
                Tensor::<4>::from_data(TensorData::new(v, dims), &device)
            };
            let run = |ours: bool| {
                let x = t(
                    spread(shape.iter().product(), 0.5, -1.0, 1.0),
                    shape.to_vec(),
                )
                .require_grad();
                let w = t(spread(cout * cin, 3.5, -1.0, 1.0), vec![cout, cin, 1, 1]).require_grad();
                let b = Tensor::<1>::from_data(
                    TensorData::new(spread(cout, 7.5, -1.0, 1.0), [cout]),
                    &device,
                )
                .require_grad();
                let b_used = bias.then(|| b.clone());
                let y = if ours {
                    assert!(supports(&x, &w, 1, 1));
                    conv(x.clone(), w.clone(), b_used)
                } else {
                    conv2d(
                        x.clone(),
                        w.clone(),
                        b_used,
                        ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
                    )
                };
                let probe = t(
                    spread(y.dims().iter().product(), 9.25, -1.0, 1.0),
                    y.dims().to_vec(),
                );
                let grads = (y.clone() * probe).sum().backward();
                let mut out = vec![
                    values(y),
                    values(x.grad(&grads).unwrap()),
                    values(w.grad(&grads).unwrap()),
                ];
                if bias {
                    out.push(values(b.grad(&grads).unwrap()));
                }
                out
            };
            for (what, (a, b)) in ["y", "∂x", "∂W", "∂b"]
                .iter()
                .zip(run(true).iter().zip(&run(false)))
            {
                assert!(rel_diff(a, b) < 1e-5, "{shape:?}→{cout}: {what} differs");
            }
        }
    }

    /// Without autodiff (the teacher, evaluation) the op gives burn's values too.
    #[test]
    fn equals_burn_s_conv_without_autodiff() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new(spread(2 * 6 * 3 * 5, 0.5, -1.0, 1.0), [2, 6, 3, 5]),
            &device,
        );
        let w = Tensor::<4>::from_data(
            TensorData::new(spread(4 * 6, 3.5, -1.0, 1.0), [4, 6, 1, 1]),
            &device,
        );
        let b = Tensor::<1>::from_data(TensorData::new(spread(4, 7.5, -1.0, 1.0), [4]), &device);
        let ours = conv(x.clone(), w.clone(), Some(b.clone()));
        let burn = conv2d(x, w, Some(b), ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
        assert!(rel_diff(&values(ours), &values(burn)) < 1e-6);
    }
}

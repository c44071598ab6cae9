//! Swish (x·σ(x)) as one op on the CPU backend: one pass forward and one backward, with
//! a vectorised exp. burn's `silu` is a sigmoid and a product, each a pass (and their
//! backward several more), and its sigmoid calls libm's scalar `expf` per element: on the
//! B0 training step that exp alone took a seventh of the time. burn's `silu` stays the
//! definition, the test reference and the path of every other backend.

use super::flex_io::{contiguous_f32, dims, f32s, output};
use adjq_kernels::swish::{backward_uninit, forward_uninit};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::FlexTensor;
use burn::backend::{Backend as BackendOps, Flex, backend_extension, tensor::FloatTensor};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::silu;
use rayon::prelude::*;

#[backend_extension(Flex, Autodiff)]
pub trait SwishOps: BackendOps {
    /// x·σ(x), elementwise.
    fn swish(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The gradient of x for the upstream gradient `grad`: g·σ(x)·(1 + x·(1 − σ(x))).
    fn swish_backward(grad: FloatTensor<Self>, x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// x·σ(x): the fused op on the CPU backend for f32, burn's `silu` elsewhere.
pub fn swish<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() == DType::F32 && x.device().inner() == Device::flex() {
        Tensor::from_dispatch(<burn::backend::Dispatch as SwishOps>::swish(
            x.into_dispatch(),
        ))
    } else {
        silu(x)
    }
}

/// Elements per parallel task: big enough to amortise the task, small enough to share
/// B0's smallest activations between two threads.
const CHUNK: usize = 1 << 14;

impl SwishOps for Flex {
    fn swish(x: FlexTensor) -> FlexTensor {
        let x = contiguous_f32(&x, "swish");
        // SAFETY: the pieces cover the output and the kernel writes each element.
        unsafe {
            output(&dims(&x), |out| {
                out.par_chunks_mut(CHUNK)
                    .zip(f32s(&x).par_chunks(CHUNK))
                    .for_each(|(y, x)| forward_uninit(x, y))
            })
        }
    }

    fn swish_backward(grad: FlexTensor, x: FlexTensor) -> FlexTensor {
        let (grad, x) = (contiguous_f32(&grad, "swish"), contiguous_f32(&x, "swish"));
        let (xs, gs) = (f32s(&x), f32s(&grad));
        // SAFETY: the pieces cover the output and the kernel writes each element.
        unsafe {
            output(&dims(&x), |dx| {
                dx.par_chunks_mut(CHUNK)
                    .zip(xs.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
                    .for_each(|(d, (x, g))| backward_uninit(g, x, d))
            })
        }
    }
}

/// The autodiff node: forward on the inner backend, backward through its
/// `swish_backward`.
impl<B: BackendOps + SwishOps, C: CheckpointStrategy> SwishOps for Autodiff<B, C> {
    fn swish(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SwishBackward;

        impl<B: BackendOps + SwishOps> Backward<B, 1> for SwishBackward {
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let [parent] = ops.parents;
                if let Some(parent) = parent {
                    grads.register::<B>(parent.id, B::swish_backward(grad, ops.state));
                }
            }
        }

        let parents = [x.node()];
        let x = x.into_primitive();
        let y = B::swish(x.clone());
        match SwishBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(x, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn swish_backward(_grad: FloatTensor<Self>, _x: FloatTensor<Self>) -> FloatTensor<Self> {
        unreachable!("swish's backward is not itself differentiated")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::values;
    use burn::tensor::TensorData;

    /// Largest |a − b| relative to max(|b|, 1).
    fn elementwise_rel_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / y.abs().max(1.0)))
    }

    /// Forward and gradient equal burn's `silu` (and its autodiff) on values across the
    /// range, a length with a tail, with and without autodiff.
    #[test]
    fn equals_burn_s_silu_forward_and_gradient() {
        let device = Device::flex().autodiff();
        let n = 3 * CHUNK + 13;
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let h = ((i as f32 + 0.5) * 12.9898).sin() * 43_758.547;
                30.0 * (h - h.floor()) - 15.0
            })
            .chain([-100.0, 100.0, 0.0, -0.0])
            .collect();
        let len = v.len();
        let probe: Vec<f32> = (0..len).map(|i| ((i % 7) as f32 - 3.0) / 3.0).collect();
        let run = |fused: bool| {
            let x =
                Tensor::<1>::from_data(TensorData::new(v.clone(), [len]), &device).require_grad();
            let p = Tensor::<1>::from_data(TensorData::new(probe.clone(), [len]), &device);
            let y = if fused {
                swish(x.clone())
            } else {
                silu(x.clone())
            };
            let grads = (y.clone() * p).sum().backward();
            (values(y), values(x.grad(&grads).unwrap()))
        };
        let (y, dx) = run(true);
        let (y_ref, dx_ref) = run(false);
        assert!(elementwise_rel_diff(&y, &y_ref) < 1e-6, "forward");
        assert!(elementwise_rel_diff(&dx, &dx_ref) < 1e-6, "gradient");
        let plain = Tensor::<1>::from_data(TensorData::new(v.clone(), [len]), &Device::flex());
        assert_eq!(values(swish(plain)), y);
    }
}

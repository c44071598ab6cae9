//! The squeeze-excite gate's product and the quantizer after it, y = q(x·gate) with the
//! gate `[N, C, 1, 1]` broadcast over each plane, as one op on the CPU backend: the input
//! of every MBConv block's project conv. As two ops (burn's broadcast product, then the
//! fused quantizer) it wrote the product forward and, backward, two full-size products
//! and a reduction for the gradients of x and the gate; here each plane goes through both
//! steps in one pass each way. The values and ∂x are those of the two ops bit for bit;
//! ∂gate and the range's gradient are the same sums in another order (tested).

use super::adjustable::{Step, quantize};
use super::fused::{Ranges, supports};
use crate::model::flex_io::{contiguous_f32, dims, f32s, from_vec, output};
use adjq_kernels::quant::{self as kernels, RangeGrads};
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
use rayon::prelude::*;

/// The op's name in messages.
const OP: &str = "fused gated quantizer";

/// Activations have their channels on axis 1 (NCHW).
const AXIS: usize = 1;

#[backend_extension(Flex, Autodiff)]
pub trait GateQuantOps: BackendOps {
    /// q(x·gate) for x `[N, C, H, W]`, gate `[N, C, 1, 1]` and the quantizer's step rows
    /// `[C, 4]` (or `[1, 4]`: one range for the whole tensor).
    fn gate_quant(
        x: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        step: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Gradients of x, the gate and the step for the upstream `grad`.
    fn gate_quant_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        step: FloatTensor<Self>,
    ) -> GateQuantGrads<Self>;
}

/// The gradients of the op's inputs.
#[derive(ExtensionType)]
pub struct GateQuantGrads<B: BackendOps> {
    pub x: FloatTensor<B>,
    pub gate: FloatTensor<B>,
    pub step: FloatTensor<B>,
}

/// q(x·gate) (see the module doc): the fused op where it runs, else the two ops.
pub fn quantize_gated(x: Tensor<4>, gate: Tensor<4>, step: Step) -> Tensor<4> {
    if !supports(&x) {
        return quantize(x * gate, step, AXIS);
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as GateQuantOps>::gate_quant(
        x.into_dispatch(),
        gate.into_dispatch(),
        step.0.into_dispatch(),
    ))
}

/// The ranges, one gate value per plane, and the planes per task.
struct Plan {
    ranges: Ranges,
    gate: FlexTensor,
    plane: usize,
    per_task: usize,
}

impl Plan {
    fn new(shape: &[usize], gate: &FlexTensor, step: &FlexTensor) -> Self {
        let ranges = Ranges::read(step);
        let gate = contiguous_f32(gate, OP);
        assert!(
            shape.len() == 4 && dims(&gate) == [shape[0], shape[1], 1, 1],
            "{OP}: x is [N, C, H, W] and the gate [N, C, 1, 1]"
        );
        assert!(
            ranges.channels() == 1 || ranges.channels() == shape[AXIS],
            "{OP}: one range, or one per channel"
        );
        let plane = (shape[2] * shape[3]).max(1);
        Plan {
            ranges,
            gate,
            plane,
            // Small planes are grouped so each task has some work.
            per_task: (4096 / plane).max(1),
        }
    }

    /// The gate value of plane `i`.
    fn gate(&self, i: usize) -> f32 {
        f32s(&self.gate)[i]
    }
}

impl GateQuantOps for Flex {
    fn gate_quant(x: FlexTensor, gate: FlexTensor, step: FlexTensor) -> FlexTensor {
        let x = contiguous_f32(&x, OP);
        let shape = dims(&x);
        let plan = Plan::new(&shape, &gate, &step);
        // SAFETY: the planes cover the output and the kernel writes each element.
        unsafe {
            output(&shape, |out| {
                out.par_chunks_mut(plan.plane)
                    .zip(f32s(&x).par_chunks(plan.plane))
                    .with_min_len(plan.per_task)
                    .enumerate()
                    .for_each(|(i, (ys, xs))| {
                        kernels::forward_scaled_uninit(xs, plan.gate(i), plan.ranges.of_run(i), ys)
                    })
            })
        }
    }

    fn gate_quant_backward(
        grad: FlexTensor,
        x: FlexTensor,
        gate: FlexTensor,
        step: FlexTensor,
    ) -> GateQuantGrads<Flex> {
        let (x, grad) = (contiguous_f32(&x, OP), contiguous_f32(&grad, OP));
        let shape = dims(&x);
        let plan = Plan::new(&shape, &gate, &step);
        let mut partial: Vec<(RangeGrads, f64)> = Vec::new();
        // SAFETY: the planes cover the output and the kernel writes each element.
        let grad_x = unsafe {
            output(&shape, |dx| {
                partial = dx
                    .par_chunks_mut(plan.plane)
                    .zip(
                        f32s(&x)
                            .par_chunks(plan.plane)
                            .zip(f32s(&grad).par_chunks(plan.plane)),
                    )
                    .with_min_len(plan.per_task)
                    .enumerate()
                    .map(|(i, (dxs, (xs, gs)))| {
                        let range = plan.ranges.of_run(i);
                        kernels::backward_scaled_uninit(gs, xs, plan.gate(i), range, dxs)
                    })
                    .collect();
            })
        };
        let (ranges, gates): (Vec<_>, Vec<_>) = partial.into_iter().unzip();
        let gates: Vec<f32> = gates.into_iter().map(|g| g as f32).collect();
        GateQuantGrads {
            x: grad_x,
            gate: from_vec(gates, &[shape[0], shape[1], 1, 1]),
            step: plan.ranges.grads(ranges),
        }
    }
}

/// The autodiff node: forward on the inner backend, backward through its
/// `gate_quant_backward`.
impl<B: BackendOps + GateQuantOps, C: CheckpointStrategy> GateQuantOps for Autodiff<B, C> {
    fn gate_quant(
        x: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        step: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GateQuantBackward;

        impl<B: BackendOps + GateQuantOps> Backward<B, 3> for GateQuantBackward {
            type State = [FloatTensor<B>; 3];

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [x, gate, step] = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let g = B::gate_quant_backward(grad, x, gate, step);
                for (parent, g) in ops.parents.into_iter().zip([g.x, g.gate, g.step]) {
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, g);
                    }
                }
            }
        }

        let parents = [x.node(), gate.node(), step.node()];
        let inputs = [x, gate, step].map(|t| t.into_primitive());
        let [x, gate, step] = inputs.clone();
        let y = B::gate_quant(x, gate, step);
        match GateQuantBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(inputs, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn gate_quant_backward(
        _grad: FloatTensor<Self>,
        _x: FloatTensor<Self>,
        _gate: FloatTensor<Self>,
        _step: FloatTensor<Self>,
    ) -> GateQuantGrads<Self> {
        unreachable!("the gated quantizer's backward is not itself differentiated")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{rel_diff, spread};
    use crate::quant::fused::testing::{leaf_step, tensor};
    use crate::quant::host_f32;

    /// y and the gradients of x, the gate and the range's leaves (lo, width, L) for a
    /// fixed projection of y; by the fused op or by the two ops.
    fn run(shape: [usize; 4], channels: usize, fused: bool) -> Vec<Vec<f32>> {
        let device = Device::flex().autodiff();
        let n = shape.iter().product();
        let x = tensor(spread(n, 0.5, -4.0, 4.0), shape, &device).require_grad();
        let gate_shape = [shape[0], shape[1], 1, 1];
        let gates = shape[0] * shape[1];
        let gate = tensor(spread(gates, 2.5, 0.05, 1.0), gate_shape, &device).require_grad();
        let probe = tensor(spread(n, 7.25, -1.0, 1.0), shape, &device);
        let (step, [lo, width, levels]) = leaf_step(channels, 3.5, &device, true);
        let y = if fused {
            assert!(supports(&x));
            quantize_gated(x.clone(), gate.clone(), step)
        } else {
            quantize(x.clone() * gate.clone(), step, AXIS)
        };
        let grads = (y.clone() * probe).sum().backward();
        let mut out = vec![
            host_f32(y),
            host_f32(x.grad(&grads).expect("∂x")),
            host_f32(gate.grad(&grads).expect("∂gate")),
        ];
        for t in [lo, width, levels] {
            out.push(host_f32(t.grad(&grads).expect("a leaf's gradient")));
        }
        out
    }

    #[test]
    fn equals_the_product_and_the_quantizer() {
        // Per-channel and per-tensor ranges; planes of many elements and of one.
        for (shape, channels) in [
            ([2, 6, 9, 11], 6),
            ([2, 6, 9, 11], 1),
            ([3, 5, 1, 1], 5),
            ([1, 4, 64, 80], 4),
        ] {
            let (fused, ops) = (run(shape, channels, true), run(shape, channels, false));
            assert_eq!(fused[0], ops[0], "{shape:?}: y");
            assert_eq!(fused[1], ops[1], "{shape:?}: ∂x");
            let names = ["∂gate", "∂lo", "∂width", "∂L"];
            for ((name, a), b) in names.iter().zip(&fused[2..]).zip(&ops[2..]) {
                assert!(rel_diff(a, b) < 1e-4, "{shape:?}: {name} {a:?} vs {b:?}");
            }
            let zeros = fused[1].iter().filter(|v| **v == 0.0).count();
            assert!(zeros > 0 && zeros < fused[1].len(), "{shape:?}: clipping");
        }
    }

    #[test]
    fn without_autodiff_gives_the_same_values() {
        let device = Device::flex();
        let x = tensor(spread(2 * 3 * 4 * 5, 1.5, -3.0, 3.0), [2, 3, 4, 5], &device);
        let gate = tensor(spread(6, 4.5, 0.1, 0.9), [2, 3, 1, 1], &device);
        let s = Tensor::<1>::from_floats([2.0, 3.0, 4.0], &device);
        let step = Step::from_columns(
            s.clone(),
            Tensor::from_floats([-3.0, -7.0, 0.0], &device),
            Tensor::from_floats([3.0, 15.0, 255.0], &device),
            s.recip(),
        );
        let fused = quantize_gated(x.clone(), gate.clone(), step.clone());
        assert_eq!(host_f32(fused), host_f32(quantize(x * gate, step, AXIS)));
    }
}

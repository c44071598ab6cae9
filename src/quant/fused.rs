//! The adjustable quantizer's per-element step, y = (clip(round(x·S) − z, 0, L) + z)·inv,
//! as one op on the CPU backend: one pass forward and one backward instead of the ~11 and
//! ~9 full-size passes of its composition from tensor ops (`adjustable::quantize_composed`,
//! which stays the definition, the test reference and the path of every other backend).
//!
//! Gradients are those of the composition: the round passes the gradient through, the
//! clip passes it only inside [0, L] (bounds included), and L takes the gradient of the
//! elements above it (TF1's Minimum, as the original ran; a caller that wants L
//! constant passes it detached). With g the upstream gradient and
//! inside = 0 ≤ round(x·S) − z ≤ L:
//! ∂x = inside·g·inv·S, ∂S = Σ inside·g·inv·x, ∂z = Σ (1 − inside)·g·inv,
//! ∂L = Σ (round(x·S) − z > L)·g·inv, ∂inv = Σ g·(clip(..) + z), the sums per channel.

use super::adjustable::{Column, Step};
use crate::model::flex_io::{contiguous_f32, dims, f32s, from_vec, output};
use adjq_kernels::quant::{self as kernels, Range, RangeGrads};
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
const OP: &str = "fused quantizer";

#[backend_extension(Flex, Autodiff)]
pub trait AdjQuantOps: BackendOps {
    /// y = (clip(round(x·S) − z, 0, L) + z)·inv; `step` holds the `[C, 4]` rows (S, z, L,
    /// inv) of the channels along `axis` (`[1, 4]`: one range for the whole tensor).
    fn adj_quant(x: FloatTensor<Self>, step: FloatTensor<Self>, axis: usize) -> FloatTensor<Self>;

    /// Gradients of x and of the step's rows for the upstream gradient `grad`.
    fn adj_quant_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        step: FloatTensor<Self>,
        axis: usize,
    ) -> QuantGrads<Self>;
}

/// The gradients of the fused step's inputs.
#[derive(ExtensionType)]
pub struct QuantGrads<B: BackendOps> {
    pub x: FloatTensor<B>,
    pub step: FloatTensor<B>,
}

/// Whether `x` can take the fused op: f32 on the CPU backend (with or without autodiff).
pub fn supports<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && x.device().inner() == Device::flex()
}

/// The fused quantizer step (see the module doc); callers check [`supports`] first.
pub fn quantize<const D: usize>(x: Tensor<D>, step: Step, axis: usize) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as AdjQuantOps>::adj_quant(
        x.into_dispatch(),
        step.0.into_dispatch(),
        axis,
    ))
}

/// Per-channel constants of one quantization point, on the host.
pub(super) struct Ranges(Vec<Range>);

impl Ranges {
    /// The rows of a [`Step`]'s tensor, `[C, 4]`.
    pub(super) fn read(step: &FlexTensor) -> Self {
        let step = contiguous_f32(step, OP);
        assert_eq!(
            dims(&step)[1..],
            [Step::COLUMNS],
            "{OP}: a step has one row of four per channel"
        );
        Self::from_rows(f32s(&step))
    }

    /// Each step of stacked steps `[P, C, 4]`.
    pub(super) fn read_stacked(steps: &FlexTensor) -> Vec<Self> {
        let steps = contiguous_f32(steps, OP);
        let shape = dims(&steps);
        assert!(
            shape.len() == 3 && shape[2] == Step::COLUMNS,
            "{OP}: stacked steps have one row of four per channel"
        );
        f32s(&steps)
            .chunks_exact(shape[1] * Step::COLUMNS)
            .map(Self::from_rows)
            .collect()
    }

    fn from_rows(rows: &[f32]) -> Self {
        let ranges = rows
            .chunks_exact(Step::COLUMNS)
            .map(|row| Range {
                step_inv: row[Column::StepInv as usize],
                zero: row[Column::Zero as usize],
                levels: row[Column::Levels as usize],
                inv: row[Column::Inv as usize],
            })
            .collect();
        Ranges(ranges)
    }

    pub(super) fn channels(&self) -> usize {
        self.0.len()
    }

    /// Run length and runs per task for `x` of `shape` with channels along `axis`: a run is
    /// one channel's contiguous stretch (per-tensor ranges: a fixed-size piece).
    pub(super) fn runs(&self, shape: &[usize], axis: usize) -> (usize, usize) {
        let len: usize = shape.iter().product();
        let run = if self.channels() == 1 {
            len.clamp(1, 1 << 15)
        } else {
            assert_eq!(
                shape[axis],
                self.channels(),
                "quantizer ranges must match the channel axis"
            );
            shape[axis + 1..].iter().product::<usize>().max(1)
        };
        // Small runs (SE vectors, FC inputs) are grouped so each task has some work.
        (run, (4096 / run).max(1))
    }

    /// The range of the `run_index`-th run.
    pub(super) fn of_run(&self, run_index: usize) -> &Range {
        &self.0[run_index % self.channels()]
    }

    /// Per-run partial sums (in run order) added up per channel, as the `[C, 4]` rows
    /// (∂S, ∂z, ∂L, ∂inv) of the step's gradient: the same result for any thread count
    /// (training is deterministic on CPU).
    pub(super) fn grads(&self, partial: impl IntoIterator<Item = RangeGrads>) -> FlexTensor {
        from_vec(self.grad_rows(partial), &[self.channels(), Step::COLUMNS])
    }

    /// [`Ranges::grads`]'s values, row by row.
    pub(super) fn grad_rows(&self, partial: impl IntoIterator<Item = RangeGrads>) -> Vec<f32> {
        let mut sums = vec![RangeGrads::default(); self.channels()];
        for (i, p) in partial.into_iter().enumerate() {
            sums[i % self.channels()] += p;
        }
        sums.iter()
            .flat_map(|s| [s.step_inv, s.zero, s.levels, s.inv].map(|v| v as f32))
            .collect()
    }
}

impl AdjQuantOps for Flex {
    fn adj_quant(x: FlexTensor, step: FlexTensor, axis: usize) -> FlexTensor {
        let r = Ranges::read(&step);
        let x = contiguous_f32(&x, OP);
        let shape = dims(&x);
        let (run, per_task) = r.runs(&shape, axis);
        // SAFETY: the runs cover the output and the kernel writes each element.
        unsafe {
            output(&shape, |out| {
                out.par_chunks_mut(run)
                    .zip(f32s(&x).par_chunks(run))
                    .with_min_len(per_task)
                    .enumerate()
                    .for_each(|(i, (ys, xs))| kernels::forward_uninit(xs, r.of_run(i), ys))
            })
        }
    }

    fn adj_quant_backward(
        grad: FlexTensor,
        x: FlexTensor,
        step: FlexTensor,
        axis: usize,
    ) -> QuantGrads<Flex> {
        let r = Ranges::read(&step);
        let (x, grad) = (contiguous_f32(&x, OP), contiguous_f32(&grad, OP));
        let shape = dims(&x);
        let (run, per_task) = r.runs(&shape, axis);
        // Per-run partial sums, added up in run order by `Ranges::grads`.
        let mut partial: Vec<RangeGrads> = Vec::new();
        // SAFETY: the runs cover the output and the kernel writes each element.
        let grad_x = unsafe {
            output(&shape, |dx| {
                partial = dx
                    .par_chunks_mut(run)
                    .zip(f32s(&x).par_chunks(run).zip(f32s(&grad).par_chunks(run)))
                    .with_min_len(per_task)
                    .enumerate()
                    .map(|(i, (dxs, (xs, gs)))| kernels::backward_uninit(gs, xs, r.of_run(i), dxs))
                    .collect();
            })
        };
        QuantGrads {
            x: grad_x,
            step: r.grads(partial),
        }
    }
}

/// The autodiff node: forward on the inner backend, backward through its
/// `adj_quant_backward`.
impl<B: BackendOps + AdjQuantOps, C: CheckpointStrategy> AdjQuantOps for Autodiff<B, C> {
    fn adj_quant(x: FloatTensor<Self>, step: FloatTensor<Self>, axis: usize) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct QuantizeBackward;

        impl<B: BackendOps + AdjQuantOps> Backward<B, 2> for QuantizeBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (x, step, axis) = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let g = B::adj_quant_backward(grad, x, step, axis);
                for (parent, g) in ops.parents.into_iter().zip([g.x, g.step]) {
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, g);
                    }
                }
            }
        }

        let parents = [x.node(), step.node()];
        let (x, step) = (x.into_primitive(), step.into_primitive());
        let y = B::adj_quant(x.clone(), step.clone(), axis);
        match QuantizeBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, step, axis), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn adj_quant_backward(
        _grad: FloatTensor<Self>,
        _x: FloatTensor<Self>,
        _step: FloatTensor<Self>,
        _axis: usize,
    ) -> QuantGrads<Self> {
        unreachable!("the quantizer's backward is not itself differentiated")
    }
}

/// What the fused ops' tests share: tensors from values, and steps built from tracked
/// leaves so that every constant carries gradient.
#[cfg(test)]
pub(super) mod testing {
    use super::Step;
    use crate::model::testing::spread;
    use crate::quant::ste::round;
    use burn::prelude::*;
    use burn::tensor::TensorData;

    pub fn tensor<const D: usize>(
        values: Vec<f32>,
        shape: [usize; D],
        device: &Device,
    ) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// A step from leaves (lo, width, L) of `channels` (tracked if `tracked`): lo in
    /// [−1.5, −0.2], width in [1, 4], L at 2, 4 and 8 bits in turn (so values land on and
    /// beyond the bounds); returns the step and the leaves.
    pub fn leaf_step(
        channels: usize,
        salt: f32,
        device: &Device,
        tracked: bool,
    ) -> (Step, [Tensor<1>; 3]) {
        let leaf = |values: Vec<f32>| {
            let t = tensor(values, [channels], device);
            if tracked { t.require_grad() } else { t }
        };
        let lo = leaf(spread(channels, salt, -1.5, -0.2));
        let width = leaf(spread(channels, salt + 4.0, 1.0, 4.0));
        let levels = leaf((0..channels).map(|c| [3.0, 15.0, 255.0][c % 3]).collect());
        let step_inv = levels.clone() / width.clone();
        let step = Step::from_columns(
            step_inv.clone(),
            round(lo.clone() * step_inv.clone()),
            levels.clone(),
            step_inv.recip(),
        );
        (step, [lo, width, levels])
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{leaf_step, tensor};
    use super::*;
    use crate::model::testing::{rel_diff, spread};
    use crate::quant::adjustable::quantize_composed;
    use crate::quant::host_f32;

    struct Outcome {
        y: Vec<f32>,
        dx: Vec<f32>,
        dlo: Vec<f32>,
        dwidth: Vec<f32>,
        dlevels: Vec<f32>,
    }

    /// Quantizes x with ranges built from tracked leaves (lo, width, L), so S, z and inv
    /// all carry gradient, and returns y and the gradients of a fixed projection of y.
    fn run<const D: usize>(
        shape: [usize; D],
        axis: usize,
        channels: usize,
        fused: bool,
    ) -> Outcome {
        let device = Device::flex().autodiff();
        let n = shape.iter().product();
        let x = tensor(spread(n, 0.5, -8.0, 8.0), shape, &device).require_grad();
        let probe = tensor(spread(n, 7.25, -1.0, 1.0), shape, &device);
        let (step, [lo, width, levels]) = leaf_step(channels, 3.5, &device, true);
        let y = if fused {
            assert!(supports(&x));
            quantize(x.clone(), step, axis)
        } else {
            quantize_composed(x.clone(), step, axis)
        };
        let grads = (y.clone() * probe).sum().backward();
        Outcome {
            y: host_f32(y),
            dx: host_f32(x.grad(&grads).expect("x has a gradient")),
            dlo: host_f32(lo.grad(&grads).expect("lo has a gradient")),
            dwidth: host_f32(width.grad(&grads).expect("width has a gradient")),
            dlevels: host_f32(levels.grad(&grads).expect("L has a gradient")),
        }
    }

    fn check<const D: usize>(shape: [usize; D], axis: usize, channels: usize) {
        let f = run(shape, axis, channels, true);
        let c = run(shape, axis, channels, false);
        assert_eq!(f.y, c.y, "{shape:?}: forward differs");
        assert!(rel_diff(&f.dx, &c.dx) < 1e-6, "{shape:?}: ∂x differs");
        // Per-channel sums: same terms, another summation order.
        assert!(
            rel_diff(&f.dlo, &c.dlo) < 1e-4,
            "{shape:?}: ∂lo {:?} vs {:?}",
            f.dlo,
            c.dlo
        );
        assert!(
            rel_diff(&f.dwidth, &c.dwidth) < 1e-4,
            "{shape:?}: ∂width {:?} vs {:?}",
            f.dwidth,
            c.dwidth
        );
        assert!(
            rel_diff(&f.dlevels, &c.dlevels) < 1e-4,
            "{shape:?}: ∂L {:?} vs {:?}",
            f.dlevels,
            c.dlevels
        );
        assert!(
            f.dlevels.iter().any(|v| *v != 0.0),
            "{shape:?}: no saturated values tested"
        );
        let clipped = f.dx.iter().filter(|v| **v == 0.0).count();
        assert!(
            clipped > 0 && clipped < f.dx.len(),
            "{shape:?}: no clipped values tested"
        );
    }

    #[test]
    fn fused_step_equals_the_composition_for_activations_weights_and_biases() {
        check([2, 6, 5, 7], 1, 6); // activations, channels on axis 1
        check([6, 3, 3, 3], 0, 6); // conv weights, per output channel
        check([3, 5, 1, 1], 1, 5); // SE vectors: runs of one element
        check([40_000], 0, 1); // per tensor, several pieces
        check([4, 9], 1, 1); // per tensor on a 2-D tensor
    }

    #[test]
    fn fused_step_without_autodiff_gives_the_same_values() {
        let device = Device::flex();
        let x = tensor(spread(72, 1.5, -6.0, 6.0), [2, 4, 3, 3], &device);
        let s = Tensor::<1>::from_floats([2.0, 3.0, 4.0, 5.0], &device);
        let z = Tensor::<1>::from_floats([-3.0, -7.0, 0.0, -1.0], &device);
        let l = Tensor::<1>::from_floats([3.0, 15.0, 7.0, 255.0], &device);
        let step = Step::from_columns(s.clone(), z, l, s.recip());
        let fused = quantize(x.clone(), step.clone(), 1);
        let composed = quantize_composed(x, step, 1);
        assert_eq!(host_f32(fused), host_f32(composed));
    }
}

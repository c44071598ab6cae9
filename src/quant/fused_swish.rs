//! A swish after a quantization point and, where the layer has one, before another,
//! y = q₂(swish(q₁(x))) or swish(q₁(x)) per channel, as one op on the CPU backend: the
//! activation of the stem, of every expand, depthwise and SE reduce conv. As separate ops
//! (fused quantizers and the swish) it wrote one or two intermediate tensors forward,
//! kept them alive for the backward and wrote as many gradients back; here each channel
//! plane goes through the steps in cache, and the backward recomputes q₁(x) and the swish
//! from x. The same kernels run in the same order on the same runs, so the bits are those
//! of the separate ops (tested).

use super::adjustable::{Step, quantize};
use super::fused::{Ranges, supports};
use crate::model::flex_io::{contiguous_f32, dims, f32s, from_vec, output};
use crate::model::swish::swish;
use adjq_kernels::quant::{self as quant_kernels, RangeGrads};
use adjq_kernels::swish::{
    backward_from_sigmoid, forward_keeping_sigmoid, forward_slice, forward_uninit,
};
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
const OP: &str = "fused quantized swish";

/// Activations have their channels on axis 1 (NCHW).
const AXIS: usize = 1;

#[backend_extension(Flex, Autodiff)]
pub trait QuantSwishOps: BackendOps {
    /// swish(q₁(x)), then q₂ of it if `steps` has a second: `steps` is `[P, C, 4]`, the
    /// step rows of q₁ and (P = 2) q₂ for the channels on axis 1 (see
    /// `fused::AdjQuantOps::adj_quant`).
    fn quant_swish(x: FloatTensor<Self>, steps: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradients of x and of the steps for the upstream `grad`.
    fn quant_swish_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        steps: FloatTensor<Self>,
    ) -> QuantSwishGrads<Self>;
}

/// The gradients of the op's inputs.
#[derive(ExtensionType)]
pub struct QuantSwishGrads<B: BackendOps> {
    pub x: FloatTensor<B>,
    pub steps: FloatTensor<B>,
}

/// q₂(swish(q₁(x))) for x `[N, C, H, W]`, or swish(q₁(x)) without `post` (see the
/// module doc): the fused op where it runs, else the separate ops.
pub fn quantize_swish(x: Tensor<4>, pre: Step, post: Option<Step>) -> Tensor<4> {
    if !supports(&x) {
        let y = swish(quantize(x, pre, AXIS));
        return match post {
            Some(post) => quantize(y, post, AXIS),
            None => y,
        };
    }
    let steps: Tensor<3> = match post {
        Some(post) => Tensor::stack(vec![pre.0, post.0], 0),
        None => pre.0.unsqueeze(),
    };
    Tensor::from_dispatch(<burn::backend::Dispatch as QuantSwishOps>::quant_swish(
        x.into_dispatch(),
        steps.into_dispatch(),
    ))
}

/// The quantizers' constants and the runs of `x`'s shape (one channel plane each).
struct Plan {
    pre: Ranges,
    post: Option<Ranges>,
    run: usize,
    per_task: usize,
}

impl Plan {
    fn new(shape: &[usize], steps: &FlexTensor) -> Self {
        let mut ranges = Ranges::read_stacked(steps).into_iter();
        let (pre, post) = match (ranges.next(), ranges.next(), ranges.next()) {
            (Some(pre), post, None) => (pre, post),
            _ => panic!("{OP}: one or two quantizers' steps"),
        };
        let (run, per_task) = pre.runs(shape, AXIS);
        if let Some(post) = &post {
            assert_eq!(
                (run, per_task),
                post.runs(shape, AXIS),
                "{OP}: both quantizers must split the tensor alike"
            );
        }
        Plan {
            pre,
            post,
            run,
            per_task,
        }
    }

    /// The steps' gradients, `[P, C, 4]`, from the per-run sums of each quantizer.
    fn grads(&self, partial: Vec<(RangeGrads, Option<RangeGrads>)>) -> FlexTensor {
        let (pre, post): (Vec<_>, Vec<_>) = partial.into_iter().unzip();
        let mut rows = self.pre.grad_rows(pre);
        if let Some(ranges) = &self.post {
            rows.extend(ranges.grad_rows(post.into_iter().flatten()));
        }
        let steps = 1 + usize::from(self.post.is_some());
        from_vec(rows, &[steps, self.pre.channels(), Step::COLUMNS])
    }
}

/// Per-task buffers of one run each: q₁(x), the swish of it (the backward reuses it for
/// the swish's input gradient), and in the backward σ(q₁(x)) (one exp per element).
#[derive(Default)]
struct Scratch {
    quantized: Vec<f32>,
    swished: Vec<f32>,
    sigmoid: Vec<f32>,
    /// The gradient at the swish's output, where q₂ takes it first.
    grad_swished: Vec<f32>,
}

impl Scratch {
    /// q₁(x) of run `i` into the buffers.
    fn quantize(&mut self, plan: &Plan, i: usize, xs: &[f32]) {
        self.quantized.resize(xs.len(), 0.0);
        quant_kernels::forward(xs, plan.pre.of_run(i), &mut self.quantized);
    }

    /// q₁(x) of run `i` and its swish into the buffers (also σ if `keep_sigmoid`).
    fn recompute(&mut self, plan: &Plan, i: usize, xs: &[f32], keep_sigmoid: bool) {
        self.quantize(plan, i, xs);
        for buf in [&mut self.swished, &mut self.sigmoid] {
            buf.resize(xs.len(), 0.0);
        }
        if keep_sigmoid {
            forward_keeping_sigmoid(&self.quantized, &mut self.swished, &mut self.sigmoid);
        } else {
            forward_slice(&self.quantized, &mut self.swished);
        }
    }
}

impl QuantSwishOps for Flex {
    fn quant_swish(x: FlexTensor, steps: FlexTensor) -> FlexTensor {
        let x = contiguous_f32(&x, OP);
        let shape = dims(&x);
        let plan = Plan::new(&shape, &steps);
        // SAFETY: the runs cover the output and the kernels write each element.
        unsafe {
            output(&shape, |out| {
                out.par_chunks_mut(plan.run)
                    .zip(f32s(&x).par_chunks(plan.run))
                    .with_min_len(plan.per_task)
                    .enumerate()
                    .for_each_init(Scratch::default, |scratch, (i, (ys, xs))| {
                        match &plan.post {
                            Some(post) => {
                                scratch.recompute(&plan, i, xs, false);
                                quant_kernels::forward_uninit(&scratch.swished, post.of_run(i), ys)
                            }
                            None => {
                                scratch.quantize(&plan, i, xs);
                                forward_uninit(&scratch.quantized, ys)
                            }
                        }
                    })
            })
        }
    }

    fn quant_swish_backward(
        grad: FlexTensor,
        x: FlexTensor,
        steps: FlexTensor,
    ) -> QuantSwishGrads<Flex> {
        let (x, grad) = (contiguous_f32(&x, OP), contiguous_f32(&grad, OP));
        let shape = dims(&x);
        let plan = Plan::new(&shape, &steps);
        let mut partial: Vec<(RangeGrads, Option<RangeGrads>)> = Vec::new();
        // SAFETY: the runs cover the output and the kernel writes each element.
        let grad_x = unsafe {
            output(&shape, |dx| {
                partial = dx
                    .par_chunks_mut(plan.run)
                    .zip(
                        f32s(&x)
                            .par_chunks(plan.run)
                            .zip(f32s(&grad).par_chunks(plan.run)),
                    )
                    .with_min_len(plan.per_task)
                    .enumerate()
                    .map_init(Scratch::default, |scratch, (i, (dxs, (xs, gs)))| {
                        scratch.recompute(&plan, i, xs, true);
                        let Scratch {
                            quantized,
                            swished,
                            sigmoid,
                            grad_swished,
                        } = scratch;
                        let (grad_swished, post) = match &plan.post {
                            Some(post) => {
                                grad_swished.resize(xs.len(), 0.0);
                                let sums = quant_kernels::backward(
                                    gs,
                                    swished,
                                    post.of_run(i),
                                    grad_swished,
                                );
                                (&grad_swished[..], Some(sums))
                            }
                            None => (gs, None),
                        };
                        // The swish's input gradient, into the no longer needed swish
                        // buffer.
                        let grad_quantized = swished;
                        backward_from_sigmoid(grad_swished, quantized, sigmoid, grad_quantized);
                        let pre = quant_kernels::backward_uninit(
                            grad_quantized,
                            xs,
                            plan.pre.of_run(i),
                            dxs,
                        );
                        (pre, post)
                    })
                    .collect();
            })
        };
        QuantSwishGrads {
            x: grad_x,
            steps: plan.grads(partial),
        }
    }
}

/// The autodiff node: forward on the inner backend, backward through its
/// `quant_swish_backward`.
impl<B: BackendOps + QuantSwishOps, C: CheckpointStrategy> QuantSwishOps for Autodiff<B, C> {
    fn quant_swish(x: FloatTensor<Self>, steps: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct QuantSwishBackward;

        impl<B: BackendOps + QuantSwishOps> Backward<B, 2> for QuantSwishBackward {
            type State = [FloatTensor<B>; 2];

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [x, steps] = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let g = B::quant_swish_backward(grad, x, steps);
                for (parent, g) in ops.parents.into_iter().zip([g.x, g.steps]) {
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, g);
                    }
                }
            }
        }

        let parents = [x.node(), steps.node()];
        let inputs = [x.into_primitive(), steps.into_primitive()];
        let [x, steps] = inputs.clone();
        let y = B::quant_swish(x, steps);
        match QuantSwishBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(inputs, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn quant_swish_backward(
        _grad: FloatTensor<Self>,
        _x: FloatTensor<Self>,
        _steps: FloatTensor<Self>,
    ) -> QuantSwishGrads<Self> {
        unreachable!("the quantized swish's backward is not itself differentiated")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::spread;
    use crate::quant::fused::testing::{leaf_step, tensor};
    use crate::quant::host_f32;

    /// y and the gradients of x and of the quantizers' leaves, for a fixed projection
    /// of y; by the fused op or by the separate ops; with or without the second quantizer.
    fn run(shape: [usize; 4], fused: bool, with_post: bool) -> Vec<Vec<f32>> {
        let device = Device::flex().autodiff();
        let n = shape.iter().product();
        let x = tensor(spread(n, 0.5, -4.0, 4.0), shape, &device).require_grad();
        let probe = tensor(spread(n, 7.25, -1.0, 1.0), shape, &device);
        let (pre, pre_leaves) = leaf_step(shape[1], 3.5, &device, true);
        let (post, post_leaves) = leaf_step(shape[1], 9.5, &device, true);
        let post = with_post.then_some(post);
        let y = if fused {
            assert!(supports(&x));
            quantize_swish(x.clone(), pre, post)
        } else {
            let y = swish(quantize(x.clone(), pre, AXIS));
            match post {
                Some(post) => quantize(y, post, AXIS),
                None => y,
            }
        };
        let grads = (y.clone() * probe).sum().backward();
        let mut out = vec![host_f32(y), host_f32(x.grad(&grads).expect("∂x"))];
        let post_leaves = if with_post { &post_leaves[..] } else { &[] };
        for leaf in pre_leaves.iter().chain(post_leaves) {
            out.push(host_f32(leaf.grad(&grads).expect("a leaf's gradient")));
        }
        out
    }

    #[test]
    fn equals_the_quantizers_and_the_swish_bit_for_bit() {
        // Channel planes of many elements, of one (SE vectors), and a batch of them.
        for shape in [[2, 6, 9, 11], [3, 5, 1, 1], [1, 4, 64, 80]] {
            for with_post in [true, false] {
                let fused = run(shape, true, with_post);
                let ops = run(shape, false, with_post);
                assert_eq!(fused.len(), if with_post { 8 } else { 5 });
                let names = ["y", "∂x", "∂lo₁", "∂w₁", "∂L₁", "∂lo₂", "∂w₂", "∂L₂"];
                for ((name, a), b) in names.iter().zip(&fused).zip(&ops) {
                    assert_eq!(a, b, "{shape:?} (second quantizer: {with_post}): {name}");
                }
                // The clips were exercised: some gradients stopped, some passed.
                let zeros = fused[1].iter().filter(|v| **v == 0.0).count();
                assert!(zeros > 0 && zeros < fused[1].len(), "{shape:?}: clipping");
                assert!(fused[4..].iter().step_by(3).flatten().any(|v| *v != 0.0));
            }
        }
    }

    #[test]
    fn without_autodiff_gives_the_same_values() {
        let device = Device::flex();
        let x = tensor(spread(2 * 3 * 4 * 5, 1.5, -3.0, 3.0), [2, 3, 4, 5], &device);
        let (pre, _) = leaf_step(3, 1.0, &device, false);
        let (post, _) = leaf_step(3, 2.0, &device, false);
        let fused = quantize_swish(x.clone(), pre.clone(), Some(post.clone()));
        let swished = swish(quantize(x.clone(), pre.clone(), AXIS));
        assert_eq!(
            host_f32(fused),
            host_f32(quantize(swished.clone(), post, AXIS))
        );
        assert_eq!(host_f32(quantize_swish(x, pre, None)), host_f32(swished));
    }
}

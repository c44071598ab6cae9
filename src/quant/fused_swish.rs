//! A swish between two quantization points, y = q₂(swish(q₁(x))) per channel, as one op
//! on the CPU backend: the activation of the stem, of every expand conv and of every SE
//! reduce conv. As three ops (two fused quantizers and the swish) it wrote two
//! intermediate tensors forward, kept three alive for the backward and wrote two more
//! gradients back; here each channel plane goes through the three steps in cache, and the
//! backward recomputes q₁(x) and the swish from x. The same kernels run in the same order
//! on the same runs, so the bits are those of the three ops (tested).

use super::adjustable::{Step, quantize};
use super::fused::{Ranges, supports};
use crate::model::flex_io::{contiguous_f32, dims, f32s, output};
use adjq_kernels::quant::{self as quant_kernels, RangeGrads};
use adjq_kernels::swish::{backward_from_sigmoid, forward_keeping_sigmoid, forward_slice};
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
    /// q₂(swish(q₁(x))): q₁ with the step rows `pre`, q₂ with `post`, each `[C, 4]` for
    /// the channels on axis 1 (see `fused::AdjQuantOps::adj_quant`).
    fn quant_swish_quant(
        x: FloatTensor<Self>,
        pre: FloatTensor<Self>,
        post: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Gradients of x and of both quantizers' steps for the upstream `grad`.
    fn quant_swish_quant_backward(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        pre: FloatTensor<Self>,
        post: FloatTensor<Self>,
    ) -> QuantSwishGrads<Self>;
}

/// The gradients of the op's inputs.
#[derive(ExtensionType)]
pub struct QuantSwishGrads<B: BackendOps> {
    pub x: FloatTensor<B>,
    pub pre: FloatTensor<B>,
    pub post: FloatTensor<B>,
}

/// q₂(swish(q₁(x))) for x `[N, C, H, W]` (see the module doc): the fused op where it
/// runs, else the three ops.
pub fn quantize_swish_quantize(x: Tensor<4>, pre: Step, post: Step) -> Tensor<4> {
    if !supports(&x) {
        let y = crate::model::swish::swish(quantize(x, pre, AXIS));
        return quantize(y, post, AXIS);
    }
    Tensor::from_dispatch(
        <burn::backend::Dispatch as QuantSwishOps>::quant_swish_quant(
            x.into_dispatch(),
            pre.0.into_dispatch(),
            post.0.into_dispatch(),
        ),
    )
}

/// Both quantizers' constants and the runs of `x`'s shape (one channel plane each).
struct Plan {
    pre: Ranges,
    post: Ranges,
    run: usize,
    per_task: usize,
}

impl Plan {
    fn new(shape: &[usize], pre: Ranges, post: Ranges) -> Self {
        let (run, per_task) = pre.runs(shape, AXIS);
        assert_eq!(
            (run, per_task),
            post.runs(shape, AXIS),
            "{OP}: both quantizers must split the tensor alike"
        );
        Plan {
            pre,
            post,
            run,
            per_task,
        }
    }
}

/// Per-task buffers of one run each: q₁(x), the swish of it (the backward reuses it for
/// the swish's input gradient), and in the backward σ(q₁(x)) (one exp per element).
#[derive(Default)]
struct Scratch {
    quantized: Vec<f32>,
    swished: Vec<f32>,
    sigmoid: Vec<f32>,
}

impl Scratch {
    /// q₁(x) of run `i` into the buffers, and its swish (also σ if `keep_sigmoid`).
    fn recompute(&mut self, plan: &Plan, i: usize, xs: &[f32], keep_sigmoid: bool) {
        for buf in [&mut self.quantized, &mut self.swished, &mut self.sigmoid] {
            buf.resize(xs.len(), 0.0);
        }
        quant_kernels::forward(xs, plan.pre.of_run(i), &mut self.quantized);
        if keep_sigmoid {
            forward_keeping_sigmoid(&self.quantized, &mut self.swished, &mut self.sigmoid);
        } else {
            forward_slice(&self.quantized, &mut self.swished);
        }
    }
}

impl QuantSwishOps for Flex {
    fn quant_swish_quant(x: FlexTensor, pre: FlexTensor, post: FlexTensor) -> FlexTensor {
        let x = contiguous_f32(&x, OP);
        let shape = dims(&x);
        let plan = Plan::new(&shape, Ranges::read(&pre), Ranges::read(&post));
        // SAFETY: the runs cover the output and the kernel writes each element.
        unsafe {
            output(&shape, |out| {
                out.par_chunks_mut(plan.run)
                    .zip(f32s(&x).par_chunks(plan.run))
                    .with_min_len(plan.per_task)
                    .enumerate()
                    .for_each_init(Scratch::default, |scratch, (i, (ys, xs))| {
                        scratch.recompute(&plan, i, xs, false);
                        quant_kernels::forward_uninit(&scratch.swished, plan.post.of_run(i), ys);
                    })
            })
        }
    }

    fn quant_swish_quant_backward(
        grad: FlexTensor,
        x: FlexTensor,
        pre: FlexTensor,
        post: FlexTensor,
    ) -> QuantSwishGrads<Flex> {
        let (x, grad) = (contiguous_f32(&x, OP), contiguous_f32(&grad, OP));
        let shape = dims(&x);
        let plan = Plan::new(&shape, Ranges::read(&pre), Ranges::read(&post));
        let mut partial: Vec<(RangeGrads, RangeGrads)> = Vec::new();
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
                    .map_init(
                        || (Scratch::default(), Vec::new()),
                        |(scratch, grad_swished), (i, (dxs, (xs, gs)))| {
                            scratch.recompute(&plan, i, xs, true);
                            grad_swished.resize(xs.len(), 0.0);
                            let post = quant_kernels::backward(
                                gs,
                                &scratch.swished,
                                plan.post.of_run(i),
                                grad_swished,
                            );
                            // The swish's input gradient, into the no longer needed
                            // swish buffer.
                            let grad_quantized = &mut scratch.swished;
                            backward_from_sigmoid(
                                grad_swished,
                                &scratch.quantized,
                                &scratch.sigmoid,
                                grad_quantized,
                            );
                            let pre = quant_kernels::backward_uninit(
                                grad_quantized,
                                xs,
                                plan.pre.of_run(i),
                                dxs,
                            );
                            (pre, post)
                        },
                    )
                    .collect();
            })
        };
        let (pre, post): (Vec<_>, Vec<_>) = partial.into_iter().unzip();
        QuantSwishGrads {
            x: grad_x,
            pre: plan.pre.grads(pre),
            post: plan.post.grads(post),
        }
    }
}

/// The autodiff node: forward on the inner backend, backward through its
/// `quant_swish_quant_backward`.
impl<B: BackendOps + QuantSwishOps, C: CheckpointStrategy> QuantSwishOps for Autodiff<B, C> {
    fn quant_swish_quant(
        x: FloatTensor<Self>,
        pre: FloatTensor<Self>,
        post: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct QuantSwishBackward;

        impl<B: BackendOps + QuantSwishOps> Backward<B, 3> for QuantSwishBackward {
            type State = [FloatTensor<B>; 3];

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [x, pre, post] = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let g = B::quant_swish_quant_backward(grad, x, pre, post);
                for (parent, g) in ops.parents.into_iter().zip([g.x, g.pre, g.post]) {
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, g);
                    }
                }
            }
        }

        let inputs = [x, pre, post];
        let parents = inputs.each_ref().map(|t| t.node());
        let inputs = inputs.map(|t| t.into_primitive());
        let [x, pre, post] = inputs.clone();
        let y = B::quant_swish_quant(x, pre, post);
        match QuantSwishBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(inputs, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn quant_swish_quant_backward(
        _grad: FloatTensor<Self>,
        _x: FloatTensor<Self>,
        _pre: FloatTensor<Self>,
        _post: FloatTensor<Self>,
    ) -> QuantSwishGrads<Self> {
        unreachable!("the quantized swish's backward is not itself differentiated")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::swish::swish;
    use crate::model::testing::spread;
    use crate::quant::host_f32;
    use crate::quant::ste::round;
    use burn::tensor::TensorData;

    fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// A quantizer step from leaves (lo, width, L), tracked if `tracked`, so every
    /// constant carries gradient; returns the step and the leaves.
    fn step(channels: usize, salt: f32, device: &Device, tracked: bool) -> (Step, [Tensor<1>; 3]) {
        let leaf = |values: Vec<f32>| {
            let t = tensor(values, [channels], device);
            if tracked { t.require_grad() } else { t }
        };
        let lo = leaf(spread(channels, salt, -1.5, -0.2));
        let width = leaf(spread(channels, salt + 4.0, 1.0, 4.0));
        // 2, 4 and 8 bits across channels: many values land on and beyond the bounds.
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

    /// y and the gradients of x and of both quantizers' leaves, for a fixed projection
    /// of y; by the fused op or by the three ops.
    fn run(shape: [usize; 4], fused: bool) -> Vec<Vec<f32>> {
        let device = Device::flex().autodiff();
        let n = shape.iter().product();
        let x = tensor(spread(n, 0.5, -4.0, 4.0), shape, &device).require_grad();
        let probe = tensor(spread(n, 7.25, -1.0, 1.0), shape, &device);
        let (pre, pre_leaves) = step(shape[1], 3.5, &device, true);
        let (post, post_leaves) = step(shape[1], 9.5, &device, true);
        let y = if fused {
            assert!(supports(&x));
            quantize_swish_quantize(x.clone(), pre, post)
        } else {
            quantize(swish(quantize(x.clone(), pre, AXIS)), post, AXIS)
        };
        let grads = (y.clone() * probe).sum().backward();
        let mut out = vec![host_f32(y), host_f32(x.grad(&grads).expect("∂x"))];
        for leaf in pre_leaves.into_iter().chain(post_leaves) {
            out.push(host_f32(leaf.grad(&grads).expect("a leaf's gradient")));
        }
        out
    }

    #[test]
    fn equals_the_two_quantizers_and_the_swish_bit_for_bit() {
        // Channel planes of many elements, of one (SE vectors), and a batch of them.
        for shape in [[2, 6, 9, 11], [3, 5, 1, 1], [1, 4, 64, 80]] {
            let (fused, ops) = (run(shape, true), run(shape, false));
            let names = ["y", "∂x", "∂lo₁", "∂w₁", "∂L₁", "∂lo₂", "∂w₂", "∂L₂"];
            for ((name, a), b) in names.iter().zip(&fused).zip(&ops) {
                assert_eq!(a, b, "{shape:?}: {name}");
            }
            // Both clips were exercised: some gradients stopped, some passed.
            let zeros = fused[1].iter().filter(|v| **v == 0.0).count();
            assert!(zeros > 0 && zeros < fused[1].len(), "{shape:?}: clipping");
            assert!(fused[4].iter().chain(&fused[7]).any(|v| *v != 0.0));
        }
    }

    #[test]
    fn without_autodiff_gives_the_same_values() {
        let device = Device::flex();
        let x = tensor(spread(2 * 3 * 4 * 5, 1.5, -3.0, 3.0), [2, 3, 4, 5], &device);
        let (pre, _) = step(3, 1.0, &device, false);
        let (post, _) = step(3, 2.0, &device, false);
        let fused = quantize_swish_quantize(x.clone(), pre.clone(), post.clone());
        let ops = quantize(swish(quantize(x, pre, AXIS)), post, AXIS);
        assert_eq!(host_f32(fused), host_f32(ops));
    }
}

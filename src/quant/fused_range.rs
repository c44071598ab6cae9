//! The constants of one quantization point's step, `[C, 4]` rows (S, z, L, inv), from its
//! range parameters, as one op on the CPU backend, with its backward by hand.
//!
//! As tensor ops (`AdjQuant::step_composed`, the definition and the test reference) the
//! step took ≈ 25 tiny ops forward and 40 backward per point, each a tensor, an autodiff
//! node and a kernel launch over a few hundred values: with B0's 228 points, ≈ 80 ms of
//! every training step whatever the batch. Here it is one loop over the channels.
//!
//! Per channel, with the point's initial range [m, m + w], bounds on a and s (clips whose
//! gradient passes inside, bounds included) and bits b = clip(round(k·b0), 2, 8) when
//! learned (else b0):
//! lo = m + w·clip(s'), W = w·clip(a'), L = round(2^b − 1) (gradient ln2·2^b into b),
//! S = L / (W + 1e-7), z = round(lo·S) (gradient straight through), inv = 1 / S.
//! The L column's own gradient is the quantizer clip's (`ClipGrad`): it reaches b only
//! as the original ran (`AsExecuted`).

use super::adjustable::{ClipGrad, MAX_BITS, MIN_BITS, QuantSpec, Step};
use crate::model::flex_io::{contiguous_f32, f32s, from_vec};
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
use std::f32::consts::LN_2;

/// The op's name in messages.
const OP: &str = "quantizer range";

/// W + this is the width S divides by (no division by zero for a collapsed range).
const WIDTH_EPSILON: f32 = 1e-7;

#[backend_extension(Flex, Autodiff)]
pub trait RangeOps: BackendOps {
    /// The `[C, 4]` step constants from the initial range (`min`, `width`), the width
    /// scale, the shift and the bit scale (unread when `spec`'s bits are fixed), each `[C]`.
    fn adj_range(
        min: FloatTensor<Self>,
        width: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        bit_scale: FloatTensor<Self>,
        spec: QuantSpec,
    ) -> FloatTensor<Self>;

    /// Gradients of the five inputs for the upstream `[C, 4]` gradient `grad`.
    fn adj_range_backward(
        grad: FloatTensor<Self>,
        min: FloatTensor<Self>,
        width: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        bit_scale: FloatTensor<Self>,
        spec: QuantSpec,
    ) -> RangeInputGrads<Self>;
}

/// The gradients of the op's inputs.
#[derive(ExtensionType)]
pub struct RangeInputGrads<B: BackendOps> {
    pub min: FloatTensor<B>,
    pub width: FloatTensor<B>,
    pub scale: FloatTensor<B>,
    pub shift: FloatTensor<B>,
    pub bit_scale: FloatTensor<B>,
}

/// Whether the range parameters can take the fused op: f32 on the CPU backend.
pub fn supports(t: &Tensor<1>) -> bool {
    t.dtype() == DType::F32 && t.device().inner() == Device::flex()
}

/// The fused step (see the module doc); callers check [`supports`] first.
pub fn step(
    min: Tensor<1>,
    width: Tensor<1>,
    scale: Tensor<1>,
    shift: Tensor<1>,
    bit_scale: Tensor<1>,
    spec: QuantSpec,
) -> Step {
    Step(Tensor::from_dispatch(
        <burn::backend::Dispatch as RangeOps>::adj_range(
            min.into_dispatch(),
            width.into_dispatch(),
            scale.into_dispatch(),
            shift.into_dispatch(),
            bit_scale.into_dispatch(),
            spec,
        ),
    ))
}

/// `v` clipped to `bounds` and whether its gradient passes (inside, bounds included).
fn limit(v: f32, bounds: Option<(f32, f32)>) -> (f32, bool) {
    match bounds {
        Some((lo, hi)) => {
            let c = v.clamp(lo, hi);
            (c, c == v)
        }
        None => (v, true),
    }
}

/// One channel's inputs.
#[derive(Clone, Copy)]
struct Inputs {
    min: f32,
    width: f32,
    scale: f32,
    shift: f32,
    bit_scale: f32,
}

/// One channel's forward values that its backward needs.
struct Forward {
    /// clip(a'), clip(s') and whether their gradients pass.
    scale: (f32, bool),
    shift: (f32, bool),
    lo: f32,
    /// W + ε.
    width: f32,
    /// 2^b (the smooth value before the round) and whether b's gradient reaches k.
    power: f32,
    bits_pass: bool,
    levels: f32,
    step_inv: f32,
}

impl Forward {
    /// The same f32 operations in the same order as the composition, so the same bits.
    fn new(i: Inputs, spec: &QuantSpec) -> Self {
        let scale = limit(i.scale, spec.limits.scale);
        let shift = limit(i.shift, spec.limits.shift);
        let lo = i.min + i.width * shift.0;
        let width = i.width * scale.0 + WIDTH_EPSILON;
        let (bits, bits_pass) = if spec.trainable_bits {
            let b = (i.bit_scale * spec.bits).round_ties_even();
            let c = b.clamp(MIN_BITS, MAX_BITS);
            (c, c == b)
        } else {
            (spec.bits, false)
        };
        let power = (bits * LN_2).exp();
        let levels = (power - 1.0).round_ties_even();
        Forward {
            scale,
            shift,
            lo,
            width,
            power,
            bits_pass,
            levels,
            step_inv: levels / width,
        }
    }

    /// The row (S, z, L, inv).
    fn row(&self) -> [f32; Step::COLUMNS] {
        let s = self.step_inv;
        [s, (self.lo * s).round_ties_even(), self.levels, s.recip()]
    }

    /// The inputs' gradients (in [`Inputs`] order) for the row's upstream gradient `g`.
    fn backward(&self, i: Inputs, g: [f32; Step::COLUMNS], spec: &QuantSpec) -> [f32; 5] {
        let [g_step_inv, g_zero, g_levels, g_inv] = g;
        let s = self.step_inv;
        // inv = 1/S, z = round(lo·S) (straight through).
        let g_s = g_step_inv + g_zero * self.lo - g_inv / (s * s);
        let g_lo = g_zero * s;
        // S = L / (W + ε).
        let clip = match spec.clip_grad {
            ClipGrad::AsExecuted => g_levels,
            ClipGrad::Detached => 0.0,
        };
        let g_l = clip + g_s / self.width;
        let g_w = -g_s * self.levels / (self.width * self.width);
        // L = round(2^b − 1) with 2^b's gradient, b = clip(round(k·b0)).
        let g_k = if self.bits_pass {
            g_l * self.power * LN_2 * spec.bits
        } else {
            0.0
        };
        // W = w·a, lo = m + w·s.
        let pass = |(_, inside): (f32, bool), g: f32| if inside { g } else { 0.0 };
        [
            g_lo,
            g_w * self.scale.0 + g_lo * self.shift.0,
            pass(self.scale, g_w * i.width),
            pass(self.shift, g_lo * i.width),
            g_k,
        ]
    }
}

/// Each input's values, one per channel.
fn channels(tensors: [&FlexTensor; 5]) -> Vec<Inputs> {
    let [min, width, scale, shift, bit_scale] = tensors.map(|t| contiguous_f32(t, OP));
    let [min, width, scale, shift, bit_scale] =
        [&min, &width, &scale, &shift, &bit_scale].map(f32s);
    assert!(
        [width, scale, shift, bit_scale]
            .iter()
            .all(|t| t.len() == min.len()),
        "{OP}: every input has one value per channel"
    );
    (0..min.len())
        .map(|c| Inputs {
            min: min[c],
            width: width[c],
            scale: scale[c],
            shift: shift[c],
            bit_scale: bit_scale[c],
        })
        .collect()
}

impl RangeOps for Flex {
    fn adj_range(
        min: FlexTensor,
        width: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        bit_scale: FlexTensor,
        spec: QuantSpec,
    ) -> FlexTensor {
        let inputs = channels([&min, &width, &scale, &shift, &bit_scale]);
        let rows: Vec<f32> = inputs
            .iter()
            .flat_map(|&i| Forward::new(i, &spec).row())
            .collect();
        from_vec(rows, &[inputs.len(), Step::COLUMNS])
    }

    fn adj_range_backward(
        grad: FlexTensor,
        min: FlexTensor,
        width: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        bit_scale: FlexTensor,
        spec: QuantSpec,
    ) -> RangeInputGrads<Flex> {
        let inputs = channels([&min, &width, &scale, &shift, &bit_scale]);
        let grad = contiguous_f32(&grad, OP);
        let mut columns: [Vec<f32>; 5] = Default::default();
        for (&i, g) in inputs.iter().zip(f32s(&grad).chunks_exact(Step::COLUMNS)) {
            let g = g.try_into().expect("rows of four");
            let grads = Forward::new(i, &spec).backward(i, g, &spec);
            for (column, v) in columns.iter_mut().zip(grads) {
                column.push(v);
            }
        }
        let [min, width, scale, shift, bit_scale] =
            columns.map(|values| from_vec(values, &[inputs.len()]));
        RangeInputGrads {
            min,
            width,
            scale,
            shift,
            bit_scale,
        }
    }
}

/// The autodiff node: forward on the inner backend, backward through its
/// `adj_range_backward`.
impl<B: BackendOps + RangeOps, C: CheckpointStrategy> RangeOps for Autodiff<B, C> {
    fn adj_range(
        min: FloatTensor<Self>,
        width: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        bit_scale: FloatTensor<Self>,
        spec: QuantSpec,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RangeBackward;

        impl<B: BackendOps + RangeOps> Backward<B, 5> for RangeBackward {
            type State = ([FloatTensor<B>; 5], QuantSpec);

            fn backward(
                self,
                ops: Ops<Self::State, 5>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let ([min, width, scale, shift, bit_scale], spec) = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let g = B::adj_range_backward(grad, min, width, scale, shift, bit_scale, spec);
                let inputs = [g.min, g.width, g.scale, g.shift, g.bit_scale];
                for (parent, g) in ops.parents.into_iter().zip(inputs) {
                    if let Some(parent) = parent {
                        grads.register::<B>(parent.id, g);
                    }
                }
            }
        }

        let inputs = [min, width, scale, shift, bit_scale];
        let parents = inputs.each_ref().map(|t| t.node());
        let inputs = inputs.map(|t| t.into_primitive());
        let [min, width, scale, shift, bit_scale] = inputs.clone();
        let y = B::adj_range(min, width, scale, shift, bit_scale, spec);
        match RangeBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((inputs, spec), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn adj_range_backward(
        _grad: FloatTensor<Self>,
        _min: FloatTensor<Self>,
        _width: FloatTensor<Self>,
        _scale: FloatTensor<Self>,
        _shift: FloatTensor<Self>,
        _bit_scale: FloatTensor<Self>,
        _spec: QuantSpec,
    ) -> RangeInputGrads<Self> {
        unreachable!("the range's backward is not itself differentiated")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{rel_diff, spread};
    use crate::quant::adjustable::{AdjQuant, RangePreset};
    use crate::quant::fused::testing::tensor;
    use crate::quant::host_f32;
    use burn::module::Param;

    const CHANNELS: usize = 24;

    /// A point whose parameters reach past every bound: a and s outside the preset's
    /// limits on some channels, k·b0 rounding below 2 and above 8 bits on others.
    fn point(spec: QuantSpec, fixed: bool, device: &Device) -> AdjQuant {
        let mut q = if fixed {
            let min = spread(CHANNELS, 1.5, -3.0, 0.5);
            let max: Vec<f32> = min
                .iter()
                .zip(spread(CHANNELS, 2.5, 0.1, 6.0))
                .map(|(m, w)| m + w)
                .collect();
            AdjQuant::new(spec, &min, &max, device)
        } else {
            AdjQuant::dynamic(spec, 1, device)
        };
        let n = q.channels();
        let param = |values: Vec<f32>| Param::from_tensor(tensor(values, [n], device));
        q.scale = param(spread(n, 3.5, -0.4, 2.6));
        q.shift = param(spread(n, 4.5, -1.0, 1.6));
        if spec.trainable_bits {
            q.bit_scale = Some(param(spread(n, 5.5, 0.1, 1.4)));
        }
        q
    }

    /// The step's rows and the gradients of the point's parameters and of its input for
    /// a fixed projection of the rows; by the fused op or by the composition.
    fn run(spec: QuantSpec, fixed: bool, fused: bool) -> Vec<Vec<f32>> {
        let device = Device::flex().autodiff();
        let q = point(spec, fixed, &device);
        let x = tensor(spread(60, 6.5, -2.0, 3.0), [3, 4, 5], &device).require_grad();
        let step = if fused {
            q.step(&x)
        } else {
            q.step_composed(&x)
        };
        let c = step.channels();
        let probe = tensor(spread(c * Step::COLUMNS, 7.5, -1.0, 1.0), [c, 4], &device);
        let grads = (step.0.clone() * probe).sum().backward();
        let grad = |t: Tensor<1>| host_f32(t.grad(&grads).expect("a tracked parameter"));
        let mut out = vec![
            host_f32(step.0),
            grad(q.scale.val()),
            grad(q.shift.val()),
            host_f32(x.grad(&grads).unwrap_or_else(|| x.zeros_like().inner())),
        ];
        if let Some(k) = &q.bit_scale {
            out.push(grad(k.val()));
        }
        out
    }

    #[test]
    fn equals_the_composition_for_every_kind_of_point() {
        let mut covered_bits_clip = false;
        for preset in [
            RangePreset::Narrow,
            RangePreset::Default,
            RangePreset::Unbounded,
        ] {
            for clip_grad in [ClipGrad::AsExecuted, ClipGrad::Detached] {
                for (bits, trainable_bits) in [(4.0, true), (8.0, false), (3.0, true)] {
                    for fixed in [true, false] {
                        let spec = QuantSpec {
                            bits,
                            trainable_bits,
                            limits: preset.limits(),
                            clip_grad,
                        };
                        let (f, c) = (run(spec, fixed, true), run(spec, fixed, false));
                        let case = format!(
                            "{preset:?} {clip_grad:?} {bits} bits {trainable_bits} fixed {fixed}"
                        );
                        assert_eq!(f[0], c[0], "{case}: the rows differ");
                        let names = ["∂a", "∂s", "∂x", "∂k"];
                        for ((name, a), b) in names.iter().zip(&f[1..]).zip(&c[1..]) {
                            assert!(rel_diff(a, b) < 1e-5, "{case}: {name} {a:?} vs {b:?}");
                        }
                        if let Some(k) = f.get(4) {
                            let zeros = k.iter().filter(|v| **v == 0.0).count();
                            covered_bits_clip |= zeros > 0 && zeros < k.len();
                        }
                    }
                }
            }
        }
        assert!(covered_bits_clip, "some bit scales clipped, some learning");
    }

    #[test]
    fn untracked_inputs_give_the_same_rows() {
        let device = Device::flex();
        let spec = QuantSpec {
            bits: 4.0,
            trainable_bits: true,
            limits: RangePreset::Default.limits(),
            clip_grad: ClipGrad::AsExecuted,
        };
        let q = point(spec, true, &device);
        let x = Tensor::<1>::zeros([1], &device);
        assert_eq!(host_f32(q.step(&x).0), host_f32(q.step_composed(&x).0));
    }
}

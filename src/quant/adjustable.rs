//! The adjustable quantizer of Adjustable Quantization (DESIGN §3): per-channel learned
//! range (width scale a, shift s) and, optionally, learned bit-width (bit scale k).
//!
//! For channel c with initial range [m, m + w]:
//! lo = m + w·clip(s), W = w·clip(a), b = clip(round(k·b0), 2, 8) (or b0 when fixed),
//! L = 2^b − 1, S = L / (W + 1e-7), z = round(lo·S),
//! q = clip(round(x·S) − z, 0, L) + z, x̂ = q / S.
//! Every round passes its gradient straight through; every clip passes it to its input
//! only inside the bounds (inclusive). The upper bound L of the last clip takes the
//! gradient of the elements above it, as the original ran ([`ClipGrad`]). So a, s and k
//! learn through S, z and L (and k also through the metric).

use super::ste::{clip_scalar, clip_tf, round};
use super::{fused, fused_range};
use burn::module::Param;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Bounds on the trainable range parameters; `None` leaves that side unbounded.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangeLimits {
    pub scale: Option<(f32, f32)>,
    pub shift: Option<(f32, f32)>,
}

/// The original's range presets, from tight to unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RangePreset {
    /// a ∈ [0.5, 1.3], s ∈ [−0.2, 0.4].
    Narrow,
    /// a ∈ [0, 2], s ∈ [−0.6, 1.2] (the original's default).
    #[default]
    Default,
    /// No bounds.
    Unbounded,
}

impl RangePreset {
    pub const NAMES: &[&str] = &["narrow", "default", "unbounded"];

    pub fn limits(self) -> RangeLimits {
        match self {
            RangePreset::Narrow => RangeLimits {
                scale: Some((0.5, 1.3)),
                shift: Some((-0.2, 0.4)),
            },
            RangePreset::Default => RangeLimits {
                scale: Some((0.0, 2.0)),
                shift: Some((-0.6, 1.2)),
            },
            RangePreset::Unbounded => RangeLimits {
                scale: None,
                shift: None,
            },
        }
    }
}

/// What the upper bound L = 2^b − 1 of the quantizer's clip receives in the backward pass.
///
/// The original overrides the gradient of `ClipByValue` to give the bounds none
/// (`combined_tools.py:24-36`), but TF1's `tf.clip_by_value` builds `Minimum` and
/// `Maximum` ops, so the override never fired (checked with real TensorFlow:
/// `tests/fixtures/tf/adjq_clip_grad.json`): in the published run L took the gradient of
/// every element saturated above it, and through L the bit scale k did too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipGrad {
    /// L takes the gradient of the elements above it (what the original executed).
    #[default]
    AsExecuted,
    /// L is a constant to the clip (what the original's override meant).
    Detached,
}

impl ClipGrad {
    pub const NAMES: &[&str] = &["as_executed", "detached"];
}

/// Smallest and largest learned bit-width.
pub const MIN_BITS: f32 = 2.0;
pub const MAX_BITS: f32 = 8.0;

/// One quantization point: `channels` ranges (1 = per tensor).
#[derive(Module, Debug)]
pub struct AdjQuant {
    /// a_c, width scale (init 1).
    pub scale: Param<Tensor<1>>,
    /// s_c, shift in units of the initial width (init 0).
    pub shift: Param<Tensor<1>>,
    /// k_c, bit scale (init 1); present only when precision is trainable.
    pub bit_scale: Option<Param<Tensor<1>>>,
    /// m_c and w_c, the initial range (constants); `None` for a range recomputed from the
    /// tensor itself at every step (biases).
    pub init_min: Option<Param<Tensor<1>>>,
    pub init_width: Option<Param<Tensor<1>>>,
    /// b0, the base bit-width.
    #[module(skip)]
    pub base_bits: f32,
    #[module(skip)]
    pub limits: RangeLimits,
    #[module(skip)]
    pub clip_grad: ClipGrad,
}

/// How to build a quantization point.
#[derive(Clone, Copy, Debug)]
pub struct QuantSpec {
    pub bits: f32,
    pub trainable_bits: bool,
    pub limits: RangeLimits,
    pub clip_grad: ClipGrad,
}

fn constant(values: &[f32], device: &Device) -> Param<Tensor<1>> {
    Param::from_tensor(Tensor::from_floats(values, device)).set_require_grad(false)
}

impl AdjQuant {
    /// A point with a fixed initial range per channel (`min.len()` channels).
    pub fn new(spec: QuantSpec, min: &[f32], max: &[f32], device: &Device) -> Self {
        let width: Vec<f32> = min.iter().zip(max).map(|(lo, hi)| hi - lo).collect();
        let mut q = Self::dynamic(spec, min.len(), device);
        q.init_min = Some(constant(min, device));
        q.init_width = Some(constant(&width, device));
        q
    }

    /// A point whose initial range is the tensor's own min/max at each call (per tensor),
    /// differentiated through as the original's bias quantizer is
    /// (`effnetb0_model_adjutable.py:260-307`: `reduce_min`/`reduce_max` of the bias).
    pub fn dynamic(spec: QuantSpec, channels: usize, device: &Device) -> Self {
        let ones = || Param::from_tensor(Tensor::ones([channels], device));
        AdjQuant {
            scale: ones(),
            shift: Param::from_tensor(Tensor::zeros([channels], device)),
            bit_scale: spec.trainable_bits.then(ones),
            init_min: None,
            init_width: None,
            base_bits: spec.bits,
            limits: spec.limits,
            clip_grad: spec.clip_grad,
        }
    }

    pub fn channels(&self) -> usize {
        self.scale.dims()[0]
    }

    /// Current bit-width per channel, `[C]`: b0, or clip(round(k·b0), 2, 8) (tracked).
    pub fn bits(&self) -> Tensor<1> {
        match &self.bit_scale {
            Some(k) => clip_scalar(
                round(k.val().mul_scalar(self.base_bits)),
                MIN_BITS,
                MAX_BITS,
            ),
            None => Tensor::full([self.channels()], self.base_bits, &self.scale.device()),
        }
    }

    /// Quantizes `x` along `axis` (the channel axis; any axis when per tensor).
    pub fn forward<const D: usize>(&self, x: Tensor<D>, axis: usize) -> Tensor<D> {
        let step = self.step(&x);
        quantize(x, step, axis)
    }

    /// Whether the range is fixed per channel, not the input's own min/max (see
    /// [`AdjQuant::dynamic`]): then [`AdjQuant::step`] does not read its input.
    pub fn fixed_range(&self) -> bool {
        self.init_min.is_some() && self.init_width.is_some()
    }

    /// What the point was built with.
    pub fn spec(&self) -> QuantSpec {
        QuantSpec {
            bits: self.base_bits,
            trainable_bits: self.bit_scale.is_some(),
            limits: self.limits,
            clip_grad: self.clip_grad,
        }
    }

    /// The step's constants for input `x` (read only for a dynamic range), tracked to
    /// the point's parameters: one op where it runs ([`fused_range`]), else
    /// [`AdjQuant::step_composed`].
    pub fn step<const D: usize>(&self, x: &Tensor<D>) -> Step {
        let scale = self.scale.val();
        if !fused_range::supports(&scale) {
            return self.step_composed(x);
        }
        let (min, width) = self.initial_range(x);
        let bit_scale = match &self.bit_scale {
            Some(k) => k.val(),
            // Unread: the bits are b0 (an untracked stand-in of the right shape).
            None => Tensor::ones([self.channels()], &scale.device()),
        };
        fused_range::step(min, width, scale, self.shift.val(), bit_scale, self.spec())
    }

    /// [`AdjQuant::step`] from tensor ops: the definition (module doc) that the fused op
    /// is tested against and other backends run.
    pub fn step_composed<const D: usize>(&self, x: &Tensor<D>) -> Step {
        let (min, width) = self.initial_range(x);
        let a = limit(self.scale.val(), self.limits.scale);
        let s = limit(self.shift.val(), self.limits.shift);
        let lo = min + width.clone() * s;
        let w = width * a;
        let bits = self.bits();
        // 2^b − 1, exact in value (b is integral), differentiable in b.
        let smooth = bits
            .mul_scalar(std::f32::consts::LN_2)
            .exp()
            .sub_scalar(1.0);
        let levels = smooth.clone() + (smooth.clone().detach().round() - smooth.detach()).detach();
        let clip_levels = match self.clip_grad {
            ClipGrad::AsExecuted => levels.clone(),
            ClipGrad::Detached => levels.clone().detach(),
        };
        let step_inv = levels.clone() / w.add_scalar(1e-7);
        let zero = round(lo * step_inv.clone());
        let inv = step_inv.clone().recip();
        Step::from_columns(step_inv, zero, clip_levels, inv)
    }

    /// (m, w): the fixed initial range, or the per-tensor range of `x`'s current values,
    /// trained through (a dynamic point).
    fn initial_range<const D: usize>(&self, x: &Tensor<D>) -> (Tensor<1>, Tensor<1>) {
        match (&self.init_min, &self.init_width) {
            (Some(m), Some(w)) => (m.val(), w.val()),
            _ => {
                let flat = x.clone().flatten::<1>(0, D - 1);
                let lo = flat.clone().min();
                let hi = flat.max();
                (lo.clone(), hi - lo)
            }
        }
    }
}

/// The per-channel constants of one quantizer step as one `[C, 4]` tensor (`C` = 1: one
/// range for the whole tensor), each channel's row [`Column`] by column. One tensor, so
/// that a fused op takes a point's constants as one input and hands back their gradient
/// as one (four tensors each were four autodiff parents and four gradient buffers).
#[derive(Clone, Debug)]
pub struct Step(pub Tensor<2>);

/// The columns of a [`Step`], in order (the layout of `adjq_kernels::quant::Range`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// S = L / W.
    StepInv,
    /// z = round(lo·S).
    Zero,
    /// L = 2^b − 1, the clip's upper bound: it takes the gradient of the elements above
    /// it (detached for a constant bound, [`ClipGrad::Detached`]).
    Levels,
    /// 1 / S.
    Inv,
}

impl Step {
    /// Number of columns.
    pub const COLUMNS: usize = 4;

    /// The step of columns `[C]` each.
    pub fn from_columns(
        step_inv: Tensor<1>,
        zero: Tensor<1>,
        levels: Tensor<1>,
        inv: Tensor<1>,
    ) -> Self {
        Step(Tensor::stack(vec![step_inv, zero, levels, inv], 1))
    }

    pub fn channels(&self) -> usize {
        self.0.dims()[0]
    }

    /// One column, `[C]`.
    pub fn column(&self, column: Column) -> Tensor<1> {
        let k = column as usize;
        self.0
            .clone()
            .slice([0..self.channels(), k..k + 1])
            .reshape([self.channels()])
    }
}

/// x̂ = (clip(round(x·S) − z, 0, L) + z)·inv: the fused op where it runs, else
/// [`quantize_composed`].
pub fn quantize<const D: usize>(x: Tensor<D>, step: Step, axis: usize) -> Tensor<D> {
    if fused::supports(&x) {
        fused::quantize(x, step, axis)
    } else {
        quantize_composed(x, step, axis)
    }
}

/// x̂ = (clip(round(x·S) − z, 0, L) + z)·inv from tensor ops, with S, z, L, inv per channel
/// along `axis` (`[1]`: per tensor). The definition of the quantizer's step; backends
/// without the fused op (`fused`) run this.
pub fn quantize_composed<const D: usize>(x: Tensor<D>, step: Step, axis: usize) -> Tensor<D> {
    let shape = broadcast_shape::<D>(step.channels(), axis);
    let [sb, zb, lb, ib] = [Column::StepInv, Column::Zero, Column::Levels, Column::Inv]
        .map(|c| step.column(c).reshape(shape));
    let u = round(x * sb) - zb.clone();
    let zeros = Tensor::zeros(shape, &lb.device());
    (clip_tf(u, zeros, lb) + zb) * ib
}

fn limit(t: Tensor<1>, bounds: Option<(f32, f32)>) -> Tensor<1> {
    match bounds {
        Some((lo, hi)) => clip_scalar(t, lo, hi),
        None => t,
    }
}

/// `[1, .., C, .., 1]` with C at `axis` (all ones when C = 1, i.e. per tensor).
pub fn broadcast_shape<const D: usize>(channels: usize, axis: usize) -> [usize; D] {
    let mut shape = [1usize; D];
    if channels > 1 {
        shape[axis] = channels;
    }
    shape
}

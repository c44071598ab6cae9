//! TensorFlow-compatible fake quantization (`fake_quant_with_min_max_vars` and
//! `..._per_channel`), the op of the `qat` stage.
//!
//! The forward pass reproduces TF's CPU kernels bit for bit (every step a separate f32
//! operation, range nudged so zero is exactly representable); the gradients are TF's:
//! straight-through for inputs inside the nudged range, and the upstream gradient of
//! inputs below (above) the range summed into min (max). Checked against cases written by
//! TensorFlow 2.21 (tests/fixtures/tf/fake_quant_small.json).

use super::host_f32;
use burn::prelude::*;

/// A quantization grid after TF's nudging: `[min, max]` moved so that zero is a grid point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nudged {
    pub min: f32,
    pub max: f32,
    pub scale: f32,
    /// (qmax − qmin) / (max − min), computed on its own as TF does (not 1/scale).
    pub inv_scale: f32,
    /// floor(−min·inv_scale + 0.5): the integer grid index of zero.
    pub quant_zero: f32,
}

/// TF's `Nudge`: scale from the requested range, zero point rounded half away from zero
/// and clamped to the grid, range rebuilt from it.
pub fn nudge(min: f32, max: f32, bits: u32, narrow_range: bool) -> Nudged {
    let qmin: f32 = if narrow_range { 1.0 } else { 0.0 };
    let qmax: f32 = ((1u64 << bits) - 1) as f32;
    let scale = (max - min) / (qmax - qmin);
    let inv_scale = (qmax - qmin) / (max - min);
    let zp_from_min = qmin - min / scale;
    let zp = if zp_from_min < qmin {
        qmin
    } else if zp_from_min > qmax {
        qmax
    } else {
        zp_from_min.round() // f32::round is half away from zero, like std::round
    };
    let nmin = (qmin - zp) * scale;
    let nmax = (qmax - zp) * scale;
    Nudged {
        min: nmin,
        max: nmax,
        scale,
        inv_scale,
        quant_zero: (-nmin * inv_scale + 0.5).floor(),
    }
}

/// Which TF kernel to mirror: the `vars` kernel divides by the scale, `args` and
/// `per_channel` multiply by the separately computed inverse (results differ in the last bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Vars,
    PerChannel,
}

/// Fake-quantizes `x` with per-channel ranges along the last axis `min`/`max` (shape `[C]`;
/// `[1]` for one range over the whole tensor). Gradients reach `x`, and `min`/`max` when
/// they are tracked, exactly as TF's `FakeQuantWithMinMaxVars*Gradient`.
pub fn fake_quant<const D: usize>(
    x: Tensor<D>,
    min: Tensor<1>,
    max: Tensor<1>,
    bits: u32,
    narrow_range: bool,
    kernel: Kernel,
) -> Tensor<D> {
    let device = x.device();
    let channels = min.dims()[0];
    let mins = host_f32(min.clone());
    let maxs = host_f32(max.clone());
    let grids: Vec<Nudged> = mins
        .iter()
        .zip(&maxs)
        .map(|(&lo, &hi)| nudge(lo, hi, bits, narrow_range))
        .collect();
    let per = |f: fn(&Nudged) -> f32| {
        let v: Vec<f32> = grids.iter().map(f).collect();
        Tensor::<1>::from_floats(v.as_slice(), &device).reshape(bshape::<D>(channels))
    };
    let (nmin, nmax) = (per(|g| g.min), per(|g| g.max));
    let (scale, inv_scale, quant_zero) = (
        per(|g| g.scale),
        per(|g| g.inv_scale),
        per(|g| g.quant_zero),
    );

    // Forward, on detached values, step by step as TF computes it.
    let xd = x.clone().detach();
    let clamped = xd.clone().max_pair(nmin.clone()).min_pair(nmax.clone());
    let shifted = clamped - nmin.clone();
    let t = match kernel {
        Kernel::Vars => shifted / scale.clone(),
        Kernel::PerChannel => shifted * inv_scale,
    };
    let y = ((t - quant_zero).add_scalar(0.5)).floor() * scale;

    // Gradient carrier: the upstream gradient reaches x inside [nmin, nmax], min for
    // inputs below it and max for inputs above it; its value cancels out of the output.
    let below = xd.clone().lower(nmin.expand(xd.shape()));
    let above = xd.greater(nmax.expand(y.shape()));
    let carrier = x
        .mask_where(below, min.reshape(bshape::<D>(channels)).expand(y.shape()))
        .mask_where(above, max.reshape(bshape::<D>(channels)).expand(y.shape()));
    y + (carrier.clone() - carrier.detach())
}

fn bshape<const D: usize>(channels: usize) -> [usize; D] {
    let mut shape = [1usize; D];
    shape[D - 1] = channels;
    shape
}

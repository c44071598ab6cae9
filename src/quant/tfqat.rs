//! TensorFlow-style quantization-aware training points (`tf.contrib.quantize` semantics,
//! the `qat` stage): weights fake-quantized per output channel with their current
//! min/max, conv inputs and swish inputs per tensor with exponential-moving-average
//! ranges, biases left in float; optional quant delay. Plugs into the quantized network's
//! forward pass as its [`Points`] action.

use super::adjustable::AdjQuant;
use super::fake_quant::{Kernel, fake_quant};
use super::host_f32;
use super::qnet::{Point, Points, QLayer, point_key};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TfQat {
    pub bits: u32,
    /// EMA decay of activation ranges (TF: 0.999).
    pub decay: f32,
    /// Steps before activations are quantized (ranges are tracked from step 0).
    pub quant_delay: u64,
    pub step: u64,
    /// Update the EMA ranges (training) or only use them (evaluation).
    pub training: bool,
    /// Activation ranges by point (the original's names, `qnet::point_key`): (min, max).
    pub ranges: BTreeMap<String, (f32, f32)>,
}

impl TfQat {
    pub fn new(bits: u32, decay: f32, quant_delay: u64) -> TfQat {
        TfQat {
            bits,
            decay,
            quant_delay,
            ..TfQat::default()
        }
    }
}

impl Points for TfQat {
    fn apply(
        &mut self,
        layer: &QLayer,
        point: Point,
        _: &AdjQuant,
        x: Tensor<4>,
        axis: usize,
    ) -> Tensor<4> {
        let device = x.device();
        match point {
            Point::Bias => x,
            Point::Weight => {
                // Per output channel (axis 0), moved last for fake_quant, and back.
                let w = x.swap_dims(axis, 3);
                let c = w.dims()[3];
                let flat = w.clone().detach().reshape([-1, c as i64]);
                let (lo, hi) = (
                    flat.clone().min_dim(0).reshape([c]),
                    flat.max_dim(0).reshape([c]),
                );
                // TF keeps zero inside the range.
                let (lo, hi) = (lo.clamp_max(0.0), hi.clamp_min(0.0));
                fake_quant(w, lo, hi, self.bits, false, Kernel::PerChannel).swap_dims(axis, 3)
            }
            Point::Input | Point::Swish | Point::Output => {
                let key = point_key(&layer.name, point);
                if self.training {
                    let d = x.clone().detach();
                    let (lo, hi) = (host_f32(d.clone().min())[0], host_f32(d.max())[0]);
                    let r = self.ranges.entry(key.clone()).or_insert((lo, hi));
                    r.0 = self.decay * r.0 + (1.0 - self.decay) * lo;
                    r.1 = self.decay * r.1 + (1.0 - self.decay) * hi;
                }
                let Some(&(lo, hi)) = self.ranges.get(&key) else {
                    return x;
                };
                if self.training && self.step < self.quant_delay {
                    return x;
                }
                let (lo, hi) = (lo.min(0.0), hi.max(0.0));
                let min = Tensor::<1>::from_floats([lo], &device);
                let max = Tensor::<1>::from_floats([hi], &device);
                fake_quant(x, min, max, self.bits, false, Kernel::Vars)
            }
        }
    }
}

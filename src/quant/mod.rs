//! Quantization: TF-compatible fake quant (`qat`), the adjustable quantizer (`adjq`),
//! per-channel thresholds, and the quantized EfficientNet built from a BN-folded model.

pub mod adjustable;
pub mod fake_quant;
pub mod fused;
pub mod fused_gate;
pub mod fused_range;
pub mod fused_swish;
pub mod info;
pub mod qnet;
pub mod ste;
pub mod tfqat;
pub mod thresholds;

pub use adjustable::{AdjQuant, ClipGrad, QuantSpec, RangeLimits, RangePreset};
pub use qnet::{QConfig, QEfficientNet, QLayer};
pub use thresholds::Thresholds;

/// Bits of the network input.
pub const INPUT_BITS: f32 = 8.0;

use burn::prelude::*;

/// The values of a (small) tensor on the host, as f32.
pub fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data after convert")
}

/// Per-channel (min, max) of `x` along `axis`, on the host: the initial range of a
/// quantization point.
pub fn channel_min_max<const D: usize>(x: &Tensor<D>, axis: usize) -> (Vec<f32>, Vec<f32>) {
    let c = x.dims()[axis];
    let per_channel = x
        .clone()
        .detach()
        .swap_dims(0, axis)
        .reshape([c as i64, -1]);
    (
        host_f32(per_channel.clone().min_dim(1)),
        host_f32(per_channel.max_dim(1)),
    )
}

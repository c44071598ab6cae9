//! Quantization: TF-compatible fake quant (`qat`), the adjustable quantizer (`adjq`),
//! per-channel thresholds, and the quantized EfficientNet built from a BN-folded model.

pub mod adjustable;
pub mod fake_quant;
pub mod info;
pub mod qnet;
pub mod ste;
pub mod tfqat;
pub mod thresholds;

pub use adjustable::{AdjQuant, QuantSpec, RangeLimits, RangePreset};
pub use qnet::{QConfig, QEfficientNet, QLayer};
pub use thresholds::Thresholds;

use burn::prelude::*;

/// The values of a (small) tensor on the host, as f32.
pub fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data after convert")
}

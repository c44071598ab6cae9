//! `quant_info.json`: per layer, the bits of every weight channel and input-activation
//! channel, with per-layer and global averages (the original's file had the same role).
//! `runner score --quant-info` reads it back.

use super::host_f32;
use super::qnet::QEfficientNet;
use crate::score::metric::INPUT_BITS;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerBits {
    pub name: String,
    /// Per output channel.
    pub weight_bits: Vec<f32>,
    /// Per input channel (the stem's input: 8).
    pub act_bits: Vec<f32>,
    pub avg_weight_bits: f64,
    pub avg_act_bits: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantInfo {
    pub model: String,
    pub resolution: usize,
    pub bias_bits: f32,
    pub swish_bits: f32,
    pub layers: Vec<LayerBits>,
    /// Mean weight bits over all weights (each channel weighted by its weight count).
    pub avg_weight_bits: f64,
    /// Mean activation bits over all conv input elements of one image.
    pub avg_act_bits: f64,
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&b| b as f64).sum::<f64>() / v.len().max(1) as f64
}

impl QuantInfo {
    pub fn of(model: &QEfficientNet) -> QuantInfo {
        let mut layers = Vec::new();
        let (mut wsum, mut wn, mut asum, mut an) = (0.0, 0.0, 0.0, 0.0);
        for c in model.convs() {
            let l = &c.layer;
            let weight_bits = host_f32(c.weight_q.bits());
            let act_bits = match &c.input_q {
                Some(q) => host_f32(q.bits()),
                None => vec![INPUT_BITS; l.cin],
            };
            let (aw, aa) = (mean(&weight_bits), mean(&act_bits));
            let weights = l.weight_count() as f64;
            let elements = (l.cin * l.in_size * l.in_size) as f64;
            wsum += aw * weights;
            wn += weights;
            asum += aa * elements;
            an += elements;
            layers.push(LayerBits {
                name: l.name.clone(),
                weight_bits,
                act_bits,
                avg_weight_bits: aw,
                avg_act_bits: aa,
            });
        }
        QuantInfo {
            model: model.config.name.clone(),
            resolution: model.config.resolution,
            bias_bits: model.qconfig.bias_bits,
            swish_bits: model.qconfig.swish_bits,
            layers,
            avg_weight_bits: wsum / wn.max(1.0),
            avg_act_bits: asum / an.max(1.0),
        }
    }
}

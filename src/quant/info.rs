//! `quant_info.json`: per layer, the bits of every weight channel and input-activation
//! channel, with per-layer and global averages (the original's file had the same role).
//! `runner score --quant-info` reads it back. Each layer also carries `out_bits`, what
//! the original's `quant_info[layer]['act']` holds: the bits of the next quantized
//! activation after the layer (`effnetb0_model_adjutable.py:363-375`).

use super::INPUT_BITS;
use super::host_f32;
use super::qnet::QEfficientNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerBits {
    pub name: String,
    /// Per output channel.
    pub weight_bits: Vec<f32>,
    /// Per input channel (the stem's input: 8); a block's input counts at the bits of the
    /// previous block's project output, as in the original's metric.
    pub act_bits: Vec<f32>,
    /// The original's `act` of this layer: the bits of the next quantized activation
    /// after it (stem, expand, SE reduce, project: their output; depthwise: the pooled SE
    /// input; SE expand: the gated features; head: the pooled features); absent for the
    /// classifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_bits: Option<Vec<f32>>,
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
        let outs = model.original_act_points();
        for ((c, source), out) in model.convs_with_sources().into_iter().zip(outs) {
            let l = &c.layer;
            let weight_bits = host_f32(c.weight_q.bits());
            let act_bits = match source {
                Some(q) => host_f32(q.bits()),
                None => vec![INPUT_BITS; l.cin],
            };
            let out_bits = out.map(|q| host_f32(q.bits()));
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
                out_bits,
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

//! The differentiable stand-in for the MicroNet score that `adjq` trains against
//! (DESIGN §3, as the original computes it):
//!
//! params = Σ_l P_l·mean_c(b^w_l,c)/32 + (bias count)·bias_bits/32
//! ops    = 2·Σ_l F_l·smax(b^w_l, b^a_l)/32 + 3·(swish elements)·swish_bits/32
//! metric = params/P0 + ops/O0
//!
//! as `trainer.py:69-151` computes it: P_l is layer l's weight count, plus its biases for
//! the SE convs and the classifier (whose biases count at their weight bits there; the
//! bias count is the other layers' biases); F_l its multiply-accumulates; b^a_l the bits
//! of its input activation (a block's input: the previous project output's). The stem's
//! multiplies count at a constant 8 bits (no bit gradient). smax pairs the channels as
//! the original's `tf.tile` does ([`Pairing`]): forward value the mean max of the paired
//! bits, gradient that of mean((1−γ)·b^w + γ·b^a). Additions count at the low precision
//! and pooling, SE scale and skip adds are not counted: that is the paper's metric, not
//! the official score (see `counter`).

use crate::quant::qnet::QLayer;
use crate::quant::{INPUT_BITS, QEfficientNet};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Which score training pushes down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricRule {
    /// The original's metric (additions at low precision, no pooling/SE-scale/skip ops).
    #[default]
    Paper,
    /// The official MicroNet score (`counter`): its value exactly, its gradient through
    /// the bit-dependent parts (parameters, and multiplies at max(operand bits)).
    Official,
}

impl MetricRule {
    pub const NAMES: &[&str] = &["paper", "official"];
}

/// Which (weight channel, input channel) pairs the max of a layer's bits averages over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pairing {
    /// The original's `tf.tile` (`trainer.py:141-151`): element k of the Cout·Cin tiles
    /// pairs b^w[k mod Cout] with b^a[k mod Cin], i.e. the pairs i ≡ j (mod gcd(Cout,
    /// Cin)), each gcd times; a depthwise conv pairs matching channels.
    #[default]
    Tile,
    /// Every (i, j) pair once (matching channels for a depthwise conv).
    All,
}

impl Pairing {
    pub const NAMES: &[&str] = &["tile", "all"];
}

/// Baselines, the straight-through split of the max, and the rule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricConfig {
    /// P0: parameter baseline (MobileNetV2-1.4: 6.9e6).
    pub params_baseline: f64,
    /// O0: operation baseline (1170e6).
    pub ops_baseline: f64,
    /// γ: share of the max's gradient given to the activation bits.
    pub gamma: f32,
    #[serde(default)]
    pub rule: MetricRule,
    #[serde(default)]
    pub pairing: Pairing,
}

impl Default for MetricConfig {
    fn default() -> Self {
        MetricConfig {
            params_baseline: 6.9e6,
            ops_baseline: 1170e6,
            gamma: 0.7,
            rule: MetricRule::Paper,
            pairing: Pairing::Tile,
        }
    }
}

/// The metric and its parts, as tracked scalars (shape `[1]`).
pub struct Metric {
    pub metric: Tensor<1>,
    pub params: Tensor<1>,
    pub ops: Tensor<1>,
}

/// The stride of the channel pairs a layer's max averages over: pairs (i, j) with
/// i ≡ j (mod the stride), each once. Every pair: stride 1.
pub fn pair_stride(cout: usize, cin: usize, depthwise: bool, pairing: Pairing) -> usize {
    match (depthwise, pairing) {
        (true, _) => cout,
        (false, Pairing::All) => 1,
        (false, Pairing::Tile) => gcd(cout, cin),
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Straight-through max of the paired (weight channel, input channel) bits: forward the
/// mean max over the pairs (i, j) with i ≡ j (mod `stride`, see [`pair_stride`]),
/// gradient split (1−γ, γ). `bw` is `[Cout]`, `ba` `[Cin]`.
pub fn smax(bw: Tensor<1>, ba: Tensor<1>, stride: usize, gamma: f32) -> Tensor<1> {
    let (co, ci, g) = (bw.dims()[0], ba.dims()[0], stride);
    let shape = [co / g, ci / g, g];
    let w = bw.clone().detach().reshape([co / g, 1, g]).expand(shape);
    let a = ba.clone().detach().reshape([1, ci / g, g]).expand(shape);
    let value = w.max_pair(a).mean().reshape([1]);
    let surrogate = bw.mean().mul_scalar(1.0 - gamma) + ba.mean().mul_scalar(gamma);
    surrogate.clone() + (value - surrogate.detach())
}

/// Whether the original counts a layer's biases with its weights, at weight bits (the SE
/// convs and the classifier: `model_info.json`'s `se_1`, `se_2` and `Logits` entries),
/// rather than at `bias_bits` (`total_bias`).
pub fn bias_with_weights(layer: &str) -> bool {
    layer.contains(".se.") || layer == "classifier"
}

/// The parameters a layer's weight bits are charged for.
fn weighted_params(l: &QLayer) -> usize {
    l.weight_count()
        + if bias_with_weights(&l.name) {
            l.cout
        } else {
            0
        }
}

/// Swish input elements of one image.
pub fn swish_elements(layers: &[QLayer], swish: bool) -> usize {
    if !swish {
        return 0;
    }
    layers
        .iter()
        .filter(|l| l.swish)
        .map(|l| l.cout * l.out_size * l.out_size)
        .sum()
}

/// The metric of a quantized network at its current bits (differentiable in the bit scales).
pub fn metric(model: &QEfficientNet, cfg: &MetricConfig) -> Metric {
    let device = model.stem.weight.device();
    let convs = model.convs_with_sources();
    let mut params = Tensor::<1>::zeros([1], &device);
    let mut ops = Tensor::<1>::zeros([1], &device);
    let mut mults = Tensor::<1>::zeros([1], &device);
    let mut biases = 0usize;
    for (c, source) in &convs {
        let l = &c.layer;
        let bw = c.weight_q.bits();
        params = params
            + bw.clone()
                .mean()
                .mul_scalar(weighted_params(l) as f32 / 32.0);
        let m = match source {
            Some(q) => {
                let stride = pair_stride(l.cout, l.cin, l.depthwise(), cfg.pairing);
                smax(bw, q.bits(), stride, cfg.gamma)
            }
            // The network input: 8 bits flat (`trainer.py:95-96`).
            None => Tensor::full([1], INPUT_BITS, &device),
        };
        mults = mults + m.clone().mul_scalar(l.macs() as f32 / 32.0);
        ops = ops + m.mul_scalar(2.0 * l.macs() as f32 / 32.0);
        if !bias_with_weights(&l.name) {
            biases += l.cout;
        }
    }
    let q = &model.qconfig;
    params = params.add_scalar(biases as f32 * q.bias_bits / 32.0);
    if cfg.rule == MetricRule::Official {
        return official(model, cfg, params, mults);
    }
    let swish = model.config.activation == crate::model::Activation::Swish;
    let layers: Vec<QLayer> = convs.iter().map(|(c, _)| c.layer.clone()).collect();
    ops = ops.add_scalar(3.0 * swish_elements(&layers, swish) as f32 * q.swish_bits / 32.0);
    let metric = params.clone().div_scalar(cfg.params_baseline as f32)
        + ops.clone().div_scalar(cfg.ops_baseline as f32);
    Metric {
        metric,
        params,
        ops,
    }
}

/// The official score as a tracked scalar: the counter's exact value, carried by the
/// bit-dependent parts (parameter costs and weighted-layer multiplies) for gradients.
fn official(
    model: &QEfficientNet,
    cfg: &MetricConfig,
    params: Tensor<1>,
    mults: Tensor<1>,
) -> Metric {
    use super::counter;
    let info = crate::quant::info::QuantInfo::of(model);
    let options = counter::Options {
        params_baseline: cfg.params_baseline,
        ops_baseline: cfg.ops_baseline,
        ..Default::default()
    };
    let report = counter::count(
        &model.config,
        model.config.resolution,
        &counter::Quantization::from_info(&info),
        &options,
    )
    .expect("a quantized network's own layers match its config");
    let t = &report.totals;
    let carrier = params.clone().div_scalar(cfg.params_baseline as f32)
        + mults.clone().div_scalar(cfg.ops_baseline as f32);
    let metric = carrier.clone() + (carrier.detach().neg().add_scalar(t.score as f32));
    let device = params.device();
    Metric {
        metric,
        params: params.clone() + (params.detach().neg().add_scalar(t.params_cost as f32)),
        ops: Tensor::full([1], (t.mults_cost + t.adds_cost) as f32, &device)
            + (mults.clone() - mults.detach()),
    }
}

/// The paper metric computed from bit-widths alone (no tensors), in f64: what `runner
/// score` and the reports print beside the official score. Equal to [`metric`] for the
/// same bits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaperMetric {
    pub params: f64,
    pub ops: f64,
    pub metric: f64,
}

pub fn paper_metric(
    config: &crate::model::EfficientNetConfig,
    resolution: usize,
    q: &super::counter::Quantization,
    cfg: &MetricConfig,
) -> PaperMetric {
    use super::counter::{ActFn, OpKind, network_ops};
    let (mut params, mut ops, mut biases, mut swish) = (0.0, 0.0, 0.0, 0.0);
    for op in network_ops(config, resolution, false) {
        if op.activation == Some(ActFn::Swish) {
            swish += (op.out_channels * op.output_size * op.output_size) as f64;
        }
        if !op.kind.has_weights() {
            continue;
        }
        let layer = q.layers.get(&op.name);
        let uniform = |n: usize, b: u32| vec![b as f64; n];
        let bw: Vec<f64> = match layer.and_then(|l| l.weight_bits.as_ref()) {
            Some(v) => v.iter().map(|&b| b as f64).collect(),
            None => uniform(op.out_channels, q.weight_bits),
        };
        let default_act = if op.name == "stem" {
            q.input_bits
        } else {
            q.act_bits
        };
        let ba: Vec<f64> = match layer.and_then(|l| l.act_bits.as_ref()) {
            Some(v) => v.iter().map(|&b| b as f64).collect(),
            None => uniform(op.in_channels, default_act),
        };
        let depthwise = op.kind == OpKind::Depthwise;
        let per_out = if depthwise { 1 } else { op.in_channels } * op.kernel * op.kernel;
        let weights = (op.out_channels * per_out) as f64;
        let macs = weights * (op.output_size * op.output_size) as f64;
        // The stem pairs with the image's 8 bits: max(b^w, 8) is the original's flat 8
        // for the ≤ 8-bit weights adjq learns, and stays right for a float model.
        let mean_max = {
            let g = pair_stride(bw.len(), ba.len(), depthwise, cfg.pairing);
            let (mut total, mut pairs) = (0.0, 0usize);
            for (i, w) in bw.iter().enumerate() {
                for a in ba.iter().skip(i % g).step_by(g) {
                    total += w.max(*a);
                    pairs += 1;
                }
            }
            total / pairs as f64
        };
        let with_bias = bias_with_weights(&op.name);
        let counted = weights
            + if with_bias {
                op.out_channels as f64
            } else {
                0.0
            };
        params += counted * bw.iter().sum::<f64>() / bw.len() as f64 / 32.0;
        ops += 2.0 * macs * mean_max / 32.0;
        if !with_bias {
            biases += op.out_channels as f64;
        }
    }
    params += biases * q.bias_bits as f64 / 32.0;
    ops += 3.0 * swish * q.act_fn_bits as f64 / 32.0;
    PaperMetric {
        params,
        ops,
        metric: params / cfg.params_baseline + ops / cfg.ops_baseline,
    }
}

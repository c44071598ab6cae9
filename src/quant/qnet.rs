//! The quantized EfficientNet: built from a BN-folded float model and a thresholds map.
//!
//! The quantization points are the original's (`effnetb0_model_float.py` builds the
//! network, `effnetb0_model_adjutable.py:352-401` quantizes it), each named as there
//! (see [`point_key`]):
//! - `weights`: every conv / depthwise / SE conv / classifier weight, per output channel;
//! - `swish_input`: the input of every swish and of the SE gate's sigmoid, per channel,
//!   fixed bits, adjustable range (`:384-401`, `float.py:132-135`);
//! - `output`: the activation after a layer's swish (stem, expand, SE reduce), a block's
//!   project conv output *before* the residual add (`float.py:140-146`: the sum is not
//!   quantized and feeds the next block as is), and the pooled or gated values entering
//!   the SE reduce, the project and the classifier convs; per channel, learned range and
//!   bits. The depthwise conv's own output and the network input are not quantized (the
//!   input counts as 8-bit data);
//! - bias: every bias, per tensor, fixed bits, range = its current min/max.
//!
//! The classifier is held as a 1×1 conv on the pooled features so every layer is alike.
//! There is no dropout: the original's quantized network has none.

use super::adjustable::{AdjQuant, ClipGrad, QuantSpec, RangePreset};
use super::thresholds::Thresholds;
use super::{fused_gate, fused_swish};
use crate::model::config::{Activation, EfficientNetConfig, Padding};
use crate::model::swish::swish;
use crate::model::{ConvBn, EfficientNet, MbConv};
use crate::model::{depthwise, pointwise};
use anyhow::Result;
use burn::module::Param;
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::activation::{relu6, sigmoid};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use serde::{Deserialize, Serialize};

/// Bit-widths and range preset of a quantized network (the `adjq` stage's params).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QConfig {
    pub weight_bits: f32,
    pub act_bits: f32,
    pub swish_bits: f32,
    pub bias_bits: f32,
    /// Learn per-channel bit-widths of weights and activations.
    pub bits_trainable: bool,
    pub range: RangePreset,
    /// The gradient of the quantizer clip's upper bound.
    #[serde(default)]
    pub clip_grad: ClipGrad,
}

impl Default for QConfig {
    fn default() -> Self {
        QConfig {
            weight_bits: 8.0,
            act_bits: 8.0,
            swish_bits: 8.0,
            bias_bits: 8.0,
            bits_trainable: true,
            range: RangePreset::Default,
            clip_grad: ClipGrad::AsExecuted,
        }
    }
}

/// Shape facts of one layer at the model's resolution (what the metric and counter need).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QLayer {
    pub name: String,
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    /// Input and output height (= width).
    pub in_size: usize,
    pub out_size: usize,
    /// A swish follows this layer (its output is a swish input).
    pub swish: bool,
    /// The model's padding; left out of quant_info.json when `Same`, as before it existed.
    #[serde(default, skip_serializing_if = "Padding::is_same")]
    pub padding: Padding,
}

impl QLayer {
    /// Weights (without bias).
    pub fn weight_count(&self) -> usize {
        self.cout * (self.cin / self.groups) * self.kernel * self.kernel
    }

    /// Multiply-accumulates for one image.
    pub fn macs(&self) -> usize {
        self.weight_count() * self.out_size * self.out_size
    }

    pub fn depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.cin
    }
}

/// Which point of a layer a tensor is quantized at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    Weight,
    /// The value entering the conv (SE reduce: the pooled features; project: the gated
    /// features; classifier: the pooled head output).
    Input,
    /// The input of the layer's swish, or of the SE gate's sigmoid.
    Swish,
    /// The layer's activation (after its swish), or the project conv's output.
    Output,
    Bias,
}

/// The original's name of a layer (`effnetb0_model_float.py:189-248`, and the keys of
/// its `initial_thresholds.json`): `Conv`, `expanded_conv_3/expand`, `…/dws`, `…/se_1`,
/// `…/se_2`, `…/project`, `Conv_1`, `output`.
pub fn original_layer(name: &str) -> String {
    match name {
        "stem" => "Conv".into(),
        "head" => "Conv_1".into(),
        "classifier" => "output".into(),
        _ => {
            let rest = name.strip_prefix("blocks.").unwrap_or(name);
            let (i, part) = rest.split_once('.').unwrap_or((rest, ""));
            let part = match part {
                "depthwise" => "dws",
                "se.reduce" => "se_1",
                "se.expand" => "se_2",
                other => other,
            };
            format!("expanded_conv_{i}/{part}")
        }
    }
}

/// The original's name of a quantization point, e.g. `expanded_conv_3/project/output`
/// (the key of its threshold in `thresholds.json`).
pub fn point_key(layer: &str, point: Point) -> String {
    let l = original_layer(layer);
    match point {
        Point::Weight => format!("{l}/weights"),
        Point::Swish => format!("{l}/swish_input"),
        Point::Output | Point::Bias => format!("{l}/output"),
        // What enters these convs is the output of the step before them in the original.
        Point::Input => match l.rsplit_once('/') {
            Some((block, "se_1")) => format!("{block}/dws/output"),
            Some((block, "project")) => format!("{block}/output"),
            _ if l == "output" => "Conv_1/output".into(),
            _ => format!("{l}/input"),
        },
    }
}

/// The key the original's thresholds file gives the network input; it is not a
/// quantization point here (the input counts as 8-bit data), so it is accepted and unused.
pub const INPUT_KEY: &str = "input_data/output";

/// What the forward pass does at each quantization point: quantize ([`Quantize`]) or
/// record ranges of the float values ([`Observe`]).
pub trait Points {
    fn apply(
        &mut self,
        layer: &QLayer,
        point: Point,
        q: &AdjQuant,
        x: Tensor<4>,
        axis: usize,
    ) -> Tensor<4>;

    /// The swish of `x` with this action at its input point and, if the layer has one,
    /// at its output point (channels on axis 1).
    fn swish(
        &mut self,
        layer: &QLayer,
        swish_q: &AdjQuant,
        x: Tensor<4>,
        output_q: Option<&AdjQuant>,
    ) -> Tensor<4> {
        swish_between_points(self, layer, swish_q, x, output_q)
    }

    /// `x` scaled per channel by the SE gate (`[N, C, 1, 1]`), with this action at the
    /// input point `q` of the layer it feeds.
    fn gated(&mut self, layer: &QLayer, q: &AdjQuant, x: Tensor<4>, gate: Tensor<4>) -> Tensor<4> {
        gate_then_point(self, layer, q, x, gate)
    }
}

/// [`Points::gated`] as its two steps.
fn gate_then_point<P: Points + ?Sized>(
    pts: &mut P,
    layer: &QLayer,
    q: &AdjQuant,
    x: Tensor<4>,
    gate: Tensor<4>,
) -> Tensor<4> {
    pts.apply(layer, Point::Input, q, x * gate, 1)
}

/// [`Points::swish`] as its three steps.
fn swish_between_points<P: Points + ?Sized>(
    pts: &mut P,
    layer: &QLayer,
    swish_q: &AdjQuant,
    x: Tensor<4>,
    output_q: Option<&AdjQuant>,
) -> Tensor<4> {
    let y = swish(pts.apply(layer, Point::Swish, swish_q, x, 1));
    match output_q {
        Some(q) => pts.apply(layer, Point::Output, q, y, 1),
        None => y,
    }
}

pub struct Quantize;

impl Points for Quantize {
    fn apply(
        &mut self,
        _: &QLayer,
        _: Point,
        q: &AdjQuant,
        x: Tensor<4>,
        axis: usize,
    ) -> Tensor<4> {
        q.forward(x, axis)
    }

    /// One op for the quantizers and the swish where the output range, if any, is fixed
    /// (every activation's is; see `fused_swish`).
    fn swish(
        &mut self,
        layer: &QLayer,
        swish_q: &AdjQuant,
        x: Tensor<4>,
        output_q: Option<&AdjQuant>,
    ) -> Tensor<4> {
        let post = match output_q {
            Some(out) if !out.fixed_range() => {
                return swish_between_points(self, layer, swish_q, x, output_q);
            }
            Some(out) => Some(out.step(&x)),
            None => None,
        };
        let pre = swish_q.step(&x);
        fused_swish::quantize_swish(x, pre, post)
    }

    /// One op for the gate's product and the quantizer where the range is fixed (every
    /// activation's is; see `fused_gate`).
    fn gated(&mut self, layer: &QLayer, q: &AdjQuant, x: Tensor<4>, gate: Tensor<4>) -> Tensor<4> {
        if !q.fixed_range() {
            return gate_then_point(self, layer, q, x, gate);
        }
        let step = q.step(&x);
        fused_gate::quantize_gated(x, gate, step)
    }
}

/// Records the per-channel min/max of every weight and activation point over all
/// batches seen, passing values through unquantized: the `thresholds` stage.
#[derive(Default)]
pub struct Observe {
    pub thresholds: Thresholds,
}

impl Points for Observe {
    fn apply(
        &mut self,
        layer: &QLayer,
        point: Point,
        _: &AdjQuant,
        x: Tensor<4>,
        axis: usize,
    ) -> Tensor<4> {
        if point == Point::Bias {
            return x;
        }
        let (lo, hi) = super::channel_min_max(&x, axis);
        let key = point_key(&layer.name, point);
        match self.thresholds.points.get_mut(&key) {
            Some(r) => {
                r.min.iter_mut().zip(&lo).for_each(|(a, b)| *a = a.min(*b));
                r.max.iter_mut().zip(&hi).for_each(|(a, b)| *a = a.max(*b));
            }
            None => self.thresholds.insert(key, lo, hi),
        }
        x
    }
}

/// A conv (or the classifier as a 1×1 conv) with its quantization points.
#[derive(Module, Debug)]
pub struct QConv {
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
    pub weight_q: AdjQuant,
    pub bias_q: AdjQuant,
    pub input_q: Option<AdjQuant>,
    /// The swish input (or the SE gate's sigmoid input for the SE expand conv).
    pub swish_q: Option<AdjQuant>,
    pub output_q: Option<AdjQuant>,
    #[module(skip)]
    pub layer: QLayer,
}

impl QConv {
    /// Conv output (before any activation), quantizing input, weight and bias.
    fn conv(&self, x: Tensor<4>, pts: &mut dyn Points) -> Tensor<4> {
        let x = self.at(Point::Input, &self.input_q, x, pts);
        self.conv_of_input(x, pts)
    }

    /// [`QConv::conv`] of `x` scaled per channel by an SE gate `[N, C, 1, 1]` first.
    fn gated_conv(&self, x: Tensor<4>, gate: Tensor<4>, pts: &mut dyn Points) -> Tensor<4> {
        let x = match &self.input_q {
            Some(q) => pts.gated(&self.layer, q, x, gate),
            None => x * gate,
        };
        self.conv_of_input(x, pts)
    }

    /// The conv of its (quantized) input, quantizing weight and bias.
    fn conv_of_input(&self, x: Tensor<4>, pts: &mut dyn Points) -> Tensor<4> {
        let l = &self.layer;
        let w = pts.apply(l, Point::Weight, &self.weight_q, self.weight.val(), 0);
        let b = self.bias.val().reshape([l.cout, 1, 1, 1]);
        let b = pts
            .apply(l, Point::Bias, &self.bias_q, b, 0)
            .reshape([l.cout]);
        let [_, _, h, wd] = x.dims();
        let pads = [
            l.padding.pads(h, l.kernel, l.stride),
            l.padding.pads(wd, l.kernel, l.stride),
        ];
        if pointwise::supports(&x, &w, l.stride, l.groups) {
            return pointwise::conv(x, w, Some(b));
        }
        if l.depthwise() && depthwise::supports(&x, &w) {
            return depthwise::conv(x, w, b, l.stride, pads);
        }
        let opts = ConvOptions::new_with_padding([l.stride; 2], pads, [1, 1], l.groups);
        conv2d(x, w, Some(b), opts)
    }

    /// Conv followed by the model's activation (its input quantized) and the output
    /// point, where the layer has them.
    fn conv_act(&self, x: Tensor<4>, act: Activation, pts: &mut dyn Points) -> Tensor<4> {
        let y = self.conv(x, pts);
        match (&self.swish_q, act) {
            (Some(q), _) => pts.swish(&self.layer, q, y, self.output_q.as_ref()),
            (None, Activation::Swish) => self.output(swish(y), pts),
            (None, Activation::Relu6) => self.output(relu6(y), pts),
        }
    }

    /// The SE gate: sigmoid of the conv output, its input quantized.
    fn conv_gate(&self, x: Tensor<4>, pts: &mut dyn Points) -> Tensor<4> {
        let y = self.conv(x, pts);
        sigmoid(self.at(Point::Swish, &self.swish_q, y, pts))
    }

    /// The layer's output point applied to `y`.
    fn output(&self, y: Tensor<4>, pts: &mut dyn Points) -> Tensor<4> {
        self.at(Point::Output, &self.output_q, y, pts)
    }

    fn at(
        &self,
        point: Point,
        q: &Option<AdjQuant>,
        x: Tensor<4>,
        pts: &mut dyn Points,
    ) -> Tensor<4> {
        match q {
            Some(q) => pts.apply(&self.layer, point, q, x, 1),
            None => x,
        }
    }
}

#[derive(Module, Debug)]
pub struct QSqueezeExcite {
    pub reduce: QConv,
    pub expand: QConv,
}

#[derive(Module, Debug)]
pub struct QBlock {
    pub expand: Option<QConv>,
    pub depthwise: QConv,
    pub se: Option<QSqueezeExcite>,
    pub project: QConv,
    pub skip: bool,
}

#[derive(Module, Debug)]
pub struct QEfficientNet {
    pub stem: QConv,
    pub blocks: Vec<QBlock>,
    pub head: QConv,
    pub classifier: QConv,
    #[module(skip)]
    pub config: EfficientNetConfig,
    #[module(skip)]
    pub qconfig: QConfig,
}

/// Where the ranges of a new network come from.
enum Ranges<'a> {
    /// From a thresholds map, which must name every point (and nothing else).
    Map(&'a Thresholds),
    /// Weights from their own min/max, activations [0, 1] (only for observing).
    Placeholder,
}

/// Which points a conv has besides its weight and bias.
#[derive(Clone, Copy, Default)]
struct Has {
    input: bool,
    swish: bool,
    output: bool,
}

struct Builder<'a> {
    q: &'a QConfig,
    ranges: Ranges<'a>,
    act: Activation,
    padding: Padding,
    device: Device,
}

impl Builder<'_> {
    fn point(
        &self,
        layer: &QLayer,
        point: Point,
        channels: usize,
        own: Option<&Tensor<4>>,
    ) -> Result<AdjQuant> {
        let limits = self.q.range.limits();
        let (bits, trainable) = match point {
            Point::Weight => (self.q.weight_bits, self.q.bits_trainable),
            Point::Input | Point::Output => (self.q.act_bits, self.q.bits_trainable),
            Point::Swish => (self.q.swish_bits, false),
            Point::Bias => (self.q.bias_bits, false),
        };
        let spec = QuantSpec {
            bits,
            trainable_bits: trainable,
            limits,
            clip_grad: self.q.clip_grad,
        };
        if point == Point::Bias {
            return Ok(AdjQuant::dynamic(spec, 1, &self.device));
        }
        let key = point_key(&layer.name, point);
        // A point the map lacks gets a placeholder here; `check_map` then refuses the map.
        let from_map = match &self.ranges {
            Ranges::Map(t) if t.points.contains_key(&key) => {
                let r = t.get(&key, channels)?;
                Some((r.min.clone(), r.max.clone()))
            }
            _ => None,
        };
        let (min, max) = match (from_map, own) {
            (Some(r), _) => r,
            (None, Some(w)) => super::channel_min_max(w, 0),
            (None, None) => (vec![0.0; channels], vec![1.0; channels]),
        };
        Ok(AdjQuant::new(spec, &min, &max, &self.device))
    }

    fn conv(&self, layer: QLayer, weight: Tensor<4>, bias: Tensor<1>, has: Has) -> Result<QConv> {
        let swish = has.swish && self.act == Activation::Swish;
        let opt = |on: bool, point: Point, channels: usize| -> Result<Option<AdjQuant>> {
            on.then(|| self.point(&layer, point, channels, None))
                .transpose()
        };
        Ok(QConv {
            weight_q: self.point(&layer, Point::Weight, layer.cout, Some(&weight))?,
            bias_q: self.point(&layer, Point::Bias, 1, None)?,
            input_q: opt(has.input, Point::Input, layer.cin)?,
            swish_q: opt(swish, Point::Swish, layer.cout)?,
            output_q: opt(has.output, Point::Output, layer.cout)?,
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(bias),
            layer,
        })
    }

    fn qconv(
        &self,
        c: &Conv2d,
        name: String,
        in_size: usize,
        swish: bool,
        has: Has,
    ) -> Result<QConv> {
        let w = c.weight.val();
        let [cout, cin_g, k, _] = w.dims();
        let groups = c.groups;
        let stride = c.stride[0];
        let layer = QLayer {
            name,
            cin: cin_g * groups,
            cout,
            kernel: k,
            stride,
            groups,
            in_size,
            out_size: in_size.div_ceil(stride),
            swish,
            padding: self.padding,
        };
        let bias = match &c.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([cout], &self.device),
        };
        self.conv(layer, w, bias, has)
    }

    fn qconv_bn(
        &self,
        c: &ConvBn,
        name: String,
        in_size: usize,
        swish: bool,
        has: Has,
    ) -> Result<QConv> {
        anyhow::ensure!(
            c.bn.is_none(),
            "layer `{name}` still has batch norm: fold it first"
        );
        self.qconv(&c.conv, name, in_size, swish, has)
    }

    fn qlinear(&self, l: &Linear, name: String) -> Result<QConv> {
        let w = l.weight.val(); // [in, out]
        let [cin, cout] = w.dims();
        let layer = QLayer {
            name,
            cin,
            cout,
            kernel: 1,
            stride: 1,
            groups: 1,
            in_size: 1,
            out_size: 1,
            swish: false,
            padding: Padding::Same,
        };
        let weight = w.transpose().reshape([cout, cin, 1, 1]);
        let bias = match &l.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([cout], &self.device),
        };
        let has = Has {
            input: true,
            ..Has::default()
        };
        self.conv(layer, weight, bias, has)
    }

    fn block(&self, b: &MbConv, i: usize, size: usize) -> Result<(QBlock, usize)> {
        let name = |part: &str| format!("blocks.{i}.{part}");
        let activation = Has {
            swish: true,
            output: true,
            ..Has::default()
        };
        let expand = match &b.expand {
            Some(e) => Some(self.qconv_bn(e, name("expand"), size, true, activation)?),
            None => None,
        };
        let swish_only = Has {
            swish: true,
            ..Has::default()
        };
        let depthwise = self.qconv_bn(&b.depthwise, name("depthwise"), size, true, swish_only)?;
        let out = depthwise.layer.out_size;
        let se = match &b.se {
            Some(se) => Some(QSqueezeExcite {
                reduce: self.qconv(
                    &se.reduce,
                    name("se.reduce"),
                    1,
                    true,
                    Has {
                        input: true,
                        ..activation
                    },
                )?,
                // The gate's sigmoid input is quantized like a swish input; the SE
                // expand is not followed by a swish (the layer flag the metric counts).
                expand: self.gate(&se.expand, name("se.expand"))?,
            }),
            None => None,
        };
        let project_points = Has {
            input: true,
            output: true,
            ..Has::default()
        };
        let project = self.qconv_bn(&b.project, name("project"), out, false, project_points)?;
        Ok((
            QBlock {
                expand,
                depthwise,
                se,
                project,
                skip: b.skip,
            },
            out,
        ))
    }

    /// The SE expand conv with its sigmoid-input point (whatever the model's activation).
    fn gate(&self, c: &Conv2d, name: String) -> Result<QConv> {
        let mut conv = self.qconv(c, name, 1, false, Has::default())?;
        conv.swish_q = Some(self.point(&conv.layer, Point::Swish, conv.layer.cout, None)?);
        Ok(conv)
    }
}

/// A thresholds map must name exactly the points of the network built from it.
fn check_map(t: &Thresholds, points: &[String]) -> Result<()> {
    let missing: Vec<&String> = points
        .iter()
        .filter(|k| !t.points.contains_key(*k))
        .collect();
    let unknown: Vec<&String> = t
        .points
        .keys()
        .filter(|k| k.as_str() != INPUT_KEY && !points.contains(k))
        .collect();
    if missing.is_empty() && unknown.is_empty() {
        return Ok(());
    }
    let list = |v: Vec<&String>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    anyhow::bail!(
        "thresholds do not match the model's quantization points: {} missing ({}); {} unknown ({})",
        missing.len(),
        list(missing),
        unknown.len(),
        list(unknown)
    )
}

impl QEfficientNet {
    /// The quantized network of a BN-folded float model with initial ranges from
    /// `thresholds`, which must hold every point of the network (weights included) and no
    /// other (the original's `input_data/output` is accepted and unused).
    pub fn from_float(model: &EfficientNet, thresholds: &Thresholds, q: &QConfig) -> Result<Self> {
        Self::build(model, q, Ranges::Map(thresholds))
    }

    /// A network for observing ranges ([`Observe`]): activations get placeholder ranges.
    pub fn for_calibration(model: &EfficientNet, q: &QConfig) -> Result<Self> {
        Self::build(model, q, Ranges::Placeholder)
    }

    fn build(model: &EfficientNet, q: &QConfig, ranges: Ranges) -> Result<Self> {
        let b = Builder {
            q,
            ranges,
            act: model.config.activation,
            padding: model.config.padding,
            device: model.classifier.weight.val().device(),
        };
        let mut size = model.config.resolution;
        let stem_points = Has {
            swish: true,
            output: true,
            ..Has::default()
        };
        let stem = b.qconv_bn(&model.stem, "stem".into(), size, true, stem_points)?;
        size = stem.layer.out_size;
        let mut blocks = Vec::new();
        for (i, blk) in model.blocks.iter().enumerate() {
            let (qb, out) = b.block(blk, i, size)?;
            blocks.push(qb);
            size = out;
        }
        let head_points = Has {
            swish: true,
            ..Has::default()
        };
        let head = b.qconv_bn(&model.head, "head".into(), size, true, head_points)?;
        let classifier = b.qlinear(&model.classifier, "classifier".into())?;
        let net = QEfficientNet {
            stem,
            blocks,
            head,
            classifier,
            config: model.config.clone(),
            qconfig: q.clone(),
        };
        if let Ranges::Map(t) = b.ranges {
            check_map(t, &net.point_keys())?;
        }
        Ok(net)
    }

    /// Logits of the quantized network.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with(images, &mut Quantize)
    }

    /// The forward pass with a chosen action at every quantization point.
    pub fn forward_with(&self, images: Tensor<4>, pts: &mut dyn Points) -> Tensor<2> {
        let act = self.config.activation;
        let mut x = self.stem.conv_act(images, act, pts);
        for b in &self.blocks {
            let input = x.clone();
            if let Some(e) = &b.expand {
                x = e.conv_act(x, act, pts);
            }
            x = b.depthwise.conv_act(x, act, pts);
            let y = match &b.se {
                Some(se) => {
                    let s = x.clone().mean_dim(2).mean_dim(3);
                    let s = se.reduce.conv_act(s, act, pts);
                    let gate = se.expand.conv_gate(s, pts);
                    b.project.gated_conv(x, gate, pts)
                }
                None => b.project.conv(x, pts),
            };
            x = b.project.output(y, pts);
            if b.skip {
                x = x + input;
            }
        }
        x = self.head.conv_act(x, act, pts);
        let pooled = x.mean_dim(2).mean_dim(3);
        let n = pooled.dims()[0];
        self.classifier
            .conv(pooled, pts)
            .reshape([n, self.classifier.layer.cout])
    }

    /// Sets the clip gradient of every quantizer (a network loaded from a checkpoint keeps
    /// the one it was trained with otherwise).
    pub fn set_clip_grad(&mut self, clip_grad: ClipGrad) {
        self.qconfig.clip_grad = clip_grad;
        let mut convs: Vec<&mut QConv> = vec![&mut self.stem, &mut self.head, &mut self.classifier];
        for b in &mut self.blocks {
            convs.extend(b.expand.as_mut());
            convs.push(&mut b.depthwise);
            if let Some(se) = &mut b.se {
                convs.push(&mut se.reduce);
                convs.push(&mut se.expand);
            }
            convs.push(&mut b.project);
        }
        for c in convs {
            let optional = [&mut c.input_q, &mut c.swish_q, &mut c.output_q];
            let quantizers = [Some(&mut c.weight_q), Some(&mut c.bias_q)]
                .into_iter()
                .flatten()
                .chain(optional.into_iter().flat_map(Option::as_mut));
            for q in quantizers {
                q.clip_grad = clip_grad;
            }
        }
    }

    /// Every conv layer in forward order (stem, blocks.., head, classifier).
    pub fn convs(&self) -> Vec<&QConv> {
        self.convs_with_sources()
            .into_iter()
            .map(|(c, _)| c)
            .collect()
    }

    /// Every conv in forward order with the point whose bits its input carries (`None`:
    /// the network input): the pairing the original's metric makes
    /// (`trainer.py:95-114`). A block's input is the previous project output's point
    /// even where a residual sum (not quantized) is what actually enters.
    pub fn convs_with_sources(&self) -> Vec<(&QConv, Option<&AdjQuant>)> {
        let mut v = vec![(&self.stem, None)];
        let mut block_input = self.stem.output_q.as_ref();
        for b in &self.blocks {
            let mut x = block_input;
            if let Some(e) = &b.expand {
                v.push((e, x));
                x = e.output_q.as_ref();
            }
            v.push((&b.depthwise, x));
            if let Some(se) = &b.se {
                v.push((&se.reduce, se.reduce.input_q.as_ref()));
                v.push((&se.expand, se.reduce.output_q.as_ref()));
            }
            v.push((&b.project, b.project.input_q.as_ref()));
            block_input = b.project.output_q.as_ref();
        }
        v.push((&self.head, block_input));
        v.push((&self.classifier, self.classifier.input_q.as_ref()));
        v
    }

    /// Per conv (forward order), the point the original records as its `act`
    /// (`effnetb0_model_adjutable.py:363-375`): the next quantized activation after it.
    pub fn original_act_points(&self) -> Vec<Option<&AdjQuant>> {
        let mut v = vec![self.stem.output_q.as_ref()];
        for b in &self.blocks {
            if let Some(e) = &b.expand {
                v.push(e.output_q.as_ref());
            }
            match &b.se {
                Some(se) => {
                    v.push(se.reduce.input_q.as_ref());
                    v.push(se.reduce.output_q.as_ref());
                    v.push(b.project.input_q.as_ref());
                }
                None => v.push(b.project.input_q.as_ref()),
            }
            v.push(b.project.output_q.as_ref());
        }
        v.push(self.classifier.input_q.as_ref());
        v.push(None);
        v
    }

    /// The name of every quantization point with a range (biases have none), layer by
    /// layer: the keys `thresholds.json` holds for this network.
    pub fn point_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for c in self.convs() {
            let name = &c.layer.name;
            keys.push(point_key(name, Point::Weight));
            for (q, point) in [
                (&c.input_q, Point::Input),
                (&c.swish_q, Point::Swish),
                (&c.output_q, Point::Output),
            ] {
                if q.is_some() {
                    keys.push(point_key(name, point));
                }
            }
        }
        keys
    }

    pub fn layers(&self) -> Vec<QLayer> {
        self.convs().into_iter().map(|c| c.layer.clone()).collect()
    }
}
impl QEfficientNet {
    /// The network's (unquantized) weights as a float EfficientNet checkpoint whose batch
    /// norms are identities (γ = 1, β = bias, μ = 0, σ² = 1 − ε): loading it and folding
    /// again gives back exactly these weights and biases. How `qat` hands its result to
    /// stages that take a float model.
    pub fn to_float_map(&self) -> crate::ckpt::TensorMap {
        fn entry<const D: usize>(t: Tensor<D>) -> crate::ckpt::Tensor {
            crate::ckpt::Tensor::from_f32(t.dims().to_vec(), &super::host_f32(t))
        }
        let eps = self.config.bn_eps as f32;
        let mut map = crate::ckpt::TensorMap::new();
        for c in self.convs() {
            let l = &c.layer;
            let (w, b) = (c.weight.val(), c.bias.val());
            if l.name == "classifier" {
                let w = w.reshape([l.cout, l.cin]).transpose();
                map.insert("classifier.weight".into(), entry(w));
                map.insert("classifier.bias".into(), entry(b));
            } else if l.name.contains(".se.") {
                map.insert(format!("{}.weight", l.name), entry(w));
                map.insert(format!("{}.bias", l.name), entry(b));
            } else {
                let ones = Tensor::<1>::ones([l.cout], &b.device());
                let n = &l.name;
                map.insert(format!("{n}.conv.weight"), entry(w));
                map.insert(format!("{n}.bn.gamma"), entry(ones.clone()));
                map.insert(format!("{n}.bn.running_mean"), entry(b.zeros_like()));
                map.insert(format!("{n}.bn.beta"), entry(b));
                map.insert(format!("{n}.bn.running_var"), entry(ones.sub_scalar(eps)));
            }
        }
        map
    }
}

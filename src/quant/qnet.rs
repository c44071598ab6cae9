//! The quantized EfficientNet: built from a BN-folded float model and a thresholds map.
//!
//! Quantization points (DESIGN §3), named `<layer>/<point>`:
//! - `weight`: every conv / depthwise / SE conv / classifier weight, per output channel;
//! - `input`: the activation entering every conv except the stem, per channel (the
//!   network input counts as 8-bit; a residual sum is not re-quantized on the skip path);
//! - `swish`: the input of every swish, per channel, fixed bits, adjustable range;
//! - `bias`: every bias, per tensor, fixed bits, range = its current min/max.
//!
//! The classifier is held as a 1×1 conv on the pooled features so every layer is alike.

use super::adjustable::{AdjQuant, QuantSpec, RangePreset};
use super::thresholds::Thresholds;
use crate::model::config::{Activation, EfficientNetConfig};
use crate::model::{ConvBn, EfficientNet, MbConv};
use anyhow::Result;
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation::{relu6, sigmoid, silu};
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
    Input,
    Swish,
    Bias,
}

impl Point {
    pub fn name(self) -> &'static str {
        match self {
            Point::Weight => "weight",
            Point::Input => "input",
            Point::Swish => "swish",
            Point::Bias => "bias",
        }
    }
}

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
}

/// Records the per-channel min/max of every weight, input and swish point over all
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
        let key = format!("{}/{}", layer.name, point.name());
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
    pub swish_q: Option<AdjQuant>,
    #[module(skip)]
    pub layer: QLayer,
}

impl QConv {
    /// Conv output (before any activation), quantizing input, weight and bias.
    fn conv(&self, x: Tensor<4>, pts: &mut dyn Points) -> Tensor<4> {
        let l = &self.layer;
        let x = match &self.input_q {
            Some(q) => pts.apply(l, Point::Input, q, x, 1),
            None => x,
        };
        let w = pts.apply(l, Point::Weight, &self.weight_q, self.weight.val(), 0);
        let b = self.bias.val().reshape([l.cout, 1, 1, 1]);
        let b = pts
            .apply(l, Point::Bias, &self.bias_q, b, 0)
            .reshape([l.cout]);
        let [_, _, h, wd] = x.dims();
        let pads = [
            same_padding(h, l.kernel, l.stride),
            same_padding(wd, l.kernel, l.stride),
        ];
        let opts = ConvOptions::new_with_padding([l.stride; 2], pads, [1, 1], l.groups);
        conv2d(x, w, Some(b), opts)
    }

    /// Conv followed by the model's activation (the swish input quantized).
    fn conv_act(&self, x: Tensor<4>, act: Activation, pts: &mut dyn Points) -> Tensor<4> {
        let y = self.conv(x, pts);
        match (&self.swish_q, act) {
            (Some(q), _) => silu(pts.apply(&self.layer, Point::Swish, q, y, 1)),
            (None, Activation::Swish) => silu(y),
            (None, Activation::Relu6) => relu6(y),
        }
    }
}

/// TensorFlow "same" padding (before, after) of one spatial axis: out = ceil(in/stride),
/// the odd pixel of padding goes after (asymmetric for stride 2).
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
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
    pub dropout: Dropout,
    pub classifier: QConv,
    #[module(skip)]
    pub config: EfficientNetConfig,
    #[module(skip)]
    pub qconfig: QConfig,
}

/// Where the ranges of a new network come from.
enum Ranges<'a> {
    /// From a thresholds map (weights not in it use their own min/max).
    Map(&'a Thresholds),
    /// Weights from their own min/max, activations [0, 1] (only for observing).
    Placeholder,
}

struct Builder<'a> {
    q: &'a QConfig,
    ranges: Ranges<'a>,
    act: Activation,
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
            Point::Input => (self.q.act_bits, self.q.bits_trainable),
            Point::Swish => (self.q.swish_bits, false),
            Point::Bias => (self.q.bias_bits, false),
        };
        let spec = QuantSpec {
            bits,
            trainable_bits: trainable,
            limits,
        };
        if point == Point::Bias {
            return Ok(AdjQuant::dynamic(spec, 1, &self.device));
        }
        let key = format!("{}/{}", layer.name, point.name());
        let from_map = match &self.ranges {
            Ranges::Map(t) if point != Point::Weight || t.points.contains_key(&key) => {
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

    fn conv(
        &self,
        layer: QLayer,
        weight: Tensor<4>,
        bias: Tensor<1>,
        quant_input: bool,
    ) -> Result<QConv> {
        let swish = layer.swish && self.act == Activation::Swish;
        Ok(QConv {
            weight_q: self.point(&layer, Point::Weight, layer.cout, Some(&weight))?,
            bias_q: self.point(&layer, Point::Bias, 1, None)?,
            input_q: if quant_input {
                Some(self.point(&layer, Point::Input, layer.cin, None)?)
            } else {
                None
            },
            swish_q: if swish {
                Some(self.point(&layer, Point::Swish, layer.cout, None)?)
            } else {
                None
            },
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
        quant_input: bool,
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
        };
        let bias = match &c.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([cout], &self.device),
        };
        self.conv(layer, w, bias, quant_input)
    }

    fn qconv_bn(
        &self,
        c: &ConvBn,
        name: String,
        in_size: usize,
        swish: bool,
        quant_input: bool,
    ) -> Result<QConv> {
        anyhow::ensure!(
            c.bn.is_none(),
            "layer `{name}` still has batch norm: fold it first"
        );
        self.qconv(&c.conv, name, in_size, swish, quant_input)
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
        };
        let weight = w.transpose().reshape([cout, cin, 1, 1]);
        let bias = match &l.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([cout], &self.device),
        };
        self.conv(layer, weight, bias, true)
    }

    fn block(&self, b: &MbConv, i: usize, size: usize) -> Result<(QBlock, usize)> {
        let name = |part: &str| format!("blocks.{i}.{part}");
        let expand = match &b.expand {
            Some(e) => Some(self.qconv_bn(e, name("expand"), size, true, true)?),
            None => None,
        };
        let depthwise = self.qconv_bn(&b.depthwise, name("depthwise"), size, true, true)?;
        let out = depthwise.layer.out_size;
        let se = match &b.se {
            Some(se) => Some(QSqueezeExcite {
                reduce: self.qconv(&se.reduce, name("se.reduce"), 1, true, true)?,
                expand: self.qconv(&se.expand, name("se.expand"), 1, false, true)?,
            }),
            None => None,
        };
        let project = self.qconv_bn(&b.project, name("project"), out, false, true)?;
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
}

impl QEfficientNet {
    /// The quantized network of a BN-folded float model with initial ranges from
    /// `thresholds` (weights missing there use their own per-channel min/max).
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
            device: model.classifier.weight.val().device(),
        };
        let mut size = model.config.resolution;
        let stem = b.qconv_bn(&model.stem, "stem".into(), size, true, false)?;
        size = stem.layer.out_size;
        let mut blocks = Vec::new();
        for (i, blk) in model.blocks.iter().enumerate() {
            let (qb, out) = b.block(blk, i, size)?;
            blocks.push(qb);
            size = out;
        }
        let head = b.qconv_bn(&model.head, "head".into(), size, true, true)?;
        Ok(QEfficientNet {
            stem,
            blocks,
            head,
            dropout: DropoutConfig::new(model.config.dropout).init(),
            classifier: b.qlinear(&model.classifier, "classifier".into())?,
            config: model.config.clone(),
            qconfig: q.clone(),
        })
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
            if let Some(se) = &b.se {
                let s = x.clone().mean_dim(2).mean_dim(3);
                let s = se.reduce.conv_act(s, act, pts);
                let s = sigmoid(se.expand.conv(s, pts));
                x = x * s;
            }
            x = b.project.conv(x, pts);
            if b.skip {
                x = x + input;
            }
        }
        x = self.head.conv_act(x, act, pts);
        let pooled = x.mean_dim(2).mean_dim(3);
        let pooled = self.dropout.forward(pooled);
        let n = pooled.dims()[0];
        self.classifier
            .conv(pooled, pts)
            .reshape([n, self.classifier.layer.cout])
    }

    /// Every conv layer in forward order (stem, blocks.., head, classifier).
    pub fn convs(&self) -> Vec<&QConv> {
        let mut v = vec![&self.stem];
        for b in &self.blocks {
            v.extend(b.expand.iter());
            v.push(&b.depthwise);
            if let Some(se) = &b.se {
                v.push(&se.reduce);
                v.push(&se.expand);
            }
            v.push(&b.project);
        }
        v.push(&self.head);
        v.push(&self.classifier);
        v
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

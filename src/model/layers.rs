//! Building blocks: conv + (optional) batch norm with BN folding, squeeze-excitation.

use super::config::{Activation, Padding};
use super::swish::swish;
use super::{depthwise, pointwise};
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{relu6, sigmoid};

pub fn activate(x: Tensor<4>, act: Activation) -> Tensor<4> {
    match act {
        Activation::Swish => swish(x),
        Activation::Relu6 => relu6(x),
    }
}

/// A convolution (padded as its [`ConvSpec`] says: TF "same" for the original's models),
/// followed by batch norm until [`ConvBn::fold_bn`] folds it into the weights and a bias.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: Option<BatchNorm>,
}

pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    pub padding: Padding,
}

impl ConvBn {
    pub fn new(spec: ConvSpec, bn_eps: f64, bn_momentum_tf: f64, device: &Device) -> Self {
        let cout = spec.cout;
        ConvBn {
            conv: conv(spec, false, device),
            bn: Some(
                BatchNormConfig::new(cout)
                    .with_epsilon(bn_eps)
                    // burn's momentum weighs the new batch; TF's weighs the running value.
                    .with_momentum(1.0 - bn_momentum_tf)
                    .init(device),
            ),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = conv_forward(&self.conv, x);
        match &self.bn {
            Some(bn) => bn.forward(y),
            None => y,
        }
    }

    /// Folds the batch norm (with its running statistics) into the conv:
    /// W' = W·γ/√(σ²+ε), b' = β + (b − μ)·γ/√(σ²+ε). The result has no batch norm.
    pub fn fold_bn(self) -> Self {
        let Some(bn) = self.bn else { return self };
        let scale = bn.gamma.val() / (bn.running_var.value() + bn.epsilon).sqrt();
        let cout = scale.dims()[0];
        let weight = self.conv.weight.val() * scale.clone().reshape([cout, 1, 1, 1]);
        let bias = match &self.conv.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([cout], &scale.device()),
        };
        let bias = bn.beta.val() + (bias - bn.running_mean.value()) * scale;
        let mut conv = self.conv;
        conv.weight = Param::from_tensor(weight);
        conv.bias = Some(Param::from_tensor(bias));
        ConvBn { conv, bn: None }
    }
}

/// A conv padded as `spec` says, optionally with a bias.
pub fn conv(spec: ConvSpec, bias: bool, device: &Device) -> Conv2d {
    let padding = match spec.padding {
        // burn's Same is TensorFlow's (the odd pixel after).
        Padding::Same => PaddingConfig2d::Same,
        Padding::Symmetric => {
            let p = spec.kernel / 2;
            PaddingConfig2d::Explicit(p, p, p, p)
        }
    };
    Conv2dConfig::new([spec.cin, spec.cout], [spec.kernel, spec.kernel])
        .with_stride([spec.stride, spec.stride])
        .with_groups(spec.groups)
        .with_padding(padding)
        .with_bias(bias)
        .init(device)
}

/// `c.forward(x)`, through our depthwise op or 1×1 matrix product where they apply (see
/// [`depthwise`], [`pointwise`]).
pub fn conv_forward(c: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let weight = c.weight.val();
    if c.stride == [1, 1] && pointwise::supports(&x, &weight, 1, c.groups) {
        return pointwise::conv(x, weight, c.bias.as_ref().map(|b| b.val()));
    }
    let [_, _, kh, kw] = weight.dims();
    let square = kh == kw && c.stride[0] == c.stride[1] && c.dilation == [1, 1];
    if c.groups == 1 || !square || !depthwise::supports(&x, &weight) {
        return c.forward(x);
    }
    let [_, _, h, w] = x.dims();
    let pads = match c.padding {
        PaddingConfig2d::Same => [
            Padding::Same.pads(h, kh, c.stride[0]),
            Padding::Same.pads(w, kw, c.stride[1]),
        ],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Valid => [(0, 0); 2],
    };
    let bias = match &c.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([weight.dims()[0]], &x.device()),
    };
    depthwise::conv(x, weight, bias, c.stride[0], pads)
}

/// Squeeze-excitation: global average pool, reduce (1×1 conv + bias), activation,
/// expand (1×1 conv + bias), sigmoid, scale the input channels.
#[derive(Module, Debug)]
pub struct SqueezeExcite {
    pub reduce: Conv2d,
    pub expand: Conv2d,
}

impl SqueezeExcite {
    pub fn new(channels: usize, reduced: usize, device: &Device) -> Self {
        let spec = |cin, cout| ConvSpec {
            cin,
            cout,
            kernel: 1,
            stride: 1,
            groups: 1,
            // A 1×1 conv pads nothing either way.
            padding: Padding::Same,
        };
        SqueezeExcite {
            reduce: conv(spec(channels, reduced), true, device),
            expand: conv(spec(reduced, channels), true, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>, act: Activation) -> Tensor<4> {
        let s = x.clone().mean_dim(2).mean_dim(3);
        let s = activate(self.reduce.forward(s), act);
        let s = sigmoid(self.expand.forward(s));
        x * s
    }
}

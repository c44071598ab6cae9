//! The EfficientNet family (B0, Lite0 and small CPU presets) in burn.
//!
//! Parameter paths are stable and read like the architecture: `stem.conv.weight`,
//! `blocks.3.expand.bn.gamma`, `blocks.3.depthwise.conv.weight`, `blocks.3.se.reduce.bias`,
//! `blocks.3.project.conv.weight`, `head.conv.weight`, `classifier.weight`.

use super::config::{Activation, EfficientNetConfig};
use super::layers::{ConvBn, ConvSpec, SqueezeExcite, activate};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;

/// Mobile inverted bottleneck: [expand 1×1] → depthwise k×k → [SE] → project 1×1,
/// with an identity skip when shape allows.
#[derive(Module, Debug)]
pub struct MbConv {
    pub expand: Option<ConvBn>,
    pub depthwise: ConvBn,
    pub se: Option<SqueezeExcite>,
    pub project: ConvBn,
    pub skip: bool,
}

impl MbConv {
    pub fn forward(&self, input: Tensor<4>, act: Activation) -> Tensor<4> {
        let mut x = input.clone();
        if let Some(e) = &self.expand {
            x = activate(e.forward(x), act);
        }
        x = activate(self.depthwise.forward(x), act);
        if let Some(se) = &self.se {
            x = se.forward(x, act);
        }
        x = self.project.forward(x);
        if self.skip { x + input } else { x }
    }

    fn fold_bn(self) -> Self {
        MbConv {
            expand: self.expand.map(ConvBn::fold_bn),
            depthwise: self.depthwise.fold_bn(),
            se: self.se,
            project: self.project.fold_bn(),
            skip: self.skip,
        }
    }
}

#[derive(Module, Debug)]
pub struct EfficientNet {
    pub stem: ConvBn,
    pub blocks: Vec<MbConv>,
    pub head: ConvBn,
    pub dropout: Dropout,
    pub classifier: Linear,
    #[module(skip)]
    pub config: EfficientNetConfig,
}

impl EfficientNet {
    /// A randomly initialised model.
    pub fn new(config: &EfficientNetConfig, device: &Device) -> Self {
        let (eps, mom) = (config.bn_eps, config.bn_momentum);
        let conv_bn = |cin, cout, kernel, stride, groups| {
            ConvBn::new(
                ConvSpec {
                    cin,
                    cout,
                    kernel,
                    stride,
                    groups,
                    padding: config.padding,
                },
                eps,
                mom,
                device,
            )
        };
        let stem = conv_bn(3, config.stem_filters(), 3, 2, 1);
        let blocks = config
            .expanded_blocks()
            .iter()
            .map(|b| {
                let mid = b.input_filters * b.expand_ratio;
                let reduced = ((b.input_filters as f64 * b.se_ratio) as usize).max(1);
                MbConv {
                    expand: (b.expand_ratio != 1).then(|| conv_bn(b.input_filters, mid, 1, 1, 1)),
                    depthwise: conv_bn(mid, mid, b.kernel, b.stride, mid),
                    se: (b.se_ratio > 0.0).then(|| SqueezeExcite::new(mid, reduced, device)),
                    project: conv_bn(mid, b.output_filters, 1, 1, 1),
                    skip: b.stride == 1 && b.input_filters == b.output_filters,
                }
            })
            .collect::<Vec<_>>();
        let last = blocks
            .last()
            .map(|b| b.project.conv.weight.dims()[0])
            .unwrap_or(config.stem_filters());
        let head = conv_bn(last, config.head_filters(), 1, 1, 1);
        EfficientNet {
            stem,
            blocks,
            head,
            dropout: DropoutConfig::new(config.dropout).init(),
            classifier: LinearConfig::new(config.head_filters(), config.num_classes).init(device),
            config: config.clone(),
        }
    }

    /// Logits `[N, classes]` for images `[N, 3, H, W]` (already normalized).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let act = self.config.activation;
        let mut x = activate(self.stem.forward(images), act);
        for b in &self.blocks {
            x = b.forward(x, act);
        }
        x = activate(self.head.forward(x), act);
        let [n, c, _, _] = x.dims();
        let pooled = x.mean_dim(2).mean_dim(3).reshape([n, c]);
        self.classifier.forward(self.dropout.forward(pooled))
    }

    /// The same function with every batch norm folded into its conv (weights and biases):
    /// the form the quantized network is built from. Equal to the original in eval mode.
    pub fn fold_bn(self) -> Self {
        EfficientNet {
            stem: self.stem.fold_bn(),
            blocks: self.blocks.into_iter().map(MbConv::fold_bn).collect(),
            head: self.head.fold_bn(),
            dropout: self.dropout,
            classifier: self.classifier,
            config: self.config,
        }
    }
}

//! EfficientNet configurations: the block table, width/depth scaling and presets.

use crate::data::preprocess::Normalization;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// x·sigmoid(x) (EfficientNet-B*).
    Swish,
    /// min(max(x, 0), 6) (EfficientNet-Lite*).
    Relu6,
}

/// How convolutions pad their input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// TensorFlow's "same": out = ceil(in/stride), the odd pixel after (asymmetric at
    /// stride 2). The original's, and timm's `tf_*` models'.
    #[default]
    Same,
    /// kernel/2 on every side, as PyTorch convs pad (timm's own models, e.g.
    /// `efficientnet_lite0`). Same output size as `Same` for odd kernels.
    Symmetric,
}

impl Padding {
    /// (before, after) padding of one spatial axis of `size` pixels.
    pub fn pads(self, size: usize, kernel: usize, stride: usize) -> (usize, usize) {
        match self {
            Padding::Same => {
                let out = size.div_ceil(stride);
                let total = ((out - 1) * stride + kernel).saturating_sub(size);
                (total / 2, total - total / 2)
            }
            Padding::Symmetric => (kernel / 2, kernel / 2),
        }
    }

    pub fn is_same(&self) -> bool {
        *self == Padding::Same
    }
}

/// One row of the block table (`r1_k3_s11_e1_i32_o16_se0.25` in the TF code), before
/// width/depth scaling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockArgs {
    pub repeats: usize,
    pub kernel: usize,
    pub stride: usize,
    pub expand_ratio: usize,
    pub input_filters: usize,
    pub output_filters: usize,
    /// Squeeze-excitation ratio of the block's input filters (0 = none).
    pub se_ratio: f64,
}

impl BlockArgs {
    const fn new(
        repeats: usize,
        kernel: usize,
        stride: usize,
        expand: usize,
        i: usize,
        o: usize,
    ) -> Self {
        BlockArgs {
            repeats,
            kernel,
            stride,
            expand_ratio: expand,
            input_filters: i,
            output_filters: o,
            se_ratio: 0.25,
        }
    }
}

/// The B0 block table of tensorflow/tpu `efficientnet_builder.py`.
pub fn b0_blocks() -> Vec<BlockArgs> {
    vec![
        BlockArgs::new(1, 3, 1, 1, 32, 16),
        BlockArgs::new(2, 3, 2, 6, 16, 24),
        BlockArgs::new(2, 5, 2, 6, 24, 40),
        BlockArgs::new(3, 3, 2, 6, 40, 80),
        BlockArgs::new(3, 5, 1, 6, 80, 112),
        BlockArgs::new(4, 5, 2, 6, 112, 192),
        BlockArgs::new(1, 3, 1, 6, 192, 320),
    ]
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EfficientNetConfig {
    pub name: String,
    pub width: f64,
    pub depth: f64,
    /// Input resolution the model is meant for (the network itself accepts any size).
    pub resolution: usize,
    pub dropout: f64,
    pub num_classes: usize,
    /// Squeeze-excitation on (B*) or off (Lite*).
    pub se: bool,
    pub activation: Activation,
    pub bn_eps: f64,
    /// TF-style momentum: running = momentum·running + (1 − momentum)·batch.
    pub bn_momentum: f64,
    /// Left out of model.json when `Same`, so the files (and cache keys) of every
    /// TF-padded model read as before the field existed.
    #[serde(default, skip_serializing_if = "Padding::is_same")]
    pub padding: Padding,
    /// The input normalization the weights expect, where it is not the family's
    /// ([`Self::input_normalization`]); timm's own Lite models take ImageNet's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
    /// Lite models keep stem (32) and head (1280) filters, and the first and last block
    /// groups' repeats, unscaled.
    pub fix_stem_head: bool,
    pub blocks: Vec<BlockArgs>,
}

/// Names accepted by [`EfficientNetConfig::preset`].
pub const PRESETS: &[&str] = &[
    "efficientnet-b0",
    "efficientnet-lite0",
    "efficientnet-small",
    "efficientnet-tiny",
];

impl EfficientNetConfig {
    pub fn preset(name: &str) -> Option<EfficientNetConfig> {
        let b0 = EfficientNetConfig {
            name: name.to_string(),
            width: 1.0,
            depth: 1.0,
            resolution: 224,
            dropout: 0.2,
            num_classes: 1000,
            se: true,
            activation: Activation::Swish,
            bn_eps: 1e-3,
            bn_momentum: 0.99,
            fix_stem_head: false,
            padding: Padding::Same,
            normalization: None,
            blocks: b0_blocks(),
        };
        Some(match name {
            "efficientnet-b0" => b0,
            "efficientnet-lite0" => EfficientNetConfig {
                se: false,
                activation: Activation::Relu6,
                fix_stem_head: true,
                ..b0
            },
            // Small models for CPU work on 32×32 images (the bundled digits data). Their
            // training runs are short, so batch-norm statistics average faster (0.9).
            "efficientnet-small" => EfficientNetConfig {
                width: 0.5,
                depth: 0.5,
                resolution: 32,
                dropout: 0.1,
                num_classes: 10,
                bn_momentum: 0.9,
                ..b0
            },
            "efficientnet-tiny" => EfficientNetConfig {
                width: 0.25,
                depth: 0.25,
                resolution: 32,
                dropout: 0.0,
                num_classes: 10,
                bn_momentum: 0.9,
                ..b0
            },
            _ => return None,
        })
    }

    /// The input normalization: as set, else the family's (B*: ImageNet mean and std;
    /// Lite*: (x − 127)/128, as the TF Lite models were trained).
    pub fn input_normalization(&self) -> Normalization {
        self.normalization.unwrap_or(match self.activation {
            Activation::Swish => Normalization::B0,
            Activation::Relu6 => Normalization::Lite,
        })
    }

    /// `round_filters` of the TF code: scale by width, round to a multiple of 8, never
    /// dropping more than 10%.
    pub fn round_filters(&self, filters: usize) -> usize {
        if self.width == 1.0 {
            return filters;
        }
        let divisor = 8.0;
        let f = filters as f64 * self.width;
        let mut new =
            (divisor as usize).max(((f + divisor / 2.0) / divisor) as usize * divisor as usize);
        if (new as f64) < 0.9 * f {
            new += divisor as usize;
        }
        new
    }

    /// `round_repeats`: ceil(depth · repeats).
    pub fn round_repeats(&self, repeats: usize) -> usize {
        (self.depth * repeats as f64).ceil() as usize
    }

    pub fn stem_filters(&self) -> usize {
        if self.fix_stem_head {
            32
        } else {
            self.round_filters(32)
        }
    }

    pub fn head_filters(&self) -> usize {
        if self.fix_stem_head {
            1280
        } else {
            self.round_filters(1280)
        }
    }

    /// Every block after scaling, in order.
    pub fn expanded_blocks(&self) -> Vec<BlockArgs> {
        self.stages().into_iter().flatten().collect()
    }

    /// The blocks after scaling, grouped by the row of the block table they come from
    /// (timm names blocks by stage and index within it).
    pub fn stages(&self) -> Vec<Vec<BlockArgs>> {
        let last = self.blocks.len().saturating_sub(1);
        let mut stages = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let repeats = if self.fix_stem_head && (i == 0 || i == last) {
                b.repeats
            } else {
                self.round_repeats(b.repeats)
            };
            // With the stem unscaled, the first block reads its channels (TF and timm).
            let input = if self.fix_stem_head && i == 0 {
                self.stem_filters()
            } else {
                self.round_filters(b.input_filters)
            };
            let output = self.round_filters(b.output_filters);
            let stage = (0..repeats)
                .map(|r| BlockArgs {
                    repeats: 1,
                    stride: if r == 0 { b.stride } else { 1 },
                    input_filters: if r == 0 { input } else { output },
                    output_filters: output,
                    se_ratio: if self.se { b.se_ratio } else { 0.0 },
                    ..b.clone()
                })
                .collect();
            stages.push(stage);
        }
        stages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b0_has_16_blocks_and_lite0_the_same_layout() {
        let b0 = EfficientNetConfig::preset("efficientnet-b0").unwrap();
        assert_eq!(b0.expanded_blocks().len(), 16);
        assert_eq!(b0.stem_filters(), 32);
        assert_eq!(b0.head_filters(), 1280);
        let lite = EfficientNetConfig::preset("efficientnet-lite0").unwrap();
        assert_eq!(lite.expanded_blocks().len(), 16);
        assert!(lite.expanded_blocks().iter().all(|b| b.se_ratio == 0.0));
    }

    #[test]
    fn round_filters_matches_the_tf_rule() {
        let mut c = EfficientNetConfig::preset("efficientnet-b0").unwrap();
        c.width = 1.1; // B2's width
        assert_eq!(c.round_filters(32), 32);
        assert_eq!(c.round_filters(1280), 1408);
        c.width = 0.25;
        assert_eq!(c.round_filters(16), 8);
        assert_eq!(c.round_filters(320), 80);
    }
}

//! EfficientNet configurations: the block table, width/depth scaling and presets.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// x·sigmoid(x) (EfficientNet-B*).
    Swish,
    /// min(max(x, 0), 6) (EfficientNet-Lite*).
    Relu6,
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
        let last = self.blocks.len().saturating_sub(1);
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let repeats = if self.fix_stem_head && (i == 0 || i == last) {
                b.repeats
            } else {
                self.round_repeats(b.repeats)
            };
            let input = self.round_filters(b.input_filters);
            let output = self.round_filters(b.output_filters);
            for r in 0..repeats {
                out.push(BlockArgs {
                    repeats: 1,
                    stride: if r == 0 { b.stride } else { 1 },
                    input_filters: if r == 0 { input } else { output },
                    output_filters: output,
                    se_ratio: if self.se { b.se_ratio } else { 0.0 },
                    ..b.clone()
                });
            }
        }
        out
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

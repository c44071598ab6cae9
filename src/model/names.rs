//! Name maps from published checkpoints to our parameter paths.
//!
//! - TensorFlow (tensorflow/tpu EfficientNet): `efficientnet-b0/stem/conv2d/kernel`,
//!   `.../blocks_N/{conv2d,depthwise_conv2d,se/conv2d,tpu_batch_normalization}_k/...`,
//!   `.../head/dense/kernel`. `tf.layers` names layers in call order within a scope, so
//!   which suffix a layer gets depends on whether its block has an expansion conv.
//! - PyTorch (the `efficientnet_pytorch` / Lite0 port): `_conv_stem.weight`, `_bn0.*`,
//!   `_blocks.N._expand_conv.weight`, `_bn0/_bn1/_bn2`, `_depthwise_conv`, `_se_reduce`,
//!   `_se_expand`, `_project_conv`, `_conv_head`, `_bn1` (head), `_fc`.
//! - timm (`tf_efficientnet_b0`, `efficientnet_lite0`, ...): `conv_stem`, `bn1`, blocks by
//!   stage and index `blocks.S.J.*` (the first stage's blocks, without expansion:
//!   `conv_dw`, `bn1`, `se.conv_reduce`, `se.conv_expand`, `conv_pw`, `bn2`; the others:
//!   `conv_pw`, `bn1`, `conv_dw`, `bn2`, `se.*`, `conv_pwl`, `bn3`), `conv_head`, `bn2`,
//!   `classifier`.

use super::config::EfficientNetConfig;

/// How a source tensor's layout maps to ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Same shape and order.
    Same,
    /// TF conv kernel `[kh, kw, in, out]` → `[out, in, kh, kw]`.
    TfConv,
    /// TF depthwise kernel `[kh, kw, channels, 1]` → `[channels, 1, kh, kw]`.
    TfDepthwise,
    /// PyTorch linear weight `[out, in]` → burn's `[in, out]`.
    Transpose2d,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    /// Our parameter path, e.g. `blocks.3.depthwise.conv.weight`.
    pub ours: String,
    /// The name in the source checkpoint.
    pub theirs: String,
    pub layout: Layout,
}

const BN_TF: [(&str, &str); 4] = [
    ("gamma", "gamma"),
    ("beta", "beta"),
    ("running_mean", "moving_mean"),
    ("running_var", "moving_variance"),
];

const BN_TORCH: [(&str, &str); 4] = [
    ("gamma", "weight"),
    ("beta", "bias"),
    ("running_mean", "running_mean"),
    ("running_var", "running_var"),
];

/// The four batch-norm tensors of `ours` (`{ours}.bn.*`) under `theirs`, joined by `sep`.
fn push_bn(out: &mut Vec<Mapping>, ours: &str, theirs: &str, sep: char, names: &[(&str, &str); 4]) {
    for (o, t) in names {
        out.push(Mapping {
            ours: format!("{ours}.bn.{o}"),
            theirs: format!("{theirs}{sep}{t}"),
            layout: Layout::Same,
        });
    }
}

fn map(ours: String, theirs: String, layout: Layout) -> Mapping {
    Mapping {
        ours,
        theirs,
        layout,
    }
}

/// Every parameter of `cfg` with its official TensorFlow name under `scope`
/// (e.g. `efficientnet-b0`).
pub fn tensorflow(cfg: &EfficientNetConfig, scope: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    let s = scope;
    out.push(map(
        "stem.conv.weight".into(),
        format!("{s}/stem/conv2d/kernel"),
        Layout::TfConv,
    ));
    push_bn(
        &mut out,
        "stem",
        &format!("{s}/stem/tpu_batch_normalization"),
        '/',
        &BN_TF,
    );
    for (i, b) in cfg.expanded_blocks().iter().enumerate() {
        let p = format!("{s}/blocks_{i}");
        let ours = format!("blocks.{i}");
        // Layers take default names in call order: conv2d, conv2d_1; bn, bn_1, bn_2.
        let suffix = |n: usize| {
            if n == 0 {
                String::new()
            } else {
                format!("_{n}")
            }
        };
        let (mut conv_n, mut bn_n) = (0, 0);
        if b.expand_ratio != 1 {
            out.push(map(
                format!("{ours}.expand.conv.weight"),
                format!("{p}/conv2d/kernel"),
                Layout::TfConv,
            ));
            push_bn(
                &mut out,
                &format!("{ours}.expand"),
                &format!("{p}/tpu_batch_normalization"),
                '/',
                &BN_TF,
            );
            conv_n += 1;
            bn_n += 1;
        }
        out.push(map(
            format!("{ours}.depthwise.conv.weight"),
            format!("{p}/depthwise_conv2d/depthwise_kernel"),
            Layout::TfDepthwise,
        ));
        push_bn(
            &mut out,
            &format!("{ours}.depthwise"),
            &format!("{p}/tpu_batch_normalization{}", suffix(bn_n)),
            '/',
            &BN_TF,
        );
        bn_n += 1;
        if b.se_ratio > 0.0 {
            for (o, t) in [("reduce", "conv2d"), ("expand", "conv2d_1")] {
                out.push(map(
                    format!("{ours}.se.{o}.weight"),
                    format!("{p}/se/{t}/kernel"),
                    Layout::TfConv,
                ));
                out.push(map(
                    format!("{ours}.se.{o}.bias"),
                    format!("{p}/se/{t}/bias"),
                    Layout::Same,
                ));
            }
        }
        out.push(map(
            format!("{ours}.project.conv.weight"),
            format!("{p}/conv2d{}/kernel", suffix(conv_n)),
            Layout::TfConv,
        ));
        push_bn(
            &mut out,
            &format!("{ours}.project"),
            &format!("{p}/tpu_batch_normalization{}", suffix(bn_n)),
            '/',
            &BN_TF,
        );
    }
    out.push(map(
        "head.conv.weight".into(),
        format!("{s}/head/conv2d/kernel"),
        Layout::TfConv,
    ));
    push_bn(
        &mut out,
        "head",
        &format!("{s}/head/tpu_batch_normalization"),
        '/',
        &BN_TF,
    );
    out.push(map(
        "classifier.weight".into(),
        format!("{s}/head/dense/kernel"),
        Layout::Same,
    ));
    out.push(map(
        "classifier.bias".into(),
        format!("{s}/head/dense/bias"),
        Layout::Same,
    ));
    out
}

/// Every parameter of `cfg` with its name in the `efficientnet_pytorch`-style state dict.
pub fn pytorch(cfg: &EfficientNetConfig) -> Vec<Mapping> {
    let mut out = Vec::new();
    let bn = |out: &mut Vec<Mapping>, ours: &str, theirs: &str| {
        push_bn(out, ours, theirs, '.', &BN_TORCH)
    };
    out.push(map(
        "stem.conv.weight".into(),
        "_conv_stem.weight".into(),
        Layout::Same,
    ));
    bn(&mut out, "stem", "_bn0");
    for (i, b) in cfg.expanded_blocks().iter().enumerate() {
        let (o, t) = (format!("blocks.{i}"), format!("_blocks.{i}"));
        if b.expand_ratio != 1 {
            out.push(map(
                format!("{o}.expand.conv.weight"),
                format!("{t}._expand_conv.weight"),
                Layout::Same,
            ));
            bn(&mut out, &format!("{o}.expand"), &format!("{t}._bn0"));
        }
        out.push(map(
            format!("{o}.depthwise.conv.weight"),
            format!("{t}._depthwise_conv.weight"),
            Layout::Same,
        ));
        bn(&mut out, &format!("{o}.depthwise"), &format!("{t}._bn1"));
        if b.se_ratio > 0.0 {
            for (ours, theirs) in [("reduce", "_se_reduce"), ("expand", "_se_expand")] {
                for p in ["weight", "bias"] {
                    out.push(map(
                        format!("{o}.se.{ours}.{p}"),
                        format!("{t}.{theirs}.{p}"),
                        Layout::Same,
                    ));
                }
            }
        }
        out.push(map(
            format!("{o}.project.conv.weight"),
            format!("{t}._project_conv.weight"),
            Layout::Same,
        ));
        bn(&mut out, &format!("{o}.project"), &format!("{t}._bn2"));
    }
    out.push(map(
        "head.conv.weight".into(),
        "_conv_head.weight".into(),
        Layout::Same,
    ));
    bn(&mut out, "head", "_bn1");
    out.push(map(
        "classifier.weight".into(),
        "_fc.weight".into(),
        Layout::Transpose2d,
    ));
    out.push(map(
        "classifier.bias".into(),
        "_fc.bias".into(),
        Layout::Same,
    ));
    out
}

/// Every parameter of `cfg` with its name in a timm EfficientNet state dict.
pub fn timm(cfg: &EfficientNetConfig) -> Vec<Mapping> {
    let mut out = Vec::new();
    let bn = |out: &mut Vec<Mapping>, ours: &str, theirs: &str| {
        push_bn(out, ours, theirs, '.', &BN_TORCH)
    };
    let same = |ours: String, theirs: String| map(ours, theirs, Layout::Same);
    out.push(same("stem.conv.weight".into(), "conv_stem.weight".into()));
    bn(&mut out, "stem", "bn1");
    let blocks = cfg
        .stages()
        .into_iter()
        .enumerate()
        .flat_map(|(s, stage)| (0..stage.len()).map(move |j| format!("blocks.{s}.{j}")));
    for (i, (b, t)) in cfg.expanded_blocks().iter().zip(blocks).enumerate() {
        let o = format!("blocks.{i}");
        // timm's depthwise-separable block (no expansion) numbers its BNs from the
        // depthwise conv and calls its projection `conv_pw`; the inverted residual
        // calls its expansion `conv_pw` and its projection `conv_pwl`.
        let (depthwise_bn, project, project_bn) = if b.expand_ratio != 1 {
            out.push(same(
                format!("{o}.expand.conv.weight"),
                format!("{t}.conv_pw.weight"),
            ));
            bn(&mut out, &format!("{o}.expand"), &format!("{t}.bn1"));
            ("bn2", "conv_pwl", "bn3")
        } else {
            ("bn1", "conv_pw", "bn2")
        };
        out.push(same(
            format!("{o}.depthwise.conv.weight"),
            format!("{t}.conv_dw.weight"),
        ));
        bn(
            &mut out,
            &format!("{o}.depthwise"),
            &format!("{t}.{depthwise_bn}"),
        );
        if b.se_ratio > 0.0 {
            for (ours, theirs) in [("reduce", "conv_reduce"), ("expand", "conv_expand")] {
                for p in ["weight", "bias"] {
                    out.push(same(
                        format!("{o}.se.{ours}.{p}"),
                        format!("{t}.se.{theirs}.{p}"),
                    ));
                }
            }
        }
        out.push(same(
            format!("{o}.project.conv.weight"),
            format!("{t}.{project}.weight"),
        ));
        bn(
            &mut out,
            &format!("{o}.project"),
            &format!("{t}.{project_bn}"),
        );
    }
    out.push(same("head.conv.weight".into(), "conv_head.weight".into()));
    bn(&mut out, "head", "bn2");
    out.push(map(
        "classifier.weight".into(),
        "classifier.weight".into(),
        Layout::Transpose2d,
    ));
    out.push(same("classifier.bias".into(), "classifier.bias".into()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_names_follow_the_call_order_rule() {
        let cfg = EfficientNetConfig::preset("efficientnet-b0").unwrap();
        let m = tensorflow(&cfg, "efficientnet-b0");
        let find = |ours: &str| m.iter().find(|x| x.ours == ours).map(|x| x.theirs.as_str());
        assert_eq!(
            find("blocks.0.project.conv.weight"),
            Some("efficientnet-b0/blocks_0/conv2d/kernel")
        );
        assert_eq!(
            find("blocks.0.project.bn.running_var"),
            Some("efficientnet-b0/blocks_0/tpu_batch_normalization_1/moving_variance")
        );
        assert_eq!(
            find("blocks.5.project.conv.weight"),
            Some("efficientnet-b0/blocks_5/conv2d_1/kernel")
        );
        assert_eq!(
            find("blocks.5.project.bn.gamma"),
            Some("efficientnet-b0/blocks_5/tpu_batch_normalization_2/gamma")
        );
        assert_eq!(
            find("classifier.weight"),
            Some("efficientnet-b0/head/dense/kernel")
        );
        // 311 tensors: every variable of the checkpoint but global_step.
        assert_eq!(m.len(), 311);
    }

    #[test]
    fn pytorch_names_of_lite0() {
        let cfg = EfficientNetConfig::preset("efficientnet-lite0").unwrap();
        let m = pytorch(&cfg);
        let find = |ours: &str| m.iter().find(|x| x.ours == ours).map(|x| x.theirs.as_str());
        assert_eq!(find("stem.bn.gamma"), Some("_bn0.weight"));
        assert_eq!(
            find("blocks.1.expand.bn.running_mean"),
            Some("_blocks.1._bn0.running_mean")
        );
        assert_eq!(find("head.bn.beta"), Some("_bn1.bias"));
        assert!(m.iter().all(|x| !x.ours.contains(".se.")));
    }

    #[test]
    fn timm_names_of_b0_count_stages_and_blocks() {
        let cfg = EfficientNetConfig::preset("efficientnet-b0").unwrap();
        let m = timm(&cfg);
        let find = |ours: &str| m.iter().find(|x| x.ours == ours).map(|x| x.theirs.as_str());
        // Block 0 is the first stage's depthwise-separable block; block 3 is stage 2's first.
        assert_eq!(
            find("blocks.0.project.conv.weight"),
            Some("blocks.0.0.conv_pw.weight")
        );
        assert_eq!(
            find("blocks.0.depthwise.bn.gamma"),
            Some("blocks.0.0.bn1.weight")
        );
        assert_eq!(
            find("blocks.3.expand.conv.weight"),
            Some("blocks.2.0.conv_pw.weight")
        );
        assert_eq!(
            find("blocks.3.project.bn.running_var"),
            Some("blocks.2.0.bn3.running_var")
        );
        assert_eq!(
            find("blocks.15.se.expand.bias"),
            Some("blocks.6.0.se.conv_expand.bias")
        );
        assert_eq!(find("head.bn.beta"), Some("bn2.bias"));
        // Every parameter but nothing else: the TF map's 311 (global_step aside).
        assert_eq!(m.len(), tensorflow(&cfg, "b0").len());
    }
}

//! What a timm model name says about the network beyond its tensor names.
//!
//! timm's `tf_*` EfficientNets are ports of the TensorFlow weights: TF "same" padding and
//! batch-norm ε 1e-3, as the original. Its own models (`efficientnet_b0`,
//! `efficientnet_lite0`, ...) pad symmetrically, use ε 1e-5, and its own Lite models
//! take ImageNet's mean and std rather than the TF Lite models' (x − 127)/128. The state
//! dicts of the two kinds have the same names and shapes, so only the name tells them
//! apart.

use super::config::{Activation, EfficientNetConfig, Padding};
use crate::data::Normalization;

/// `config` adjusted to the timm model `name` (e.g. `tf_efficientnet_b0.aa_in1k`; the
/// pretrained tag after the dot is ignored), or why the two do not go together.
pub fn config_for(config: &EfficientNetConfig, name: &str) -> Result<EfficientNetConfig, String> {
    let arch = name.split('.').next().unwrap_or(name);
    let (tf_port, base) = match arch.strip_prefix("tf_") {
        Some(base) => (true, base),
        None => (false, arch),
    };
    if !base.starts_with("efficientnet_") {
        return Err(format!(
            "timm model `{name}` is not an EfficientNet (expected a name like \
             `tf_efficientnet_b0.aa_in1k` or `efficientnet_lite0.ra_in1k`)"
        ));
    }
    let lite = base.starts_with("efficientnet_lite");
    let config_lite = !config.se && config.activation == Activation::Relu6;
    if lite != config_lite {
        let family = |l: bool| {
            if l {
                "Lite (no SE, ReLU6)"
            } else {
                "B (SE, swish)"
            }
        };
        return Err(format!(
            "timm model `{name}` is an EfficientNet-{}, but the preset `{}` is an EfficientNet-{}",
            family(lite),
            config.name,
            family(config_lite)
        ));
    }
    let mut out = config.clone();
    if !tf_port {
        out.padding = Padding::Symmetric;
        out.bn_eps = 1e-5;
        if lite {
            out.normalization = Some(Normalization::B0);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(name: &str) -> EfficientNetConfig {
        EfficientNetConfig::preset(name).unwrap()
    }

    #[test]
    fn tf_ports_keep_the_original_and_timm_s_own_models_pad_symmetrically() {
        let b0 = preset("efficientnet-b0");
        assert_eq!(config_for(&b0, "tf_efficientnet_b0.aa_in1k").unwrap(), b0);
        let own = config_for(&b0, "efficientnet_b0.ra_in1k").unwrap();
        assert_eq!((own.padding, own.bn_eps), (Padding::Symmetric, 1e-5));
        assert_eq!(own.input_normalization(), Normalization::B0);

        let lite = preset("efficientnet-lite0");
        let tf_lite = config_for(&lite, "tf_efficientnet_lite0").unwrap();
        assert_eq!(tf_lite.input_normalization(), Normalization::Lite);
        let own_lite = config_for(&lite, "efficientnet_lite0.ra_in1k").unwrap();
        assert_eq!(own_lite.padding, Padding::Symmetric);
        assert_eq!(own_lite.input_normalization(), Normalization::B0);
    }

    #[test]
    fn a_family_mismatch_or_another_architecture_is_refused() {
        let b0 = preset("efficientnet-b0");
        let e = config_for(&b0, "efficientnet_lite0").unwrap_err();
        assert!(
            e.contains("EfficientNet-Lite") && e.contains("efficientnet-b0"),
            "{e}"
        );
        let e = config_for(&b0, "resnet50.a1_in1k").unwrap_err();
        assert!(e.contains("not an EfficientNet"), "{e}");
    }
}

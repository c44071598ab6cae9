//! EfficientNet family: parameter counts, shapes, TF-same padding and BN folding (flex CPU).

use adjq::model::layers::{ConvBn, ConvSpec, conv};
use adjq::model::{EfficientNet, EfficientNetConfig};
use burn::module::{Param, RunningState};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

fn device() -> Device {
    let d = Device::flex();
    d.seed(7);
    d
}

#[test]
fn b0_has_the_published_parameter_count() {
    let cfg = EfficientNetConfig::preset("efficientnet-b0").unwrap();
    let m = EfficientNet::new(&cfg, &device());
    // burn counts BN running statistics too: 5,330,564 floats, as in the TF checkpoint.
    assert_eq!(m.num_params(), 5_330_564);
    // Without them: 5,288,548 trainable parameters (TF's count, BN γ/β included).
    let bn_channels = |c: &ConvBn| c.bn.as_ref().map_or(0, |bn| bn.gamma.dims()[0]);
    let mut running = bn_channels(&m.stem) + bn_channels(&m.head);
    for b in &m.blocks {
        running += b.expand.as_ref().map_or(0, bn_channels)
            + bn_channels(&b.depthwise)
            + bn_channels(&b.project);
    }
    assert_eq!(m.num_params() - 2 * running, 5_288_548);
}

#[test]
fn small_preset_maps_32x32_images_to_10_logits() {
    let dev = device();
    let cfg = EfficientNetConfig::preset("efficientnet-tiny").unwrap();
    let m = EfficientNet::new(&cfg, &dev).valid();
    let x = Tensor::<4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &dev);
    let y = m.forward(x);
    assert_eq!(y.dims(), [2, 10]);
    assert!(
        y.into_data()
            .try_to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite())
    );
}

#[test]
fn same_padding_is_tensorflow_s_asymmetric_padding() {
    let dev = device();
    for size in [7usize, 8, 112] {
        let c = conv(
            ConvSpec {
                cin: 2,
                cout: 3,
                kernel: 3,
                stride: 2,
                groups: 1,
            },
            false,
            &dev,
        );
        let x = Tensor::<4>::random([1, 2, size, size], Distribution::Normal(0.0, 1.0), &dev);
        // TF: out = ceil(in / s); total pad = max((out − 1)·s + k − in, 0), the extra on the
        // bottom/right.
        let out = size.div_ceil(2);
        let total = ((out - 1) * 2 + 3).saturating_sub(size);
        let pad = (total / 2, total - total / 2);
        let opts = ConvOptions::new_with_padding([2, 2], [pad, pad], [1, 1], 1);
        let want = conv2d(x.clone(), c.weight.val(), None, opts);
        let got = c.forward(x);
        assert_eq!(got.dims(), [1, 3, out, out]);
        let diff = (got - want).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "size {size}: max diff {diff}");
    }
}

/// Gives every batch norm non-trivial statistics and affine params.
fn randomize_bn(cb: &mut ConvBn, dev: &Device) {
    let bn = cb.bn.as_mut().expect("unfolded");
    let c = bn.gamma.dims()[0];
    let rnd = |lo: f64, hi: f64| Tensor::<1>::random([c], Distribution::Uniform(lo, hi), dev);
    bn.gamma = Param::from_tensor(rnd(0.5, 1.5));
    bn.beta = Param::from_tensor(rnd(-0.5, 0.5));
    bn.running_mean = RunningState::new(rnd(-0.3, 0.3));
    bn.running_var = RunningState::new(rnd(0.5, 2.0));
}

#[test]
fn folding_batch_norm_keeps_the_function() {
    let dev = device();
    let cfg = EfficientNetConfig::preset("efficientnet-small").unwrap();
    let mut m = EfficientNet::new(&cfg, &dev);
    randomize_bn(&mut m.stem, &dev);
    randomize_bn(&mut m.head, &dev);
    for b in &mut m.blocks {
        if let Some(e) = &mut b.expand {
            randomize_bn(e, &dev);
        }
        randomize_bn(&mut b.depthwise, &dev);
        randomize_bn(&mut b.project, &dev);
    }
    let m = m.valid();
    let x = Tensor::<4>::random([4, 3, 32, 32], Distribution::Normal(0.0, 1.0), &dev);
    let want = m.forward(x.clone());
    let folded = m.fold_bn();
    assert!(folded.stem.bn.is_none() && folded.blocks.iter().all(|b| b.project.bn.is_none()));
    let got = folded.forward(x);
    let scale = want.clone().abs().max().into_scalar::<f32>();
    let diff = (got - want).abs().max().into_scalar::<f32>();
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "max diff {diff} (logit scale {scale})"
    );
}

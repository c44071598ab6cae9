//! `thresholds`: the initial per-channel range of every quantization point of a float
//! model — weights directly, activations and swish inputs over `samples` training images
//! (eval preprocessing, shuffled as the original's training queue or in file order) —
//! written to `thresholds.json`, keyed by the original's point names.

use super::support::{self, DATA_PARAMS};
use super::{InputSpec, InputsSpec, StageKind};
use crate::data::Loader;
use crate::exec::context::StageContext;
use crate::manifest::Params;
use crate::manifest::value::{ParamDefault as D, ParamSpec, ParamType as T};
use crate::model::dir;
use crate::quant::qnet::Observe;
use crate::quant::{QConfig, QEfficientNet};
use anyhow::{Result, bail};
use std::sync::LazyLock;

pub struct Thresholds;

pub const OUTPUT: &str = "thresholds.json";

static PARAMS: LazyLock<Vec<ParamSpec>> = LazyLock::new(|| {
    let mut v = vec![
        ParamSpec::new(
            "samples",
            T::Int,
            D::Toml("10000"),
            "training images to observe",
        ),
        ParamSpec::new(
            "batch_size",
            T::Int,
            D::Toml("50"),
            "images per forward pass",
        ),
        ParamSpec::new(
            "shuffle",
            T::Bool,
            D::Toml("true"),
            "draw the images from the shuffled training order (the original's queue, `thresholds.py:33-47`); false: file order",
        ),
        ParamSpec::new("seed", T::Int, D::Toml("0"), "order of the shuffled images"),
    ];
    v.extend_from_slice(DATA_PARAMS);
    v
});

static INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "model",
        required: true,
        doc: "a float model directory (convert / pretrain / qat output `model`)",
    },
    InputSpec {
        name: "data",
        required: true,
        doc: "dataset directory with TF-Slim `train-*` shards",
    },
];

impl StageKind for Thresholds {
    fn name(&self) -> &'static str {
        "thresholds"
    }

    fn version(&self) -> u32 {
        // 2: the original's point names, shuffled images.
        2
    }

    fn doc(&self) -> &'static str {
        "Per-channel min/max of every quantization point of a float model (BN folded): \
         weights directly, activations, swish and SE-gate inputs over `samples` shuffled \
         training images (eval transform). Writes thresholds.json, keyed by the original's \
         point names (its initial_thresholds.json)."
    }

    fn params(&self) -> &'static [ParamSpec] {
        &PARAMS
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Named(INPUTS)
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        vec![OUTPUT.into()]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let device = support::device()?;
        let (float, info) = dir::load_float(ctx.input("model")?, &device)?;
        let float = float.fold_bn();
        let samples = ctx.params.i64("samples").unwrap_or(10000).max(1) as usize;
        let batch = ctx.params.i64("batch_size").unwrap_or(50).max(1) as usize;
        let ds = support::dataset(
            ctx.input("data")?,
            "train",
            ctx.params.i64("label_offset").unwrap_or(1),
            info.config.num_classes,
        )?;
        let order = ctx
            .params
            .bool("shuffle")
            .unwrap_or(true)
            .then(|| ctx.params.i64("seed").unwrap_or(0) as u64);
        let pre = support::preprocess(ctx, &info, false);
        let mut cfg = support::loader_config(ctx, batch, pre, order);
        // One pass: fewer images than `samples` observes them all once.
        cfg.repeat = false;
        cfg.drop_last = false;
        let probe = QEfficientNet::for_calibration(&float, &QConfig::default())?;
        let mut obs = Observe::default();
        let mut seen = 0usize;
        for b in Loader::new(ds, cfg, Default::default())? {
            ctx.check_interrupted()?;
            let b = b?;
            let take = b.labels.len().min(samples - seen);
            let (x, _) = b.to_tensors(&device);
            let x = x.narrow(0, 0, take);
            probe.forward_with(x, &mut obs);
            seen += take;
            ctx.progress(seen as u64, Some(samples as u64), "observing ranges");
            if seen >= samples {
                break;
            }
        }
        if seen == 0 {
            bail!("no training images to observe");
        }
        crate::store::atomic::write_json(&ctx.output_path(OUTPUT), &obs.thresholds)?;
        ctx.set_metric("images", seen);
        ctx.set_metric("points", obs.thresholds.points.len());
        Ok(())
    }
}

//! `thresholds`: the initial per-channel range of every quantization point of a float
//! model — weights directly, activations and swish inputs over `samples` training images
//! (eval preprocessing, shuffled as the original's training queue or in file order) —
//! written to `thresholds.json`, keyed by the original's point names.

use super::support::{self, DataParams};
use crate::artifacts::model_dir as dir;
use crate::data::Loader;
use crate::exec::context::StageContext;
use crate::exec::kind::StageKind;
use crate::manifest::Params;
use crate::manifest::schema::{InputSpec, InputsSpec, KindSchema, ParamSpec, StageParams};
use crate::quant::qnet::Observe;
use crate::quant::{QConfig, QEfficientNet};
use anyhow::{Result, bail};

pub struct Thresholds;

pub const OUTPUT: &str = "thresholds.json";

crate::stage_params! {
    /// Params of `thresholds`.
    pub struct ThresholdsParams {
        /// training images to observe
        pub samples: usize = 10000usize,
        /// images per forward pass
        pub batch_size: usize = 50usize,
        /// draw the images from the shuffled training order (the original's queue, `thresholds.py:33-47`); false: file order
        pub shuffle: bool = true,
        /// order of the shuffled images
        pub seed: u64 = 0u64,
    }
    shared { pub data: DataParams }
}

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

impl KindSchema for Thresholds {
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
        ThresholdsParams::table()
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Named(INPUTS)
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        vec![OUTPUT.into()]
    }

    fn uses_device(&self) -> bool {
        true
    }
}

impl StageKind for Thresholds {
    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let p: ThresholdsParams = ctx.params()?;
        let device = ctx.device()?;
        let (float, info) = dir::load_float(ctx.input("model")?, &device)?;
        let float = float.fold_bn();
        let samples = p.samples.max(1);
        let batch = p.batch_size.max(1);
        let ds = support::dataset(
            ctx.input("data")?,
            "train",
            &p.data,
            info.config.num_classes,
        )?;
        let order = p.shuffle.then_some(p.seed);
        let pre = support::preprocess(&p.data, &info, false);
        let mut cfg = support::loader_config(&p.data, batch, pre, order);
        // One pass: fewer images than `samples` observes them all once.
        cfg.repeat = false;
        cfg.drop_last = false;
        let probe = QEfficientNet::for_calibration(&float, &QConfig::default())?;
        let mut obs = Observe::default();
        let mut seen = 0usize;
        for b in Loader::new(ds.clone(), cfg, Default::default())? {
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
        crate::atomic::write_json(&ctx.output_path(OUTPUT), &obs.thresholds)?;
        ctx.set_metric("images", seen);
        ctx.set_metric("points", obs.thresholds.points.len());
        support::report_skipped(ctx, &p.data, &[&ds]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn params_table_matches_struct() {
        super::super::check_params::<super::ThresholdsParams>();
    }
}

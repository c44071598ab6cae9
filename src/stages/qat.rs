//! `qat`: TensorFlow-style 8-bit quantization-aware training from a float model — BN
//! folded, weights fake-quantized per output channel with their own min/max, conv and
//! swish inputs with EMA ranges, quant delay — the published recipe's step 2. Outputs the
//! trained weights as a float model directory (identity batch norms, so the next stages
//! fold back exactly these weights) and the ranges.

use super::support::{self, DataParams};
use crate::artifacts::model_dir::{self as dir, ModelInfo};
use crate::artifacts::{self, Accuracy};
use crate::data::{Cursor, Loader};
use crate::exec::context::StageContext;
use crate::exec::kind::StageKind;
use crate::manifest::Params;
use crate::manifest::schema::{InputSpec, InputsSpec, KindSchema, ParamSpec, StageParams};
use crate::quant::tfqat::TfQat;
use crate::quant::{QConfig, QEfficientNet};
use crate::train::loss::cross_entropy;
use crate::train::params::{param_ids, stable_ids};
use anyhow::{Result, bail};
use burn::module::{Module, ParamId};
use burn::optim::{AdamConfig, GradientsParams};
use serde::{Deserialize, Serialize};

pub struct Qat;

pub const RANGES: &str = "ranges.json";
pub use crate::artifacts::METRICS;

crate::stage_params! {
    /// Params of `qat`.
    pub struct QatParams {
        /// bits of weights and activations
        pub bits: u32 = 8u32,
        /// training epochs
        pub epochs: usize = 1usize,
        /// training batch size
        pub batch_size: usize = 32usize,
        /// Adam learning rate
        pub lr: f64 = 1e-4,
        /// label smoothing ε
        pub label_smoothing: f64 = 0.1,
        /// decay of the activation range averages
        pub ema_decay: f64 = 0.999,
        /// steps before activations are quantized
        pub quant_delay: u64 = 0u64,
        /// data order, augmentation, dropout
        pub seed: u64 = 0u64,
        /// validation images per epoch (0: all)
        pub val_samples: usize = 0usize,
    }
    shared { pub data: DataParams }
}

static INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "model",
        required: true,
        doc: "the float model directory to start from",
    },
    support::TRAIN_DATA,
];

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Epoch {
    epoch: usize,
    loss: f64,
    /// Accuracy of the fake-quantized network.
    accuracy: Accuracy,
}

#[derive(Default, Serialize, Deserialize)]
struct Progress {
    epochs: usize,
    float_accuracy: Option<Accuracy>,
    records: Vec<Epoch>,
    qat: TfQat,
}

impl KindSchema for Qat {
    fn name(&self) -> &'static str {
        "qat"
    }

    fn version(&self) -> u32 {
        2
    }

    fn doc(&self) -> &'static str {
        "TF-style quantization-aware training (8 bits by default): BN folded, per-channel \
         weight fake quant with TF's nudging and gradients, EMA activation ranges, quant \
         delay. Outputs the weights as a float model directory, ranges.json and \
         metrics.jsonl (float and quantized top-1)."
    }

    fn params(&self) -> &'static [ParamSpec] {
        QatParams::table()
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Named(INPUTS)
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        [dir::OUTPUT, RANGES, METRICS].map(String::from).to_vec()
    }

    fn uses_device(&self) -> bool {
        true
    }
}

impl StageKind for Qat {
    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let p: QatParams = ctx.params()?;
        let plain = ctx.device()?;
        let device = plain.clone().autodiff();
        let seed = p.seed;
        let (float, info) = dir::load_float(ctx.input("model")?, &plain)?;
        let bits = p.bits.clamp(2, 16);
        // The network is only a carrier of weights and biases here; its own quantizers
        // are unused (the TF points replace them).
        let carrier = QConfig {
            bits_trainable: false,
            ..QConfig::default()
        };
        let mut net = stable_ids(QEfficientNet::for_calibration(
            &float.clone().fold_bn(),
            &carrier,
        )?)
        .to_device(&device)
        .train();
        let ids: Vec<ParamId> = param_ids(&net)
            .into_iter()
            .filter(|(path, _)| !path.contains("_q."))
            .map(|(_, id)| id)
            .collect();
        let mut opt = AdamConfig::new().init();

        let data = ctx.input("data")?.to_path_buf();
        let classes = info.config.num_classes;
        let train = support::dataset(&data, "train", &p.data, classes)?;
        let val = support::dataset(&data, "validation", &p.data, classes)?;
        let batch = p.batch_size.max(1);
        let batches = (train.len() as usize / batch) as u64;
        if batches == 0 {
            bail!(
                "batch_size {batch} is larger than the training set ({} images)",
                train.len()
            );
        }
        let (train_cfg, val_cfg) =
            support::train_val_loaders(&p.data, &info, batch, seed, true, 100);
        let val_samples = p.val_samples;
        let epochs = p.epochs;
        let lr = p.lr;
        let smoothing = p.label_smoothing as f32;

        let mut progress = Progress {
            qat: TfQat::new(bits, p.ema_decay as f32, p.quant_delay),
            ..Progress::default()
        };
        if let Some(state) = ctx.latest_state() {
            (net, opt, progress, _) = support::load_training_state(&state, net, opt)?;
        }
        if progress.float_accuracy.is_none() {
            let f = float.clone();
            progress.float_accuracy = Some(support::evaluate(
                &|x| f.forward(x),
                val.clone(),
                val_cfg.clone(),
                val_samples,
                &plain,
            )?);
        }

        while progress.epochs < epochs {
            let e = progress.epochs;
            device.seed(seed.wrapping_mul(1_000_003).wrapping_add(e as u64 + 1));
            let start = Cursor {
                epoch: e as u64,
                batch: 0,
            };
            let (mut sum, mut steps) = (0.0f64, 0usize);
            progress.qat.training = true;
            for b in Loader::new(train.clone(), train_cfg.clone(), start)?.take(batches as usize) {
                ctx.check_interrupted()?;
                let (x, y) = b?.to_tensors(&device);
                let loss = cross_entropy(net.forward_with(x, &mut progress.qat), y, smoothing);
                let value = loss.clone().into_scalar::<f32>() as f64;
                if !value.is_finite() {
                    bail!("epoch {e} step {steps}: the cross-entropy loss is {value}; stopping");
                }
                let mut grads = loss.backward();
                let g = GradientsParams::from_params(&mut grads, &net, &ids);
                net = opt.step(lr, net, g);
                progress.qat.step += 1;
                sum += value;
                steps += 1;
                ctx.progress(
                    steps as u64,
                    Some(batches),
                    format!("epoch {}/{epochs} loss {value:.4}", e + 1),
                );
            }
            progress.qat.training = false;
            let valid = net.valid();
            let mut points = progress.qat.clone();
            let accuracy = {
                let cell = std::cell::RefCell::new(&mut points);
                support::evaluate(
                    &|x| valid.forward_with(x, *cell.borrow_mut()),
                    val.clone(),
                    val_cfg.clone(),
                    val_samples,
                    &plain,
                )?
            };
            progress.records.push(Epoch {
                epoch: e,
                loss: sum / steps.max(1) as f64,
                accuracy,
            });
            progress.epochs += 1;
            ctx.save_state(&progress.epochs.to_string(), |d| {
                support::save_training_state(d, &net, &opt, &progress, None)
            })?;
        }

        let out_info = ModelInfo::float(
            &info.config,
            serde_json::json!({"stage": ctx.stage, "qat_bits": bits}),
        );
        dir::write(
            &ctx.output_path(dir::OUTPUT),
            &net.valid().to_float_map(),
            &out_info,
        )?;
        crate::atomic::write_json(&ctx.output_path(RANGES), &progress.qat)?;
        artifacts::write_jsonl(&ctx.output_path(METRICS), &progress.records)?;
        if let Some(f) = progress.float_accuracy {
            ctx.set_metric("float_top1", f.top1);
        }
        if let Some(last) = progress.records.last() {
            ctx.set_metric("top1", last.accuracy.top1);
        }
        support::report_skipped(ctx, &p.data, &[&train, &val]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn params_table_matches_struct() {
        super::super::check_params::<super::QatParams>();
    }
}

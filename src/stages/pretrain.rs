//! `pretrain`: float training from scratch (or from a model directory) — the demo's
//! step 1, where no published checkpoint exists. Adam or SGD with momentum, label
//! smoothing, cosine or fixed lr; resumable at every epoch boundary.

use super::support::{self, DataParams, ModelPreset};
use crate::artifacts::model_dir::{self as dir, ModelInfo};
use crate::artifacts::{self, Accuracy};
use crate::data::{Cursor, Loader};
use crate::exec::context::StageContext;
use crate::exec::kind::StageKind;
use crate::manifest::Params;
use crate::manifest::schema::{InputSpec, InputsSpec, KindSchema, ParamSpec, StageParams};
use crate::model::{EfficientNet, import};
use crate::report::tensorboard::{self, EventWriter};
use crate::train::ema::Ema;
use crate::train::loss::cross_entropy;
use crate::train::params::stable_ids;
use anyhow::{Result, anyhow, bail};
use burn::module::Module;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use serde::{Deserialize, Serialize};

pub struct Pretrain;

pub const MODEL: &str = dir::OUTPUT;
pub use crate::artifacts::METRICS;

crate::param_choice! {
    /// Optimizer of float training.
    pub enum OptimizerParam {
        Adam = "adam",
        Sgd = "sgd",
    }
}

crate::param_choice! {
    /// Learning-rate schedule of float training.
    pub enum LrScheduleParam {
        Cosine = "cosine",
        Fixed = "fixed",
    }
}

crate::stage_params! {
    /// Params of `pretrain`.
    pub struct PretrainParams {
        /// architecture preset
        pub model: ModelPreset,
        /// training epochs
        pub epochs: usize = 10usize,
        /// training batch size
        pub batch_size: usize = 64usize,
        /// optimizer (sgd uses momentum)
        pub optimizer: OptimizerParam = OptimizerParam::Adam,
        /// peak learning rate
        pub lr: f64 = 2e-3,
        /// SGD momentum
        pub momentum: f64 = 0.9,
        /// cosine decay to 0 over all steps, or fixed
        pub lr_schedule: LrScheduleParam = LrScheduleParam::Cosine,
        /// label smoothing ε
        pub label_smoothing: f64 = 0.1,
        /// moving average of the weights (e.g. 0.999; 0 = off); when on, validation and the output use it
        pub ema_decay: f64 = 0.0,
        /// initialisation, data order, augmentation, dropout
        pub seed: u64 = 0u64,
        /// validation images per epoch (0: all)
        pub val_samples: usize = 0usize,
    }
    shared { pub data: DataParams }
}

static INPUTS: &[InputSpec] = &[
    support::TRAIN_DATA,
    InputSpec {
        name: "init",
        required: false,
        doc: "a float model directory to start from (default: random initialisation)",
    },
];

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Epoch {
    epoch: usize,
    loss: f64,
    lr: f64,
    accuracy: Accuracy,
}

#[derive(Default, Serialize, Deserialize)]
struct Progress {
    epochs: usize,
    records: Vec<Epoch>,
}

impl KindSchema for Pretrain {
    fn name(&self) -> &'static str {
        "pretrain"
    }

    fn version(&self) -> u32 {
        1
    }

    fn doc(&self) -> &'static str {
        "Float training of an EfficientNet preset from scratch (or from `init`): cross \
         entropy with label smoothing, Adam or SGD+momentum, cosine or fixed lr, training \
         augmentation; validation each epoch. Outputs the model directory, metrics.jsonl \
         and TensorBoard curves."
    }

    fn params(&self) -> &'static [ParamSpec] {
        PretrainParams::table()
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Named(INPUTS)
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        [MODEL, METRICS, tensorboard::OUTPUT]
            .map(String::from)
            .to_vec()
    }

    fn uses_device(&self) -> bool {
        true
    }
}

impl StageKind for Pretrain {
    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let p: PretrainParams = ctx.params()?;
        let plain = ctx.device()?;
        let device = plain.clone().autodiff();
        let seed = p.seed;
        let config = p.model.config()?;
        device.seed(seed);
        let mut model = match ctx.inputs.get("init") {
            Some(init) => dir::load_float(init, &device)?.0,
            None => EfficientNet::new(&config, &device),
        };
        model = stable_ids(model);
        let info = ModelInfo::float(&model.config, serde_json::json!({"stage": ctx.stage}));
        let new_opt = || -> ModuleOptimizer {
            match p.optimizer {
                OptimizerParam::Sgd => SgdConfig::new()
                    .with_momentum(Some(MomentumConfig::new().with_momentum(p.momentum)))
                    .init(),
                OptimizerParam::Adam => AdamConfig::new().init(),
            }
        };
        let mut opt = new_opt();

        let data = ctx.input("data")?.to_path_buf();
        let classes = config.num_classes;
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
        let epochs = p.epochs;
        let total_steps = (epochs as u64 * batches).max(1);
        let lr0 = p.lr;
        let cosine = p.lr_schedule == LrScheduleParam::Cosine;
        let smoothing = p.label_smoothing as f32;
        let (train_cfg, val_cfg) =
            support::train_val_loaders(&p.data, &info, batch, seed, true, 100);
        let val_samples = p.val_samples;

        let mut progress = Progress::default();
        let ema_decay = p.ema_decay;
        let mut ema = (ema_decay > 0.0).then(|| Ema::new(ema_decay));
        if let Some(state) = ctx.latest_state() {
            let (m, o, pr, shadow) = support::load_training_state(&state, model, new_opt())?;
            (model, opt, progress) = (m, o, pr);
            if let (Some(e), Some(shadow)) = (&mut ema, shadow) {
                *e = Ema::with_shadow(ema_decay, shadow);
            }
        }
        ctx.set_metric("resumed_at_epoch", progress.epochs);
        let mut curves = EventWriter::resume(
            &ctx.output_path(tensorboard::OUTPUT),
            progress.epochs as i64 + 1,
            &support::hparams(&ctx.params),
            &ctx.key,
        )?;

        while progress.epochs < epochs {
            let e = progress.epochs;
            device.seed(seed.wrapping_mul(1_000_003).wrapping_add(e as u64 + 1));
            let start = Cursor {
                epoch: e as u64,
                batch: 0,
            };
            let (mut loss_sum, mut steps, mut lr) = (0.0f64, 0usize, lr0);
            let t0 = std::time::Instant::now();
            for b in Loader::new(train.clone(), train_cfg.clone(), start)?.take(batches as usize) {
                ctx.check_interrupted()?;
                let (x, y) = b?.to_tensors(&device);
                let step = e as u64 * batches + steps as u64;
                lr = if cosine {
                    lr0 * 0.5
                        * (1.0 + (std::f64::consts::PI * step as f64 / total_steps as f64).cos())
                } else {
                    lr0
                };
                let loss = cross_entropy(model.forward(x), y, smoothing);
                let value = loss.clone().into_scalar::<f32>() as f64;
                if !value.is_finite() {
                    bail!(
                        "epoch {e} step {steps}: the cross-entropy loss is {value}; stopping (the last epoch's state is intact)"
                    );
                }
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = opt.step(lr, model, grads);
                if let Some(e) = &mut ema {
                    e.update(&import::export(&model))?;
                }
                loss_sum += value;
                steps += 1;
                let ips = (steps * batch) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                ctx.progress(
                    steps as u64,
                    Some(batches),
                    format!(
                        "epoch {}/{epochs} loss {value:.4} lr {lr:.2e} {ips:.0} img/s",
                        e + 1
                    ),
                );
            }
            let valid = evaluated(&model, &ema)?;
            let accuracy = support::evaluate(
                &|x| valid.forward(x),
                val.clone(),
                val_cfg.clone(),
                val_samples,
                &plain,
            )?;
            progress.records.push(Epoch {
                epoch: e,
                loss: loss_sum / steps.max(1) as f64,
                lr,
                accuracy,
            });
            progress.epochs += 1;
            artifacts::write_jsonl(&ctx.output_path(METRICS), &progress.records)?;
            if let Some(r) = progress.records.last() {
                curves.scalars(progress.epochs as i64, &curve_points(r))?;
            }
            ctx.save_state(&progress.epochs.to_string(), |d| {
                let shadow = ema.as_ref().and_then(Ema::shadow);
                support::save_training_state(d, &model, &opt, &progress, shadow)
            })?;
        }
        let out = evaluated(&model, &ema)?;
        dir::write(&ctx.output_path(MODEL), &import::export(&out), &info)?;
        artifacts::write_jsonl(&ctx.output_path(METRICS), &progress.records)?;
        if let Some(last) = progress.records.last() {
            ctx.set_metric("top1", last.accuracy.top1);
            ctx.set_metric("top5", last.accuracy.top5);
            ctx.set_metric("loss", last.loss);
        }
        support::report_skipped(ctx, &p.data, &[&train, &val]);
        curves.finish(progress.epochs as i64, &ctx.metrics)?;
        Ok(())
    }
}

/// The model to validate and output: the EMA of the weights when one is kept.
fn evaluated(model: &EfficientNet, ema: &Option<Ema>) -> Result<EfficientNet> {
    let valid = model.valid();
    match ema.as_ref().and_then(Ema::shadow) {
        Some(shadow) => import::load(valid, shadow).map_err(|m| anyhow!("EMA weights: {m}")),
        None => Ok(valid),
    }
}

/// One epoch's TensorBoard scalars.
fn curve_points(r: &Epoch) -> [(&'static str, f64); 4] {
    [
        ("loss/cross_entropy", r.loss),
        ("lr", r.lr),
        ("accuracy/top1", r.accuracy.top1),
        ("accuracy/top5", r.accuracy.top5),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn params_table_matches_struct() {
        super::super::check_params::<super::PretrainParams>();
    }
}

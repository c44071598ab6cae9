//! `pretrain`: float training from scratch (or from a model directory) — the demo's
//! step 1, where no published checkpoint exists. Adam or SGD with momentum, label
//! smoothing, cosine or fixed lr; resumable at every epoch boundary.

use super::support::{self, Accuracy, DATA_PARAMS, StateDirs};
use super::{InputSpec, InputsSpec, StageKind};
use crate::data::{Cursor, Loader};
use crate::exec::context::StageContext;
use crate::manifest::Params;
use crate::manifest::value::{ParamDefault as D, ParamSpec, ParamType as T};
use crate::model::config::PRESETS;
use crate::model::dir::{self, ModelInfo};
use crate::model::{EfficientNet, EfficientNetConfig, import};
use crate::report::tensorboard::EventWriter;
use crate::train::ema::Ema;
use crate::train::loss::cross_entropy;
use crate::train::params::stable_ids;
use anyhow::{Result, anyhow, bail};
use burn::module::Module;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

pub struct Pretrain;

pub const MODEL: &str = dir::OUTPUT;
pub const METRICS: &str = "metrics.jsonl";
pub const TENSORBOARD: &str = "tensorboard";

static PARAMS: LazyLock<Vec<ParamSpec>> = LazyLock::new(|| {
    let mut v = vec![
        ParamSpec::new(
            "model",
            T::Choice(PRESETS),
            D::Required,
            "architecture preset",
        ),
        ParamSpec::new("epochs", T::Int, D::Toml("10"), "training epochs"),
        ParamSpec::new("batch_size", T::Int, D::Toml("64"), "training batch size"),
        ParamSpec::new(
            "optimizer",
            T::Choice(&["adam", "sgd"]),
            D::Toml("\"adam\""),
            "optimizer (sgd uses momentum)",
        ),
        ParamSpec::new("lr", T::Float, D::Toml("2e-3"), "peak learning rate"),
        ParamSpec::new("momentum", T::Float, D::Toml("0.9"), "SGD momentum"),
        ParamSpec::new(
            "lr_schedule",
            T::Choice(&["cosine", "fixed"]),
            D::Toml("\"cosine\""),
            "cosine decay to 0 over all steps, or fixed",
        ),
        ParamSpec::new(
            "label_smoothing",
            T::Float,
            D::Toml("0.1"),
            "label smoothing ε",
        ),
        ParamSpec::new(
            "ema_decay",
            T::Float,
            D::Toml("0.0"),
            "moving average of the weights (e.g. 0.999; 0 = off); when on, validation and the output use it",
        ),
        ParamSpec::new(
            "seed",
            T::Int,
            D::Toml("0"),
            "initialisation, data order, augmentation, dropout",
        ),
        ParamSpec::new(
            "val_samples",
            T::Int,
            D::Toml("0"),
            "validation images per epoch (0: all)",
        ),
    ];
    v.extend_from_slice(DATA_PARAMS);
    v
});

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

impl StageKind for Pretrain {
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
        &PARAMS
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Named(INPUTS)
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        [MODEL, METRICS, TENSORBOARD].map(String::from).to_vec()
    }

    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let p = ctx.params.clone();
        let plain = support::device()?;
        let device = plain.clone().autodiff();
        let seed = p.i64("seed").unwrap_or(0) as u64;
        let preset = p.str("model").unwrap_or_default().to_string();
        let config = EfficientNetConfig::preset(&preset)
            .ok_or_else(|| anyhow!("unknown model preset `{preset}`"))?;
        device.seed(seed);
        let mut model = match ctx.inputs.get("init") {
            Some(init) => dir::load_float(init, &device)?.0,
            None => EfficientNet::new(&config, &device),
        };
        model = stable_ids(model);
        let info = ModelInfo::float(&model.config, serde_json::json!({"stage": ctx.stage}));
        let new_opt = || -> ModuleOptimizer {
            match p.str("optimizer") {
                Some("sgd") => SgdConfig::new()
                    .with_momentum(Some(
                        MomentumConfig::new().with_momentum(p.f64("momentum").unwrap_or(0.9)),
                    ))
                    .init(),
                _ => AdamConfig::new().init(),
            }
        };
        let mut opt = new_opt();

        let data = ctx.input("data")?.to_path_buf();
        let classes = config.num_classes;
        let offset = p.i64("label_offset").unwrap_or(1);
        let train = support::dataset(&data, "train", offset, classes)?;
        let val = support::dataset(&data, "validation", offset, classes)?;
        let batch = p.i64("batch_size").unwrap_or(64).max(1) as usize;
        let batches = (train.len() as usize / batch) as u64;
        if batches == 0 {
            bail!(
                "batch_size {batch} is larger than the training set ({} images)",
                train.len()
            );
        }
        let epochs = p.i64("epochs").unwrap_or(10).max(0) as usize;
        let total_steps = (epochs as u64 * batches).max(1);
        let lr0 = p.f64("lr").unwrap_or(2e-3);
        let cosine = p.str("lr_schedule") != Some("fixed");
        let smoothing = p.f64("label_smoothing").unwrap_or(0.1) as f32;
        let (train_cfg, val_cfg) = support::train_val_loaders(ctx, &info, batch, seed, true, 100);
        let val_samples = p.i64("val_samples").unwrap_or(0).max(0) as usize;

        let states = StateDirs::new(ctx);
        let mut progress = Progress::default();
        let ema_decay = p.f64("ema_decay").unwrap_or(0.0);
        let mut ema = (ema_decay > 0.0).then(|| Ema::new(ema_decay));
        if let Some(state) = states.latest() {
            let (m, o, pr, shadow) = support::load_training_state(&state, model, new_opt())?;
            (model, opt, progress) = (m, o, pr);
            if let (Some(e), Some(shadow)) = (&mut ema, shadow) {
                *e = Ema::with_shadow(ema_decay, shadow);
            }
        }
        ctx.set_metric("resumed_at_epoch", progress.epochs);

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
            write_logs(ctx, &progress.records)?;
            states.save(&progress.epochs.to_string(), |d| {
                let shadow = ema.as_ref().and_then(Ema::shadow);
                support::save_training_state(d, &model, &opt, &progress, shadow)
            })?;
        }
        let out = evaluated(&model, &ema)?;
        dir::write(&ctx.output_path(MODEL), &import::export(&out), &info)?;
        write_logs(ctx, &progress.records)?;
        if let Some(last) = progress.records.last() {
            ctx.set_metric("top1", last.accuracy.top1);
            ctx.set_metric("top5", last.accuracy.top5);
            ctx.set_metric("loss", last.loss);
        }
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

fn write_logs(ctx: &StageContext, records: &[Epoch]) -> Result<()> {
    support::write_jsonl(&ctx.output_path(METRICS), records)?;
    let mut tb = EventWriter::create(&ctx.output_path(TENSORBOARD))?;
    for r in records {
        tb.scalars(
            r.epoch as i64 + 1,
            &[
                ("loss/cross_entropy", r.loss),
                ("lr", r.lr),
                ("accuracy/top1", r.accuracy.top1),
                ("accuracy/top5", r.accuracy.top5),
            ],
        )?;
    }
    Ok(())
}

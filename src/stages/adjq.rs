//! `adjq`: adjustable-quantization training (DESIGN §3) — mini-epochs of 1/10 epoch,
//! validation and a checkpoint after each, precision trained on the schedule, SWA;
//! resumable at every mini-epoch boundary (model, both Adam states, SWA sums, data
//! position; the RNG is reseeded per mini-epoch from the seed).

use super::support::{self, Accuracy, DATA_PARAMS, StateDirs};
use super::{InputSpec, InputsSpec, StageKind};
use crate::data::{Cursor, Loader};
use crate::exec::context::StageContext;
use crate::manifest::Params;
use crate::manifest::value::{ParamDefault as D, ParamSpec, ParamType as T};
use crate::model::dir::{self, ModelInfo};
use crate::quant::info::QuantInfo;
use crate::quant::{ClipGrad, QConfig, QEfficientNet, RangePreset, Thresholds};
use crate::report::tensorboard::EventWriter;
use crate::score::metric::{MetricConfig, MetricRule, Pairing, metric};
use crate::train::adjq::{AdjqConfig, AdjqTrainer};
use crate::train::loss::LossTerms;
use crate::train::schedule::{LrSchedule, MINI_EPOCHS, PrecisionSchedule, SwaSchedule};
use crate::train::swa::Swa;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

pub struct Adjq;

pub const MODEL: &str = dir::OUTPUT;
pub const CHECKPOINTS: &str = "checkpoints";
pub const METRICS: &str = "metrics.jsonl";
pub const QUANT_INFO: &str = "quant_info.json";
pub const TENSORBOARD: &str = "tensorboard";

static PARAMS: LazyLock<Vec<ParamSpec>> = LazyLock::new(|| {
    let mut v = vec![
        ParamSpec::new(
            "weight_bits",
            T::Float,
            D::Toml("8.0"),
            "initial weight bits b0",
        ),
        ParamSpec::new(
            "act_bits",
            T::Float,
            D::Toml("8.0"),
            "initial activation bits b0",
        ),
        ParamSpec::new(
            "swish_bits",
            T::Float,
            D::Toml("8.0"),
            "bits of every swish input (fixed)",
        ),
        ParamSpec::new(
            "bias_bits",
            T::Float,
            D::Toml("8.0"),
            "bits of every bias (fixed)",
        ),
        ParamSpec::new(
            "bits_trainable",
            T::Bool,
            D::Toml("true"),
            "learn per-channel bit-widths",
        ),
        ParamSpec::new(
            "range",
            T::Choice(RangePreset::NAMES),
            D::Toml("\"default\""),
            "bounds of the range parameters a, s",
        ),
        ParamSpec::new(
            "clip_grad",
            T::Choice(ClipGrad::NAMES),
            D::Toml("\"as_executed\""),
            "gradient of the quantizer clip's upper bound 2^b − 1: `as_executed` (the original's run: the elements above it) or `detached` (none, the original's intent)",
        ),
        ParamSpec::new(
            "optimizer_state",
            T::Choice(&["continue", "fresh"]),
            D::Toml("\"continue\""),
            "starting from an adjq/select checkpoint: `continue` its Adam states (the original restores them) or start `fresh`",
        ),
        ParamSpec::new(
            "alpha",
            T::Float,
            D::Toml("7.0"),
            "weight of the cross entropy",
        ),
        ParamSpec::new(
            "beta",
            T::Float,
            D::Toml("85.0"),
            "weight of the metric term",
        ),
        ParamSpec::new(
            "gamma",
            T::Float,
            D::Toml("0.7"),
            "share of the max's gradient given to activation bits",
        ),
        ParamSpec::new(
            "target",
            T::Float,
            D::Toml("0.18"),
            "metric target: pushed down above it, up below it",
        ),
        ParamSpec::new(
            "lr",
            T::Float,
            D::Toml("3e-6"),
            "Adam lr of weights, biases and ranges",
        ),
        ParamSpec::new(
            "lr_bits",
            T::Float,
            D::Toml("1e-3"),
            "Adam lr of the bit scales",
        ),
        ParamSpec::new(
            "lr_fixed",
            T::Bool,
            D::Toml("true"),
            "fixed lr (else decay with restarts)",
        ),
        ParamSpec::new(
            "lr_decay",
            T::Float,
            D::Toml("1e-4"),
            "decay per step when lr_fixed = false",
        ),
        ParamSpec::new(
            "reinit",
            T::Int,
            D::Toml("800"),
            "steps between Adam restarts when lr_fixed = false",
        ),
        ParamSpec::new(
            "max_epoch",
            T::Int,
            D::Toml("3"),
            "epochs (each 10 mini-epochs)",
        ),
        ParamSpec::new("batch_size", T::Int, D::Toml("25"), "training batch size"),
        ParamSpec::new(
            "iter_train",
            T::Bool,
            D::Toml("true"),
            "train precision only every iter_train_freq-th mini-epoch",
        ),
        ParamSpec::new("iter_train_freq", T::Int, D::Toml("2"), "see iter_train"),
        ParamSpec::new(
            "warm_up_epoch",
            T::Float,
            D::Toml("0.0"),
            "no precision training before this epoch",
        ),
        ParamSpec::new(
            "finetune",
            T::Bool,
            D::Toml("false"),
            "precision frozen throughout",
        ),
        ParamSpec::new(
            "swa_delay",
            T::Float,
            D::Toml("-1.0"),
            "record SWA snapshots from this epoch on (negative: no SWA)",
        ),
        ParamSpec::new(
            "swa_freq",
            T::Float,
            D::Toml("0.1"),
            "SWA snapshot every int(10·swa_freq) mini-epochs",
        ),
        ParamSpec::new(
            "augment",
            T::Bool,
            D::Toml("false"),
            "training images get random resized crops and flips; false: the eval transform, as the original without --aug",
        ),
        ParamSpec::new("seed", T::Int, D::Toml("0"), "data order and augmentation"),
        ParamSpec::new(
            "val_samples",
            T::Int,
            D::Toml("0"),
            "validation images per mini-epoch (0: all)",
        ),
        ParamSpec::new(
            "metric_rule",
            T::Choice(MetricRule::NAMES),
            D::Toml("\"paper\""),
            "score the metric term trains against: `paper` (the original's) or `official` (the MicroNet counter's)",
        ),
        ParamSpec::new(
            "metric_pairing",
            T::Choice(Pairing::NAMES),
            D::Toml("\"tile\""),
            "channel pairs the metric's max(weight bits, activation bits) averages: `tile` (the original's tf.tile) or `all`",
        ),
        ParamSpec::new(
            "params_baseline",
            T::Float,
            D::Toml("6.9e6"),
            "P0 of the paper metric",
        ),
        ParamSpec::new(
            "ops_baseline",
            T::Float,
            D::Toml("1170e6"),
            "O0 of the paper metric",
        ),
    ];
    v.extend_from_slice(DATA_PARAMS);
    v
});

static INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "init",
        required: true,
        doc: "starting model directory: a float model (quantized here with `thresholds`) or an adjq/select output",
    },
    InputSpec {
        name: "teacher",
        required: true,
        doc: "the float model distilled from (a convert / pretrain output)",
    },
    InputSpec {
        name: "thresholds",
        required: false,
        doc: "thresholds.json of the init model (needed when init is a float model)",
    },
    support::TRAIN_DATA,
];

/// One mini-epoch's results (a line of metrics.jsonl).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MiniEpoch {
    pub epoch: usize,
    pub mini_epoch: usize,
    pub steps: usize,
    pub trained_bits: bool,
    pub loss: LossTerms,
    pub accuracy: Accuracy,
    pub metric: f64,
    pub params: f64,
    pub ops: f64,
    pub avg_weight_bits: f64,
    pub avg_act_bits: f64,
    pub checkpoint: String,
}

/// What a resumed attempt needs besides the trainer's own state.
#[derive(Default, Serialize, Deserialize)]
struct Progress {
    /// Mini-epochs completed (tenths of an epoch).
    tenths: usize,
    records: Vec<MiniEpoch>,
    swa: Swa,
}

fn f(p: &Params, name: &str, default: f64) -> f64 {
    p.f64(name).unwrap_or(default)
}

fn int(p: &Params, name: &str, default: i64) -> usize {
    p.i64(name).unwrap_or(default).max(0) as usize
}

impl StageKind for Adjq {
    fn name(&self) -> &'static str {
        "adjq"
    }

    fn version(&self) -> u32 {
        // 2: the original's quantization points, TF1 Adam, the clip gradient as executed,
        // the tile pairing and no dropout.
        2
    }

    fn doc(&self) -> &'static str {
        "Adjustable-quantization training: per-channel learned ranges and bit-widths, \
         distillation to the float teacher, cross entropy and the signed paper metric; \
         two TF1 Adams (weights/ranges, bit scales) continued from an adjq/select \
         checkpoint, mini-epochs with validation and a checkpoint each, iterative \
         precision training, optional SWA; the original's quantization points and \
         gradients. Outputs the final (or SWA) model, every mini-epoch checkpoint (with \
         both Adam states), quant_info.json, metrics.jsonl and TensorBoard curves."
    }

    fn params(&self) -> &'static [ParamSpec] {
        &PARAMS
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Named(INPUTS)
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        [MODEL, CHECKPOINTS, METRICS, QUANT_INFO, TENSORBOARD]
            .map(String::from)
            .to_vec()
    }

    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let p = ctx.params.clone();
        let plain = support::device()?;
        let device = plain.clone().autodiff();
        let seed = p.i64("seed").unwrap_or(0) as u64;
        // The original trains on its eval transform unless `--aug` (`data.py:274-282`).
        let augment = p.bool("augment").unwrap_or(false);
        let (teacher, teacher_info) = dir::load_float(ctx.input("teacher")?, &plain)?;
        let init_dir = ctx.input("init")?.to_path_buf();
        let init_info = dir::read_info(&init_dir)?;
        let qconfig = QConfig {
            weight_bits: f(&p, "weight_bits", 8.0) as f32,
            act_bits: f(&p, "act_bits", 8.0) as f32,
            swish_bits: f(&p, "swish_bits", 8.0) as f32,
            bias_bits: f(&p, "bias_bits", 8.0) as f32,
            bits_trainable: p.bool("bits_trainable").unwrap_or(true),
            range: RangePreset::parse(p.str("range").unwrap_or("default")).unwrap_or_default(),
            clip_grad: ClipGrad::parse(p.str("clip_grad").unwrap_or("as_executed"))
                .unwrap_or_default(),
        };
        let student = match &init_info.quantized {
            Some(_) => {
                let mut q = dir::load_quantized(&init_dir, &plain)?.0;
                // This stage's gradient rule, not the one the checkpoint was trained with.
                q.set_clip_grad(qconfig.clip_grad);
                q
            }
            None => {
                let Some(tpath) = ctx.inputs.get("thresholds") else {
                    bail!(
                        "input `init` is a float model: give the stage a `thresholds` input (a thresholds stage's thresholds.json)"
                    );
                };
                let thresholds = Thresholds::load(tpath)?;
                let (float, _) = dir::load_float(&init_dir, &plain)?;
                QEfficientNet::from_float(&float.fold_bn(), &thresholds, &qconfig)?
            }
        };
        let student = student.to_device(&device).train();
        let lr = LrSchedule {
            lr: f(&p, "lr", 3e-6),
            decay: (!p.bool("lr_fixed").unwrap_or(true))
                .then(|| (f(&p, "lr_decay", 1e-4), int(&p, "reinit", 800))),
        };
        let mcfg = MetricConfig {
            params_baseline: f(&p, "params_baseline", 6.9e6),
            ops_baseline: f(&p, "ops_baseline", 1170e6),
            gamma: f(&p, "gamma", 0.7) as f32,
            rule: match p.str("metric_rule") {
                Some("official") => MetricRule::Official,
                _ => MetricRule::Paper,
            },
            pairing: Pairing::parse(p.str("metric_pairing").unwrap_or("tile")).unwrap_or_default(),
        };
        let cfg = AdjqConfig {
            alpha: f(&p, "alpha", 7.0) as f32,
            beta: f(&p, "beta", 85.0) as f32,
            target: f(&p, "target", 0.18) as f32,
            metric: mcfg,
            lr,
            lr_bits: f(&p, "lr_bits", 1e-3),
        };
        let precision = PrecisionSchedule {
            finetune: p.bool("finetune").unwrap_or(false),
            warm_up_epoch: f(&p, "warm_up_epoch", 0.0),
            iterative: p.bool("iter_train").unwrap_or(true),
            freq: int(&p, "iter_train_freq", 2),
        };
        let swa_delay = f(&p, "swa_delay", -1.0);
        let swa_sched = (swa_delay >= 0.0).then(|| SwaSchedule {
            delay: swa_delay,
            freq: f(&p, "swa_freq", 0.1),
        });
        let mut trainer = AdjqTrainer::new(student, teacher, cfg);
        // The original restores the Adam slots and powers with the weights when it starts
        // from a checkpoint (`trainer.py:199-208`).
        let continued = init_info.quantized.is_some()
            && p.str("optimizer_state").unwrap_or("continue") == "continue"
            && trainer.load_optimizers(&init_dir)?;
        ctx.set_metric(
            "optimizer_state",
            if continued { "continued" } else { "fresh" },
        );

        let info = ModelInfo::quantized(trainer.model(), serde_json::json!({"stage": ctx.stage}));
        let data = ctx.input("data")?.to_path_buf();
        let classes = teacher_info.config.num_classes;
        let offset = p.i64("label_offset").unwrap_or(1);
        let train = support::dataset(&data, "train", offset, classes)?;
        let val = support::dataset(&data, "validation", offset, classes)?;
        let batch = int(&p, "batch_size", 25).max(1);
        let (train_cfg, val_cfg) = support::train_val_loaders(ctx, &info, batch, seed, augment, 50);
        let val_samples = int(&p, "val_samples", 0);
        let batches_per_epoch = (train.len() as usize / batch) as u64;
        if batches_per_epoch == 0 {
            bail!(
                "batch_size {batch} is larger than the training set ({} images)",
                train.len()
            );
        }
        let total = int(&p, "max_epoch", 3) * MINI_EPOCHS;

        let states = StateDirs::new(ctx);
        let mut progress = Progress::default();
        if let Some(state) = states.latest() {
            trainer.load_state(&state.join("trainer"))?;
            progress = serde_json::from_slice(&std::fs::read(state.join("progress.json"))?)
                .context("resume state: progress.json")?;
            tracing::info!("resuming after mini-epoch {}", progress.tenths);
        }
        ctx.set_metric("resumed_at_mini_epoch", progress.tenths);
        let checkpoints = ctx.output_path(CHECKPOINTS);
        std::fs::create_dir_all(&checkpoints)?;

        while progress.tenths < total {
            let t = progress.tenths;
            let (epoch, k) = (t / MINI_EPOCHS, t % MINI_EPOCHS);
            let train_bits = precision.trains_precision(epoch, k);
            // Dropout and the like: reseeded per mini-epoch so a resumed run matches.
            device.seed(seed.wrapping_mul(1_000_003).wrapping_add(t as u64));
            let start = Cursor::at_tenths(t as u64, batches_per_epoch);
            let end = Cursor::at_tenths(t as u64 + 1, batches_per_epoch);
            let n = ((end.epoch * batches_per_epoch + end.batch)
                - (start.epoch * batches_per_epoch + start.batch)) as usize;
            let mut sum = LossTerms::default();
            let mut steps = 0usize;
            let t0 = std::time::Instant::now();
            for b in Loader::new(train.clone(), train_cfg.clone(), start)?.take(n) {
                ctx.check_interrupted()?;
                let (x, y) = b?.to_tensors(&device);
                let s = trainer.step(x, y, train_bits)?;
                steps += 1;
                sum.total += s.terms.total;
                sum.distill += s.terms.distill;
                sum.cross_entropy += s.terms.cross_entropy;
                sum.metric = s.terms.metric;
                sum.sign = s.terms.sign;
                let ips = (steps * batch) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                ctx.progress(
                    steps as u64,
                    Some(n as u64),
                    format!(
                        "epoch {epoch}.{k} loss {:.4} (kd {:.4} ce {:.4} metric {:.4}){} {ips:.0} img/s",
                        s.terms.total,
                        s.terms.distill,
                        s.terms.cross_entropy,
                        s.terms.metric,
                        if train_bits { " +bits" } else { "" }
                    ),
                );
            }
            let avg = |v: f32| v / steps.max(1) as f32;
            let loss = LossTerms {
                total: avg(sum.total),
                distill: avg(sum.distill),
                cross_entropy: avg(sum.cross_entropy),
                ..sum
            };
            let record = validate(
                &trainer,
                &val,
                &val_cfg,
                val_samples,
                &plain,
                &mcfg,
                epoch,
                k,
                steps,
                train_bits,
                loss,
            )?;
            let ckpt_dir = checkpoints.join(&record.checkpoint);
            save_checkpoint(&trainer, &info, &ckpt_dir)?;
            if let Some(s) = &swa_sched
                && s.records_after(epoch, k)
            {
                progress.swa.record(&trainer.snapshot())?;
            }
            progress.records.push(record);
            progress.tenths += 1;
            write_logs(ctx, &progress.records)?;
            states.save(&format!("{}", progress.tenths), |d| {
                trainer.save_state(&d.join("trainer"))?;
                crate::store::atomic::write_json(&d.join("progress.json"), &progress)?;
                Ok(())
            })?;
        }

        // The output model: the SWA average when snapshots were recorded, else the last.
        if let Some(avg) = progress.swa.average() {
            trainer.set_values(&avg)?;
            let q = trainer.model().valid();
            let acc = support::evaluate(
                &|x| q.forward(x),
                val.clone(),
                val_cfg.clone(),
                val_samples,
                &plain,
            )?;
            ctx.set_metric("swa_snapshots", progress.swa.count);
            ctx.set_metric("swa_top1", acc.top1);
        }
        save_checkpoint(&trainer, &info, &ctx.output_path(MODEL))?;
        let model = trainer.model();
        let qi = QuantInfo::of(model);
        crate::store::atomic::write_json(&ctx.output_path(QUANT_INFO), &qi)?;
        let m = metric(model, &mcfg);
        ctx.set_metric("metric", m.metric.into_scalar::<f32>() as f64);
        ctx.set_metric("avg_weight_bits", qi.avg_weight_bits);
        ctx.set_metric("avg_act_bits", qi.avg_act_bits);
        if let Some(last) = progress.records.last() {
            ctx.set_metric("top1", last.accuracy.top1);
        }
        write_logs(ctx, &progress.records)?;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn validate(
    trainer: &AdjqTrainer,
    val: &std::sync::Arc<crate::data::Dataset>,
    val_cfg: &crate::data::LoaderConfig,
    limit: usize,
    plain: &burn::prelude::Device,
    mcfg: &MetricConfig,
    epoch: usize,
    k: usize,
    steps: usize,
    trained_bits: bool,
    loss: LossTerms,
) -> Result<MiniEpoch> {
    let q = trainer.model().valid();
    let accuracy = support::evaluate(
        &|x| q.forward(x),
        val.clone(),
        val_cfg.clone(),
        limit,
        plain,
    )?;
    let m = metric(&q, mcfg);
    let qi = QuantInfo::of(&q);
    let metric = m.metric.into_scalar::<f32>() as f64;
    Ok(MiniEpoch {
        epoch,
        mini_epoch: k,
        steps,
        trained_bits,
        loss,
        accuracy,
        metric,
        params: m.params.into_scalar::<f32>() as f64,
        ops: m.ops.into_scalar::<f32>() as f64,
        avg_weight_bits: qi.avg_weight_bits,
        avg_act_bits: qi.avg_act_bits,
        checkpoint: format!("e{epoch}m{k}_metric{metric:.4}_top1{:.4}", accuracy.top1),
    })
}

/// A model directory with the quantized values, model.json, quant_info.json and both
/// Adam states (a stage started from it continues them).
fn save_checkpoint(trainer: &AdjqTrainer, info: &ModelInfo, path: &std::path::Path) -> Result<()> {
    let model = trainer.model();
    dir::write(path, &crate::model::import::export(model), info)?;
    crate::store::atomic::write_json(&path.join(QUANT_INFO), &QuantInfo::of(model))?;
    trainer.save_optimizers(path)
}

/// metrics.jsonl and the TensorBoard curves, rewritten from all records.
fn write_logs(ctx: &StageContext, records: &[MiniEpoch]) -> Result<()> {
    support::write_jsonl(&ctx.output_path(METRICS), records)?;
    let mut tb = EventWriter::create(&ctx.output_path(TENSORBOARD))?;
    for (i, r) in records.iter().enumerate() {
        tb.scalars(
            i as i64 + 1,
            &[
                ("loss/total", r.loss.total as f64),
                ("loss/distillation", r.loss.distill as f64),
                ("loss/cross_entropy", r.loss.cross_entropy as f64),
                ("metric/paper", r.metric),
                ("metric/params", r.params),
                ("metric/ops", r.ops),
                ("accuracy/top1", r.accuracy.top1),
                ("bits/avg_weight", r.avg_weight_bits),
                ("bits/avg_act", r.avg_act_bits),
            ],
        )?;
    }
    Ok(())
}

//! `adjq`: adjustable-quantization training (DESIGN §3) — mini-epochs of 1/10 epoch,
//! validation and a checkpoint after each, precision trained on the schedule, SWA;
//! resumable at every mini-epoch boundary (model, both Adam states, SWA sums, data
//! position; the RNG is reseeded per mini-epoch from the seed).

use super::support::{self, DataParams};
use crate::artifacts::model_dir::{self as dir, ModelInfo};
use crate::artifacts::{self, MiniEpoch};
use crate::data::{Cursor, Loader};
use crate::exec::context::StageContext;
use crate::exec::kind::StageKind;
use crate::manifest::Params;
use crate::manifest::schema::{InputSpec, InputsSpec, KindSchema, ParamSpec, StageParams};
use crate::quant::info::QuantInfo;
use crate::quant::{ClipGrad, QConfig, QEfficientNet, RangePreset, Thresholds};
use crate::report::tensorboard::{self, EventWriter};
use crate::score::metric::{MetricConfig, MetricRule, Pairing, metric};
use crate::train::adjq::{AdjqConfig, AdjqTrainer, TermLog};
use crate::train::loss::LossTerms;
use crate::train::schedule::{LrSchedule, MINI_EPOCHS, PrecisionSchedule, SwaSchedule};
use crate::train::swa::Swa;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use serde::{Deserialize, Serialize};

pub struct Adjq;

/// How often the training loop reads its loss terms back for the progress message.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

pub const MODEL: &str = dir::OUTPUT;
pub const CHECKPOINTS: &str = "checkpoints";
pub use crate::artifacts::{METRICS, QUANT_INFO};

crate::param_choice! {
    /// Adam states of a checkpoint the stage starts from.
    pub enum OptimizerState {
        /// Continue them (the original restores them, `trainer.py:199-208`).
        Continue = "continue",
        Fresh = "fresh",
    }
}

crate::param_choice! {
    /// Which mini-epoch checkpoints the `checkpoints` output keeps.
    pub enum KeepCheckpoints {
        /// Every one (the original: `Saver(max_to_keep=0)`, `trainer.py:189`).
        All = "all",
        /// Those some `select` rule can pick, at any threshold: the (metric, top-1) front.
        Selectable = "selectable",
    }
}

crate::stage_params! {
    /// Params of `adjq`.
    pub struct AdjqParams {
        /// initial weight bits b0
        pub weight_bits: f64 = 8.0,
        /// initial activation bits b0
        pub act_bits: f64 = 8.0,
        /// bits of every swish input (fixed)
        pub swish_bits: f64 = 8.0,
        /// bits of every bias (fixed)
        pub bias_bits: f64 = 8.0,
        /// learn per-channel bit-widths
        pub bits_trainable: bool = true,
        /// bounds of the range parameters a, s
        pub range: RangePreset = RangePreset::Default,
        /// gradient of the quantizer clip's upper bound 2^b − 1: `as_executed` (the original's run: the elements above it) or `detached` (none, the original's intent)
        pub clip_grad: ClipGrad = ClipGrad::AsExecuted,
        /// starting from an adjq/select checkpoint: `continue` its Adam states (the original restores them) or start `fresh`
        pub optimizer_state: OptimizerState = OptimizerState::Continue,
        /// weight of the cross entropy
        pub alpha: f64 = 7.0,
        /// weight of the metric term
        pub beta: f64 = 85.0,
        /// share of the max's gradient given to activation bits
        pub gamma: f64 = 0.7,
        /// metric target: pushed down above it, up below it
        pub target: f64 = 0.18,
        /// Adam lr of weights, biases and ranges
        pub lr: f64 = 3e-6,
        /// Adam lr of the bit scales
        pub lr_bits: f64 = 1e-3,
        /// fixed lr (else decay with restarts)
        pub lr_fixed: bool = true,
        /// decay per step when lr_fixed = false
        pub lr_decay: f64 = 1e-4,
        /// steps between Adam restarts when lr_fixed = false
        pub reinit: usize = 800usize,
        /// epochs (each 10 mini-epochs)
        pub max_epoch: usize = 3usize,
        /// training batch size
        pub batch_size: usize = 25usize,
        /// train precision only every iter_train_freq-th mini-epoch
        pub iter_train: bool = true,
        /// see iter_train
        pub iter_train_freq: usize = 2usize,
        /// no precision training before this epoch
        pub warm_up_epoch: f64 = 0.0,
        /// precision frozen throughout
        pub finetune: bool = false,
        /// record SWA snapshots from this epoch on (negative: no SWA)
        pub swa_delay: f64 = -1.0,
        /// SWA snapshot every int(10·swa_freq) mini-epochs
        pub swa_freq: f64 = 0.1,
        /// training images get random resized crops and flips; false: the eval transform, as the original without --aug
        pub augment: bool = false,
        /// data order and augmentation
        pub seed: u64 = 0u64,
        /// validation images per mini-epoch (0: all)
        pub val_samples: usize = 0usize,
        /// mini-epoch checkpoints kept: `all` (the original) or `selectable` (those a select rule can pick)
        pub keep_checkpoints: KeepCheckpoints = KeepCheckpoints::All,
        /// score the metric term trains against: `paper` (the original's) or `official` (the MicroNet counter's)
        pub metric_rule: MetricRule = MetricRule::Paper,
        /// channel pairs the metric's max(weight bits, activation bits) averages: `tile` (the original's tf.tile) or `all`
        pub metric_pairing: Pairing = Pairing::Tile,
        /// P0 of the paper metric
        pub params_baseline: f64 = 6.9e6,
        /// O0 of the paper metric
        pub ops_baseline: f64 = 1170e6,
    }
    shared { pub data: DataParams }
}

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

/// What a resumed attempt needs besides the trainer's own state.
#[derive(Default, Serialize, Deserialize)]
struct Progress {
    /// Mini-epochs completed (tenths of an epoch).
    tenths: usize,
    records: Vec<MiniEpoch>,
    swa: Swa,
}

impl KindSchema for Adjq {
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
        AdjqParams::table()
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Named(INPUTS)
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        [MODEL, CHECKPOINTS, METRICS, QUANT_INFO, tensorboard::OUTPUT]
            .map(String::from)
            .to_vec()
    }

    fn uses_device(&self) -> bool {
        true
    }
}

impl StageKind for Adjq {
    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let p: AdjqParams = ctx.params()?;
        let plain = ctx.device()?;
        let device = plain.clone().autodiff();
        let seed = p.seed;
        // The original trains on its eval transform unless `--aug` (`data.py:274-282`).
        let augment = p.augment;
        let (teacher, teacher_info) = dir::load_float(ctx.input("teacher")?, &plain)?;
        let init_dir = ctx.input("init")?.to_path_buf();
        let init_info = dir::read_info(&init_dir)?;
        let qconfig = QConfig {
            weight_bits: p.weight_bits as f32,
            act_bits: p.act_bits as f32,
            swish_bits: p.swish_bits as f32,
            bias_bits: p.bias_bits as f32,
            bits_trainable: p.bits_trainable,
            range: p.range,
            clip_grad: p.clip_grad,
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
            lr: p.lr,
            decay: (!p.lr_fixed).then_some((p.lr_decay, p.reinit)),
        };
        let mcfg = MetricConfig {
            params_baseline: p.params_baseline,
            ops_baseline: p.ops_baseline,
            gamma: p.gamma as f32,
            rule: p.metric_rule,
            pairing: p.metric_pairing,
        };
        let cfg = AdjqConfig {
            alpha: p.alpha as f32,
            beta: p.beta as f32,
            target: p.target as f32,
            metric: mcfg,
            lr,
            lr_bits: p.lr_bits,
        };
        let precision = PrecisionSchedule {
            finetune: p.finetune,
            warm_up_epoch: p.warm_up_epoch,
            iterative: p.iter_train,
            freq: p.iter_train_freq,
        };
        let swa_sched = (p.swa_delay >= 0.0).then_some(SwaSchedule {
            delay: p.swa_delay,
            freq: p.swa_freq,
        });
        let mut trainer = AdjqTrainer::new(student, teacher, cfg);
        // The original restores the Adam slots and powers with the weights when it starts
        // from a checkpoint (`trainer.py:199-208`).
        let continued = init_info.quantized.is_some()
            && p.optimizer_state == OptimizerState::Continue
            && trainer.load_optimizers(&init_dir)?;
        ctx.set_metric(
            "optimizer_state",
            if continued { "continued" } else { "fresh" },
        );

        let info = ModelInfo::quantized(trainer.model(), serde_json::json!({"stage": ctx.stage}));
        let data = ctx.input("data")?.to_path_buf();
        let classes = teacher_info.config.num_classes;
        let train = support::dataset(&data, "train", &p.data, classes)?;
        let val = support::dataset(&data, "validation", &p.data, classes)?;
        let batch = p.batch_size.max(1);
        let (train_cfg, val_cfg) =
            support::train_val_loaders(&p.data, &info, batch, seed, augment, 50);
        let (val_samples, keep_checkpoints) = (p.val_samples, p.keep_checkpoints);
        let batches_per_epoch = (train.len() as usize / batch) as u64;
        if batches_per_epoch == 0 {
            bail!(
                "batch_size {batch} is larger than the training set ({} images)",
                train.len()
            );
        }
        let total = p.max_epoch * MINI_EPOCHS;

        let mut progress = Progress::default();
        if let Some(state) = ctx.latest_state() {
            trainer.load_state(&state.join("trainer"))?;
            progress = serde_json::from_slice(&std::fs::read(state.join("progress.json"))?)
                .context("resume state: progress.json")?;
            tracing::info!("resuming after mini-epoch {}", progress.tenths);
        }
        ctx.set_metric("resumed_at_mini_epoch", progress.tenths);
        let mut curves = EventWriter::resume(
            &ctx.output_path(tensorboard::OUTPUT),
            progress.tenths as i64 + 1,
            &support::hparams(&ctx.params),
            &ctx.key,
        )?;
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
            // The loss terms stay on the device, summed there: reading them back is a
            // device sync (a GPU stall), done for the progress message at most every
            // PROGRESS_EVERY and once at the end, where non-finite terms stop the stage.
            let mut log = TermLog::default();
            let mut steps = 0usize;
            let mut msg = String::new();
            let t0 = std::time::Instant::now();
            let mut shown: Option<std::time::Instant> = None;
            for b in Loader::new(train.clone(), train_cfg.clone(), start)?.take(n) {
                ctx.check_interrupted()?;
                let (x, y) = b?.to_tensors(&device);
                log.add(&trainer.step(x, y, train_bits));
                steps += 1;
                if shown.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY) {
                    let last = log.read()?.last;
                    shown = Some(std::time::Instant::now());
                    let ips = (steps * batch) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                    msg = format!(
                        "epoch {epoch}.{k} loss {:.4} (kd {:.4} ce {:.4} metric {:.4}){} {ips:.0} img/s",
                        last.total,
                        last.distill,
                        last.cross_entropy,
                        last.metric,
                        if train_bits { " +bits" } else { "" }
                    );
                }
                ctx.progress(steps as u64, Some(n as u64), msg.clone());
            }
            // Before validation and the checkpoint: none is written after a non-finite loss.
            let read = log.read()?;
            let avg = |v: f32| v / steps.max(1) as f32;
            let loss = LossTerms {
                total: avg(read.sums.total),
                distill: avg(read.sums.distill),
                cross_entropy: avg(read.sums.cross_entropy),
                ..read.last
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
            if keep_checkpoints == KeepCheckpoints::Selectable {
                prune_unselectable(&checkpoints, &progress.records)?;
            }
            progress.tenths += 1;
            artifacts::write_jsonl(&ctx.output_path(METRICS), &progress.records)?;
            if let Some(r) = progress.records.last() {
                curves.scalars(progress.tenths as i64, &curve_points(r))?;
            }
            ctx.save_state(&progress.tenths.to_string(), |d| {
                trainer.save_state(&d.join("trainer"))?;
                crate::atomic::write_json(&d.join("progress.json"), &progress)?;
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
        artifacts::write_json(&ctx.output_path(QUANT_INFO), &qi)?;
        let m = metric(model, &mcfg);
        ctx.set_metric("metric", m.metric.into_scalar::<f32>() as f64);
        ctx.set_metric("avg_weight_bits", qi.avg_weight_bits);
        ctx.set_metric("avg_act_bits", qi.avg_act_bits);
        support::report_skipped(ctx, &p.data, &[&train, &val]);
        if let Some(last) = progress.records.last() {
            ctx.set_metric("top1", last.accuracy.top1);
        }
        artifacts::write_jsonl(&ctx.output_path(METRICS), &progress.records)?;
        curves.finish(progress.tenths as i64, &ctx.metrics)?;
        Ok(())
    }
}

/// Deletes the checkpoints no select rule can pick any more (one that drops off the front
/// never returns to it, so this is final; repeating it after a resume is harmless).
fn prune_unselectable(checkpoints: &std::path::Path, records: &[MiniEpoch]) -> Result<()> {
    let keep = artifacts::selection::selectable(records);
    for (record, keep) in records.iter().zip(keep) {
        let dir = checkpoints.join(&record.checkpoint);
        if !keep && dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot delete checkpoint {}", dir.display()))?;
        }
    }
    Ok(())
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
    artifacts::write_json(&path.join(QUANT_INFO), &QuantInfo::of(model))?;
    trainer.save_optimizers(path)
}

/// One mini-epoch's TensorBoard scalars.
fn curve_points(r: &MiniEpoch) -> [(&'static str, f64); 9] {
    [
        ("loss/total", r.loss.total as f64),
        ("loss/distillation", r.loss.distill as f64),
        ("loss/cross_entropy", r.loss.cross_entropy as f64),
        ("metric/paper", r.metric),
        ("metric/params", r.params),
        ("metric/ops", r.ops),
        ("accuracy/top1", r.accuracy.top1),
        ("bits/avg_weight", r.avg_weight_bits),
        ("bits/avg_act", r.avg_act_bits),
    ]
}

#[cfg(test)]
mod params_tests {
    #[test]
    fn params_table_matches_struct() {
        super::super::check_params::<super::AdjqParams>();
    }
}

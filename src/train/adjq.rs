//! The adjustable-quantization trainer (DESIGN §3): a quantized student distilled from
//! the float teacher, TF1's Adam(lr) on weights, biases and ranges, a second one
//! (lr_bits) on the bit scales (`trainer.py:163-176`), the signed metric term; state that
//! can be saved and resumed exactly.

use super::loss::{LossTerms, TERMS, adjq_loss};
use super::params::{self, is_bit_scale, is_constant, param_ids, stable_ids};
use super::schedule::LrSchedule;
use super::tf_adam::TfAdam;
use crate::ckpt::{self, TensorMap};
use crate::model::EfficientNet;
use crate::model::import;
use crate::quant::QEfficientNet;
use crate::score::metric::{MetricConfig, metric};
use anyhow::{Context, Result, anyhow, bail};
use burn::module::ParamId;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdjqConfig {
    pub alpha: f32,
    pub beta: f32,
    /// The metric's target: its term pushes down above it and up below it.
    pub target: f32,
    pub metric: MetricConfig,
    pub lr: LrSchedule,
    pub lr_bits: f64,
}

/// What one step did.
#[derive(Clone, Debug)]
pub struct StepStats {
    pub step: usize,
    /// The loss terms `[total, distill, cross_entropy, metric, sign]`, detached on the
    /// inner device. Reading them back is a device sync (a GPU stall), so a training loop
    /// sums them in a [`TermLog`] and reads that only now and then.
    pub terms: Tensor<1>,
    pub lr: f64,
    pub trained_bits: bool,
}

impl StepStats {
    /// This step's terms on the host: a device sync.
    pub fn read_terms(&self) -> LossTerms {
        let v = crate::quant::host_f32(self.terms.clone());
        LossTerms::from_values(v.try_into().expect("a terms tensor holds TERMS values"))
    }
}

/// The loss terms of a run of steps, summed on the device and read back only when asked:
/// every read is a device sync (a GPU stall), where a read per step would stall every step.
#[derive(Default)]
pub struct TermLog {
    /// Every term summed over the steps in step order: f32 adds from 0, the same values
    /// as host `+=` of each step's terms.
    sums: Option<Tensor<1>>,
    /// The last step's terms.
    last: Option<Tensor<1>>,
    /// The first and last trainer steps added since the last read that found them finite.
    unread: Option<(usize, usize)>,
}

/// A [`TermLog`] read back.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TermsRead {
    /// Each term summed over the steps (the metric too: a non-finite metric of any step
    /// shows in its sum; the sum of signs means nothing).
    pub sums: LossTerms,
    /// The last step's terms.
    pub last: LossTerms,
}

impl TermLog {
    /// Adds a step's terms (on the device: no sync).
    pub fn add(&mut self, s: &StepStats) {
        let sums = self.sums.take().unwrap_or_else(|| s.terms.zeros_like());
        self.sums = Some(sums + s.terms.clone());
        self.last = Some(s.terms.clone());
        let first = self.unread.map_or(s.step, |(first, _)| first);
        self.unread = Some((first, s.step));
    }

    /// The sums and the last step's terms (zeros before any step), in one device sync;
    /// an error naming the steps since the last good read if any sum is not finite.
    pub fn read(&mut self) -> Result<TermsRead> {
        let (Some(sums), Some(last)) = (&self.sums, &self.last) else {
            return Ok(TermsRead::default());
        };
        let v = crate::quant::host_f32(Tensor::cat(vec![sums.clone(), last.clone()], 0));
        let terms = |v: &[f32]| {
            LossTerms::from_values(v.try_into().expect("a terms tensor holds TERMS values"))
        };
        let read = TermsRead {
            sums: terms(&v[..TERMS]),
            last: terms(&v[TERMS..]),
        };
        for (name, v) in [
            ("total", read.sums.total),
            ("distillation", read.sums.distill),
            ("cross entropy", read.sums.cross_entropy),
            ("metric", read.sums.metric),
        ] {
            if !v.is_finite() {
                // A finite read leaves finite sums: some step came since.
                let (first, last) = self.unread.expect("a step since the last finite read");
                let steps = if first < last {
                    format!("steps {first}–{last}")
                } else {
                    format!("step {first}")
                };
                bail!(
                    "{steps}: the {name} loss term is not finite (summed: {v}); stopping (the last checkpoint is intact)"
                );
            }
        }
        self.unread = None;
        Ok(read)
    }
}

pub struct AdjqTrainer {
    model: Option<QEfficientNet>,
    teacher: EfficientNet,
    opt_w: ModuleOptimizer,
    opt_k: ModuleOptimizer,
    w_ids: Vec<ParamId>,
    k_ids: Vec<ParamId>,
    pub step: usize,
    pub cfg: AdjqConfig,
}

const MODEL_FILE: &str = "student.safetensors";
const OPT_W_FILE: &str = "adam_weights.bin";
const OPT_K_FILE: &str = "adam_bits.bin";
/// The files of both Adam states, in a trainer state or beside a checkpoint's model.
pub const OPTIMIZER_FILES: [&str; 2] = [OPT_W_FILE, OPT_K_FILE];
const STEP_FILE: &str = "trainer.json";

impl AdjqTrainer {
    /// `model` on an autodiff device in training mode; `teacher` on the plain device.
    pub fn new(model: QEfficientNet, teacher: EfficientNet, cfg: AdjqConfig) -> Self {
        let model = stable_ids(model);
        let ids = param_ids(&model);
        let group = |bits: bool| -> Vec<ParamId> {
            ids.iter()
                .filter(|(p, _)| is_bit_scale(p) == bits && !is_constant(p))
                .map(|(_, id)| *id)
                .collect()
        };
        AdjqTrainer {
            w_ids: group(false),
            k_ids: group(true),
            model: Some(model),
            // Its batch norms folded into its convs: the same function in eval mode (to
            // float rounding) in fewer passes; the teacher is never trained.
            teacher: teacher.fold_bn(),
            opt_w: TfAdam::default().init(),
            opt_k: TfAdam::default().init(),
            step: 0,
            cfg,
        }
    }

    pub fn model(&self) -> &QEfficientNet {
        self.model.as_ref().expect("model present between steps")
    }

    /// One optimisation step on a batch; precision is trained only when `train_bits`.
    /// Nothing is read back from the device: a non-finite loss shows when the returned
    /// terms are read (see [`TermLog`]), and the update it caused must not be saved.
    pub fn step(
        &mut self,
        images: Tensor<4>,
        labels: Tensor<1, Int>,
        train_bits: bool,
    ) -> StepStats {
        let (lr, reset) = self.cfg.lr.at(self.step);
        if reset {
            // The original re-initialises every optimizer variable, both Adams' slots
            // and powers (`trainer.py:325-328`).
            self.opt_w = TfAdam::default().init();
            self.opt_k = TfAdam::default().init();
        }
        let teacher_logits = Tensor::from_inner(self.teacher.forward(images.clone().inner()));
        let model = self.model.take().expect("model present between steps");
        let logits = model.forward(images);
        let m = metric(&model, &self.cfg.metric);
        let (loss, terms) = adjq_loss(
            logits,
            teacher_logits,
            labels,
            m.metric,
            self.cfg.alpha,
            self.cfg.beta,
            self.cfg.target,
        );
        let mut grads = loss.backward();
        let gw = GradientsParams::from_params(&mut grads, &model, &self.w_ids);
        let gk = GradientsParams::from_params(&mut grads, &model, &self.k_ids);
        let mut model = self.opt_w.step(lr, model, gw);
        if train_bits {
            model = self.opt_k.step(self.cfg.lr_bits, model, gk);
        }
        self.model = Some(model);
        let stats = StepStats {
            step: self.step,
            terms,
            lr,
            trained_bits: train_bits,
        };
        self.step += 1;
        stats
    }

    /// Every value of the student by path (weights, ranges, bit scales, constants).
    pub fn snapshot(&self) -> TensorMap {
        import::export(self.model())
    }

    /// Replaces the student's values (e.g. with an SWA average).
    pub fn set_values(&mut self, values: &TensorMap) -> Result<()> {
        let model = self.model.take().expect("model present");
        let model = import::load(model.clone(), values).map_err(|m| {
            self.model = Some(model);
            anyhow!("{m}")
        })?;
        self.model = Some(model);
        Ok(())
    }

    /// Writes the full training state (student, both Adam states, step) into `dir`.
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        ckpt::safetensors::write(&dir.join(MODEL_FILE), &self.snapshot(), &Default::default())?;
        self.save_optimizers(dir)?;
        crate::atomic::write_json(&dir.join(STEP_FILE), &self.step)?;
        Ok(())
    }

    /// Writes both Adam states (slots and β powers) into `dir`: how a checkpoint carries
    /// them, as the original's `tf.train.Saver` saves every variable (`trainer.py:189`).
    pub fn save_optimizers(&self, dir: &Path) -> Result<()> {
        let w = params::state_bytes(&self.opt_w)?;
        let k = params::state_bytes(&self.opt_k)?;
        crate::atomic::write(&dir.join(OPT_W_FILE), &w)?;
        crate::atomic::write(&dir.join(OPT_K_FILE), &k)?;
        Ok(())
    }

    /// Continues from the Adam states saved in `dir` by [`save_optimizers`](Self::save_optimizers),
    /// as the original does when it restores a checkpoint (`trainer.py:199-208`); `false`
    /// when `dir` holds none (a checkpoint written without them).
    pub fn load_optimizers(&mut self, dir: &Path) -> Result<bool> {
        if !OPTIMIZER_FILES.iter().all(|f| dir.join(f).is_file()) {
            return Ok(false);
        }
        let load = |f: &str| -> Result<ModuleOptimizer> {
            let path = dir.join(f);
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            TfAdam::default()
                .init()
                .from_bytes(Bytes::from_bytes_vec(bytes))
                .map_err(|e| {
                    anyhow!(
                        "{}: not an Adam state of this optimizer ({e:?})",
                        path.display()
                    )
                })
        };
        self.opt_w = load(OPT_W_FILE)?;
        self.opt_k = load(OPT_K_FILE)?;
        Ok(true)
    }

    /// Restores a state written by [`save_state`](Self::save_state) into a trainer built
    /// the same way.
    pub fn load_state(&mut self, dir: &Path) -> Result<()> {
        let (values, _) = ckpt::safetensors::read(&dir.join(MODEL_FILE))
            .with_context(|| format!("cannot read trainer state in {}", dir.display()))?;
        self.set_values(&values)?;
        if !self.load_optimizers(dir)? {
            bail!("trainer state in {} has no optimizer state", dir.display());
        }
        self.step = serde_json::from_slice(&std::fs::read(dir.join(STEP_FILE))?)?;
        Ok(())
    }
}

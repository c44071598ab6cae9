//! What the training stages share: the device of the run's backend, the dataset of a
//! `data` input, preprocessing for a model, evaluation, resumable state directories.

use crate::artifacts::Accuracy;
use crate::artifacts::model_dir::ModelInfo;
use crate::ckpt::TensorMap;
use crate::data::{Dataset, ExampleSchema, Loader, LoaderConfig, OnBadRecord, layout};
use crate::data::{EvalCrop, Normalization, Preprocess, Resize};
use crate::exec::context::StageContext;
use crate::manifest::schema::InputSpec;
use crate::manifest::schema::{ParamType, ParamValue};
use crate::model::EfficientNetConfig;
use crate::model::config::PRESETS;
use crate::model::import;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::tensor::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

crate::param_choice! {
    /// Eval crop and resize.
    pub enum EvalTransform {
        /// The EfficientNet crop: centre square of s/(s+crop_padding), bicubic.
        Efficientnet = "efficientnet",
        /// The original's central 87.5% of each side and TF1 bilinear (`data.py:238-266`).
        Original = "original",
    }
}

/// An architecture preset's name (`efficientnet-b0`, …), checked against the presets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelPreset(pub String);

impl ParamValue for ModelPreset {
    fn param_type() -> ParamType {
        ParamType::Choice(PRESETS)
    }
}

impl ModelPreset {
    pub fn config(&self) -> Result<EfficientNetConfig> {
        EfficientNetConfig::preset(&self.0)
            .ok_or_else(|| anyhow::anyhow!("unknown model preset `{}`", self.0))
    }
}

crate::stage_params! {
    /// Params every data-reading stage has.
    pub struct DataParams {
        /// subtracted from stored labels (TF-Slim stores 1..N with 0 = background)
        pub label_offset: i64 = 1,
        /// eval crop and resize: `efficientnet` (centre square of s/(s+crop_padding) of the shorter side, bicubic) or `original` (the Adjustable Quantization code's central 87.5% of each side and TF1 bilinear)
        pub eval_transform: EvalTransform = EvalTransform::Efficientnet,
        /// eval centre crop keeps s/(s+p) of the shorter side (EfficientNet: 32; 0 for small images)
        pub crop_padding: f64 = 32.0,
        /// smallest area fraction of a training random-resized crop
        pub min_crop_area: f64 = 0.08,
        /// random horizontal flips in training (off for digits and text)
        pub flip: bool = true,
        /// decode/augment threads of the data loader (results do not depend on it)
        pub workers: usize = 2usize,
        /// a record or image file that cannot be read or decoded: `error` stops the stage naming it, `skip` leaves it out (the record's `skipped_records` metric counts them)
        pub on_bad_record: OnBadRecord = OnBadRecord::Error,
    }
}

crate::param_choice!(impl OnBadRecord);

/// A stage's params as TensorBoard HParams (name → JSON value).
pub fn hparams(
    params: &crate::manifest::Params,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    params
        .0
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
        .collect()
}

/// The `split` of a `data` input, in any layout [`crate::data::layout`] reads: TF-Slim
/// TFRecords `<split>-*` (plain or GZIP; labels less `label_offset`), an ImageFolder
/// `<split>/` (`val/` for validation) or a `<split>.csv`/`.jsonl` list (class indices).
pub fn dataset(dir: &Path, split: &str, data: &DataParams, classes: usize) -> Result<Arc<Dataset>> {
    let schema = ExampleSchema {
        label_offset: data.label_offset,
        num_classes: Some(classes as i64),
        ..ExampleSchema::default()
    };
    let ds = layout::open_split(dir, split, schema, data.on_bad_record)
        .with_context(|| format!("cannot open the `{split}` split in {}", dir.display()))?;
    if ds.is_empty() {
        bail!("{}: the `{split}` split has no records", dir.display());
    }
    Ok(Arc::new(ds))
}

/// Preprocessing of a model's inputs (training augmentation or eval crop), with the
/// stage's data params.
pub fn preprocess(data: &DataParams, info: &ModelInfo, train: bool) -> Preprocess {
    let original = data.eval_transform == EvalTransform::Original;
    Preprocess {
        size: info.preprocessing.resolution,
        train,
        resize: if original {
            Resize::BilinearTf1
        } else {
            Resize::Bicubic
        },
        eval_crop: if original {
            EvalCrop::Central(0.875)
        } else {
            EvalCrop::Padded
        },
        normalization: if info.preprocessing.normalization == "lite" {
            Normalization::Lite
        } else {
            Normalization::B0
        },
        crop_padding: data.crop_padding as f32,
        min_crop_area: data.min_crop_area.clamp(1e-3, 1.0),
        flip: data.flip,
    }
}

/// A training stage's two loaders: training batches in training order (shuffled by `seed`;
/// augmented when `augment`, else the eval transform) and validation batches of
/// `val_batch` in file order.
pub fn train_val_loaders(
    data: &DataParams,
    info: &ModelInfo,
    batch: usize,
    seed: u64,
    augment: bool,
    val_batch: usize,
) -> (LoaderConfig, LoaderConfig) {
    (
        loader_config(data, batch, preprocess(data, info, augment), Some(seed)),
        loader_config(data, val_batch, preprocess(data, info, false), None),
    )
}

/// A loader of `pre`-processed batches: in training order (shuffled by `seed`, repeating,
/// whole batches) when `seed` is given, else in file order once.
pub fn loader_config(
    data: &DataParams,
    batch: usize,
    pre: Preprocess,
    seed: Option<u64>,
) -> LoaderConfig {
    let mut cfg = match seed {
        Some(seed) => LoaderConfig::train(batch, pre.size, seed),
        None => LoaderConfig::eval(batch, pre.size),
    };
    cfg.preprocess = pre;
    cfg.workers = data.workers.max(1);
    cfg.on_bad_record = data.on_bad_record;
    cfg
}

/// With `on_bad_record = "skip"`, how many distinct records of `datasets` were left out,
/// as the stage's `skipped_records` metric.
pub fn report_skipped(ctx: &mut StageContext, data: &DataParams, datasets: &[&Dataset]) {
    if data.on_bad_record == OnBadRecord::Skip {
        let n: usize = datasets.iter().map(|d| d.skipped_records()).sum();
        ctx.set_metric("skipped_records", n);
    }
}

pub fn evaluate(
    forward: &dyn Fn(Tensor<4>) -> Tensor<2>,
    ds: Arc<Dataset>,
    cfg: LoaderConfig,
    limit: usize,
    device: &Device,
) -> Result<Accuracy> {
    let (mut n, mut c1, mut c5) = (0usize, 0usize, 0usize);
    for batch in Loader::new(ds, cfg, Default::default())? {
        let batch = batch?;
        let take = if limit == 0 {
            batch.labels.len()
        } else {
            batch.labels.len().min(limit - n)
        };
        let (x, _) = batch.to_tensors(device);
        let logits = forward(x);
        let k = logits.dims()[1].min(5);
        let top = logits.argsort_descending(1).narrow(1, 0, k);
        let top: Vec<i64> = top
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        for (i, &label) in batch.labels.iter().take(take).enumerate() {
            let row = &top[i * k..(i + 1) * k];
            c1 += (row[0] == label) as usize;
            c5 += row.contains(&label) as usize;
        }
        n += take;
        if limit != 0 && n >= limit {
            break;
        }
    }
    if n == 0 {
        bail!("no validation images");
    }
    Ok(Accuracy {
        top1: c1 as f64 / n as f64,
        top5: c5 as f64 / n as f64,
        images: n,
    })
}

/// The `data` input of the training stages.
pub const TRAIN_DATA: InputSpec = InputSpec {
    name: "data",
    required: true,
    doc: "dataset directory with TF-Slim `train-*` and `validation-*` shards",
};

const STATE_MODEL: &str = "model.safetensors";
const STATE_OPTIMIZER: &str = "optimizer.bin";
const STATE_PROGRESS: &str = "progress.json";
const STATE_EMA: &str = "ema.safetensors";

/// Writes an epoch-resumable stage's state into a [`StateDirs`] directory: every model
/// value, the optimizer state, the stage's progress, and the weight EMA when kept.
pub fn save_training_state<M: Module>(
    dir: &Path,
    model: &M,
    opt: &ModuleOptimizer,
    progress: &impl Serialize,
    ema: Option<&TensorMap>,
) -> Result<()> {
    crate::ckpt::safetensors::write(
        &dir.join(STATE_MODEL),
        &import::export(model),
        &Default::default(),
    )?;
    let bytes = crate::train::params::state_bytes(opt)?;
    crate::atomic::write(&dir.join(STATE_OPTIMIZER), &bytes)?;
    crate::atomic::write_json(&dir.join(STATE_PROGRESS), progress)?;
    if let Some(shadow) = ema {
        crate::ckpt::safetensors::write(&dir.join(STATE_EMA), shadow, &Default::default())?;
    }
    Ok(())
}

/// Restores what [`save_training_state`] wrote into a model and optimizer built the same
/// way (stable parameter ids), returning the progress and the EMA shadow if one was saved.
pub fn load_training_state<M: Module, P: DeserializeOwned>(
    dir: &Path,
    model: M,
    opt: ModuleOptimizer,
) -> Result<(M, ModuleOptimizer, P, Option<TensorMap>)> {
    let (values, _) = crate::ckpt::safetensors::read(&dir.join(STATE_MODEL))?;
    let model = import::load(model, &values).map_err(|m| anyhow::anyhow!("resume state: {m}"))?;
    let bytes = std::fs::read(dir.join(STATE_OPTIMIZER))?;
    let opt = opt
        .from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| anyhow::anyhow!("resume state: optimizer: {e:?}"))?;
    let progress = serde_json::from_slice(&std::fs::read(dir.join(STATE_PROGRESS))?)
        .context("resume state: progress.json")?;
    let ema_path = dir.join(STATE_EMA);
    let ema = match ema_path.exists() {
        true => Some(crate::ckpt::safetensors::read(&ema_path)?.0),
        false => None,
    };
    Ok((model, opt, progress, ema))
}

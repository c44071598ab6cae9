//! A model directory, the one output every model-producing stage writes (`convert`,
//! `pretrain`, `qat`, `adjq`, `select`) and every model-consuming stage reads:
//! `model.safetensors` (every value by our parameter path) and `model.json` (architecture,
//! preprocessing, class names, and for quantized models their bit settings).

use crate::ckpt::{self, TensorMap};
use crate::data::Normalization;
use crate::model::import;
use crate::model::{EfficientNet, EfficientNetConfig};
use crate::quant::{QConfig, QEfficientNet};
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The output name model-producing stages give their model directory.
pub const OUTPUT: &str = "model";
pub const WEIGHTS: &str = "model.safetensors";
pub const INFO: &str = "model.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub resolution: usize,
    /// Eval: center crop of s/(s+32)·min(h, w), bicubic resize to s.
    pub eval_crop: String,
    /// `b0`: (x − mean)/std with ImageNet mean/std ×255; `lite`: (x − 127)/128.
    pub normalization: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub config: EfficientNetConfig,
    pub preprocessing: Preprocessing,
    /// `imagenet` (the 1000 ILSVRC-2012 classes, 0-based) or `index` (class ids only).
    pub class_names: String,
    /// Present for a quantized network (its weights are BN-folded and it has quantizers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized: Option<QConfig>,
    /// Where the values came from (stage-specific).
    #[serde(default)]
    pub source: serde_json::Value,
}

impl ModelInfo {
    pub fn float(config: &EfficientNetConfig, source: serde_json::Value) -> ModelInfo {
        ModelInfo {
            config: config.clone(),
            preprocessing: Preprocessing {
                resolution: config.resolution,
                eval_crop: "center s/(s+32)·min(h,w), bicubic".into(),
                normalization: match config.input_normalization() {
                    Normalization::B0 => "b0",
                    Normalization::Lite => "lite",
                }
                .into(),
            },
            class_names: if config.num_classes == 1000 {
                "imagenet"
            } else {
                "index"
            }
            .into(),
            quantized: None,
            source,
        }
    }

    pub fn quantized(q: &QEfficientNet, source: serde_json::Value) -> ModelInfo {
        ModelInfo {
            quantized: Some(q.qconfig.clone()),
            ..ModelInfo::float(&q.config, source)
        }
    }
}

/// Writes `dir/model.safetensors` and `dir/model.json`.
pub fn write(dir: &Path, tensors: &TensorMap, info: &ModelInfo) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let meta = [("model".to_string(), info.config.name.clone())]
        .into_iter()
        .collect();
    ckpt::safetensors::write(&dir.join(WEIGHTS), tensors, &meta)?;
    crate::atomic::write_json(&dir.join(INFO), info)?;
    Ok(())
}

pub fn read_info(dir: &Path) -> Result<ModelInfo> {
    let path = dir.join(INFO);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a model directory (no readable {INFO})",
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a model.json", path.display()))
}

pub fn read(dir: &Path) -> Result<(TensorMap, ModelInfo)> {
    let info = read_info(dir)?;
    let (tensors, _) = ckpt::safetensors::read(&dir.join(WEIGHTS))
        .with_context(|| format!("cannot read {}", dir.join(WEIGHTS).display()))?;
    Ok((tensors, info))
}

/// The float model of a directory (convert / pretrain output).
pub fn load_float(dir: &Path, device: &Device) -> Result<(EfficientNet, ModelInfo)> {
    let (tensors, info) = read(dir)?;
    if info.quantized.is_some() {
        bail!(
            "{} holds a quantized model; a float model is needed here",
            dir.display()
        );
    }
    let model = import::load(EfficientNet::new(&info.config, device), &tensors)
        .map_err(|m| anyhow!("{}: {m}", dir.display()))?;
    Ok((model, info))
}

/// The quantized network of a directory (adjq / select output).
pub fn load_quantized(dir: &Path, device: &Device) -> Result<(QEfficientNet, ModelInfo)> {
    let (tensors, info) = read(dir)?;
    let Some(q) = &info.quantized else {
        bail!(
            "{} holds a float model; a quantized model is needed here",
            dir.display()
        );
    };
    let skeleton = EfficientNet::new(&info.config, device).fold_bn();
    let model = QEfficientNet::for_calibration(&skeleton, q)?;
    let model = import::load(model, &tensors).map_err(|m| anyhow!("{}: {m}", dir.display()))?;
    Ok((model, info))
}

//! `runner predict`: classify images with a converted (or raw) float checkpoint, using the
//! eval preprocessing the model was trained with.

use crate::ckpt;
use crate::data::image::decode;
use crate::data::rng::{Purpose, Rng};
use crate::data::{Normalization, Preprocess, Resize};
use crate::model::import::{self, Naming};
use crate::model::{EfficientNet, EfficientNetConfig};
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use std::path::{Path, PathBuf};

/// The 1000 ILSVRC-2012 class names in index order (see data/README.md).
const IMAGENET_CLASSES: &str = include_str!("../data/imagenet_classes.txt");

/// A model ready to classify.
pub struct Classifier {
    pub model: EfficientNet,
    pub preprocess: Preprocess,
    pub class_names: Vec<String>,
}

/// Where the weights come from: a convert stage's two outputs, or a checkpoint file.
pub enum Source {
    /// `model.safetensors` and its `model.json`.
    Converted {
        weights: PathBuf,
        model_json: PathBuf,
    },
    /// Any checkpoint `convert` reads, with the architecture preset it holds.
    Checkpoint { path: PathBuf, preset: String },
}

#[derive(serde::Deserialize)]
struct ModelJson {
    config: EfficientNetConfig,
    preprocessing: PreprocessingJson,
    class_names: String,
}

#[derive(serde::Deserialize)]
struct PreprocessingJson {
    resolution: usize,
    normalization: String,
}

fn class_names(kind: &str, n: usize) -> Vec<String> {
    if kind == "imagenet" && n == 1000 {
        IMAGENET_CLASSES.lines().map(String::from).collect()
    } else {
        (0..n).map(|i| format!("class {i}")).collect()
    }
}

impl Classifier {
    pub fn load(source: &Source, device: &Device) -> Result<Classifier> {
        let (config, canon, normalization, resolution, names) = match source {
            Source::Converted {
                weights,
                model_json,
            } => {
                let text = std::fs::read_to_string(model_json)
                    .with_context(|| format!("cannot read {}", model_json.display()))?;
                let j: ModelJson = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{} is not a convert stage's model.json",
                        model_json.display()
                    )
                })?;
                let (tensors, _) = ckpt::safetensors::read(weights)?;
                let norm = match j.preprocessing.normalization.as_str() {
                    "lite" => Normalization::Lite,
                    _ => Normalization::B0,
                };
                let names = class_names(&j.class_names, j.config.num_classes);
                (j.config, tensors, norm, j.preprocessing.resolution, names)
            }
            Source::Checkpoint { path, preset } => {
                let config = EfficientNetConfig::preset(preset).ok_or_else(|| {
                    anyhow!(
                        "unknown preset `{preset}`; presets: {}",
                        crate::model::config::PRESETS.join(", ")
                    )
                })?;
                let format = ckpt::detect_format(path)?;
                let shapes_of = EfficientNet::new(&config, device);
                let tensors = ckpt::read(path, format)?;
                let naming = import::auto_naming(format, preset, &tensors);
                if naming == Naming::Timm {
                    bail!(
                        "{}: a timm checkpoint; convert it with a `convert` stage and its \
                         `timm_model` param first (timm's tf_* ports and its own models hold the \
                         same tensors but pad differently), then predict with that stage",
                        path.display()
                    );
                }
                let canon = import::canonicalize(&tensors, &shapes_of, &naming)
                    .map_err(|m| anyhow!("{}: {m}", path.display()))?;
                let norm = config.input_normalization();
                let names = class_names("imagenet", config.num_classes);
                let res = config.resolution;
                (config, canon, norm, res, names)
            }
        };
        let model =
            import::load(EfficientNet::new(&config, device), &canon).map_err(|m| anyhow!("{m}"))?;
        Ok(Classifier {
            model: model.valid(),
            preprocess: Preprocess {
                size: resolution,
                train: false,
                resize: Resize::Bicubic,
                normalization,
                ..Preprocess::default()
            },
            class_names: names,
        })
    }

    /// Top-`k` (class index, name, probability) for each image file.
    pub fn classify(
        &self,
        images: &[PathBuf],
        k: usize,
        device: &Device,
    ) -> Result<Vec<Vec<(usize, String, f32)>>> {
        let len = self.preprocess.image_len();
        let mut batch = vec![0f32; len * images.len()];
        for (i, path) in images.iter().enumerate() {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let img = decode(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            // Eval preprocessing draws no random numbers; the RNG is only a parameter.
            let mut rng = Rng::keyed(0, Purpose::Augment, 0, i as u64);
            self.preprocess
                .apply(&img, &mut rng, &mut batch[i * len..(i + 1) * len]);
        }
        let s = self.preprocess.size;
        let x = Tensor::<4>::from_data(TensorData::new(batch, [images.len(), 3, s, s]), device);
        let probs = softmax(self.model.forward(x), 1);
        let n = self.class_names.len();
        let values = probs
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow!("{e:?}"))?;
        Ok(values
            .chunks(n)
            .map(|row| {
                let mut idx: Vec<usize> = (0..n).collect();
                idx.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
                idx.into_iter()
                    .take(k)
                    .map(|i| (i, self.class_names[i].clone(), row[i]))
                    .collect()
            })
            .collect())
    }
}

/// Resolves `--model`: a model directory (with `model.safetensors` and `model.json`) or
/// a checkpoint file (with `preset`).
pub fn source(spec: &str, preset: Option<&str>) -> Result<Source> {
    let path = Path::new(spec);
    if path.is_dir() && path.join(crate::artifacts::model_dir::INFO).exists() {
        return Ok(Source::Converted {
            weights: path.join(crate::artifacts::model_dir::WEIGHTS),
            model_json: path.join(crate::artifacts::model_dir::INFO),
        });
    }
    if !path.exists() {
        bail!("--model {spec}: no such file or directory");
    }
    let preset = preset.ok_or_else(|| {
        anyhow!("--model {spec} is a raw checkpoint: say which architecture it holds with --preset (e.g. efficientnet-lite0)")
    })?;
    Ok(Source::Checkpoint {
        path: path.to_path_buf(),
        preset: preset.to_string(),
    })
}

/// Formats the results like `runner predict` prints them.
pub fn render(images: &[PathBuf], results: &[Vec<(usize, String, f32)>]) -> String {
    let mut out = String::new();
    for (path, top) in images.iter().zip(results) {
        out.push_str(&format!(
            "{}\n",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        for (rank, (i, name, p)) in top.iter().enumerate() {
            out.push_str(&format!("  {}. {i:>4}  {name:<32} {p:.4}\n", rank + 1));
        }
    }
    out
}

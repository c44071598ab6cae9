//! `convert`: a published float checkpoint (TensorFlow, PyTorch or safetensors) → our
//! canonical safetensors checkpoint plus `model.json`. Pipeline step 1 and the KD teacher.

use super::{InputSpec, InputsSpec, StageKind};
use crate::ckpt::{self, Format};
use crate::exec::context::StageContext;
use crate::manifest::Params;
use crate::manifest::value::{ParamDefault as D, ParamSpec, ParamType as T};
use crate::model::config::PRESETS;
use crate::model::dir::{self, ModelInfo};
use crate::model::import::{self, Naming};
use crate::model::{EfficientNet, EfficientNetConfig};
use anyhow::{Context, Result, anyhow};
use burn::prelude::Device;

pub struct Convert;

use crate::model::dir::OUTPUT as MODEL;

static PARAMS: &[ParamSpec] = &[
    ParamSpec::new(
        "model",
        T::Choice(PRESETS),
        D::Required,
        "architecture preset the checkpoint holds",
    ),
    ParamSpec::new(
        "format",
        T::Choice(&["auto", "tf", "pytorch", "safetensors"]),
        D::Toml("\"auto\""),
        "checkpoint format (auto detects it)",
    ),
    ParamSpec::new(
        "naming",
        T::Choice(&["auto", "tensorflow", "pytorch", "ours"]),
        D::Toml("\"auto\""),
        "tensor naming: the official TF EfficientNet, the efficientnet_pytorch port, or ours (auto follows the format)",
    ),
    ParamSpec::new(
        "tf_scope",
        T::Str,
        D::Toml("\"\""),
        "variable scope of a TF checkpoint (empty: the model preset's name, e.g. efficientnet-b0)",
    ),
];

static INPUTS: &[InputSpec] = &[InputSpec {
    name: "checkpoint",
    required: true,
    doc: "the checkpoint: a TF checkpoint directory (with its `checkpoint` file), a .pth/.pt, or a .safetensors",
}];

impl StageKind for Convert {
    fn name(&self) -> &'static str {
        "convert"
    }

    fn version(&self) -> u32 {
        2
    }

    fn doc(&self) -> &'static str {
        "Reads a float checkpoint (TensorFlow V2 bundle with the official EfficientNet names, \
         preferring ExponentialMovingAverage shadows; PyTorch efficientnet_pytorch-style state \
         dict; or our safetensors), maps names and layouts to our model, checks every tensor \
         (missing, unexpected and mis-shaped ones are listed), and writes model.safetensors \
         and model.json (config, preprocessing, class names) into the output directory `model`."
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Named(INPUTS)
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        vec![MODEL.into()]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let path = ctx.input("checkpoint")?.to_path_buf();
        let preset = ctx.params.str("model").unwrap_or_default().to_string();
        let config = EfficientNetConfig::preset(&preset)
            .ok_or_else(|| anyhow!("unknown model preset `{preset}`"))?;
        let format = match ctx.params.str("format").unwrap_or("auto") {
            "tf" => Format::TfBundle,
            "pytorch" => Format::PyTorch,
            "safetensors" => Format::Safetensors,
            _ => ckpt::detect_format(&path)?,
        };
        let scope = match ctx.params.str("tf_scope").unwrap_or_default() {
            "" => preset.clone(),
            s => s.to_string(),
        };
        let naming = match ctx.params.str("naming").unwrap_or("auto") {
            "tensorflow" => Naming::TensorFlow { scope },
            "pytorch" => Naming::PyTorch,
            "ours" => Naming::Ours,
            _ => import::auto_naming(format, &scope),
        };
        ctx.progress(0, Some(3), format!("reading {format} checkpoint"));
        // Tensors it cannot load are an error only if the model needs them.
        let source = ckpt::read_contents(&path, format)
            .with_context(|| format!("cannot read {}", path.display()))?;
        ctx.progress(1, Some(3), "mapping names");
        // A model of the preset's architecture gives every parameter's path and shape.
        let model = EfficientNet::new(&config, &Device::flex());
        let canon = import::canonicalize_contents(&source, &model, &naming)
            .map_err(|m| anyhow!("{}: {m}", path.display()))?;
        ctx.progress(2, Some(3), "writing");
        let mut origin = serde_json::json!({
            "format": format.to_string(),
            "naming": format!("{naming:?}"),
            "tensors": source.tensors.len(),
        });
        // Listed only when there are some, so other checkpoints convert as before.
        if !source.unreadable.is_empty() {
            let names: Vec<&String> = source.unreadable.iter().map(|u| &u.name).collect();
            origin["unreadable"] = serde_json::json!(names);
            ctx.set_metric("unreadable_tensors", names.len());
        }
        let info = ModelInfo::float(&config, origin);
        dir::write(&ctx.output_path(MODEL), &canon, &info)?;
        let params: usize = canon.values().map(|t| t.numel()).sum();
        ctx.set_metric("tensors", canon.len());
        ctx.set_metric("floats", params);
        ctx.progress(3, Some(3), "done");
        Ok(())
    }
}

//! `convert`: a published float checkpoint (TensorFlow, PyTorch or safetensors) → our
//! canonical safetensors checkpoint plus `model.json`. Pipeline step 1 and the KD teacher.

use super::support::ModelPreset;
use crate::artifacts::model_dir::{self as dir, ModelInfo};
use crate::ckpt::{self, Format};
use crate::exec::context::StageContext;
use crate::exec::kind::StageKind;
use crate::manifest::Params;
use crate::manifest::schema::StageParams;
use crate::manifest::schema::{InputSpec, InputsSpec, KindSchema, ParamSpec};
use crate::model::EfficientNet;
use crate::model::import::{self, Naming};
use crate::model::timm;
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::Device;

pub struct Convert;

use crate::artifacts::model_dir::OUTPUT as MODEL;

crate::param_choice! {
    /// Checkpoint format.
    pub enum FormatParam {
        Auto = "auto",
        Tf = "tf",
        Pytorch = "pytorch",
        Safetensors = "safetensors",
    }
}

crate::param_choice! {
    /// Tensor naming of the checkpoint.
    pub enum NamingParam {
        Auto = "auto",
        Tensorflow = "tensorflow",
        Pytorch = "pytorch",
        Timm = "timm",
        Ours = "ours",
    }
}

crate::stage_params! {
    /// Params of `convert`.
    pub struct ConvertParams {
        /// architecture preset the checkpoint holds
        pub model: ModelPreset,
        /// checkpoint format (auto detects it)
        pub format: FormatParam = FormatParam::Auto,
        /// tensor naming: the official TF EfficientNet, the efficientnet_pytorch port, timm's, or ours (auto: TF for TF checkpoints, timm's where its names are found, else the port's for PyTorch files and ours for safetensors)
        pub naming: NamingParam = NamingParam::Auto,
        /// variable scope of a TF checkpoint (empty: the model preset's name, e.g. efficientnet-b0)
        pub tf_scope: String = "",
        /// the timm model a timm checkpoint was saved from, e.g. tf_efficientnet_b0.aa_in1k or efficientnet_lite0.ra_in1k (needed for timm checkpoints: timm's tf_* ports pad like TensorFlow, its own models symmetrically with another batch-norm epsilon)
        pub timm_model: String = "",
    }
}

static INPUTS: &[InputSpec] = &[InputSpec {
    name: "checkpoint",
    required: true,
    doc: "the checkpoint: a TF checkpoint directory (with its `checkpoint` file), a .pth/.pt, or a .safetensors",
}];

impl KindSchema for Convert {
    fn name(&self) -> &'static str {
        "convert"
    }

    fn version(&self) -> u32 {
        2
    }

    fn doc(&self) -> &'static str {
        "Reads a float checkpoint (TensorFlow V2 bundle with the official EfficientNet names, \
         preferring ExponentialMovingAverage shadows; PyTorch efficientnet_pytorch-style state \
         dict; timm's EfficientNet state dict, from .pth or .safetensors; or our safetensors), maps names and layouts to our model, checks every tensor \
         (missing, unexpected and mis-shaped ones are listed), and writes model.safetensors \
         and model.json (config, preprocessing, class names) into the output directory `model`."
    }

    fn params(&self) -> &'static [ParamSpec] {
        ConvertParams::table()
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Named(INPUTS)
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        vec![MODEL.into()]
    }
}

impl StageKind for Convert {
    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let path = ctx.input("checkpoint")?.to_path_buf();
        let p: ConvertParams = ctx.params()?;
        let format = match p.format {
            FormatParam::Tf => Format::TfBundle,
            FormatParam::Pytorch => Format::PyTorch,
            FormatParam::Safetensors => Format::Safetensors,
            FormatParam::Auto => ckpt::detect_format(&path)?,
        };
        let scope = match p.tf_scope.as_str() {
            "" => p.model.0.clone(),
            s => s.to_string(),
        };
        ctx.progress(0, Some(3), format!("reading {format} checkpoint"));
        // Tensors it cannot load are an error only if the model needs them.
        let source = ckpt::read_contents(&path, format)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let naming = match p.naming {
            NamingParam::Tensorflow => Naming::TensorFlow { scope },
            NamingParam::Pytorch => Naming::PyTorch,
            NamingParam::Timm => Naming::Timm,
            NamingParam::Ours => Naming::Ours,
            NamingParam::Auto if !p.timm_model.is_empty() => Naming::Timm,
            NamingParam::Auto => import::auto_naming(format, &scope, &source.tensors),
        };
        let config = match (&naming, p.timm_model.as_str()) {
            (Naming::Timm, "") => bail!(
                "{}: a checkpoint with timm's names: set `timm_model` to the timm model it was \
                 saved from (e.g. \"tf_efficientnet_b0.aa_in1k\" or \"efficientnet_lite0.ra_in1k\"); \
                 timm's tf_* ports pad like TensorFlow, its own models pad symmetrically with \
                 another batch-norm epsilon, and the tensors do not tell which",
                path.display()
            ),
            (Naming::Timm, name) => timm::config_for(&p.model.config()?, name)
                .map_err(|e| anyhow!("param `timm_model`: {e}"))?,
            (_, "") => p.model.config()?,
            (other, _) => bail!(
                "param `timm_model` is set, but the naming is {other:?}: timm_model goes with \
                 naming = \"timm\" (or \"auto\")"
            ),
        };
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

#[cfg(test)]
mod tests {
    #[test]
    fn params_table_matches_struct() {
        super::super::check_params::<super::ConvertParams>();
    }
}

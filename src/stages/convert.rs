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
use anyhow::{Context, Result, anyhow};
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
        /// tensor naming: the official TF EfficientNet, the efficientnet_pytorch port, or ours (auto follows the format)
        pub naming: NamingParam = NamingParam::Auto,
        /// variable scope of a TF checkpoint (empty: the model preset's name, e.g. efficientnet-b0)
        pub tf_scope: String = "",
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
         dict; or our safetensors), maps names and layouts to our model, checks every tensor \
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
        let config = p.model.config()?;
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
        let naming = match p.naming {
            NamingParam::Tensorflow => Naming::TensorFlow { scope },
            NamingParam::Pytorch => Naming::PyTorch,
            NamingParam::Ours => Naming::Ours,
            NamingParam::Auto => import::auto_naming(format, &scope),
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

#[cfg(test)]
mod tests {
    #[test]
    fn params_table_matches_struct() {
        super::super::check_params::<super::ConvertParams>();
    }
}

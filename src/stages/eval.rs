//! `eval`: top-1/top-5 on the validation split, the paper metric, the official MicroNet
//! score with its per-layer table, quant_info.json — for a float or a quantized model.

use super::support::{self, DATA_PARAMS};
use super::{InputSpec, InputsSpec, StageKind};
use crate::exec::context::StageContext;
use crate::manifest::Params;
use crate::manifest::value::{ParamDefault as D, ParamSpec, ParamType as T};
use crate::model::dir;
use crate::quant::info::QuantInfo;
use crate::quant::{QConfig, QEfficientNet};
use crate::score::counter::{self, Quantization};
use crate::score::metric::{MetricConfig, paper_metric};
use anyhow::Result;
use burn::module::Module;
use serde_json::json;
use std::sync::LazyLock;

pub struct Eval;

pub const RESULT: &str = "eval.json";
pub const SCORE_TABLE: &str = "score.txt";
pub const QUANT_INFO: &str = "quant_info.json";

static PARAMS: LazyLock<Vec<ParamSpec>> = LazyLock::new(|| {
    let mut v = vec![
        ParamSpec::new(
            "val_samples",
            T::Int,
            D::Toml("0"),
            "validation images (0: all)",
        ),
        ParamSpec::new(
            "batch_size",
            T::Int,
            D::Toml("50"),
            "images per forward pass",
        ),
        ParamSpec::new(
            "params_baseline",
            T::Float,
            D::Toml("6.9e6"),
            "P0 of both scores",
        ),
        ParamSpec::new(
            "ops_baseline",
            T::Float,
            D::Toml("1170e6"),
            "O0 of both scores",
        ),
    ];
    v.extend_from_slice(DATA_PARAMS);
    v
});

static INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "model",
        required: true,
        doc: "a model directory (float or quantized)",
    },
    InputSpec {
        name: "data",
        required: true,
        doc: "dataset directory with TF-Slim `validation-*` shards",
    },
];

impl StageKind for Eval {
    fn name(&self) -> &'static str {
        "eval"
    }

    fn version(&self) -> u32 {
        1
    }

    fn doc(&self) -> &'static str {
        "Evaluates a float or quantized model: top-1/top-5 on the validation split, the \
         paper metric and the official MicroNet score (per-layer table in score.txt), \
         quant_info.json with per-channel and per-layer average bits."
    }

    fn params(&self) -> &'static [ParamSpec] {
        &PARAMS
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Named(INPUTS)
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        [RESULT, SCORE_TABLE, QUANT_INFO].map(String::from).to_vec()
    }

    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let device = support::device()?;
        let p = ctx.params.clone();
        let model_dir = ctx.input("model")?.to_path_buf();
        let info = dir::read_info(&model_dir)?;
        // A float model is scored as fp32: every point at 32 bits.
        let fp32 = QConfig {
            weight_bits: 32.0,
            act_bits: 32.0,
            swish_bits: 32.0,
            bias_bits: 32.0,
            bits_trainable: false,
            ..QConfig::default()
        };
        let (forward, qinfo, quant): (Box<dyn Fn(_) -> _>, QuantInfo, Quantization) = match &info
            .quantized
        {
            Some(_) => {
                let (q, _) = dir::load_quantized(&model_dir, &device)?;
                let q = q.valid();
                let qi = QuantInfo::of(&q);
                let quant = Quantization::float().with_quant_info(&serde_json::to_string(&qi)?)?;
                (Box::new(move |x| q.forward(x)), qi, quant)
            }
            None => {
                let (float, _) = dir::load_float(&model_dir, &device)?;
                let qi = QuantInfo::of(&QEfficientNet::for_calibration(
                    &float.clone().fold_bn(),
                    &fp32,
                )?);
                (
                    Box::new(move |x| float.forward(x)),
                    qi,
                    Quantization::float(),
                )
            }
        };
        let ds = support::dataset(
            ctx.input("data")?,
            "validation",
            p.i64("label_offset").unwrap_or(1),
            info.config.num_classes,
        )?;
        let batch = p.i64("batch_size").unwrap_or(50).max(1) as usize;
        let cfg = support::loader_config(ctx, batch, support::preprocess(ctx, &info, false), 0);
        ctx.progress(0, None, "evaluating");
        let limit = p.i64("val_samples").unwrap_or(0).max(0) as usize;
        let acc = support::evaluate(&*forward, ds, cfg, limit, &device)?;
        let (p0, o0) = (
            p.f64("params_baseline").unwrap_or(6.9e6),
            p.f64("ops_baseline").unwrap_or(1170e6),
        );
        let options = counter::Options {
            params_baseline: p0,
            ops_baseline: o0,
            ..Default::default()
        };
        let res = info.preprocessing.resolution;
        let report = counter::count(&info.config, res, &quant, &options)?;
        let mcfg = MetricConfig {
            params_baseline: p0,
            ops_baseline: o0,
            ..Default::default()
        };
        let paper = paper_metric(&info.config, res, &quant, &mcfg);
        let result = json!({
            "model": info.config.name,
            "quantized": info.quantized.is_some(),
            "top1": acc.top1,
            "top5": acc.top5,
            "images": acc.images,
            "paper_metric": paper,
            "official": report.totals,
            "avg_weight_bits": qinfo.avg_weight_bits,
            "avg_act_bits": qinfo.avg_act_bits,
        });
        crate::store::atomic::write_json(&ctx.output_path(RESULT), &result)?;
        crate::store::atomic::write_json(&ctx.output_path(QUANT_INFO), &qinfo)?;
        let table = format!(
            "{}paper metric (the original's training metric): {:.5}\n",
            counter::render_table(&report),
            paper.metric
        );
        crate::store::atomic::write(&ctx.output_path(SCORE_TABLE), table.as_bytes())?;
        ctx.set_metric("top1", acc.top1);
        ctx.set_metric("top5", acc.top5);
        ctx.set_metric("paper_metric", paper.metric);
        ctx.set_metric("official_score", report.totals.score);
        ctx.set_metric("avg_weight_bits", qinfo.avg_weight_bits);
        ctx.set_metric("avg_act_bits", qinfo.avg_act_bits);
        Ok(())
    }
}

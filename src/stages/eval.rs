//! `eval`: top-1/top-5 on the validation split, the paper metric, the official MicroNet
//! score with its per-layer table, quant_info.json — for a float or a quantized model.

use super::support::{self, DataParams};
use crate::artifacts::model_dir as dir;
use crate::exec::context::StageContext;
use crate::exec::kind::StageKind;
use crate::manifest::Params;
use crate::manifest::schema::{InputSpec, InputsSpec, KindSchema, ParamSpec, StageParams};
use crate::quant::info::QuantInfo;
use crate::quant::thresholds::Thresholds;
use crate::quant::{QConfig, QEfficientNet};
use crate::score::counter::{self, Quantization};
use crate::score::metric::{MetricConfig, paper_metric};
use anyhow::{Result, bail};
use burn::module::Module;

pub struct Eval;

use crate::artifacts::{self, EVAL as RESULT, EvalResult, QUANT_INFO};
pub const SCORE_TABLE: &str = "score.txt";

crate::stage_params! {
    /// Params of `eval`.
    pub struct EvalParams {
        /// validation images (0: all)
        pub val_samples: usize = 0usize,
        /// images per forward pass
        pub batch_size: usize = 50usize,
        /// with `thresholds`: bits of every weight channel
        pub weight_bits: f64 = 8.0,
        /// with `thresholds`: bits of every activation channel (swish inputs and biases too)
        pub act_bits: f64 = 8.0,
        /// P0 of both scores
        pub params_baseline: f64 = 6.9e6,
        /// O0 of both scores
        pub ops_baseline: f64 = 1170e6,
    }
    shared { pub data: DataParams }
}

static INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "model",
        required: true,
        doc: "a model directory (float or quantized)",
    },
    InputSpec {
        name: "thresholds",
        required: false,
        doc: "thresholds.json of a float `model`: evaluate it quantized with these initial ranges at weight_bits/act_bits (post-training quantization, adjq's starting point)",
    },
    InputSpec {
        name: "data",
        required: true,
        doc: "dataset directory with TF-Slim `validation-*` shards",
    },
];

impl KindSchema for Eval {
    fn name(&self) -> &'static str {
        "eval"
    }

    fn version(&self) -> u32 {
        3
    }

    fn doc(&self) -> &'static str {
        "Evaluates a float or quantized model: top-1/top-5 on the validation split, the \
         paper metric and the official MicroNet score (per-layer table in score.txt), \
         quant_info.json with per-channel and per-layer average bits. A float model with a \
         `thresholds` input is evaluated quantized at fixed bits with those ranges."
    }

    fn params(&self) -> &'static [ParamSpec] {
        EvalParams::table()
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Named(INPUTS)
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        [RESULT, SCORE_TABLE, QUANT_INFO].map(String::from).to_vec()
    }

    fn uses_device(&self) -> bool {
        true
    }
}

impl StageKind for Eval {
    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let p: EvalParams = ctx.params()?;
        let device = ctx.device()?;
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
        let thresholds = ctx.inputs.get("thresholds").cloned();
        if thresholds.is_some() && info.quantized.is_some() {
            bail!(
                "input `thresholds` quantizes a float model, but `model` ({}) is already quantized",
                model_dir.display()
            );
        }
        let quantize = |q: QEfficientNet| -> Result<_> {
            let q = q.valid();
            let qi = QuantInfo::of(&q);
            let quant = Quantization::float().with_quant_info(&serde_json::to_string(&qi)?)?;
            Ok((
                Box::new(move |x| q.forward(x)) as Box<dyn Fn(_) -> _>,
                qi,
                quant,
            ))
        };
        let (forward, qinfo, quant): (Box<dyn Fn(_) -> _>, QuantInfo, Quantization) =
            match (&info.quantized, thresholds) {
                (None, Some(path)) => {
                    let (float, _) = dir::load_float(&model_dir, &device)?;
                    let (w, a) = (p.weight_bits as f32, p.act_bits as f32);
                    let q = QConfig {
                        weight_bits: w,
                        act_bits: a,
                        swish_bits: a,
                        bias_bits: a,
                        bits_trainable: false,
                        ..QConfig::default()
                    };
                    let t = Thresholds::load(&path)?;
                    quantize(QEfficientNet::from_float(&float.fold_bn(), &t, &q)?)?
                }
                (Some(_), _) => {
                    let (q, _) = dir::load_quantized(&model_dir, &device)?;
                    quantize(q)?
                }
                (None, None) => {
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
            &p.data,
            info.config.num_classes,
        )?;
        let batch = p.batch_size.max(1);
        let cfg = support::loader_config(
            &p.data,
            batch,
            support::preprocess(&p.data, &info, false),
            None,
        );
        ctx.progress(0, None, "evaluating");
        let limit = p.val_samples;
        let acc = support::evaluate(&*forward, ds.clone(), cfg, limit, &device)?;
        let (p0, o0) = (p.params_baseline, p.ops_baseline);
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
        let result = EvalResult {
            model: info.config.name.clone(),
            quantized: info.quantized.is_some() || ctx.inputs.contains_key("thresholds"),
            top1: acc.top1,
            top5: acc.top5,
            images: acc.images,
            paper_metric: paper,
            official: report.totals.clone(),
            avg_weight_bits: qinfo.avg_weight_bits,
            avg_act_bits: qinfo.avg_act_bits,
        };
        artifacts::write_json(&ctx.output_path(RESULT), &result)?;
        artifacts::write_json(&ctx.output_path(QUANT_INFO), &qinfo)?;
        let table = format!(
            "{}paper metric (the original's training metric): {:.5}\n",
            counter::render_table(&report),
            paper.metric
        );
        crate::atomic::write(&ctx.output_path(SCORE_TABLE), table.as_bytes())?;
        ctx.set_metric("top1", acc.top1);
        ctx.set_metric("top5", acc.top5);
        ctx.set_metric("paper_metric", paper.metric);
        ctx.set_metric("official_score", report.totals.score);
        ctx.set_metric("avg_weight_bits", qinfo.avg_weight_bits);
        ctx.set_metric("avg_act_bits", qinfo.avg_act_bits);
        support::report_skipped(ctx, &p.data, &[&ds]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn params_table_matches_struct() {
        super::super::check_params::<super::EvalParams>();
    }
}

//! `select`: picks one mini-epoch checkpoint of an `adjq` stage by a rule — the lowest
//! metric with top-1 ≥ `min_top1`, or the highest top-1 with metric ≤ `max_metric` — and
//! records why.

use crate::artifacts::model_dir as dir;
use crate::artifacts::{self, Candidate, MiniEpoch, Selection, selection};
use crate::exec::context::StageContext;
use crate::exec::kind::StageKind;
use crate::manifest::Params;
use crate::manifest::schema::{InputSpec, InputsSpec, KindSchema, ParamSpec, StageParams};
use anyhow::{Result, bail};

pub struct Select;

pub use crate::artifacts::SELECTION;

crate::param_choice! {
    /// How `select` picks a checkpoint.
    pub enum Rule {
        LowestMetric = "lowest_metric",
        HighestTop1 = "highest_top1",
    }
}

crate::stage_params! {
    /// Params of `select`.
    pub struct SelectParams {
        /// lowest_metric: lowest metric among checkpoints with top-1 ≥ min_top1; highest_top1: highest top-1 among those with metric ≤ max_metric
        pub rule: Rule = Rule::LowestMetric,
        /// accuracy floor of lowest_metric
        pub min_top1: f64 = 0.0,
        /// metric ceiling of highest_top1
        pub max_metric: f64 = 1e9,
    }
}

static INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "checkpoints",
        required: true,
        doc: "an adjq stage's `checkpoints` output",
    },
    InputSpec {
        name: "metrics",
        required: true,
        doc: "the same stage's `metrics.jsonl`",
    },
];

impl KindSchema for Select {
    fn name(&self) -> &'static str {
        "select"
    }

    fn version(&self) -> u32 {
        // 2: highest_top1 breaks ties for the later checkpoint, as documented (version 1
        // took the earlier: `max_by` keeps the last of equals, iterating backwards).
        2
    }

    fn doc(&self) -> &'static str {
        "Picks one mini-epoch checkpoint of an adjq stage by a rule (lowest metric above an \
         accuracy floor, or highest accuracy under a metric ceiling); outputs it as `model` \
         and explains the choice in selection.json."
    }

    fn params(&self) -> &'static [ParamSpec] {
        SelectParams::table()
    }

    fn inputs(&self) -> InputsSpec {
        InputsSpec::Named(INPUTS)
    }

    fn outputs(&self, _: &Params) -> Vec<String> {
        vec![dir::OUTPUT.into(), SELECTION.into()]
    }
}

impl StageKind for Select {
    fn run(&self, ctx: &mut StageContext) -> Result<()> {
        let metrics_path = ctx.input("metrics")?.to_path_buf();
        let records: Vec<MiniEpoch> =
            artifacts::read_jsonl(&metrics_path, "metrics.jsonl of an adjq stage")?;
        let p: SelectParams = ctx.params()?;
        let (rule, min_top1, max_metric) = (p.rule, p.min_top1, p.max_metric);
        let rule_name = Rule::NAMES[rule as usize];
        let (best, eligible) = if rule == Rule::LowestMetric {
            let n = records.iter().filter(|r| r.accuracy.top1 >= min_top1);
            (selection::lowest_metric(&records, min_top1), n.count())
        } else {
            let n = records.iter().filter(|r| r.metric <= max_metric);
            (selection::highest_top1(&records, max_metric), n.count())
        };
        let Some(best) = best.map(|i| &records[i]) else {
            bail!(
                "no checkpoint satisfies the rule `{rule_name}` (min_top1 {min_top1}, max_metric {max_metric}); \
                 {} checkpoints, best top-1 {:.4}, lowest metric {:.4}",
                records.len(),
                records
                    .iter()
                    .map(|r| r.accuracy.top1)
                    .fold(f64::NAN, f64::max),
                records.iter().map(|r| r.metric).fold(f64::NAN, f64::min)
            );
        };
        let (name, metric, top1) = (best.checkpoint.clone(), best.metric, best.accuracy.top1);
        let src = ctx.input("checkpoints")?.join(&name);
        if !src.is_dir() {
            bail!(
                "checkpoint `{name}` is listed in the metrics but missing from {}",
                src.display()
            );
        }
        let out = ctx.output_path(dir::OUTPUT);
        std::fs::create_dir_all(&out)?;
        for e in std::fs::read_dir(&src)? {
            let e = e?;
            std::fs::copy(e.path(), out.join(e.file_name()))?;
        }
        let why = Selection {
            candidates: records
                .iter()
                .map(|r| Candidate {
                    checkpoint: r.checkpoint.clone(),
                    metric: r.metric,
                    top1: r.accuracy.top1,
                })
                .collect(),
            chosen: name.clone(),
            eligible,
            max_metric,
            metric,
            min_top1,
            rule: rule_name.to_string(),
            top1,
        };
        artifacts::write_json(&ctx.output_path(SELECTION), &why)?;
        ctx.set_metric("metric", metric);
        ctx.set_metric("top1", top1);
        ctx.set_metric("chosen", name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn params_table_matches_struct() {
        super::super::check_params::<super::SelectParams>();
    }
}

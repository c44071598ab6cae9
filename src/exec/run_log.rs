//! The per-variant, per-stage part of a run's log: what each stage was asked to be
//! (params and their sources) and, once the run ends, what it came to.

use super::{JobState, Outcome};
use crate::exec::plan::Plan;
use crate::manifest::{Manifest, ParamSource};
use crate::store::runs::{RunVariant, StageRun};
use std::collections::BTreeSet;

/// The variants of `plan` (built from `manifests`, one per variant) as the run planned
/// them, or, with `outcomes`, as it ended.
pub fn variants(
    plan: &Plan,
    manifests: &[&Manifest],
    outcomes: Option<&[Outcome]>,
) -> Vec<RunVariant> {
    plan.variants
        .iter()
        .zip(manifests)
        .map(|(v, m)| {
            let read: BTreeSet<&str> = v
                .stages
                .values()
                .flat_map(|&j| plan.jobs[j].stage.upstream())
                .collect();
            let stages = v
                .stages
                .iter()
                .map(|(name, &j)| {
                    let stage = &plan.jobs[j].stage;
                    let outcome = outcomes.map(|o| &o[j]);
                    let record = outcome.and_then(|o| o.record.as_ref());
                    let run = StageRun {
                        kind: stage.kind.name().to_string(),
                        state: outcome.map_or("planned", |o| state_name(&o.state)).into(),
                        key: outcome.and_then(|o| o.key.clone()),
                        params: stage.params.clone(),
                        // Kind defaults are most params: left out, and read back as such.
                        sources: stage
                            .param_sources
                            .iter()
                            .filter(|(_, s)| **s != ParamSource::KindDefault)
                            .map(|(k, s)| (k.clone(), s.clone()))
                            .collect(),
                        inputs: record.map(|r| r.inputs.clone()).unwrap_or_default(),
                        metrics: record.map(|r| r.metrics.clone()).unwrap_or_default(),
                        last: !read.contains(name.as_str()),
                    };
                    (name.clone(), run)
                })
                .collect();
            RunVariant {
                settings: v.settings.clone(),
                shared: m.params.clone(),
                stages,
            }
        })
        .collect()
}

fn state_name(s: &JobState) -> &'static str {
    match s {
        JobState::Cached => "cached",
        JobState::Ran { resumed: false } => "ran",
        JobState::Ran { resumed: true } => "resumed",
        JobState::Reused => "reused",
        JobState::Failed(_) => "failed",
        JobState::Interrupted => "interrupted",
        JobState::Skipped(_) => "skipped",
        JobState::NotRun => "not run",
    }
}

//! Stage kinds: one file per kind, all behind the [`StageKind`] trait.
//!
//! A kind declares its parameter schema (with defaults), its inputs, the names of the
//! outputs it will produce, the resources it occupies, and an implementation version
//! that is part of every cache key (bump it when the kind's results change).

mod adjq;
mod convert;
mod eval;
mod pretrain;
mod qat;
pub mod report;
mod select;
mod shell;
mod support;
mod thresholds;

use crate::exec::context::StageContext;
use crate::manifest::Params;
use crate::manifest::value::ParamSpec;
use std::collections::BTreeMap;

/// The inputs a stage kind accepts.
pub enum InputsSpec {
    /// Only these names (each required or optional).
    Named(&'static [InputSpec]),
    /// Any names (the `shell` kind: its declared deps).
    Any,
}

pub struct InputSpec {
    pub name: &'static str,
    pub required: bool,
    pub doc: &'static str,
}

pub trait StageKind: Send + Sync {
    fn name(&self) -> &'static str;
    /// Implementation version; part of the cache key.
    fn version(&self) -> u32;
    /// One-paragraph description for `runner kinds`.
    fn doc(&self) -> &'static str;
    fn params(&self) -> &'static [ParamSpec];
    fn inputs(&self) -> InputsSpec;
    /// Names of the outputs a stage with these params produces (known before it runs, so
    /// references to them are checked when the manifest loads).
    fn outputs(&self, params: &Params) -> Vec<String>;
    /// Resource slots the stage holds while it runs, e.g. `gpu = 1`.
    fn resources(&self, _params: &Params) -> BTreeMap<String, u32> {
        BTreeMap::new()
    }
    /// Does the work: reads `ctx.input(..)`, writes every declared output to
    /// `ctx.output_path(..)`. Runs in a child process, in a work dir that survives
    /// interruption.
    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()>;
}

static KINDS: &[&dyn StageKind] = &[
    &convert::Convert,
    &pretrain::Pretrain,
    &qat::Qat,
    &thresholds::Thresholds,
    &adjq::Adjq,
    &select::Select,
    &eval::Eval,
    &report::Report,
    &shell::Shell,
];

pub fn all() -> &'static [&'static dyn StageKind] {
    KINDS
}

pub fn find(name: &str) -> Option<&'static dyn StageKind> {
    KINDS.iter().copied().find(|k| k.name() == name)
}

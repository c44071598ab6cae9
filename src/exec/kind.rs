//! The executable half of a stage kind: its declarative [`KindSchema`] plus `run`, and
//! the registry the child process looks kinds up in (handed in by the binary, so this
//! layer never imports the stages).

use super::context::StageContext;
use crate::manifest::schema::{KindSchema, Kinds};

pub trait StageKind: KindSchema {
    /// Does the work: reads `ctx.input(..)`, writes every declared output to
    /// `ctx.output_path(..)`. Runs in a child process, in a work dir that survives
    /// interruption.
    fn run(&self, ctx: &mut StageContext) -> anyhow::Result<()>;
}

/// Every stage kind this binary can run.
#[derive(Clone, Copy)]
pub struct Registry(pub &'static [&'static dyn StageKind]);

impl Registry {
    pub fn find(&self, name: &str) -> Option<&'static dyn StageKind> {
        self.0.iter().copied().find(|k| k.name() == name)
    }

    /// The kinds' schemas, for the manifest loader.
    pub fn kinds(&self) -> Kinds {
        Kinds(
            self.0
                .iter()
                .map(|k| *k as &'static dyn KindSchema)
                .collect(),
        )
    }
}

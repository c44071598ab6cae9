//! Parameter bookkeeping: ids that survive a reload (the optimizer state is keyed by
//! them), the two optimizer groups of adjq, snapshots by path, and optimizer state bytes
//! that do not depend on the process.

use anyhow::{Result, anyhow};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn_pack::{Reader, Writer};

/// Gives every parameter an id derived from its path, so a model rebuilt and reloaded
/// matches a saved optimizer state.
pub fn stable_ids<M: Module>(model: M) -> M {
    struct Ids(Vec<String>);
    impl ModuleMapper for Ids {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let hash = blake3::hash(self.0.join(".").as_bytes());
            let id = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
            let (_, value, mapper) = p.consume();
            Param::from_mapped_value(ParamId::from(id), value, mapper)
        }
    }
    model.map(&mut Ids(Vec::new()))
}

/// (path, id) of every float parameter, in visiting order.
pub fn param_ids<M: Module>(model: &M) -> Vec<(String, ParamId)> {
    struct Collect(Vec<String>, Vec<(String, ParamId)>);
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.1.push((self.0.join("."), p.id));
        }
    }
    let mut c = Collect(Vec::new(), Vec::new());
    model.visit(&mut c);
    c.1
}

/// Whether a parameter path is a bit scale k (the second optimizer's group).
pub fn is_bit_scale(path: &str) -> bool {
    path.ends_with(".bit_scale")
}

/// Whether a path is a constant of the quantizers (initial ranges): never trained,
/// never averaged.
pub fn is_constant(path: &str) -> bool {
    path.ends_with(".init_min") || path.ends_with(".init_width")
}

/// An optimizer's state as burnpack bytes with its tensors in name order. burn writes them
/// in the order of a `HashMap` whose hasher is seeded per process, so the same state gave
/// other bytes in every process; sorted, a resumed stage's checkpoints are byte-identical
/// to an uninterrupted run's.
pub fn state_bytes(opt: &ModuleOptimizer) -> Result<Vec<u8>> {
    let bytes = opt.into_bytes().map_err(|e| anyhow!("{e:?}"))?;
    let reader = Reader::from_bytes(bytes)?;
    let (scalars, metadata) = (reader.scalars().clone(), reader.metadata().clone());
    let mut parts = reader
        .into_tensors()?
        .into_iter()
        .map(|t| t.into_parts())
        .collect::<Result<Vec<_>, _>>()?;
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    let tensors = parts
        .into_iter()
        .map(|(name, dtype, shape, id, bytes)| {
            burn_pack::Tensor::new(name, dtype, shape, id, bytes)
        })
        .collect();
    let mut writer = Writer::new(tensors);
    for (key, value) in &scalars {
        writer = writer.with_scalar(key, *value);
    }
    for (key, value) in &metadata {
        writer = writer.with_metadata(key, value);
    }
    Ok(writer.into_bytes()?.to_vec())
}

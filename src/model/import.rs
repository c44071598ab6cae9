//! Moving weights between checkpoints and models: published names and layouts →
//! our canonical tensor map (our paths, our layouts) → a model, and back.

use super::EfficientNet;
use super::names::{self, Layout, Mapping};
use crate::ckpt::{Contents, Format, Tensor as CkptTensor, TensorMap};
use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use std::collections::BTreeMap;
use std::fmt;

/// Where a checkpoint's names come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Naming {
    /// tensorflow/tpu EfficientNet under `scope` (e.g. `efficientnet-b0`); the
    /// `/ExponentialMovingAverage` shadow is preferred when present, as the official eval does.
    TensorFlow { scope: String },
    /// The `efficientnet_pytorch`-style state dict (the Lite0 port).
    PyTorch,
    /// timm's EfficientNet state dict (`conv_stem`, `blocks.S.J.*`), from `.pth` or
    /// `.safetensors`; its padding and ε come from the timm model name ([`super::timm`]).
    Timm,
    /// Our own paths (our safetensors checkpoints).
    Ours,
}

/// The naming a checkpoint of `format` holding `tensors` uses unless told otherwise: the
/// official TF names under the preset's scope; timm's where its stem is found (at the top
/// or under a prefix); else the PyTorch port's for PyTorch files and ours for safetensors.
pub fn auto_naming(format: Format, preset: &str, tensors: &TensorMap) -> Naming {
    let timm = || {
        tensors
            .keys()
            .any(|k| k == "conv_stem.weight" || k.ends_with(".conv_stem.weight"))
    };
    match format {
        Format::TfBundle => Naming::TensorFlow {
            scope: preset.to_string(),
        },
        _ if timm() => Naming::Timm,
        Format::PyTorch => Naming::PyTorch,
        Format::Safetensors => Naming::Ours,
    }
}

/// Every way a checkpoint failed to match the model.
#[derive(Debug, Default, PartialEq)]
pub struct Mismatch {
    /// Our paths with no tensor in the checkpoint (and the name looked for).
    pub missing: Vec<(String, String)>,
    /// Checkpoint tensors nothing maps to.
    pub unexpected: Vec<String>,
    /// (our path, their name, expected shape, found shape) — shapes in our layout.
    pub misshaped: Vec<(String, String, Vec<usize>, Vec<usize>)>,
    /// (our path, their name, why): in the checkpoint but not loadable.
    pub unreadable: Vec<(String, String, String)>,
    /// What else to tell the user (e.g. the checkpoint's top-level entries).
    pub note: Option<String>,
}

impl Mismatch {
    fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.misshaped.is_empty()
            && self.unreadable.is_empty()
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checkpoint does not match the model: {} missing, {} unexpected, {} mis-shaped, {} unreadable",
            self.missing.len(),
            self.unexpected.len(),
            self.misshaped.len(),
            self.unreadable.len()
        )?;
        for (ours, theirs, why) in &self.unreadable {
            writeln!(f, "  unreadable {ours} (`{theirs}`: {why})")?;
        }
        if let Some(note) = &self.note {
            writeln!(f, "  note: {note}")?;
        }
        for (ours, theirs) in &self.missing {
            writeln!(f, "  missing    {ours} (looked for `{theirs}`)")?;
        }
        for name in &self.unexpected {
            writeln!(f, "  unexpected {name}")?;
        }
        for (ours, theirs, want, got) in &self.misshaped {
            writeln!(
                f,
                "  mis-shaped {ours} (`{theirs}`): model wants {want:?}, checkpoint has {got:?}"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Mismatch {}

/// Tensors a source checkpoint may hold that are not weights.
fn ignorable(name: &str) -> bool {
    name == "global_step" || name.ends_with("num_batches_tracked") || name.contains("/RMSProp")
}

/// Our parameter paths and shapes, in model order.
pub fn shapes(model: &EfficientNet) -> Vec<(String, Vec<usize>)> {
    struct Shapes {
        path: Vec<String>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl ModuleVisitor for Shapes {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out.push((self.path.join("."), param.dims().to_vec()));
        }
    }
    let mut v = Shapes {
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

/// Every parameter of a module (an EfficientNet, a quantized network) as a tensor map by
/// path (our canonical layout).
pub fn export<M: Module>(model: &M) -> TensorMap {
    struct Export {
        path: Vec<String>,
        out: TensorMap,
    }
    impl ModuleVisitor for Export {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let shape = t.dims().to_vec();
            let values = t
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 after convert");
            self.out
                .insert(self.path.join("."), CkptTensor::from_f32(shape, &values));
        }
    }
    let mut v = Export {
        path: Vec::new(),
        out: TensorMap::new(),
    };
    model.visit(&mut v);
    v.out
}

/// Renames and re-lays-out a checkpoint into our canonical map for `model`'s architecture,
/// or lists every missing, unexpected and mis-shaped tensor.
/// [`canonicalize`] for a checkpoint's [`Contents`]: the state dict may sit under a
/// prefix (a training checkpoint's `model.`, DataParallel's `module.`); a tensor the model
/// needs that the checkpoint holds but cannot load is named as unreadable (with why), not
/// missing; unloadable tensors it does not need are ignored. When none of the needed
/// names is found, the error lists the checkpoint's top-level entries.
pub fn canonicalize_contents(
    contents: &Contents,
    model: &EfficientNet,
    naming: &Naming,
) -> Result<TensorMap, Mismatch> {
    let all = &contents.tensors;
    let mappings = mappings(model, naming);
    // The state dict at the top, else under the prefix most needed names are found at.
    let (prefix, result) = match canonicalize(all, model, naming) {
        Ok(canon) => return Ok(canon),
        Err(m) => match state_dict_prefix(all, &mappings) {
            Some(prefix) => {
                let inner: TensorMap = all
                    .iter()
                    .filter_map(|(k, t)| Some((k.strip_prefix(&prefix)?.to_string(), t.clone())))
                    .collect();
                (prefix, canonicalize(&inner, model, naming))
            }
            None => (String::new(), Err(m)),
        },
    };
    result.map_err(|mut m| {
        let why = |theirs: &str| {
            let (plain, ema) = (
                format!("{prefix}{theirs}"),
                format!("{prefix}{theirs}/ExponentialMovingAverage"),
            );
            contents
                .unreadable
                .iter()
                .find(|u| u.name == plain || u.name == ema)
                .map(|u| (u.name.clone(), u.why.clone()))
        };
        let mut missing = Vec::new();
        for (ours, theirs) in std::mem::take(&mut m.missing) {
            match why(&theirs) {
                Some((name, why)) => m.unreadable.push((ours, name, why)),
                None => missing.push((ours, theirs)),
            }
        }
        if missing.len() == mappings.len() {
            m.note = Some(format!(
                "none of the names the model needs is in the checkpoint, at its top or under a prefix; its top-level entries: {}",
                top_level(all).join(", ")
            ));
        }
        m.missing = missing;
        m
    })
}

/// Which checkpoint name each of our parameters takes its value from.
fn mappings(model: &EfficientNet, naming: &Naming) -> Vec<Mapping> {
    match naming {
        Naming::TensorFlow { scope } => names::tensorflow(&model.config, scope),
        Naming::PyTorch => names::pytorch(&model.config),
        Naming::Timm => names::timm(&model.config),
        Naming::Ours => shapes(model)
            .into_iter()
            .map(|(k, _)| Mapping {
                ours: k.clone(),
                theirs: k,
                layout: Layout::Same,
            })
            .collect(),
    }
}

/// Where the state dict sits in a checkpoint that nests it, as training checkpoints do
/// (`{"model": state_dict, "optimizer": ..., "epoch": ...}`, or `module.` from
/// DataParallel): the dotted prefix under which most of the names the model needs are
/// found, if not at the top.
fn state_dict_prefix(src: &TensorMap, mappings: &[Mapping]) -> Option<String> {
    let theirs: std::collections::BTreeSet<&str> =
        mappings.iter().map(|m| m.theirs.as_str()).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for name in src.keys() {
        for (i, _) in name.match_indices('.') {
            if theirs.contains(&name[i + 1..]) {
                *counts.entry(&name[..=i]).or_default() += 1;
            }
        }
    }
    let (prefix, found) = counts.into_iter().max_by_key(|(_, n)| *n)?;
    (2 * found >= theirs.len()).then(|| prefix.to_string())
}

/// The distinct first components of the checkpoint's names (what a user sees at its top).
fn top_level(src: &TensorMap) -> Vec<String> {
    let mut tops: Vec<String> = src
        .keys()
        .map(|k| k.split(['.', '/']).next().unwrap_or(k).to_string())
        .collect();
    tops.dedup();
    tops.sort();
    tops.dedup();
    tops
}

pub fn canonicalize(
    src: &TensorMap,
    model: &EfficientNet,
    naming: &Naming,
) -> Result<TensorMap, Mismatch> {
    let want: BTreeMap<String, Vec<usize>> = shapes(model).into_iter().collect();
    let mappings = mappings(model, naming);
    let mut mismatch = Mismatch::default();
    let mut used = std::collections::BTreeSet::new();
    let mut out = TensorMap::new();
    for m in &mappings {
        let ema = format!("{}/ExponentialMovingAverage", m.theirs);
        let (name, tensor) = match (src.get(&ema), src.get(&m.theirs)) {
            (Some(t), _) if matches!(naming, Naming::TensorFlow { .. }) => (ema.clone(), t),
            (_, Some(t)) => (m.theirs.clone(), t),
            _ => {
                mismatch.missing.push((m.ours.clone(), m.theirs.clone()));
                continue;
            }
        };
        used.insert(m.theirs.clone());
        used.insert(ema);
        let shape = relayout_shape(&tensor.shape, m.layout);
        let expected = want.get(&m.ours).cloned().unwrap_or_default();
        if shape != expected {
            mismatch
                .misshaped
                .push((m.ours.clone(), name, expected, shape));
            continue;
        }
        match tensor.to_f32_vec() {
            Ok(values) => {
                let values = relayout(&values, &tensor.shape, m.layout);
                out.insert(m.ours.clone(), CkptTensor::from_f32(shape, &values));
            }
            Err(_) => {
                mismatch
                    .misshaped
                    .push((m.ours.clone(), name, expected, tensor.shape.clone()))
            }
        }
    }
    mismatch.unexpected = src
        .keys()
        .filter(|k| !used.contains(*k) && !ignorable(k))
        .cloned()
        .collect();
    if mismatch.is_empty() {
        Ok(out)
    } else {
        Err(mismatch)
    }
}

/// The permutation taking a source layout to ours.
fn permutation(layout: Layout) -> Option<&'static [usize]> {
    match layout {
        Layout::Same => None,
        Layout::TfConv => Some(&[3, 2, 0, 1]),
        Layout::TfDepthwise => Some(&[2, 3, 0, 1]),
        Layout::Transpose2d => Some(&[1, 0]),
    }
}

fn relayout_shape(shape: &[usize], layout: Layout) -> Vec<usize> {
    match permutation(layout) {
        Some(p) if p.len() == shape.len() => p.iter().map(|&i| shape[i]).collect(),
        _ => shape.to_vec(),
    }
}

/// Row-major permutation of `values` (shape `shape`) by the layout's axis order.
fn relayout(values: &[f32], shape: &[usize], layout: Layout) -> Vec<f32> {
    let Some(perm) = permutation(layout).filter(|p| p.len() == shape.len()) else {
        return values.to_vec();
    };
    let out_shape: Vec<usize> = perm.iter().map(|&i| shape[i]).collect();
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let mut out = Vec::with_capacity(values.len());
    let mut idx = vec![0usize; out_shape.len()];
    for _ in 0..values.len() {
        let src: usize = idx.iter().zip(perm).map(|(&x, &p)| x * strides[p]).sum();
        out.push(values[src]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// Sets every parameter of `model` from a canonical map (which must cover all of them with
/// the right shapes, as [`canonicalize`] guarantees).
pub fn load<M: Module>(model: M, canon: &TensorMap) -> Result<M, Mismatch> {
    struct Load<'a> {
        path: Vec<String>,
        canon: &'a TensorMap,
        mismatch: Mismatch,
    }
    impl ModuleMapper for Load<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let path = self.path.join(".");
            let Some(t) = self.canon.get(&path) else {
                self.mismatch.missing.push((path.clone(), path));
                return param;
            };
            let want = param.dims().to_vec();
            match t.to_f32_vec() {
                Ok(values) if t.shape == want => param.map(|old| {
                    let new =
                        Tensor::from_data(TensorData::new(values, t.shape.clone()), &old.device());
                    // A trainable parameter stays trainable (from_data makes a plain leaf).
                    new.set_require_grad(old.is_require_grad())
                }),
                _ => {
                    self.mismatch
                        .misshaped
                        .push((path.clone(), path, want, t.shape.clone()));
                    param
                }
            }
        }
    }
    let mut l = Load {
        path: Vec::new(),
        canon,
        mismatch: Mismatch::default(),
    };
    let model = model.map(&mut l);
    if l.mismatch.is_empty() {
        Ok(model)
    } else {
        Err(l.mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayout_permutes_axes() {
        // [kh=1, kw=2, in=1, out=3] → [out, in, kh, kw]
        let v: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let out = relayout(&v, &[1, 2, 1, 3], Layout::TfConv);
        assert_eq!(
            relayout_shape(&[1, 2, 1, 3], Layout::TfConv),
            vec![3, 1, 1, 2]
        );
        // element [o, 0, 0, w] = src[0, w, 0, o] = w*3 + o
        assert_eq!(out, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(
            relayout(
                &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                &[2, 3],
                Layout::Transpose2d
            ),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }
}

//! safetensors files: read through the `safetensors` crate; written by our own
//! serializer so the bytes are a function of the contents alone (the crate's writer
//! emits `__metadata__` in hash-map order).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};
use serde::ser::{SerializeMap, Serializer};

use super::error::{CkptError, Result};
use super::tensor::{DType, Data, Tensor, TensorMap};
use super::{Contents, Unreadable};
use crate::atomic;

/// The free-form string metadata stored under `__metadata__`.
pub type Metadata = BTreeMap<String, String>;

const METADATA_KEY: &str = "__metadata__";

/// Reads every tensor (sorted by name) and the metadata; a tensor of a dtype we do not
/// load is an error naming it.
pub fn read(path: &Path) -> Result<(TensorMap, Metadata)> {
    read_file(path, false).map(|(c, m)| (c.tensors, m))
}

/// Reads every tensor it can, and lists those of dtypes we do not load.
pub fn read_contents(path: &Path) -> Result<Contents> {
    read_file(path, true).map(|(c, _)| c)
}

fn read_file(path: &Path, lenient: bool) -> Result<(Contents, Metadata)> {
    let bytes = fs::read(path).map_err(CkptError::io(path))?;
    let bad = |e: safetensors::SafeTensorError| CkptError::format(path, e.to_string());
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let metadata = header
        .metadata()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let st = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let mut views: Vec<_> = st.iter().collect();
    views.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Contents::default();
    for (name, view) in views {
        let Some(dtype) = from_st(view.dtype()) else {
            let dtype = format!("{:?}", view.dtype());
            if !lenient {
                return Err(CkptError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    dtype,
                });
            }
            out.unreadable.push(Unreadable {
                name: name.to_string(),
                why: format!("unsupported dtype {dtype}"),
                dtype,
                shape: view.shape().to_vec(),
                bytes: view.data().len(),
            });
            continue;
        };
        let tensor = Tensor {
            dtype,
            shape: view.shape().to_vec(),
            data: Data::Bytes(view.data().to_vec()),
        };
        out.tensors.insert(name.to_string(), tensor);
    }
    Ok((out, metadata))
}

/// Writes `tensors` to `path` atomically (temp file, fsync, rename).
pub fn write(path: &Path, tensors: &TensorMap, metadata: &Metadata) -> Result<()> {
    let bytes = serialize(tensors, metadata).map_err(|msg| CkptError::format(path, msg))?;
    atomic::write(path, &bytes).map_err(CkptError::io(path))
}

/// The file's bytes. Tensors are laid out as the crate's own writer does (by descending
/// dtype alignment, then name), so every tensor is aligned and the output equals the
/// crate's whenever there is at most one metadata entry.
pub fn serialize(tensors: &TensorMap, metadata: &Metadata) -> std::result::Result<Vec<u8>, String> {
    let mut order = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (Some(dtype), Data::Bytes(bytes)) = (to_st(t.dtype), &t.data) else {
            return Err(format!(
                "tensor `{name}`: {} tensors cannot be stored in safetensors",
                t.dtype
            ));
        };
        if name == METADATA_KEY {
            return Err(format!("a tensor may not be named `{METADATA_KEY}`"));
        }
        if Some(bytes.len()) != t.numel().checked_mul(t.dtype.size().unwrap_or(0)) {
            return Err(format!(
                "tensor `{name}`: {} bytes do not fit shape {:?}",
                bytes.len(),
                t.shape
            ));
        }
        order.push((name, dtype, t, bytes));
    }
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));

    let mut offset = 0;
    let mut infos = Vec::with_capacity(order.len());
    for (name, dtype, t, bytes) in &order {
        let info = TensorInfo {
            dtype: *dtype,
            shape: t.shape.clone(),
            data_offsets: (offset, offset + bytes.len()),
        };
        offset += bytes.len();
        infos.push((*name, info));
    }
    let json = |e: serde_json::Error| e.to_string();
    let mut header = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut header);
    let mut map = ser
        .serialize_map(Some(infos.len() + usize::from(!metadata.is_empty())))
        .map_err(json)?;
    if !metadata.is_empty() {
        map.serialize_entry(METADATA_KEY, metadata).map_err(json)?;
    }
    for (name, info) in &infos {
        map.serialize_entry(name, info).map_err(json)?;
    }
    map.end().map_err(json)?;
    // The crate pads the header with spaces to a multiple of 8 so the data is aligned.
    header.resize(header.len().next_multiple_of(8), b' ');

    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    for (_, _, _, bytes) in order {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

fn from_st(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::BOOL => DType::Bool,
        Dtype::U8 => DType::U8,
        Dtype::I8 => DType::I8,
        Dtype::I16 => DType::I16,
        Dtype::U16 => DType::U16,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I32 => DType::I32,
        Dtype::U32 => DType::U32,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::U64 => DType::U64,
        _ => return None,
    })
}

fn to_st(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::Bool => Dtype::BOOL,
        DType::U8 => Dtype::U8,
        DType::I8 => Dtype::I8,
        DType::I16 => Dtype::I16,
        DType::U16 => Dtype::U16,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I32 => Dtype::I32,
        DType::U32 => Dtype::U32,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
        DType::U64 => Dtype::U64,
        DType::String => return None,
    })
}

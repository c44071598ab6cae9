//! PyTorch `.pth`/`.pt` files (zip, legacy, tar and plain pickle) through the standalone
//! `pytorch-reader` crate; names are the state dict's keys, nested dicts joined with `.`.
//!
//! That crate refuses a whole file when one tensor has a type it cannot load (complex,
//! quantized, float8). For the zip container (torch.save since 1.6, and what everything is
//! saved as today) [`read_contents`] then lists the tensors with our own pickle walker
//! (`ckpt::pickle_scan`) and loads the loadable ones from the archive itself. A legacy
//! (pre-1.6, non-zip) file with such a tensor stays an error naming the file and the type.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use pytorch_reader::{
    DType as PtDType, MAX_PICKLE_SIZE, MAX_TENSOR_SIZE, PickleError, PytorchError, PytorchReader,
};
use zip::{ZipArchive, ZipReadOptions};

use super::error::{CkptError, Result};
use super::pickle_scan::{self, TensorRef};
use super::tensor::{DType, Data, Tensor, TensorMap};
use super::{Contents, Unreadable};

/// Reads every tensor; one this reader cannot load is an error naming it (as for
/// TensorFlow bundles; [`read_contents`] lists it instead).
pub fn read(path: &Path) -> Result<TensorMap> {
    let contents = read_contents(path)?;
    match contents.unreadable.into_iter().next() {
        Some(u) => Err(CkptError::UnsupportedDtype {
            path: path.to_path_buf(),
            name: u.name,
            dtype: u.dtype,
        }),
        None => Ok(contents.tensors),
    }
}

/// Reads every tensor it can, and lists the rest with their dtype, shape, size and why;
/// damage is still an error. Only zip files can list such tensors (see the module docs).
pub fn read_contents(path: &Path) -> Result<Contents> {
    match PytorchReader::new(path) {
        Ok(reader) => Ok(Contents {
            tensors: load_all(path, reader)?,
            unreadable: Vec::new(),
        }),
        Err(e @ PytorchError::Pickle(PickleError::UnsupportedType(_))) if is_zip(path) => {
            read_listed(path).map_err(|why| {
                let why = format!("{why} (read directly, as pytorch-reader refuses the file: {e})");
                CkptError::format(path, why)
            })
        }
        Err(e) => Err(CkptError::format(path, e.to_string())),
    }
}

fn load_all(path: &Path, reader: PytorchReader) -> Result<TensorMap> {
    let mut tensors = Vec::with_capacity(reader.len());
    for (name, t) in reader.into_tensors() {
        // read() gathers strided views into row-major order and names the tensor on error.
        let bytes = t.read().map_err(CkptError::io(path))?;
        let tensor = Tensor {
            dtype: dtype(t.dtype()),
            shape: t.shape().to_vec(),
            data: Data::Bytes(bytes),
        };
        tensors.push((name, tensor));
    }
    Ok(in_natural_order(tensors))
}

/// The reader does not keep the state dict's order; natural order puts `_blocks.2` before
/// `_blocks.10`, which is what the state dict had for sequential modules.
fn in_natural_order(mut tensors: Vec<(String, Tensor)>) -> TensorMap {
    tensors.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    tensors.into_iter().collect()
}

fn is_zip(path: &Path) -> bool {
    let mut head = [0; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| matches!(&head, b"PK\x03\x04" | b"PK\x05\x06"))
}

/// The zip container read without `pytorch-reader`: every tensor `data.pkl` builds is
/// listed, those of a type we know loaded from `data/<key>`. The crate has already checked
/// the archive's byte order on the way to the type it refused.
fn read_listed(path: &Path) -> std::result::Result<Contents, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut zip = ZipArchive::new(BufReader::new(file)).map_err(|e| format!("zip: {e}"))?;
    // Entries sit under a folder named after the file (or `archive/`); the shallowest
    // `data.pkl` marks it, as in pytorch-reader.
    let root = zip
        .file_names()
        .filter_map(|n| n.ok()?.strip_suffix("data.pkl").map(str::to_string))
        .filter(|r| r.is_empty() || r.ends_with('/'))
        .min_by_key(String::len)
        .ok_or("no data.pkl in the zip archive")?;
    let pkl = format!("{root}data.pkl");
    let pickle = read_entry(&mut zip, &pkl, MAX_PICKLE_SIZE)?;
    let listed = pickle_scan::scan(&pickle).map_err(|e| format!("{pkl}: {e}"))?;

    let mut tensors = Vec::new();
    let mut unreadable = Vec::new();
    for t in listed {
        let entry = format!("{root}data/{}", t.key);
        match loadable(&t) {
            Ok(dtype) => {
                let tensor = load(&mut zip, &entry, &t, dtype)
                    .map_err(|e| format!("tensor `{}`: {e}", t.name))?;
                tensors.push((t.name, tensor));
            }
            Err((dtype, why)) => {
                let index = zip
                    .index_for_name(&entry)
                    .ok_or_else(|| format!("tensor `{}`: no `{entry}` in the archive", t.name))?;
                // The bytes of the storage the tensor views (all of it, for a view of part).
                let stored = zip
                    .by_index_raw(index)
                    .map(|f| f.size())
                    .map_err(|e| format!("`{entry}`: {e}"))?;
                unreadable.push(Unreadable {
                    name: t.name,
                    dtype,
                    shape: t.shape,
                    bytes: usize::try_from(stored).unwrap_or(usize::MAX),
                    why,
                });
            }
        }
    }
    unreadable.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    Ok(Contents {
        tensors: in_natural_order(tensors),
        unreadable,
    })
}

/// A listed tensor's dtype, or the dtype name and why it cannot be loaded.
fn loadable(t: &TensorRef) -> std::result::Result<DType, (String, String)> {
    // _rebuild_tensor_v3 names the element type beside an untyped storage.
    if let Some(name) = &t.dtype {
        return torch_dtype(name).ok_or_else(|| {
            (
                name.clone(),
                format!("unsupported dtype {name} (torch.{name})"),
            )
        });
    }
    storage_dtype(&t.storage_type).ok_or_else(|| {
        let name = storage_dtype_name(&t.storage_type);
        let why = format!("unsupported dtype {name} (torch.{})", t.storage_type);
        (name.to_string(), why)
    })
}

/// Reads a listed tensor from its storage entry, gathering a strided view into row-major
/// order; everything the pickle declares is checked against the entry.
fn load<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    entry: &str,
    t: &TensorRef,
    dtype: DType,
) -> std::result::Result<Tensor, String> {
    let elem = dtype.size().expect("storage dtypes have a fixed size");
    let overflow = || format!("shape {:?} with stride {:?} overflows", t.shape, t.stride);
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(overflow)?;
    // One past the last element the view reads.
    let extent = match numel {
        0 => t.offset,
        _ => t
            .shape
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |end, (&d, &s)| {
                end.checked_add((d - 1).checked_mul(s)?)
            })
            .and_then(|last| last.checked_add(1))
            .ok_or_else(overflow)?,
    };
    let out_len = numel
        .checked_mul(elem)
        .filter(|&n| n <= MAX_TENSOR_SIZE)
        .ok_or_else(|| format!("shape {:?} is over the tensor size limit", t.shape))?;
    // An untyped storage (with _rebuild_tensor_v3) counts bytes.
    let storage_elem = if t.storage_type == "UntypedStorage" {
        1
    } else {
        elem
    };
    let declared = t.storage_numel.saturating_mul(storage_elem);
    let needed = extent.saturating_mul(elem);
    if needed > declared {
        return Err(format!(
            "the view needs {needed} bytes of a storage declared as {declared}"
        ));
    }
    let data = read_entry(zip, entry, MAX_TENSOR_SIZE as u64)?;
    if data.len() < needed {
        return Err(format!(
            "`{entry}` holds {} bytes, the view needs {needed}",
            data.len()
        ));
    }
    let mut bytes = if is_contiguous(&t.shape, &t.stride) {
        data[t.offset * elem..t.offset * elem + out_len].to_vec()
    } else {
        let mut out = Vec::with_capacity(out_len);
        for linear in 0..numel {
            let (mut rest, mut at) = (linear, t.offset);
            for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
                at += (rest % d) * s;
                rest /= d;
            }
            out.extend_from_slice(&data[at * elem..(at + 1) * elem]);
        }
        out
    };
    if dtype == DType::Bool {
        // As pytorch-reader does: any nonzero byte is true.
        bytes.iter_mut().for_each(|b| *b = u8::from(*b != 0));
    }
    Ok(Tensor {
        dtype,
        shape: t.shape.clone(),
        data: Data::Bytes(bytes),
    })
}

/// Row-major strides (size-1 dimensions may have any stride, as in torch).
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut want = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d > 1 && s != want {
            return false;
        }
        want = want.saturating_mul(d);
    }
    true
}

/// A whole zip entry of at most `limit` bytes, its crc checked where it has one.
fn read_entry<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    name: &str,
    limit: u64,
) -> std::result::Result<Vec<u8>, String> {
    let err = |e: &dyn std::fmt::Display| format!("`{name}`: {e}");
    let index = zip
        .index_for_name(name)
        .ok_or_else(|| format!("no `{name}` in the archive"))?;
    // torch.save(..., compute_crc32=False) writes a crc of 0 for "none" (pytorch-reader
    // reads it so too).
    let crc = zip.by_index_raw(index).map_err(|e| err(&e))?.crc32();
    let mut entry = zip
        .by_index_with_options(index, ZipReadOptions::new().ignore_crc32(crc == 0))
        .map_err(|e| err(&e))?;
    let size = entry.size();
    if size > limit {
        return Err(err(&format!("{size} bytes, over the {limit} byte limit")));
    }
    // Grown as bytes arrive rather than sized by the header's claim.
    let mut buf = Vec::new();
    entry.read_to_end(&mut buf).map_err(|e| err(&e))?;
    if buf.len() as u64 != size {
        return Err(err(&format!(
            "{} bytes where the header says {size}",
            buf.len()
        )));
    }
    Ok(buf)
}

/// The element type of a storage class pytorch-reader loads.
fn storage_dtype(class: &str) -> Option<DType> {
    use DType::*;
    Some(match class {
        "FloatStorage" => F32,
        "DoubleStorage" => F64,
        "HalfStorage" => F16,
        "BFloat16Storage" => BF16,
        "LongStorage" => I64,
        "IntStorage" => I32,
        "ShortStorage" => I16,
        "CharStorage" => I8,
        "ByteStorage" => U8,
        "BoolStorage" => Bool,
        _ => return None,
    })
}

/// The torch dtype a storage class this reader cannot load holds, else the class name.
fn storage_dtype_name(class: &str) -> &str {
    match class {
        "ComplexFloatStorage" => "complex64",
        "ComplexDoubleStorage" => "complex128",
        "QInt8Storage" => "qint8",
        "QUInt8Storage" => "quint8",
        "QInt32Storage" => "qint32",
        "QUInt4x2Storage" => "quint4x2",
        "QUInt2x4Storage" => "quint2x4",
        other => other,
    }
}

/// A `torch.<dtype>` that pytorch-reader loads.
fn torch_dtype(name: &str) -> Option<DType> {
    use DType::*;
    Some(match name {
        "float32" | "float" => F32,
        "float64" | "double" => F64,
        "float16" | "half" => F16,
        "bfloat16" => BF16,
        "int64" | "long" => I64,
        "int32" | "int" => I32,
        "int16" | "short" => I16,
        "int8" => I8,
        "uint8" => U8,
        "uint16" => U16,
        "uint32" => U32,
        "uint64" => U64,
        "bool" => Bool,
        _ => return None,
    })
}

fn dtype(d: PtDType) -> DType {
    match d {
        PtDType::F64 => DType::F64,
        PtDType::F32 => DType::F32,
        PtDType::F16 => DType::F16,
        PtDType::BF16 => DType::BF16,
        PtDType::I64 => DType::I64,
        PtDType::I32 => DType::I32,
        PtDType::I16 => DType::I16,
        PtDType::I8 => DType::I8,
        PtDType::U64 => DType::U64,
        PtDType::U32 => DType::U32,
        PtDType::U16 => DType::U16,
        PtDType::U8 => DType::U8,
        PtDType::Bool => DType::Bool,
    }
}

/// Compares names with runs of digits ordered by value (`a.2` < `a.10`).
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = split_digits(a);
                let (nb, rb) = split_digits(b);
                let (ta, tb) = (trim_zeros(na), trim_zeros(nb));
                let ord = ta.len().cmp(&tb.len()).then(ta.cmp(tb)).then(na.cmp(nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    s.split_at(s.iter().take_while(|c| c.is_ascii_digit()).count())
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    &s[s.iter().take_while(|&&c| c == b'0').count()..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fallback reads what pytorch-reader reads, names, dtypes and bytes alike, for
    /// torch's files: strided views, shared storages, every dtype, nested training state.
    #[test]
    fn the_fallback_reads_what_the_crate_reads() {
        for file in ["state_dict.zip.pth", "training.zip.pth"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/pytorch")
                .join(file);
            let crate_read = load_all(&path, PytorchReader::new(&path).unwrap()).unwrap();
            let ours = read_listed(&path).unwrap();
            assert!(ours.unreadable.is_empty(), "{file}");
            assert_eq!(ours.tensors, crate_read, "{file}");
        }
    }

    #[test]
    fn natural_order_sorts_block_indices_by_value() {
        let mut v = vec![
            "_blocks.10.w",
            "_blocks.2.w",
            "_bn0.bias",
            "_blocks.1.w",
            "_blocks.02.w",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "_blocks.1.w",
                "_blocks.02.w",
                "_blocks.2.w",
                "_blocks.10.w",
                "_bn0.bias"
            ]
        );
    }
}

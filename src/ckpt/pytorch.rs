//! PyTorch `.pth`/`.pt` files (zip, legacy, tar and plain pickle) through the standalone
//! `pytorch-reader` crate; names are the state dict's keys, nested dicts joined with `.`.

use std::cmp::Ordering;
use std::path::Path;

use pytorch_reader::{DType as PtDType, PytorchReader};

use super::error::{CkptError, Result};
use super::tensor::{DType, Data, Tensor, TensorMap};

pub fn read(path: &Path) -> Result<TensorMap> {
    let reader = PytorchReader::new(path).map_err(|e| CkptError::format(path, e.to_string()))?;
    let mut tensors: Vec<_> = reader.into_tensors().into_iter().collect();
    // The reader does not keep the state dict's order; natural order puts `_blocks.2`
    // before `_blocks.10`, which is what the state dict had for sequential modules.
    tensors.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    let mut out = TensorMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = dtype(t.dtype());
        // read() gathers strided views into row-major order and names the tensor on error.
        let bytes = t.read().map_err(CkptError::io(path))?;
        let shape = t.shape().to_vec();
        out.insert(
            name,
            Tensor {
                dtype,
                shape,
                data: Data::Bytes(bytes),
            },
        );
    }
    Ok(out)
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

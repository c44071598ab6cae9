//! The common result of every reader: named tensors with their dtype kept.

use std::fmt;

use indexmap::IndexMap;

use super::error::{CkptError, Result};

/// Tensors by name, in the order the checkpoint lists them.
pub type TensorMap = IndexMap<String, Tensor>;

/// Element types found in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
    /// Byte strings (TensorFlow `DT_STRING`), one per element.
    String,
}

impl DType {
    /// Bytes per element; `None` for strings, whose elements vary in length.
    pub fn size(self) -> Option<usize> {
        use DType::*;
        Some(match self {
            I8 | U8 | Bool => 1,
            F16 | BF16 | I16 | U16 => 2,
            F32 | I32 | U32 => 4,
            F64 | I64 | U64 => 8,
            String => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// The numpy-style name, as TensorFlow and PyTorch users know them.
    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            F16 => "float16",
            BF16 => "bfloat16",
            F32 => "float32",
            F64 => "float64",
            I8 => "int8",
            I16 => "int16",
            I32 => "int32",
            I64 => "int64",
            U8 => "uint8",
            U16 => "uint16",
            U32 => "uint32",
            U64 => "uint64",
            Bool => "bool",
            String => "string",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Element storage: raw little-endian row-major bytes for fixed-size dtypes, or one
/// byte string per element.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Bytes(Vec<u8>),
    Strings(Vec<Vec<u8>>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Data,
}

/// Little-endian elements of type `$t` in a byte slice.
macro_rules! le {
    ($bytes:expr, $t:ty) => {
        $bytes
            .chunks_exact(std::mem::size_of::<$t>())
            .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk has the element size")))
    };
}

impl Tensor {
    /// A float32 tensor; `values` must hold `shape`'s element count.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape vs values"
        );
        Self {
            dtype: DType::F32,
            shape,
            data: Data::Bytes(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of element data (for strings, the sum of their lengths).
    pub fn byte_len(&self) -> usize {
        match &self.data {
            Data::Bytes(b) => b.len(),
            Data::Strings(s) => s.iter().map(Vec::len).sum(),
        }
    }

    fn numeric_bytes(&self, target: &'static str) -> Result<&[u8]> {
        match (&self.data, self.dtype) {
            (Data::Bytes(b), dt) if dt != DType::Bool => Ok(b),
            _ => Err(CkptError::Convert {
                dtype: self.dtype,
                target,
            }),
        }
    }

    /// Every element as f32 (rounding f64 and wide integers); strings and bools are errors.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        use DType::*;
        let b = self.numeric_bytes("float32")?;
        Ok(match self.dtype {
            F16 => le!(b, u16).map(f16_to_f32).collect(),
            BF16 => le!(b, u16).map(bf16_to_f32).collect(),
            F32 => le!(b, f32).collect(),
            F64 => le!(b, f64).map(|v| v as f32).collect(),
            I8 => le!(b, i8).map(f32::from).collect(),
            I16 => le!(b, i16).map(f32::from).collect(),
            I32 => le!(b, i32).map(|v| v as f32).collect(),
            I64 => le!(b, i64).map(|v| v as f32).collect(),
            U8 => le!(b, u8).map(f32::from).collect(),
            U16 => le!(b, u16).map(f32::from).collect(),
            U32 => le!(b, u32).map(|v| v as f32).collect(),
            U64 => le!(b, u64).map(|v| v as f32).collect(),
            Bool | String => unreachable!("rejected by numeric_bytes"),
        })
    }

    /// Every element as f64 (exact except integers beyond 2^53); strings and bools are errors.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        use DType::*;
        let b = self.numeric_bytes("float64")?;
        Ok(match self.dtype {
            F16 => le!(b, u16).map(|v| f64::from(f16_to_f32(v))).collect(),
            BF16 => le!(b, u16).map(|v| f64::from(bf16_to_f32(v))).collect(),
            F32 => le!(b, f32).map(f64::from).collect(),
            F64 => le!(b, f64).collect(),
            I8 => le!(b, i8).map(f64::from).collect(),
            I16 => le!(b, i16).map(f64::from).collect(),
            I32 => le!(b, i32).map(f64::from).collect(),
            I64 => le!(b, i64).map(|v| v as f64).collect(),
            U8 => le!(b, u8).map(f64::from).collect(),
            U16 => le!(b, u16).map(f64::from).collect(),
            U32 => le!(b, u32).map(f64::from).collect(),
            U64 => le!(b, u64).map(|v| v as f64).collect(),
            Bool | String => unreachable!("rejected by numeric_bytes"),
        })
    }

    /// Every element of an integer tensor as i64 (uint64 above i64::MAX is an error).
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        use DType::*;
        let err = || CkptError::Convert {
            dtype: self.dtype,
            target: "int64",
        };
        let b = self.numeric_bytes("int64")?;
        Ok(match self.dtype {
            I8 => le!(b, i8).map(i64::from).collect(),
            I16 => le!(b, i16).map(i64::from).collect(),
            I32 => le!(b, i32).map(i64::from).collect(),
            I64 => le!(b, i64).collect(),
            U8 => le!(b, u8).map(i64::from).collect(),
            U16 => le!(b, u16).map(i64::from).collect(),
            U32 => le!(b, u32).map(i64::from).collect(),
            U64 => le!(b, u64)
                .map(|v| i64::try_from(v).map_err(|_| err()))
                .collect::<Result<_>>()?,
            _ => return Err(err()),
        })
    }
}

fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// IEEE half to single precision (exact: every f16 is an f32).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match exp {
        0 => {
            // Zero or subnormal: man * 2^-24, exact in f32.
            let v = man as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_covers_every_class() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn strings_and_bools_do_not_convert_to_numbers() {
        let s = Tensor {
            dtype: DType::String,
            shape: vec![1],
            data: Data::Strings(vec![b"a".to_vec()]),
        };
        assert!(s.to_f32_vec().is_err());
        let b = Tensor {
            dtype: DType::Bool,
            shape: vec![2],
            data: Data::Bytes(vec![0, 1]),
        };
        assert!(b.to_f32_vec().is_err());
        assert!(b.to_i64_vec().is_err());
    }
}

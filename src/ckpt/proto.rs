//! Just enough protobuf to decode TensorFlow's `BundleHeaderProto` and `BundleEntryProto`
//! (tensorflow/core/protobuf/tensor_bundle.proto); unknown fields are skipped. The field
//! reader also serves TensorBoard event files (`report::tensorboard`).

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf: {0}")]
pub struct ProtoError(pub &'static str);

type Result<T> = std::result::Result<T, ProtoError>;

/// Reads a base-128 varint from the front of `buf`, advancing it.
pub fn read_varint(buf: &mut &[u8]) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or(ProtoError("truncated varint"))?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ProtoError("varint longer than 10 bytes"))
}

/// One field's value, by wire type (fixed64 contents are not kept).
pub enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterates over the (field number, value) pairs of one message.
pub struct Fields<'a>(pub &'a [u8]);

impl<'a> Fields<'a> {
    pub fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = read_varint(&mut self.0)?;
        let value = match key & 7 {
            0 => Value::Varint(read_varint(&mut self.0)?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = read_varint(&mut self.0)?;
                let len = usize::try_from(len).map_err(|_| ProtoError("length too large"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("took 4 bytes"),
            )),
            // Groups (3, 4) are deprecated and never appear in these messages.
            _ => return Err(ProtoError("unsupported wire type")),
        };
        Ok(Some((key >> 3, value)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.0.len() {
            return Err(ProtoError("field runs past the end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

fn varint(v: Value<'_>) -> Result<u64> {
    match v {
        Value::Varint(x) => Ok(x),
        _ => Err(ProtoError("expected a varint field")),
    }
}

/// int32 fields are sign-extended to 64 bits on the wire.
fn int32(v: Value<'_>) -> Result<i32> {
    Ok(varint(v)? as i64 as i32)
}

fn bytes(v: Value<'_>) -> Result<&[u8]> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(ProtoError("expected a length-delimited field")),
    }
}

/// `BundleHeaderProto`: the value stored under the empty key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BundleHeader {
    pub num_shards: i32,
    /// 0 little-endian, 1 big-endian.
    pub endianness: i32,
    /// `VersionDef.min_consumer`: the oldest reader version that can read the bundle.
    pub min_consumer: i32,
}

pub fn decode_header(msg: &[u8]) -> Result<BundleHeader> {
    let mut h = BundleHeader::default();
    let mut f = Fields(msg);
    while let Some((num, v)) = f.next_field()? {
        match num {
            1 => h.num_shards = int32(v)?,
            2 => h.endianness = int32(v)?,
            3 => {
                let mut version = Fields(bytes(v)?);
                while let Some((num, v)) = version.next_field()? {
                    if num == 2 {
                        h.min_consumer = int32(v)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(h)
}

/// `BundleEntryProto`: where one tensor's bytes are and how to check them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BundleEntry {
    /// The `DataType` enum value (1 = DT_FLOAT, ...).
    pub dtype: i32,
    /// Dimension sizes; `None` for an unknown rank.
    pub shape: Option<Vec<i64>>,
    pub shard_id: i32,
    pub offset: i64,
    pub size: i64,
    /// Masked crc32c of the stored bytes.
    pub crc32c: u32,
    /// Number of `TensorSliceProto`s: non-zero for partitioned variables.
    pub num_slices: usize,
}

pub fn decode_entry(msg: &[u8]) -> Result<BundleEntry> {
    let mut e = BundleEntry {
        shape: Some(Vec::new()),
        ..Default::default()
    };
    let mut f = Fields(msg);
    while let Some((num, v)) = f.next_field()? {
        match num {
            1 => e.dtype = int32(v)?,
            2 => e.shape = decode_shape(bytes(v)?)?,
            3 => e.shard_id = int32(v)?,
            4 => e.offset = varint(v)? as i64,
            5 => e.size = varint(v)? as i64,
            6 => match v {
                Value::Fixed32(c) => e.crc32c = c,
                _ => return Err(ProtoError("crc32c must be fixed32")),
            },
            7 => {
                bytes(v)?;
                e.num_slices += 1;
            }
            _ => {}
        }
    }
    Ok(e)
}

/// `TensorShapeProto`: repeated `Dim { int64 size = 1; string name = 2; }` (field 2) and
/// `bool unknown_rank` (field 3).
fn decode_shape(msg: &[u8]) -> Result<Option<Vec<i64>>> {
    let mut dims = Vec::new();
    let mut unknown_rank = false;
    let mut f = Fields(msg);
    while let Some((num, v)) = f.next_field()? {
        match num {
            2 => {
                let mut size = 0;
                let mut dim = Fields(bytes(v)?);
                while let Some((num, v)) = dim.next_field()? {
                    if num == 1 {
                        size = varint(v)? as i64;
                    }
                }
                dims.push(size);
            }
            3 => unknown_rank = varint(v)? != 0,
            _ => {}
        }
    }
    Ok((!unknown_rank).then_some(dims))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_an_entry_and_skips_unknown_fields() {
        // dtype=1, shape {dim{size:3} dim{size:-1}}, shard 2, offset 300, size 12,
        // crc 0xdeadbeef, unknown field 15 (varint), one slice.
        let mut m = vec![
            0x08, 0x01, 0x12, 0x11, 0x12, 0x02, 0x08, 0x03, 0x12, 0x0b, 0x08,
        ];
        m.extend([0xff; 9]);
        m.push(0x01);
        m.extend([
            0x18, 0x02, 0x20, 0xac, 0x02, 0x28, 0x0c, 0x35, 0xef, 0xbe, 0xad, 0xde,
        ]);
        m.extend([0x78, 0x05, 0x3a, 0x00]);
        let e = decode_entry(&m).unwrap();
        assert_eq!(
            e,
            BundleEntry {
                dtype: 1,
                shape: Some(vec![3, -1]),
                shard_id: 2,
                offset: 300,
                size: 12,
                crc32c: 0xdeadbeef,
                num_slices: 1,
            }
        );
    }

    #[test]
    fn rejects_truncation() {
        assert!(decode_entry(&[0x12, 0x05, 0x00]).is_err());
        assert!(decode_entry(&[0x08, 0x80]).is_err());
        assert!(decode_header(&[0x0b]).is_err());
    }
}

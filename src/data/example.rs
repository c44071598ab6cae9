//! `tf.train.Example` protobuf: a small hand-written decoder and encoder.
//!
//! Messages (from tensorflow/core/example/{example,feature}.proto):
//! `Example { Features features = 1 }`, `Features { map<string, Feature> feature = 1 }`,
//! `Feature { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3 } }`,
//! each list `{ repeated T value = 1 }`. Repeated scalars may come packed or unpacked.

use std::collections::BTreeMap;

/// One feature's values.
#[derive(Clone, Debug, PartialEq)]
pub enum Feature {
    Bytes(Vec<Vec<u8>>),
    Float(Vec<f32>),
    Int64(Vec<i64>),
    /// A `Feature` message with no list set.
    Empty,
}

/// A parsed `tf.train.Example`. Keys are kept sorted, which is also the order
/// TensorFlow's deterministic serialization uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Example {
    pub features: BTreeMap<String, Feature>,
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

struct Decoder<'a> {
    buf: &'a [u8],
}

type Parse<T> = Result<T, String>;

impl<'a> Decoder<'a> {
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn varint(&mut self) -> Parse<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn bytes(&mut self, n: usize) -> Parse<&'a [u8]> {
        if n > self.buf.len() {
            return Err(format!("field of {n} bytes overruns its message"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn len_delimited(&mut self) -> Parse<&'a [u8]> {
        let n = self.varint()?;
        self.bytes(usize::try_from(n).map_err(|_| "length does not fit in memory")?)
    }

    /// (field number, wire type)
    fn key(&mut self) -> Parse<(u64, u8)> {
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 {
            return Err("field number 0".into());
        }
        Ok((field, (k & 7) as u8))
    }

    fn skip(&mut self, wire: u8) -> Parse<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.bytes(8).map(drop),
            LEN => self.len_delimited().map(drop),
            FIXED32 => self.bytes(4).map(drop),
            w => Err(format!("unsupported wire type {w}")),
        }
    }

    /// Calls `f(field, wire, self)` for every field; `f` must consume the value.
    fn each_field(mut self, mut f: impl FnMut(u64, u8, &mut Self) -> Parse<()>) -> Parse<()> {
        while !self.is_empty() {
            let (field, wire) = self.key()?;
            f(field, wire, &mut self)?;
        }
        Ok(())
    }
}

fn message(buf: &[u8]) -> Decoder<'_> {
    Decoder { buf }
}

fn parse_bytes_list(buf: &[u8], out: &mut Vec<Vec<u8>>) -> Parse<()> {
    message(buf).each_field(|field, wire, d| match (field, wire) {
        (1, LEN) => {
            out.push(d.len_delimited()?.to_vec());
            Ok(())
        }
        _ => d.skip(wire),
    })
}

fn parse_float_list(buf: &[u8], out: &mut Vec<f32>) -> Parse<()> {
    message(buf).each_field(|field, wire, d| match (field, wire) {
        (1, LEN) => {
            let packed = d.len_delimited()?;
            if packed.len() % 4 != 0 {
                return Err("packed float list length is not a multiple of 4".into());
            }
            out.extend(
                packed
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
            );
            Ok(())
        }
        (1, FIXED32) => {
            out.push(f32::from_le_bytes(d.bytes(4)?.try_into().expect("4 bytes")));
            Ok(())
        }
        _ => d.skip(wire),
    })
}

fn parse_int64_list(buf: &[u8], out: &mut Vec<i64>) -> Parse<()> {
    message(buf).each_field(|field, wire, d| match (field, wire) {
        (1, LEN) => {
            let mut packed = message(d.len_delimited()?);
            while !packed.is_empty() {
                out.push(packed.varint()? as i64);
            }
            Ok(())
        }
        (1, VARINT) => {
            out.push(d.varint()? as i64);
            Ok(())
        }
        _ => d.skip(wire),
    })
}

fn parse_feature(buf: &[u8]) -> Parse<Feature> {
    let mut feature = Feature::Empty;
    message(buf).each_field(|field, wire, d| {
        if wire != LEN || !(1..=3).contains(&field) {
            return d.skip(wire);
        }
        let body = d.len_delimited()?;
        // Protobuf merge rules: a repeated oneof member merges, another member replaces.
        match (field, &mut feature) {
            (1, Feature::Bytes(v)) => parse_bytes_list(body, v),
            (2, Feature::Float(v)) => parse_float_list(body, v),
            (3, Feature::Int64(v)) => parse_int64_list(body, v),
            (1, _) => {
                let mut v = Vec::new();
                parse_bytes_list(body, &mut v)?;
                feature = Feature::Bytes(v);
                Ok(())
            }
            (2, _) => {
                let mut v = Vec::new();
                parse_float_list(body, &mut v)?;
                feature = Feature::Float(v);
                Ok(())
            }
            _ => {
                let mut v = Vec::new();
                parse_int64_list(body, &mut v)?;
                feature = Feature::Int64(v);
                Ok(())
            }
        }
    })?;
    Ok(feature)
}

fn parse_map_entry(buf: &[u8]) -> Parse<(String, Feature)> {
    let mut key = String::new();
    let mut value = Feature::Empty;
    message(buf).each_field(|field, wire, d| match (field, wire) {
        (1, LEN) => {
            key = std::str::from_utf8(d.len_delimited()?)
                .map_err(|_| "feature key is not UTF-8")?
                .to_string();
            Ok(())
        }
        (2, LEN) => {
            value = parse_feature(d.len_delimited()?)?;
            Ok(())
        }
        _ => d.skip(wire),
    })?;
    Ok((key, value))
}

impl Example {
    /// Parses a serialized `tf.train.Example`. Unknown fields are skipped; a key seen
    /// twice keeps its last value, as protobuf maps do.
    pub fn parse(buf: &[u8]) -> Result<Example, String> {
        let mut ex = Example::default();
        message(buf).each_field(|field, wire, d| match (field, wire) {
            (1, LEN) => {
                message(d.len_delimited()?).each_field(|field, wire, d| match (field, wire) {
                    (1, LEN) => {
                        let (k, v) = parse_map_entry(d.len_delimited()?)?;
                        ex.features.insert(k, v);
                        Ok(())
                    }
                    _ => d.skip(wire),
                })
            }
            _ => d.skip(wire),
        })?;
        Ok(ex)
    }

    /// Serializes like TensorFlow's `SerializeToString(deterministic=True)`: keys in
    /// order, scalar lists packed.
    pub fn encode(&self) -> Vec<u8> {
        let mut features = Vec::new();
        for (key, feature) in &self.features {
            let mut list = Vec::new();
            let field = match feature {
                Feature::Bytes(v) => {
                    for b in v {
                        put_len_field(&mut list, 1, b);
                    }
                    Some(1)
                }
                Feature::Float(v) => {
                    let packed: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    if !packed.is_empty() {
                        put_len_field(&mut list, 1, &packed);
                    }
                    Some(2)
                }
                Feature::Int64(v) => {
                    let mut packed = Vec::new();
                    for &x in v {
                        put_varint(&mut packed, x as u64);
                    }
                    if !packed.is_empty() {
                        put_len_field(&mut list, 1, &packed);
                    }
                    Some(3)
                }
                Feature::Empty => None,
            };
            let mut feat = Vec::new();
            if let Some(f) = field {
                put_len_field(&mut feat, f, &list);
            }
            let mut entry = Vec::new();
            put_len_field(&mut entry, 1, key.as_bytes());
            put_len_field(&mut entry, 2, &feat);
            put_len_field(&mut features, 1, &entry);
        }
        let mut out = Vec::new();
        put_len_field(&mut out, 1, &features);
        out
    }

    /// Convenience for building examples: sets one feature.
    pub fn with(mut self, key: &str, feature: Feature) -> Self {
        self.features.insert(key.to_string(), feature);
        self
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len_field(out: &mut Vec<u8>, field: u64, body: &[u8]) {
    put_varint(out, (field << 3) | u64::from(LEN));
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Example {
        Example::default()
            .with("b", Feature::Bytes(vec![b"x".to_vec(), vec![]]))
            .with("f", Feature::Float(vec![0.5, -1.0]))
            .with("i", Feature::Int64(vec![1, -2, 1 << 40]))
            .with("empty_f", Feature::Float(vec![]))
            .with("none", Feature::Empty)
    }

    #[test]
    fn roundtrip() {
        let ex = sample();
        assert_eq!(Example::parse(&ex.encode()).unwrap(), ex);
    }

    #[test]
    fn unpacked_repeated_fields() {
        // Int64List { value: 7, value: -1 } and FloatList { value: 2.0 } written unpacked.
        let mut int_list = vec![0x08, 7, 0x08];
        int_list.extend([0xff; 9]);
        int_list.push(0x01);
        let mut float_list = vec![0x0d];
        float_list.extend(2.0f32.to_le_bytes());
        for (field, list, expect) in [
            (3, int_list, Feature::Int64(vec![7, -1])),
            (2, float_list, Feature::Float(vec![2.0])),
        ] {
            let mut feat = Vec::new();
            put_len_field(&mut feat, field, &list);
            let mut entry = Vec::new();
            put_len_field(&mut entry, 1, b"k");
            put_len_field(&mut entry, 2, &feat);
            let mut features = Vec::new();
            put_len_field(&mut features, 1, &entry);
            let mut ex = Vec::new();
            put_len_field(&mut ex, 1, &features);
            let parsed = Example::parse(&ex).unwrap();
            assert_eq!(parsed.features["k"], expect);
        }
    }

    #[test]
    fn truncation_is_an_error() {
        let bytes = sample().encode();
        for cut in 1..bytes.len() {
            // Some prefixes are valid messages by accident; none may panic.
            let _ = Example::parse(&bytes[..cut]);
        }
        assert!(Example::parse(&bytes[..bytes.len() - 1]).is_err());
    }
}

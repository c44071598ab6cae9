//! LevelDB-format tables (SSTables) as TensorFlow writes them (tensorflow/core/lib/io/
//! table_builder.cc): the `.index` file of a V2 checkpoint. The file is small, so it is
//! parsed from memory; every block's checksum is verified.
//!
//! Layout: data blocks, a metaindex block, an index block (one entry per data block:
//! a separator key → the block's handle), then a 48-byte footer: the metaindex and index
//! handles (varint offset, varint size), zero padding, and the 8-byte magic. Each block is
//! followed by a 5-byte trailer: compression type, masked crc32c of contents + type.

use super::proto::read_varint;

/// The last 8 bytes of every table (little-endian).
pub const MAGIC: u64 = 0xdb47_7524_8b80_fb57;
const FOOTER_LEN: usize = 48;
const TRAILER_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error(
        "block at offset {offset}: crc32c {computed:#010x} does not match the stored {stored:#010x}"
    )]
    BlockCrc {
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("block at offset {offset} is compressed (type {kind}); TensorFlow bundles never are")]
    Compressed { offset: u64, kind: u8 },
    #[error("{0}")]
    Malformed(String),
}

type Result<T> = std::result::Result<T, TableError>;

fn malformed(msg: impl Into<String>) -> TableError {
    TableError::Malformed(msg.into())
}

/// TensorFlow's (and LevelDB's) crc mask, applied to checksums stored next to the data
/// they cover.
pub fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[derive(Clone, Copy)]
struct Handle {
    offset: u64,
    size: u64,
}

fn read_handle(buf: &mut &[u8]) -> Result<Handle> {
    let mut varint = || read_varint(buf).map_err(|e| malformed(format!("block handle: {e}")));
    Ok(Handle {
        offset: varint()?,
        size: varint()?,
    })
}

/// Every (key, value) of the table, in file (= key) order.
pub fn read_table(file: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let footer_at = file
        .len()
        .checked_sub(FOOTER_LEN)
        .ok_or_else(|| malformed("shorter than the 48-byte table footer"))?;
    let footer = &file[footer_at..];
    let magic = u64::from_le_bytes(footer[40..].try_into().expect("8 bytes"));
    if magic != MAGIC {
        return Err(malformed(format!(
            "bad table magic {magic:#018x} (want {MAGIC:#018x}): not an SSTable"
        )));
    }
    let mut handles = &footer[..40];
    let _metaindex = read_handle(&mut handles)?; // empty in TF bundles; never read by TF either
    let index = read_handle(&mut handles)?;

    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (_, handle) in parse_block(read_block(&file[..footer_at], index)?)? {
        let data = read_handle(&mut handle.as_slice())?;
        for (key, value) in parse_block(read_block(&file[..footer_at], data)?)? {
            if entries.last().is_some_and(|(last, _)| *last >= key) {
                return Err(malformed(format!(
                    "keys out of order at `{}`",
                    String::from_utf8_lossy(&key)
                )));
            }
            entries.push((key, value));
        }
    }
    Ok(entries)
}

/// The checked contents of the block `h` (blocks lie before the footer, in `body`).
fn read_block(body: &[u8], h: Handle) -> Result<&[u8]> {
    let out_of_range = || {
        malformed(format!(
            "block handle (offset {}, size {}) points past the end of the file",
            h.offset, h.size
        ))
    };
    let start = usize::try_from(h.offset).map_err(|_| out_of_range())?;
    let size = usize::try_from(h.size).map_err(|_| out_of_range())?;
    let end = start
        .checked_add(size)
        .filter(|&e| e.checked_add(TRAILER_LEN).is_some_and(|t| t <= body.len()))
        .ok_or_else(out_of_range)?;
    let (contents, trailer) = (&body[start..end], &body[end..end + TRAILER_LEN]);
    let stored = u32::from_le_bytes(trailer[1..].try_into().expect("4 bytes"));
    let computed = mask(crc32c::crc32c_append(
        crc32c::crc32c(contents),
        &trailer[..1],
    ));
    if stored != computed {
        return Err(TableError::BlockCrc {
            offset: h.offset,
            stored,
            computed,
        });
    }
    if trailer[0] != 0 {
        return Err(TableError::Compressed {
            offset: h.offset,
            kind: trailer[0],
        });
    }
    Ok(contents)
}

/// Decodes a block's prefix-compressed entries: each is varint shared key length, varint
/// unshared length, varint value length, the unshared key bytes, the value. The block ends
/// with the restart offsets (u32 each) and their count (u32), which a full scan skips.
fn parse_block(block: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let count_at = block
        .len()
        .checked_sub(4)
        .ok_or_else(|| malformed("block shorter than its restart count"))?;
    let restarts = u32::from_le_bytes(block[count_at..].try_into().expect("4 bytes")) as usize;
    let entries_end = restarts
        .checked_mul(4)
        .and_then(|r| count_at.checked_sub(r))
        .ok_or_else(|| malformed(format!("block restart count {restarts} exceeds the block")))?;

    let mut rest = &block[..entries_end];
    let mut key: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let mut len = || {
            read_varint(&mut rest)
                .ok()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| malformed("bad entry header in block"))
        };
        let (shared, unshared, value_len) = (len()?, len()?, len()?);
        if shared > key.len() {
            return Err(malformed(
                "entry shares more key bytes than the previous key has",
            ));
        }
        let total = unshared
            .checked_add(value_len)
            .filter(|&t| t <= rest.len())
            .ok_or_else(|| malformed("entry runs past the end of its block"))?;
        key.truncate(shared);
        key.extend_from_slice(&rest[..unshared]);
        out.push((key.clone(), rest[unshared..total].to_vec()));
        rest = &rest[total..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_matches_leveldb() {
        // LevelDB's crc32c check value and its mask: rotate right 15, add 0xa282ead8.
        let crc = crc32c::crc32c(b"123456789");
        assert_eq!(crc, 0xe306_9283);
        assert_eq!(mask(crc), 0x2507_c60d_u32.wrapping_add(0xa282_ead8));
        assert_eq!(mask(0), 0xa282_ead8);
    }

    #[test]
    fn prefix_compressed_block_decodes() {
        // "abc"→"1", "abd"→"22" (shares 2), one restart at 0.
        let mut b = vec![0, 3, 1, b'a', b'b', b'c', b'1', 2, 1, 2, b'd', b'2', b'2'];
        b.extend(0u32.to_le_bytes());
        b.extend(1u32.to_le_bytes());
        let e = parse_block(&b).unwrap();
        assert_eq!(
            e,
            vec![
                (b"abc".to_vec(), b"1".to_vec()),
                (b"abd".to_vec(), b"22".to_vec())
            ]
        );
        b[7] = 9; // shared > previous key length
        assert!(parse_block(&b).is_err());
    }
}

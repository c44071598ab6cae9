//! The checkpoint parsers never panic, whatever bytes they are given.

use std::fs;
use std::path::Path;

use adjq::ckpt::{self, Format, proto, sstable};
use proptest::prelude::*;

fn ema_index() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tf/efficientnet-b0-ema-subset/model.ckpt.index");
    fs::read(p).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = sstable::read_table(&bytes);
        let _ = proto::decode_entry(&bytes);
        let _ = proto::decode_header(&bytes);
        let _ = ckpt::detect_bytes(&bytes);
    }

    /// Random damage to a real index: past the footer check, into blocks and entries.
    #[test]
    fn damaged_real_index_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = ema_index();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(entries) = sstable::read_table(&bytes) {
            for (_, v) in entries {
                let _ = proto::decode_entry(&v);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Damaged PyTorch files (both containers) go through pytorch-reader without a panic.
    #[test]
    fn damaged_pytorch_files_never_panic(
        zip in any::<bool>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let name = if zip { "state_dict.zip.pth" } else { "state_dict.legacy.pth" };
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch").join(name);
        let mut bytes = fs::read(src).unwrap();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(name);
        fs::write(&p, &bytes).unwrap();
        let _ = ckpt::read(&p, Format::PyTorch);
    }
}

/// Whole-file readers on garbage: an error, not a panic, for every format and for detection.
#[test]
fn garbage_files_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..64 {
        let len = (i * 37) % 700;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        let p = tmp.path().join("m");
        fs::write(&p, &bytes).unwrap();
        fs::write(tmp.path().join("m.index"), &bytes).unwrap();
        fs::write(tmp.path().join("m.data-00000-of-00001"), &bytes).unwrap();
        let _ = ckpt::detect_format(&p);
        for f in [Format::TfBundle, Format::PyTorch, Format::Safetensors] {
            assert!(
                ckpt::read(&p, f).is_err(),
                "{f} accepted {len} random bytes"
            );
        }
    }
}

//! Writes the bundled demo dataset `data/digits/` (TF-Slim ImageNet TFRecord layout)
//! from the UCI optical digits as shipped by scikit-learn. See data/digits/README.md.
//!
//! Usage: cargo run --release --example make_digits -- DIGITS_CSV OUT_DIR
//! where each CSV line is `digit,p0,...,p63` (pixel values 0..16, row-major 8x8).

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::Path;

use adjq::data::{Example, Feature, RecordWriter};
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

const NAMES: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];
const SCALE: usize = 4;
const SIDE: usize = 8 * SCALE;
const QUALITY: u8 = 95;
/// Contiguous sklearn-order ranges, the same split as the TensorFlow fixture.
const SHARDS: [(&str, usize, usize, usize, usize); 3] = [
    ("train", 0, 2, 0, 750),
    ("train", 1, 2, 750, 1500),
    ("validation", 0, 1, 1500, 1797),
];

/// 8x8 values 0..16 -> 32x32 grey, nearest neighbour (as the fixture's numpy code).
fn upscale(values: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; SIDE * SIDE];
    for (i, px) in out.iter_mut().enumerate() {
        let (y, x) = (i / SIDE / SCALE, i % SIDE / SCALE);
        // round-half-even like np.round: only v = 8 gives a half (127.5 -> 128).
        *px = (f64::from(values[y * 8 + x]) * 255.0 / 16.0).round_ties_even() as u8;
    }
    out
}

/// Normalized tight box [xmin, ymin, xmax, ymax] of the non-zero pixels.
fn tight_box(grey: &[u8]) -> [f32; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (SIDE, SIDE, 0, 0);
    for (i, _) in grey.iter().enumerate().filter(|(_, v)| **v > 0) {
        let (y, x) = (i / SIDE, i % SIDE);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
    }
    [x0, y0, x1, y1].map(|v| v as f32 / SIDE as f32)
}

fn jpeg(grey: &[u8]) -> Vec<u8> {
    let rgb: Vec<u8> = grey.iter().flat_map(|&g| [g, g, g]).collect();
    let mut out = Vec::new();
    let mut enc = Encoder::new(&mut out, QUALITY);
    enc.set_sampling_factor(SamplingFactor::F_2_2);
    enc.encode(&rgb, SIDE as u16, SIDE as u16, ColorType::Rgb)
        .expect("in-memory JPEG encoding");
    out
}

fn example(index: usize, digit: usize, grey: &[u8], with_box: bool) -> Example {
    let bytes = |s: &[u8]| Feature::Bytes(vec![s.to_vec()]);
    let label = digit as i64 + 1;
    let boxes: Vec<[f32; 4]> = if with_box {
        vec![tight_box(grey)]
    } else {
        vec![]
    };
    let coord = |k: usize| Feature::Float(boxes.iter().map(|b| b[k]).collect());
    Example::default()
        .with("image/height", Feature::Int64(vec![SIDE as i64]))
        .with("image/width", Feature::Int64(vec![SIDE as i64]))
        .with("image/colorspace", bytes(b"RGB"))
        .with("image/channels", Feature::Int64(vec![3]))
        .with("image/class/label", Feature::Int64(vec![label]))
        .with("image/class/synset", bytes(format!("d{digit}").as_bytes()))
        .with("image/class/text", bytes(NAMES[digit].as_bytes()))
        .with("image/object/bbox/xmin", coord(0))
        .with("image/object/bbox/ymin", coord(1))
        .with("image/object/bbox/xmax", coord(2))
        .with("image/object/bbox/ymax", coord(3))
        .with(
            "image/object/bbox/label",
            Feature::Int64(vec![label; boxes.len()]),
        )
        .with("image/format", bytes(b"JPEG"))
        .with(
            "image/filename",
            bytes(format!("d{digit}_{index:04}.JPEG").as_bytes()),
        )
        .with("image/encoded", bytes(&jpeg(grey)))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, csv, out] = args.as_slice() else {
        return Err("usage: make_digits DIGITS_CSV OUT_DIR".into());
    };
    let rows: Vec<(usize, Vec<u8>)> = fs::read_to_string(csv)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Vec<u8> = l
                .split(',')
                .map(|x| x.trim().parse())
                .collect::<Result<_, _>>()?;
            if v.len() != 65 || v[0] > 9 || v[1..].iter().any(|&p| p > 16) {
                return Err(format!("bad CSV line: {l}").into());
            }
            Ok((usize::from(v[0]), v[1..].to_vec()))
        })
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    if rows.len() != 1797 {
        return Err(format!("expected 1797 digits, got {}", rows.len()).into());
    }
    fs::create_dir_all(out)?;
    for (split, shard, of, lo, hi) in SHARDS {
        let path = Path::new(out).join(format!("{split}-{shard:05}-of-{of:05}"));
        let mut w = RecordWriter::new(BufWriter::new(File::create(&path)?));
        for (i, (digit, values)) in rows.iter().enumerate().take(hi).skip(lo) {
            let grey = upscale(values);
            w.write_record(&example(i, *digit, &grey, split == "train").encode())?;
        }
        w.into_inner()?;
        println!("{}: {} records", path.display(), hi - lo);
    }
    Ok(())
}

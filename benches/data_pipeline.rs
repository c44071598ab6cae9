//! Throughput of the training pipeline: decode + random resized crop + flip + normalize
//! to 224, batch 32, on an ImageFolder of JPEGs (see benches/README.md).
//!
//! Also times single-threaded JPEG decoding with zune-jpeg (ours) and jpeg-decoder (the
//! `image` crate's decoder up to 0.24; `image` 0.25 itself wraps zune-jpeg).
//!
//! cargo bench --bench data_pipeline -- [DIR] [WORKERS] [EPOCHS]
//!
//! DIR is an ImageFolder (`DIR/<class>/*.jpg`), or a dataset directory in any layout
//! the stages read, whose `train` split is timed (`examples/make_layouts.rs` writes one
//! image set in all four).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use adjq::data::image::decode;
use adjq::data::layout::{self, Layout};
use adjq::data::{Cursor, Dataset, ExampleSchema, Loader, LoaderConfig, OnBadRecord};

/// Milliseconds per image for `f` over all files, best of three passes.
fn time_decoder(files: &[Vec<u8>], f: impl Fn(&[u8]) -> usize) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let bytes: usize = files.iter().map(|b| f(b)).sum();
            assert!(bytes > 0);
            t.elapsed().as_secs_f64() * 1e3 / files.len() as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn compare_decoders(ds: &Dataset) {
    let files: Vec<Vec<u8>> = ds
        .shards()
        .iter()
        .map(|s| std::fs::read(&s.path).expect("read"))
        .collect();
    let zune = time_decoder(&files, |b| decode(b).expect("zune-jpeg").rgb.len());
    let other = time_decoder(&files, |b| {
        jpeg_decoder::Decoder::new(b)
            .decode()
            .expect("jpeg-decoder")
            .len()
    });
    println!(
        "decode only, 1 thread: zune-jpeg {zune:.2} ms/image, jpeg-decoder {other:.2} ms/image"
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let dir = PathBuf::from(args.first().map_or("/tmp/bench_jpegs", String::as_str));
    let workers: usize = args.get(1).map_or(2, |s| s.parse().expect("WORKERS"));
    let epochs: u64 = args.get(2).map_or(5, |s| s.parse().expect("EPOCHS"));
    let (ds, what) = match layout::detect(&dir, "train") {
        Ok(found) => {
            let ds =
                layout::open_split(&dir, "train", ExampleSchema::default(), OnBadRecord::Error)
                    .expect("the train split");
            (ds, format!("{found:?}"))
        }
        Err(_) => (
            Dataset::image_folder(&dir).expect("bench images (run make_bench_jpegs.py)"),
            "ImageFolder".to_string(),
        ),
    };
    let ds = Arc::new(ds);
    // Decoders are compared on image files (not on records inside TFRecords).
    if !matches!(layout::detect(&dir, "train"), Ok(Layout::TfRecord)) {
        compare_decoders(&ds);
    }
    let cfg = LoaderConfig {
        workers,
        drop_last: false,
        ..LoaderConfig::train(32, 224, 0)
    };
    let mut loader = Loader::new(ds.clone(), cfg, Cursor::default()).expect("loader");
    let per_epoch = loader.batches_per_epoch();
    // One warm-up epoch (page cache, thread start), then timed epochs.
    let mut images = 0;
    let mut start = Instant::now();
    for (i, batch) in loader
        .by_ref()
        .take(((epochs + 1) * per_epoch) as usize)
        .enumerate()
    {
        let batch = batch.expect("batch");
        assert_eq!(&batch.shape[1..], &[3, 224, 224]);
        if i as u64 + 1 == per_epoch {
            start = Instant::now();
        } else if i as u64 >= per_epoch {
            images += batch.labels.len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "adjq data pipeline ({}): {} images, {workers} workers, {epochs} epochs: {:.0} images/s",
        what.split('(').next().unwrap_or(&what),
        ds.len(),
        images as f64 / secs
    );
}

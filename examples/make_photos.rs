//! Writes `data/photos/`, a handful of real photos with ImageNet labels in the TF-Slim
//! TFRecord layout (the same records in `train-*` and `validation-*`), for smoke runs of
//! ImageNet pipelines on CPU (pipelines/lite0-smoke.toml). See data/photos/README.md.
//!
//! Usage: cargo run --release --example make_photos -- OUT_DIR IMAGE=CLASS_INDEX...
//! where CLASS_INDEX is the 0-based ImageNet class (stored +1, as TF-Slim does).

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use adjq::data::{Example, Feature, RecordWriter};
use jpeg_encoder::{ColorType, Encoder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out, images)) = args.split_first().filter(|(_, i)| !i.is_empty()) else {
        return Err("usage: make_photos OUT_DIR IMAGE=CLASS_INDEX...".into());
    };
    let mut examples = Vec::new();
    for arg in images {
        let (path, class) = arg
            .rsplit_once('=')
            .ok_or_else(|| format!("`{arg}` is not IMAGE=CLASS_INDEX"))?;
        let class: i64 = class.parse()?;
        let img =
            adjq::data::image::decode(&std::fs::read(path)?).map_err(|e| format!("{path}: {e}"))?;
        let mut jpeg = Vec::new();
        Encoder::new(&mut jpeg, 95).encode(
            &img.rgb,
            img.width as u16,
            img.height as u16,
            ColorType::Rgb,
        )?;
        let name = Path::new(path)
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        let bytes = |s: &[u8]| Feature::Bytes(vec![s.to_vec()]);
        examples.push(
            Example::default()
                .with("image/height", Feature::Int64(vec![img.height as i64]))
                .with("image/width", Feature::Int64(vec![img.width as i64]))
                .with("image/colorspace", bytes(b"RGB"))
                .with("image/channels", Feature::Int64(vec![3]))
                .with("image/class/label", Feature::Int64(vec![class + 1]))
                .with("image/format", bytes(b"JPEG"))
                .with("image/filename", bytes(format!("{name}.JPEG").as_bytes()))
                .with("image/encoded", bytes(&jpeg))
                .encode(),
        );
    }
    std::fs::create_dir_all(out)?;
    for split in ["train", "validation"] {
        let path = Path::new(out).join(format!("{split}-00000-of-00001"));
        let mut w = RecordWriter::new(BufWriter::new(File::create(&path)?));
        for e in &examples {
            w.write_record(e)?;
        }
        w.into_inner()?;
        println!("{}: {} records", path.display(), examples.len());
    }
    Ok(())
}

//! Writes one ImageFolder (`SRC/<class>/*.jpg`) as the other dataset layouts the stages
//! read, under `DST/`: `tfrecord/train-00000-of-00001` (TF-Slim `tf.train.Example`,
//! labels 1..N), `gzip/` (the same, GZIP-compressed), `folder/train/` (a copy) and
//! `list/train.csv` (paths into `folder/`). All four hold the same images in the same
//! order; `benches/data_pipeline.rs` times the loader on each.
//!
//! cargo run --release --example make_layouts -- SRC DST

use std::fs;
use std::io::Write;
use std::path::Path;

use adjq::data::folder::scan_folder;
use adjq::data::{Example, Feature, RecordWriter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, src, dst] = args.as_slice() else {
        return Err("usage: make_layouts SRC_IMAGEFOLDER DST".into());
    };
    let (src, dst) = (Path::new(src), Path::new(dst));
    let folder = scan_folder(src)?;
    let mut plain = RecordWriter::new(Vec::new());
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["path", "label"])?;
    for (i, (path, label)) in folder.items.iter().enumerate() {
        let bytes = fs::read(path)?;
        let class = &folder.classes[*label as usize];
        let ex = Example::default()
            .with("image/encoded", Feature::Bytes(vec![bytes.clone()]))
            .with("image/format", Feature::Bytes(vec![b"JPEG".to_vec()]))
            .with("image/class/label", Feature::Int64(vec![label + 1]))
            .with(
                "image/class/synset",
                Feature::Bytes(vec![class.as_bytes().to_vec()]),
            );
        plain.write_record(&ex.encode())?;
        let name = format!("train/{class}/{i:06}.jpg");
        let copy = dst.join("folder").join(&name);
        fs::create_dir_all(copy.parent().expect("has a class dir"))?;
        fs::write(&copy, &bytes)?;
        csv.write_record([format!("../folder/{name}"), label.to_string()])?;
    }
    let plain = plain.into_inner()?;
    for dir in ["tfrecord", "gzip", "list"] {
        fs::create_dir_all(dst.join(dir))?;
    }
    fs::write(dst.join("tfrecord/train-00000-of-00001"), &plain)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain)?;
    fs::write(dst.join("gzip/train-00000-of-00001"), gz.finish()?)?;
    fs::write(dst.join("list/train.csv"), csv.into_inner()?)?;
    println!(
        "{} images of {} classes in 4 layouts under {}",
        folder.items.len(),
        folder.classes.len(),
        dst.display()
    );
    Ok(())
}

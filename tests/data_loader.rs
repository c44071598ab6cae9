//! Loader behaviour: determinism across worker counts, exact resume, sharding, folders.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use adjq::data::image::decode;
use adjq::data::tfrecord;
use adjq::data::{
    Batch, Compression, Cursor, Dataset, ExampleSchema, Loader, LoaderConfig, Normalization,
    OnBadRecord,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/digits")
}

fn train_set() -> Arc<Dataset> {
    Arc::new(
        Dataset::tfrecord(
            fixtures().join("train-*-of-*").to_str().unwrap(),
            Compression::Auto,
            ExampleSchema {
                num_classes: Some(10),
                ..Default::default()
            },
            OnBadRecord::Error,
        )
        .unwrap(),
    )
}

fn train_cfg(workers: usize) -> LoaderConfig {
    LoaderConfig {
        workers,
        shuffle_buffer: 300,
        ..LoaderConfig::train(64, 24, 7)
    }
}

fn take(ds: &Arc<Dataset>, cfg: &LoaderConfig, start: Cursor, n: usize) -> Vec<(Batch, Cursor)> {
    let mut loader = Loader::new(ds.clone(), cfg.clone(), start).unwrap();
    (0..n)
        .map(|_| {
            let b = loader.next().unwrap().unwrap();
            (b, loader.cursor())
        })
        .collect()
}

#[test]
fn same_seed_same_batches_for_any_worker_count() {
    let ds = train_set();
    // 1500 records / 64 = 23 full batches per epoch: run into the second epoch.
    let one = take(&ds, &train_cfg(1), Cursor::default(), 30);
    let three = take(&ds, &train_cfg(3), Cursor::default(), 30);
    assert!(one == three, "batches differ between 1 and 3 workers");
    assert_eq!(one[22].1, Cursor { epoch: 1, batch: 0 });
    let first = &one[0].0;
    assert_eq!(first.shape, [64, 3, 24, 24]);
    assert_eq!(first.images.len(), 64 * 3 * 24 * 24);
    assert!(first.labels.iter().all(|l| (0..10).contains(l)));
    // Shuffled: not in file order, and epochs differ.
    assert_ne!(first.indices, (0..64).collect::<Vec<u64>>());
    assert_ne!(one[0].0.indices, one[23].0.indices);
    // Every record at most once per epoch.
    let mut seen: Vec<u64> = one[..23]
        .iter()
        .flat_map(|(b, _)| b.indices.clone())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 23 * 64);
    // Another seed, another order.
    let other = take(
        &ds,
        &LoaderConfig {
            seed: 8,
            ..train_cfg(2)
        },
        Cursor::default(),
        1,
    );
    assert_ne!(other[0].0.indices, first.indices);
}

#[test]
fn batches_become_burn_tensors_unchanged() {
    let ds = train_set();
    let (batch, _) = take(&ds, &train_cfg(1), Cursor::default(), 1).remove(0);
    let (images, labels) = batch.to_tensors(&burn::prelude::Device::flex());
    assert_eq!(images.dims(), [64, 3, 24, 24]);
    assert_eq!(
        images.into_data().try_to_vec::<f32>().unwrap(),
        batch.images
    );
    assert_eq!(
        labels
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap(),
        batch.labels
    );
}

#[test]
fn resume_from_cursor_reproduces_the_rest() {
    let ds = train_set();
    let cfg = train_cfg(2);
    let full = take(&ds, &cfg, Cursor::default(), 30);
    for k in [1, 9, 21, 22, 25] {
        // Round-trip the cursor through JSON, as a checkpoint would.
        let saved = serde_json::to_string(&full[k - 1].1).unwrap();
        let cursor: Cursor = serde_json::from_str(&saved).unwrap();
        let rest = take(&ds, &cfg, cursor, 30 - k);
        assert!(rest[..] == full[k..], "resume after batch {k} differs");
    }
}

#[test]
fn tenths_of_an_epoch() {
    let bpe = 23;
    assert_eq!(Cursor::at_tenths(0, bpe), Cursor { epoch: 0, batch: 0 });
    assert_eq!(Cursor::at_tenths(13, bpe), Cursor { epoch: 1, batch: 6 });
    assert_eq!(Cursor::at_tenths(20, bpe), Cursor { epoch: 2, batch: 0 });
    let c = Cursor::at_tenths(25, bpe);
    assert!((c.epochs(bpe) - 2.478).abs() < 1e-3);
    // Starting at a mini-epoch boundary works like any other cursor.
    let ds = train_set();
    let cfg = train_cfg(2);
    let full = take(&ds, &cfg, Cursor::default(), 30);
    let from = take(&ds, &cfg, Cursor::at_tenths(13, bpe), 1);
    assert!(from[0] == full[23 + 6]);
}

#[test]
fn eval_pass_is_in_file_order_and_complete() {
    let ds = Arc::new(
        Dataset::tfrecord(
            fixtures()
                .join("validation-00000-of-00001")
                .to_str()
                .unwrap(),
            Compression::Auto,
            ExampleSchema::default(),
            OnBadRecord::Error,
        )
        .unwrap(),
    );
    let cfg = LoaderConfig {
        preprocess: adjq::data::Preprocess {
            normalization: Normalization::Lite,
            ..LoaderConfig::eval(100, 32).preprocess
        },
        ..LoaderConfig::eval(100, 32)
    };
    let batches: Vec<Batch> = Loader::new(ds, cfg, Cursor::default())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let sizes: Vec<usize> = batches.iter().map(|b| b.shape[0]).collect();
    assert_eq!(sizes, [100, 100, 97]);
    let indices: Vec<u64> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(indices, (0..297).collect::<Vec<u64>>());
    // A 32x32 image centre-cropped to 28 and resized back to 32 stays in range
    // (bicubic overshoots at the sharp stroke edges, as in TF: no clamping).
    let (lo, hi) = batches[0]
        .images
        .iter()
        .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(lo >= -1.3 && hi <= 1.3, "{lo} {hi}");
}

#[test]
fn ranks_split_shards() {
    let ds = train_set();
    let cfg = |rank| LoaderConfig {
        rank,
        world_size: 2,
        ..LoaderConfig::eval(250, 16)
    };
    for rank in 0..2 {
        let idx: Vec<u64> = Loader::new(ds.clone(), cfg(rank), Cursor::default())
            .unwrap()
            .flat_map(|b| b.unwrap().indices)
            .collect();
        let lo = rank as u64 * 750;
        assert_eq!(idx, (lo..lo + 750).collect::<Vec<u64>>());
    }
    assert!(Loader::new(ds, LoaderConfig { rank: 2, ..cfg(0) }, Cursor::default()).is_err());
}

#[test]
fn image_folder_behind_the_same_loader() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Vec<u8>> = tfrecord::open(
        &fixtures().join("validation-00000-of-00001"),
        Compression::Auto,
    )
    .unwrap()
    .take(12)
    .collect::<Result<_, _>>()
    .unwrap();
    let schema = ExampleSchema::default();
    for (i, rec) in records.iter().enumerate() {
        let jpeg = schema.extract(rec).unwrap().encoded;
        let class = ["b_cat", "a_dog", "c_eel"][i % 3];
        fs::create_dir_all(dir.path().join(class)).unwrap();
        if i % 4 == 0 {
            // Same pixels as PNG.
            let img = decode(&jpeg).unwrap();
            let opts = zune_core_options(img.width, img.height);
            let mut png = Vec::new();
            zune_png::PngEncoder::new(&img.rgb, opts)
                .encode(&mut png)
                .unwrap();
            fs::write(dir.path().join(class).join(format!("{i:02}.png")), png).unwrap();
        } else {
            fs::write(dir.path().join(class).join(format!("{i:02}.JPG")), jpeg).unwrap();
        }
    }
    fs::write(dir.path().join("a_dog").join("notes.txt"), "not an image").unwrap();
    let ds = Arc::new(Dataset::image_folder(dir.path()).unwrap());
    assert_eq!(ds.classes().unwrap(), ["a_dog", "b_cat", "c_eel"]);
    assert_eq!(ds.len(), 12);
    let batches: Vec<Batch> = Loader::new(ds.clone(), LoaderConfig::eval(5, 16), Cursor::default())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let labels: Vec<i64> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    // Class order then file order: a_dog (i%3==1), b_cat (i%3==0), c_eel (i%3==2).
    assert_eq!(labels, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
    let a = take(
        &ds,
        &LoaderConfig {
            workers: 1,
            ..LoaderConfig::train(4, 16, 1)
        },
        Cursor::default(),
        6,
    );
    let b = take(
        &ds,
        &LoaderConfig {
            workers: 2,
            ..LoaderConfig::train(4, 16, 1)
        },
        Cursor::default(),
        6,
    );
    assert!(a == b);
}

fn zune_core_options(w: usize, h: usize) -> zune_png::zune_core::options::EncoderOptions {
    use zune_png::zune_core::{
        bit_depth::BitDepth, colorspace::ColorSpace, options::EncoderOptions,
    };
    EncoderOptions::new(w, h, ColorSpace::RGB, BitDepth::Eight)
}

/// A directory with `train/` and `val/` ImageFolder trees of a few real digit JPEGs.
fn folder_tree(classes_train: &[&str], classes_val: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = ExampleSchema::default()
        .extract(
            &tfrecord::open(
                &fixtures().join("validation-00000-of-00001"),
                Compression::Auto,
            )
            .unwrap()
            .next()
            .unwrap()
            .unwrap(),
        )
        .unwrap()
        .encoded;
    for (split, classes) in [("train", classes_train), ("val", classes_val)] {
        for c in classes {
            let d = dir.path().join(split).join(c);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("0.jpg"), &jpeg).unwrap();
        }
    }
    dir
}

fn open(dir: &Path, split: &str) -> Result<Dataset, String> {
    adjq::data::layout::open_split(dir, split, ExampleSchema::default(), OnBadRecord::Error)
        .map_err(|e| e.to_string())
}

/// ImageFolder, list and TFRecord splits are found by name (`val/` for validation), and
/// what would silently mislabel images is an error naming the place.
#[test]
fn dataset_layouts_are_detected_and_their_mistakes_named() {
    use adjq::data::layout::{Layout, detect};
    let dir = folder_tree(&["n01", "n02"], &["n01", "n02"]);
    assert_eq!(
        detect(dir.path(), "validation").unwrap(),
        Layout::ImageFolder(dir.path().join("val"))
    );
    assert_eq!(open(dir.path(), "validation").unwrap().len(), 2);
    assert_eq!(detect(&fixtures(), "train").unwrap(), Layout::TfRecord);

    let err = open(dir.path(), "test").unwrap_err();
    assert!(
        err.contains("has no `test` split") && err.contains("`test.csv`/`test.jsonl`"),
        "{err}"
    );

    let differ = folder_tree(&["n01", "n02"], &["n01", "n03"]);
    let err = open(differ.path(), "validation").unwrap_err();
    assert!(
        err.contains("have different classes (only in train: [n02]; only in val: [n03])"),
        "{err}"
    );

    let empty = folder_tree(&["n01"], &["n01"]);
    fs::create_dir_all(empty.path().join("train/n02")).unwrap();
    let err = open(empty.path(), "train").unwrap_err();
    assert!(err.contains("train/n02 has no images"), "{err}");

    // Lists: the header and each line are checked, paths are relative to the list.
    let list = tempfile::tempdir().unwrap();
    fs::write(
        list.path().join("train.csv"),
        "path,label\na.jpg,0\nb.jpg,x\n",
    )
    .unwrap();
    let err = open(list.path(), "train").unwrap_err();
    assert!(
        err.contains("train.csv:3: ") && err.contains("want columns path,label"),
        "{err}"
    );
    fs::write(
        list.path().join("validation.jsonl"),
        "{\"path\": \"a.jpg\", \"label\": -1}\n",
    )
    .unwrap();
    let err = open(list.path(), "validation").unwrap_err();
    assert!(
        err.contains("validation.jsonl:1: label -1 is negative"),
        "{err}"
    );
    fs::write(list.path().join("train.csv"), "path,label\nsub/a.jpg,3\n").unwrap();
    let ds = open(list.path(), "train").unwrap();
    assert_eq!(ds.shards()[0].path, list.path().join("sub/a.jpg"));
    assert_eq!(ds.label_count(), 4);
    let err = adjq::data::layout::open_split(
        list.path(),
        "train",
        ExampleSchema {
            num_classes: Some(2),
            ..ExampleSchema::default()
        },
        OnBadRecord::Error,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("has 4 classes but the stage expects 2"),
        "{err}"
    );
}

/// A file that is not an image (or cannot be read) is a bad record naming it: an error,
/// or with `skip` left out and counted.
#[test]
fn a_listed_file_that_is_no_image_is_a_bad_record_naming_it() {
    let dir = folder_tree(&["a", "b"], &["a", "b"]);
    fs::write(dir.path().join("train/b/1.jpg"), "not a jpeg").unwrap();
    let ds = Arc::new(open(dir.path(), "train").unwrap());
    let err = Loader::new(ds.clone(), LoaderConfig::eval(3, 16), Cursor::default())
        .unwrap()
        .find_map(|b| b.err())
        .unwrap()
        .to_string();
    assert!(err.contains("train/b/1.jpg: record 0: "), "{err}");
    let cfg = LoaderConfig {
        on_bad_record: OnBadRecord::Skip,
        ..LoaderConfig::eval(3, 16)
    };
    let mut loader = Loader::new(ds, cfg, Cursor::default()).unwrap();
    let labels: Vec<i64> = loader.by_ref().flat_map(|b| b.unwrap().labels).collect();
    assert_eq!(labels, [0, 1]);
    assert_eq!(loader.skipped().len(), 1);
}

/// An ImageNet ImageFolder (one directory per wnid, made in shuffled order) gives each
/// class the index of its wnid in TF-Slim's synset list, that is TF-Slim's label − 1:
/// a model trained on TF-Slim TFRecords (`label_offset = 1`) reads it unchanged.
#[test]
fn imagenet_wnid_folders_get_tf_slim_labels_minus_one() {
    let synsets: Vec<String> = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/imagenet/imagenet_lsvrc_2015_synsets.txt"),
    )
    .unwrap()
    .lines()
    .map(String::from)
    .collect();
    assert_eq!(synsets.len(), 1000);
    let jpeg = fs::read(folder_tree(&["x"], &["x"]).path().join("train/x/0.jpg")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Created in a scrambled order, so directory order is not file order.
    for i in (0..1000).map(|i| (i * 337) % 1000) {
        let d = dir.path().join("val").join(&synsets[i]);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("ILSVRC2012_val_{i:08}.JPEG")), &jpeg).unwrap();
    }
    let ds = open(dir.path(), "validation").unwrap();
    assert_eq!(ds.classes().unwrap(), synsets.as_slice());
    let tf_slim_label = |wnid: &str| synsets.iter().position(|s| s == wnid).unwrap() as i64 + 1;
    let labels: Vec<i64> = Loader::new(Arc::new(ds), LoaderConfig::eval(100, 8), Cursor::default())
        .unwrap()
        .flat_map(|b| b.unwrap().labels)
        .collect();
    // Eval order is class then file order: the i-th image is of the i-th class.
    for (i, label) in labels.iter().enumerate() {
        assert_eq!(*label, tf_slim_label(&synsets[i]) - 1);
    }
    assert_eq!(labels.len(), 1000);
}

//! A dataset directory in any layout users already hold, opened by split: TF-Slim
//! TFRecord shards `<split>-*` (plain or GZIP, sniffed), an ImageFolder tree `<split>/
//! <class>/*.jpg` (torchvision's: class index = sorted class-directory order), or a list
//! `<split>.csv` / `<split>.jsonl` of (path, label).
//!
//! `validation` is also looked for as `val` (torchvision's name). TF-Slim labels carry the
//! schema's offset (1..N with 0 = background); folder and list labels are class indices.

use std::fs;
use std::path::{Path, PathBuf};

use super::dataset::Dataset;
use super::error::{DataError, OnBadRecord, Result};
use super::schema::ExampleSchema;
use super::tfrecord::Compression;

/// How a split is stored.
#[derive(Clone, Debug, PartialEq)]
pub enum Layout {
    TfRecord,
    ImageFolder(PathBuf),
    List(PathBuf),
}

/// The names a split may go by, in the order they are looked for.
fn split_names(split: &str) -> Vec<&str> {
    match split {
        "validation" | "val" => vec!["validation", "val"],
        other => vec![other],
    }
}

/// Finds how `dir` stores `split`.
pub fn detect(dir: &Path, split: &str) -> Result<Layout> {
    let shards = fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok())
        .any(|e| {
            e.path().is_file()
                && e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{split}-"))
        });
    if shards {
        return Ok(Layout::TfRecord);
    }
    // A list wins over a directory of the same name: its images often live there.
    for name in split_names(split) {
        for ext in ["csv", "jsonl"] {
            let list = dir.join(format!("{name}.{ext}"));
            if list.is_file() {
                return Ok(Layout::List(list));
            }
        }
    }
    for name in split_names(split) {
        let folder = dir.join(name);
        if folder.is_dir() {
            return Ok(Layout::ImageFolder(folder));
        }
    }
    let names = split_names(split);
    Err(DataError::Config(format!(
        "{} has no `{split}` split: looked for TFRecord shards `{split}-*`, an ImageFolder directory {}, and a list {}",
        dir.display(),
        names
            .iter()
            .map(|n| format!("`{n}/`"))
            .collect::<Vec<_>>()
            .join(" or "),
        names
            .iter()
            .map(|n| format!("`{n}.csv`/`{n}.jsonl`"))
            .collect::<Vec<_>>()
            .join(" or ")
    )))
}

/// Opens `split` of `dir` in whichever layout it has. `schema` decodes TFRecords (its
/// `num_classes` also bounds folder and list labels); `on_bad` applies to TFRecord framing.
pub fn open_split(
    dir: &Path,
    split: &str,
    schema: ExampleSchema,
    on_bad: OnBadRecord,
) -> Result<Dataset> {
    let classes = schema.num_classes;
    let ds = match detect(dir, split)? {
        Layout::TfRecord => {
            let pattern = dir.join(format!("{split}-*"));
            Dataset::tfrecord(
                &pattern.to_string_lossy(),
                Compression::Auto,
                schema,
                on_bad,
            )?
        }
        Layout::ImageFolder(root) => {
            let ds = Dataset::image_folder(&root)?;
            check_folder_classes(dir, &root, ds.classes().unwrap_or_default())?;
            ds
        }
        Layout::List(file) => Dataset::image_list(read_list(&file)?),
    };
    if let Some(n) = classes {
        let have = ds.label_count();
        if have > n as usize {
            return Err(DataError::Config(format!(
                "{}: the `{split}` split has {have} classes but the stage expects {n}",
                dir.display()
            )));
        }
    }
    Ok(ds)
}

/// A validation folder must have the training folder's classes, in the same order, or
/// every label would mean something else.
fn check_folder_classes(dir: &Path, root: &Path, classes: &[String]) -> Result<()> {
    let train = dir.join("train");
    if root == train || !train.is_dir() {
        return Ok(());
    }
    let train_classes = class_dirs(&train)?;
    if train_classes != classes {
        let only = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter()
                .filter(|c| !b.contains(c))
                .take(5)
                .cloned()
                .collect()
        };
        return Err(DataError::Config(format!(
            "{} and {} have different classes (only in train: [{}]; only in {}: [{}]); class indices come from the sorted class directories, so they must match",
            train.display(),
            root.display(),
            only(&train_classes, classes).join(", "),
            root.file_name().unwrap_or_default().to_string_lossy(),
            only(classes, &train_classes).join(", ")
        )));
    }
    Ok(())
}

/// The class directories of an ImageFolder root, sorted (without listing their images).
fn class_dirs(root: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(root)
        .map_err(|e| DataError::io(root, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

#[derive(serde::Deserialize)]
struct ListEntry {
    path: String,
    label: i64,
}

/// (path, label) rows of a `.csv` (header `path,label`) or `.jsonl` list; paths relative
/// to the list's directory.
fn read_list(file: &Path) -> Result<Vec<(PathBuf, i64)>> {
    let base = file.parent().unwrap_or(Path::new("."));
    let bad =
        |line: usize, why: String| DataError::Config(format!("{}:{line}: {why}", file.display()));
    let mut rows = Vec::new();
    if file.extension().is_some_and(|e| e == "jsonl") {
        let text = fs::read_to_string(file).map_err(|e| DataError::io(file, e))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let e: ListEntry = serde_json::from_str(line).map_err(|e| {
                bad(
                    i + 1,
                    format!("{e} (want {{\"path\": \"...\", \"label\": N}})"),
                )
            })?;
            rows.push((i + 1, e));
        }
    } else {
        let mut r = csv::Reader::from_path(file).map_err(|e| bad(1, e.to_string()))?;
        for (i, rec) in r.deserialize::<ListEntry>().enumerate() {
            // Line 1 is the header.
            let e = rec.map_err(|e| bad(i + 2, format!("{e} (want columns path,label)")))?;
            rows.push((i + 2, e));
        }
    }
    if rows.is_empty() {
        return Err(DataError::Config(format!(
            "{} lists no images",
            file.display()
        )));
    }
    rows.into_iter()
        .map(|(line, e)| {
            if e.label < 0 {
                return Err(bad(line, format!("label {} is negative", e.label)));
            }
            Ok((base.join(&e.path), e.label))
        })
        .collect()
}

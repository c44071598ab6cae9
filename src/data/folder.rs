//! ImageFolder layout: `root/<class>/<image>.{jpg,jpeg,png}`, classes sorted by name.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{DataError, Result};

/// The images of an ImageFolder tree.
pub struct Folder {
    /// Class names, sorted; a class id is an index into this list.
    pub classes: Vec<String>,
    /// Every image with its class id, in class then file-name order.
    pub items: Vec<(PathBuf, i64)>,
}

pub fn scan_folder(root: &Path) -> Result<Folder> {
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut v = fs::read_dir(dir)
            .map_err(|e| DataError::io(dir, e))?
            .map(|e| e.map(|e| e.path()).map_err(|e| DataError::io(dir, e)))
            .collect::<Result<Vec<_>>>()?;
        v.sort();
        Ok(v)
    };
    let mut classes = Vec::new();
    let mut items = Vec::new();
    for dir in list(root)?.into_iter().filter(|p| p.is_dir()) {
        let label = classes.len() as i64;
        classes.push(
            dir.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
        let before = items.len();
        for file in list(&dir)? {
            let ext = file
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            if file.is_file() && matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) {
                items.push((file, label));
            }
        }
        // An empty class would still take a class index, silently shifting none but
        // training on nothing for it: almost always a copy that went wrong.
        if items.len() == before {
            return Err(DataError::Config(format!(
                "class directory {} has no images (.jpg, .jpeg, .png)",
                dir.display()
            )));
        }
    }
    if items.is_empty() {
        return Err(DataError::NoFiles(format!(
            "{}/<class>/*.{{jpg,jpeg,png}}",
            root.display()
        )));
    }
    Ok(Folder { classes, items })
}

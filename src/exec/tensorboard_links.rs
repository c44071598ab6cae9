//! The store's TensorBoard tree, `tensorboard/PIPELINE/STAGE[/SWEEP-POINT]`: a symlink
//! per training stage to its event directory, in the work dir while the stage runs (live
//! curves) and in the object store once it is done, so one `tensorboard --logdir` shows
//! every run under names a person can read instead of object hashes.

use super::plan::Plan;
use crate::report::tensorboard::OUTPUT;
use crate::store::Store;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Links {
    root: PathBuf,
    /// Per job: where its link goes, for jobs with a TensorBoard output.
    names: Vec<Option<PathBuf>>,
}

impl Links {
    pub fn new(plan: &Plan, store: &Store) -> Links {
        let root = store.tensorboard_dir();
        let names = (0..plan.jobs.len())
            .map(|j| {
                let job = &plan.jobs[j];
                job.stage
                    .kind
                    .outputs(&job.stage.params)
                    .iter()
                    .any(|o| o == OUTPUT)
                    .then(|| {
                        let mut p = root.join(&job.pipeline).join(&job.stage.name);
                        if let Some(label) = point_label(plan, j) {
                            p.push(label);
                        }
                        p
                    })
            })
            .collect();
        Links { root, names }
    }

    /// Points job `j`'s link at `dir` (replacing it atomically). A failure only costs
    /// the named view, so it is logged, not raised.
    pub fn point(&self, j: usize, dir: &Path) {
        let Some(link) = &self.names[j] else { return };
        if let Err(e) = replace_symlink(&self.root, dir, link) {
            tracing::warn!("cannot link {} to {}: {e}", link.display(), dir.display());
        }
    }
}

/// The grid settings every sweep point holding job `j` shares, as `a.b=1,c.d=x` (axes
/// that vary), when not all points hold it (a job common to the whole sweep needs no
/// label).
fn point_label(plan: &Plan, j: usize) -> Option<String> {
    let holding: Vec<_> = plan
        .variants
        .iter()
        .filter(|v| v.stages.values().any(|&x| x == j))
        .collect();
    if holding.len() == plan.variants.len() {
        return None;
    }
    let mut common: BTreeMap<&str, String> = BTreeMap::new();
    for (i, v) in holding.iter().enumerate() {
        let here: BTreeMap<&str, String> = v
            .settings
            .iter()
            .map(|(k, val)| {
                (
                    k.as_str(),
                    val.as_str().map_or_else(|| val.to_string(), String::from),
                )
            })
            .collect();
        if i == 0 {
            common = here;
        } else {
            common.retain(|k, val| here.get(k) == Some(val));
        }
    }
    // An axis with one value names no point.
    let varies = |axis: &str| {
        let values: Vec<_> = plan
            .variants
            .iter()
            .filter_map(|v| v.settings.iter().find(|(k, _)| k == axis).map(|(_, x)| x))
            .collect();
        values.iter().any(|x| *x != values[0])
    };
    let order = &holding.first()?.settings;
    let label = order
        .iter()
        .filter(|(k, _)| varies(k))
        .filter_map(|(k, _)| Some(format!("{k}={}", common.get(k.as_str())?)))
        .collect::<Vec<_>>()
        .join(",")
        .replace('/', "_");
    // Points that share this job but agree on no varying axis: name the job itself.
    Some(if label.is_empty() {
        format!("job-{j}")
    } else {
        label
    })
}

/// Makes `link` (under `root`) a symlink to `target`. The latest run's layout wins: an
/// unlabelled link where sweep points now need a directory is removed (else the new link
/// would land inside a stage's event directory), and a directory of sweep-point links
/// where an unlabelled link now goes is removed (its links, never their targets).
#[cfg(unix)]
fn replace_symlink(root: &Path, target: &Path, link: &Path) -> std::io::Result<()> {
    let parent = link.parent().expect("links live under the tensorboard dir");
    for dir in parent
        .ancestors()
        .take_while(|d| d.starts_with(root) && *d != root)
    {
        if dir.is_symlink() {
            std::fs::remove_file(dir)?;
        }
    }
    if link.is_dir() && !link.is_symlink() {
        std::fs::remove_dir_all(link)?;
    }
    std::fs::create_dir_all(parent)?;
    // One temp name per link, so a leftover of a killed runner is replaced next time.
    let tmp = parent.join(format!(
        ".{}.tmp",
        link.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

#[cfg(not(unix))]
fn replace_symlink(_root: &Path, _target: &Path, _link: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("symlinks are only made on Unix"))
}

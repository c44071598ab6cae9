//! `runner gc`: delete what neither the current manifests nor the last N runs reference.

use super::{Record, Store, remove_tree, stem, tree_size};
use anyhow::Result;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
pub struct GcReport {
    pub records_kept: usize,
    pub records_removed: usize,
    pub objects_removed: usize,
    pub work_dirs_removed: usize,
    pub bytes_freed: u64,
}

/// `keep` holds the keys the current manifests resolve to; keys of the newest
/// `keep_runs` run logs are kept too (the logs themselves are never deleted). With
/// `dry_run` nothing is deleted.
pub fn collect(
    store: &Store,
    mut keep: BTreeSet<String>,
    keep_runs: usize,
    dry_run: bool,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    // Run logs stay (they are the run history, and small); only the keys of the newest
    // `keep_runs` keep records and objects alive.
    // A killed run's log was never closed and holds no keys: it does not take a place.
    let finished = store
        .run_logs()
        .into_iter()
        .filter(|l| !l.finished.is_empty());
    for log in finished.take(keep_runs) {
        keep.extend(log.keys);
    }

    let mut live_objects = BTreeSet::new();
    for dir in ["records", "failed"] {
        for path in entries(&store.root.join(dir)) {
            let key = stem(&path);
            let rec: Option<Record> = super::read_json(&path);
            if keep.contains(&key) {
                if let Some(r) = rec {
                    live_objects.extend(r.outputs.values().map(|o| o.hash.clone()));
                }
                report.records_kept += usize::from(dir == "records");
            } else {
                report.records_removed += usize::from(dir == "records");
                if !dry_run {
                    fs::remove_file(&path)?;
                    let _ = fs::remove_file(store.root.join(store.log_rel(&key)));
                }
            }
        }
    }

    for shard in entries(&store.root.join("objects")) {
        for obj in entries(&shard) {
            if !live_objects.contains(&stem(&obj)) {
                report.objects_removed += 1;
                report.bytes_freed += tree_size(&obj);
                if !dry_run {
                    remove_tree(&obj)?;
                }
            }
        }
    }

    for work in entries(&store.root.join("work")) {
        if !keep.contains(&stem(&work)) {
            report.work_dirs_removed += 1;
            report.bytes_freed += tree_size(&work);
            if !dry_run {
                remove_tree(&work)?;
            }
        }
    }
    if !dry_run {
        for t in entries(&store.root.join("tmp")) {
            remove_tree(&t)?;
        }
    }
    Ok(report)
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

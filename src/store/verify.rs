//! `runner verify`: rehash every object; evict corrupt ones and the records that need them.

use super::hash::StatCache;
use super::{Record, Store, remove_tree, tree_size};
use anyhow::Result;
use std::collections::BTreeSet;
use std::fs;

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub objects_checked: usize,
    pub bytes_checked: u64,
    /// (object hash, what was wrong)
    pub corrupt: Vec<(String, String)>,
    /// (stage, key) of records removed because an output was corrupt or missing.
    pub records_evicted: Vec<(String, String)>,
    /// Record files that could not be parsed.
    pub unreadable_records: Vec<String>,
}

impl VerifyReport {
    pub fn clean(&self) -> bool {
        self.corrupt.is_empty()
            && self.records_evicted.is_empty()
            && self.unreadable_records.is_empty()
    }
}

pub fn verify(store: &Store) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let hasher = StatCache::none();
    let mut bad = BTreeSet::new();
    for shard in fs::read_dir(store.root.join("objects"))?.filter_map(|e| e.ok()) {
        for obj in fs::read_dir(shard.path())?.filter_map(|e| e.ok()) {
            let path = obj.path();
            let name = obj.file_name().to_string_lossy().into_owned();
            report.objects_checked += 1;
            report.bytes_checked += tree_size(&path);
            let problem = match hasher.hash_path(&path) {
                Ok((_, h)) if h == name => None,
                Ok((_, h)) => Some(format!("content hashes to {h}")),
                Err(e) => Some(format!("unreadable: {e}")),
            };
            if let Some(p) = problem {
                remove_tree(&path)?;
                bad.insert(name.clone());
                report.corrupt.push((name, p));
            }
        }
    }
    for entry in fs::read_dir(store.root.join("records"))?.filter_map(|e| e.ok()) {
        let path = entry.path();
        let parsed: Option<Record> = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match parsed {
            None => {
                report.unreadable_records.push(path.display().to_string());
                fs::remove_file(&path)?;
            }
            Some(r) => {
                let broken = r
                    .outputs
                    .values()
                    .any(|o| bad.contains(&o.hash) || !store.object_path(&o.hash).exists());
                if broken {
                    fs::remove_file(&path)?;
                    report.records_evicted.push((r.stage, r.key));
                }
            }
        }
    }
    Ok(report)
}

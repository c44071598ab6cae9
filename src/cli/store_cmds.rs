//! The store commands: `ls`, `gc`.

use super::*;

/// A record as `ls --json` lists it.
#[derive(serde::Serialize)]
struct Listed<'a> {
    pipeline: &'a str,
    stage: &'a str,
    kind: &'a str,
    key: &'a str,
    finished: &'a str,
    duration_s: f64,
    peak_rss_bytes: Option<u64>,
    output_bytes: u64,
}

pub(super) fn ls(store: &Store, json: bool) -> Result<i32> {
    let mut recs = store.records();
    recs.sort_by(|a, b| a.finished.cmp(&b.finished));
    if json {
        let listed: Vec<Listed> = recs
            .iter()
            .map(|r| Listed {
                pipeline: &r.pipeline,
                stage: &r.stage,
                kind: &r.kind,
                key: &r.key,
                finished: &r.finished,
                duration_s: r.duration_s,
                peak_rss_bytes: r.peak_rss_bytes,
                output_bytes: r.outputs.values().map(|o| o.bytes).sum(),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(0);
    }
    let mut t = new_table(vec![
        "pipeline", "stage", "kind", "finished", "took", "peak mem", "outputs", "key",
    ]);
    for r in &recs {
        let bytes: u64 = r.outputs.values().map(|o| o.bytes).sum();
        t.add_row(vec![
            r.pipeline.clone(),
            r.stage.clone(),
            r.kind.clone(),
            r.finished.clone(),
            format!("{:.1}s", r.duration_s),
            r.peak_rss_bytes.map(human_bytes).unwrap_or_default(),
            human_bytes(bytes),
            r.key[..12].to_string(),
        ]);
    }
    println!("{t}");
    println!("{} records in {}", recs.len(), store.root.display());
    Ok(0)
}

pub(super) fn run_gc(a: GcArgs, store_flag: Option<&Path>) -> Result<i32> {
    let mut keep = BTreeSet::new();
    let mut store_root = store_flag.map(Path::to_path_buf);
    for path in &a.manifests {
        let m = manifest::load(path, &[], stages::kinds())?;
        let root = store_root.get_or_insert_with(|| m.store.clone()).clone();
        let variants = if m.sweep.grid.is_empty() {
            vec![(vec![], m)]
        } else {
            sweep::expand(path, &[], &[], stages::kinds()).map_err(expand_error)?
        };
        let store = existing_store(&root)?;
        let plan = Plan::build(&variants, &[]).map_err(usage)?;
        for r in plan::resolve_all(&plan, &Resolver::new(&store), &|_| false) {
            match r {
                Resolution::Cached(rec) => {
                    keep.insert(rec.key);
                }
                Resolution::Run { key, .. } => {
                    keep.insert(key);
                }
                _ => {}
            }
        }
    }
    let store = existing_store(&default_store(store_root))?;
    let _lock = store.use_lock(true)?;
    let r = gc::collect(&store, keep, a.keep_runs, a.dry_run)?;
    println!(
        "{}{} records kept, {} removed; {} objects and {} work dirs removed; {} freed",
        if a.dry_run { "dry run: " } else { "" },
        r.records_kept,
        r.records_removed,
        r.objects_removed,
        r.work_dirs_removed,
        human_bytes(r.bytes_freed)
    );
    Ok(0)
}

//! The published-recipe manifests (pipelines/micronet.toml, pipelines/lite0.toml) load and
//! plan without their data; a real run without the data stops before running anything,
//! naming each missing path and how to give it.

mod common;

use common::Project;
use std::path::Path;

fn check(file: &str, stages: &[&str], missing: &[&str]) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let manifest = manifest.to_str().unwrap();
    let p = Project::new();
    let store = p.path("store");
    let store = store.to_str().unwrap();
    let plan = p.ok(&["--store", store, "run", "--dry-run", manifest]);
    for s in stages {
        assert!(
            plan.contains(s),
            "{file}: stage {s} missing from the plan:\n{plan}"
        );
    }
    let out = p.runner(&["--store", store, "run", manifest]);
    let err = common::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("missing input paths"), "{err}");
    for m in missing {
        assert!(
            err.contains(&format!("{m} does not exist")),
            "{file}: {m} not named:\n{err}"
        );
    }
    assert!(
        err.contains("nothing ran") && err.contains("--set params."),
        "{err}"
    );
    // Nothing ran: no stage record was written.
    let records = p.path("store/records");
    let n = std::fs::read_dir(&records).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 0, "{file}: a stage ran without its data");
}

#[test]
fn micronet_plans_without_data_and_fails_fast() {
    check(
        "pipelines/micronet.toml",
        &[
            "convert",
            "qat",
            "thresholds",
            "adjq_b85",
            "best_b85",
            "adjq_b115",
            "select",
            "swa1",
            "swa2",
            "swa3",
            "eval_float",
            "eval",
            "report",
        ],
        &[
            "/data/imagenet/tfrecord",
            "/data/checkpoints/efficientnet-b0",
        ],
    );
}

#[test]
fn lite0_plans_without_data_and_fails_fast() {
    check(
        "pipelines/lite0.toml",
        &[
            "convert",
            "qat",
            "thresholds",
            "adjq_b85",
            "adjq_b115",
            "swa3",
            "report",
        ],
        &[
            "/data/imagenet/tfrecord",
            "/data/checkpoints/efficientnet-lite0-57934424.pth",
        ],
    );
}

/// The key material each stage contributes to its cache key (kind, version, params with
/// defaults; inputs left out, they are hashes of data) stays fixed across refactors: a
/// change here reruns every user's stores. Regenerate `tests/fixtures/cache_keys.json`
/// with `ADJQ_BLESS=1` only when a kind's version is bumped on purpose.
#[test]
fn published_manifests_keep_their_cache_keys() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut keys = std::collections::BTreeMap::new();
    for file in [
        "pipelines/demo.toml",
        "pipelines/micronet.toml",
        "pipelines/lite0.toml",
        "pipelines/lite0-smoke.toml",
        "pipelines/iris-shell.toml",
    ] {
        let m = adjq::manifest::load(&root.join(file), &[], adjq::stages::kinds()).unwrap();
        for s in &m.stages {
            let key = adjq::store::cache_key(
                s.kind.name(),
                s.kind.version(),
                &s.params,
                &Default::default(),
            );
            keys.insert(format!("{file}:{}", s.name), key);
        }
    }
    let golden = root.join("tests/fixtures/cache_keys.json");
    if std::env::var_os("ADJQ_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&keys).unwrap();
        std::fs::write(&golden, text + "\n").unwrap();
    }
    let want: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&golden).unwrap()).unwrap();
    assert_eq!(keys, want);
}

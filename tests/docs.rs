//! The README's stage reference is `runner kinds --markdown`, verbatim.

#[test]
fn readme_stage_reference_matches_the_code() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["kinds", "--markdown"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("<!-- kinds:begin -->\n").expect("begin marker")
        + "<!-- kinds:begin -->\n".len();
    let end = readme.find("<!-- kinds:end -->").expect("end marker");
    assert_eq!(
        readme[start..end].trim_end(),
        generated.trim_end(),
        "README's stage reference is stale: regenerate it with `runner kinds --markdown`"
    );
}

fn runner(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bundled_pipelines_validate_and_the_shell_example_runs() {
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let out = runner(&["--store", s, "run", "pipelines/demo.toml", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stage in [
        "pretrain",
        "qat",
        "thresholds",
        "adjq_lo",
        "best_lo",
        "adjq_hi",
        "select",
        "swa1",
        "swa2",
        "swa3",
        "eval_float",
        "eval",
    ] {
        assert!(text.contains(stage), "dry run lists {stage}: {text}");
    }
    let out = runner(&["--store", s, "run", "pipelines/iris-shell.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = runner(&[
        "--store",
        s,
        "show",
        "pipelines/iris-shell.toml",
        "eval",
        "--json",
    ]);
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        (rec["metrics"]["top1"].as_f64().unwrap() - 0.9333).abs() < 1e-3,
        "{rec}"
    );
}

/// The Rust version the README's quick start asks for is the one Cargo.toml declares
/// (`rust-version`, which cargo checks before building), and that is at least burn's.
#[test]
fn readme_rust_version_is_the_declared_one() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml declares rust-version")
        .trim_matches('"');
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    assert!(
        readme.contains(&format!("Rust ≥ {declared}")),
        "README's quick start does not ask for Rust ≥ {declared}"
    );
    // burn 0.22's own minimum (its Cargo.toml: rust-version = "1.95").
    let minor: u32 = declared.split('.').nth(1).unwrap().parse().unwrap();
    assert!(
        minor >= 95,
        "burn 0.22.1 needs Rust 1.95, Cargo.toml says {declared}"
    );
}

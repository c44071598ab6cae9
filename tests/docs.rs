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

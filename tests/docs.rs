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

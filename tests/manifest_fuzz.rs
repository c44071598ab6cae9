//! Property tests: the manifest loader never panics, whatever bytes it is given.

use adjq::manifest::{self, Override};
use proptest::prelude::*;
use std::path::Path;

const VALID: &str = r#"[pipeline]
name = "p"
[params]
n = 3
[stages.a]
kind = "shell"
cmd = "echo ${params.n} > o"
outs = ["o"]
[stages.b]
kind = "shell"
cmd = "cat ${inputs.i}"
inputs.i = { stage = "a", output = "o" }
[sweep]
grid = { "params.n" = [1, 2] }
"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = manifest::parse(Path::new("fuzz.toml"), &text, &[], adjq::stages::kinds());
    }

    #[test]
    fn mutated_valid_manifests_never_panic(
        pos in 0usize..VALID.len(),
        len in 0usize..16,
        insert in "[\\[\\]{}=\"$.a-z0-9 \n#,]{0,12}",
    ) {
        let mut text = VALID.to_string();
        let end = (pos + len).min(text.len());
        if text.is_char_boundary(pos) && text.is_char_boundary(end) {
            text.replace_range(pos..end, &insert);
        }
        let _ = manifest::parse(Path::new("fuzz.toml"), &text, &[], adjq::stages::kinds());
    }

    #[test]
    fn arbitrary_overrides_never_panic(flag in "[a-z.=\\[\\]{}\" 0-9]{0,24}") {
        if let Ok(o) = Override::parse(&flag) {
            let _ = manifest::parse(Path::new("fuzz.toml"), VALID, &[o], adjq::stages::kinds());
        }
    }
}

#[test]
fn the_seed_manifest_is_valid() {
    manifest::parse(Path::new("fuzz.toml"), VALID, &[], adjq::stages::kinds()).unwrap();
}

//! The crate's layers, lowest first: a module may use only modules below it, so there is
//! no import cycle between top-level modules. The test reads every `crate::` path in
//! the sources (use lines and inline paths) and fails on a back-edge.

/// Top-level modules from the bottom up. ML modules first (they know nothing of
/// pipelines), then the pipeline layers manifest → graph → store → exec → stages, then the
/// run history and the commands.
#[cfg(test)]
const LAYERS: &[&str] = &[
    "atomic",
    "malloc",
    "backend",
    "data",
    "ckpt",
    "model",
    "quant",
    "score",
    "train",
    "artifacts",
    "report",
    "manifest",
    "graph",
    "store",
    "exec",
    "stages",
    "sweep",
    "history",
    "predict",
    "cli",
];

#[cfg(test)]
mod tests {
    use super::LAYERS;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// The top-level module a source file belongs to.
    fn module_of(src: &Path, file: &Path) -> String {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        first.trim_end_matches(".rs").to_string()
    }

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// Modules named by `crate::NAME` in `text`, comments skipped.
    fn uses(text: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                let after = &rest[i + "crate::".len()..];
                let ident = |t: &str| -> String {
                    t.trim_start()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect()
                };
                // `crate::{a, b::{c, d}}`: the first name of each top-level item.
                if let Some(group) = after.strip_prefix('{') {
                    let (mut depth, mut start) = (0, 0);
                    for (j, c) in group.char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => {
                                found.insert(ident(&group[start..j]));
                                break;
                            }
                            '}' => depth -= 1,
                            ',' if depth == 0 => {
                                found.insert(ident(&group[start..j]));
                                start = j + 1;
                            }
                            _ => {}
                        }
                    }
                    found.remove("");
                    rest = after;
                    continue;
                }
                let name = ident(after);
                // `$crate::` in macros names the crate root, like `crate::`; exported
                // macros live at the root but belong to the module that defines them.
                let module = match name.as_str() {
                    "stage_params" | "param_choice" => "manifest".to_string(),
                    _ => name,
                };
                found.insert(module);
                rest = after;
            }
        }
        found
    }

    #[test]
    fn no_module_imports_a_layer_above_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
        let mut back_edges = Vec::new();
        let mut seen = BTreeSet::new();
        for file in &all {
            let from = module_of(&src, file);
            if ["lib", "main", "layers"].contains(&from.as_str()) {
                continue;
            }
            seen.insert(from.clone());
            let from_rank =
                rank(&from).unwrap_or_else(|| panic!("module `{from}` is not in LAYERS"));
            let text = std::fs::read_to_string(file).unwrap();
            for to in uses(&text) {
                if to == from {
                    continue;
                }
                let to_rank = rank(&to)
                    .unwrap_or_else(|| panic!("{}: unknown module `{to}`", file.display()));
                if to_rank > from_rank {
                    back_edges.push(format!("{} uses crate::{to}", file.display()));
                }
            }
        }
        assert!(
            back_edges.is_empty(),
            "back-edges:\n{}",
            back_edges.join("\n")
        );
        let listed: BTreeSet<String> = LAYERS.iter().map(|s| s.to_string()).collect();
        assert_eq!(seen, listed, "LAYERS must list exactly the crate's modules");
    }

    #[test]
    fn the_scanner_sees_inline_paths_and_skips_comments() {
        let found = uses(
            "use crate::a::b;\nlet x = crate::c::d(); // crate::e\n$crate::f!()\nuse crate::{g, h::{i, j}};",
        );
        let want = ["a", "c", "f", "g", "h"].map(String::from);
        assert_eq!(found, BTreeSet::from(want));
    }
}

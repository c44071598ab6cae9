//! End-to-end behaviour of `runner run` on shell-stage pipelines: caching, invalidation,
//! early cutoff, failures, dry runs and status.

mod common;
use common::{Project, stderr, stdout};

/// a (reads input.txt) → b (param n) → c; d is independent. Each stage appends its name
/// to runs.log when it executes.
fn chain(p: &Project, n: i64, extra: &str) -> String {
    let log = p.runs_log();
    format!(
        r#"
[pipeline]
name = "chain"

[params]
n = {n}
src = "input.txt"

[stages.a]
kind = "shell"
cmd = "tr a-z A-Z < ${{inputs.src}} > up.txt && echo a >> {log}"
inputs = {{ src = "${{params.src}}" }}
outs = ["up.txt"]

[stages.b]
kind = "shell"
cmd = "head -c ${{params.n}} ${{inputs.up}} > head.txt && echo b >> {log}"
inputs.up = {{ stage = "a", output = "up.txt" }}
outs = ["head.txt"]
{extra}
[stages.c]
kind = "shell"
cmd = "wc -c < ${{inputs.h}} > count.txt && echo '{{\"bytes\": '$(cat count.txt)'}}' > m.json && echo c >> {log}"
inputs = {{ h = {{ stage = "b", output = "head.txt" }} }}
outs = ["count.txt"]
metrics = "m.json"

[stages.d]
kind = "shell"
cmd = "echo independent > d.txt && echo d >> {log}"
outs = ["d.txt"]
"#
    )
}

fn setup(n: i64) -> Project {
    let p = Project::new();
    p.write("input.txt", "hello world\n");
    p.write("m.toml", &chain(&p, n, ""));
    p
}

#[test]
fn second_run_is_all_cache_hits() {
    let p = setup(3);
    p.ok(&["run", "m.toml"]);
    assert_eq!(p.take_runs(), ["a", "b", "c", "d"]);
    let out = p.ok(&["run", "m.toml"]);
    assert_eq!(p.take_runs(), Vec::<String>::new());
    assert!(out.contains("0 ran, 4 cached"), "{out}");
}

#[test]
fn param_change_reruns_exactly_the_stage_and_downstream() {
    let p = setup(3);
    p.ok(&["run", "m.toml"]);
    p.take_runs();
    p.ok(&["run", "m.toml", "--set", "params.n=5"]);
    assert_eq!(p.take_runs(), ["b", "c"]);
    // A stage param override works the same way.
    let d_cmd = format!("d.cmd=echo changed > d.txt && echo d >> {}", p.runs_log());
    p.ok(&["run", "m.toml", "--set", "params.n=5", "--set", &d_cmd]);
    assert_eq!(p.take_runs(), ["d"]);
}

#[test]
fn reverting_a_param_reuses_the_earlier_result_without_running() {
    let p = setup(3);
    p.ok(&["run", "m.toml"]);
    p.ok(&["run", "m.toml", "--set", "params.n=5"]);
    p.take_runs();
    let out = p.ok(&["run", "m.toml"]);
    assert_eq!(p.take_runs(), Vec::<String>::new(), "{out}");
    assert!(out.contains("0 ran, 4 cached"), "{out}");
}

#[test]
fn editing_an_input_file_reruns_its_readers() {
    let p = setup(3);
    p.ok(&["run", "m.toml"]);
    p.take_runs();
    p.write("input.txt", "jello world\n");
    p.ok(&["run", "m.toml"]);
    assert_eq!(p.take_runs(), ["a", "b", "c"]);
    // Same content written again (new mtime): nothing reruns.
    p.write("input.txt", "jello world\n");
    p.ok(&["run", "m.toml"]);
    assert_eq!(p.take_runs(), Vec::<String>::new());
}

#[test]
fn comment_and_formatting_edits_rerun_nothing() {
    let p = setup(3);
    p.ok(&["run", "m.toml"]);
    p.take_runs();
    // Comments, blank lines, key reordering, inline-vs-dotted tables and spelling out a
    // default value are not semantic changes.
    let text = chain(&p, 3, "")
        .replace("[stages.a]", "# the first stage\n\n[stages.a]   # trailing comment")
        .replace("n = 3", "n    =    3 # same value")
        .replace(
            "inputs.up = { stage = \"a\", output = \"up.txt\" }\nouts = [\"head.txt\"]",
            "outs = [ \"head.txt\" ]\nenv = {}\n[stages.b.inputs]\nup = { output = \"up.txt\", stage = \"a\" }",
        );
    p.write("m.toml", &text);
    let out = p.ok(&["run", "m.toml"]);
    assert_eq!(p.take_runs(), Vec::<String>::new(), "{text}\n{out}");
}

#[test]
fn identical_outputs_cut_off_downstream() {
    let p = setup(3);
    p.ok(&["run", "m.toml"]);
    p.take_runs();
    // a's command changes but produces the same bytes: a reruns, b/c stay cached.
    let log = p.runs_log();
    let cmd = format!("a.cmd=cat ${{inputs.src}} | tr a-z A-Z > up.txt && echo a >> {log}");
    let out = p.ok(&["run", "m.toml", "--set", &cmd]);
    assert_eq!(p.take_runs(), ["a"], "{out}");
    // --force likewise reruns only the forced stage when its output is unchanged.
    p.ok(&["run", "m.toml", "--force", "b"]);
    assert_eq!(p.take_runs(), ["b"]);
}

#[test]
fn selected_stages_run_with_their_upstream_only() {
    let p = setup(3);
    p.ok(&["run", "m.toml", "b"]);
    assert_eq!(p.take_runs(), ["a", "b"]);
}

#[test]
fn dry_run_and_status_explain_without_running() {
    let p = setup(3);
    let out = p.ok(&["run", "m.toml", "--dry-run"]);
    assert!(out.contains("new: never run"), "{out}");
    assert_eq!(p.take_runs(), Vec::<String>::new());
    p.ok(&["run", "m.toml"]);
    p.take_runs();
    let out = p.ok(&["run", "m.toml", "-n", "--set", "params.n=4"]);
    assert!(out.contains("param cmd changed"), "{out}");
    assert!(out.contains("upstream changed (b)"), "{out}");
    let out = p.ok(&["status", "m.toml"]);
    assert_eq!(out.matches("cached").count(), 4, "{out}");
    p.write("input.txt", "other\n");
    let out = p.ok(&["explain", "m.toml", "a"]);
    assert!(out.contains("input src changed"), "{out}");
    assert_eq!(p.take_runs(), Vec::<String>::new());
}

#[test]
fn show_prints_outputs_and_metrics() {
    let p = setup(3);
    p.ok(&["run", "m.toml"]);
    let out = p.ok(&["show", "m.toml", "c"]);
    assert!(out.contains("bytes = 3"), "{out}");
    let json = p.ok(&["show", "m.toml", "c", "--json"]);
    let rec: serde_json::Value = serde_json::from_str(&json).unwrap();
    let hash = rec["outputs"]["count.txt"]["hash"].as_str().unwrap();
    let obj = p.path(&format!("artifacts/objects/{}/{hash}", &hash[..2]));
    assert_eq!(std::fs::read_to_string(obj).unwrap().trim(), "3");
}

#[test]
fn failure_stops_dependants_but_keep_going_runs_independent_stages() {
    let p = setup(3);
    let out = p.runner(&["run", "m.toml", "-j", "1", "--set", "a.cmd=exit 3"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("│ a       FAILED (below)"), "{text}");
    assert!(
        text.contains("✗ a failed: command exited with status 3: exit 3\n  log: "),
        "{text}"
    );
    assert!(text.contains("skipped (a failed)"), "{text}");
    assert!(
        !text.contains("│ d       ok"),
        "without --keep-going d is not started: {text}"
    );
    let out = p.runner(&[
        "run",
        "m.toml",
        "-j",
        "1",
        "--keep-going",
        "--set",
        "a.cmd=exit 3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(p.take_runs(), ["d"]);
    // The failure is visible in status and the log is kept.
    let st = p.ok(&["status", "m.toml", "--set", "a.cmd=exit 3"]);
    assert!(st.contains("failed"), "{st}");
}

#[test]
fn missing_input_fails_fast_naming_the_path() {
    let p = setup(3);
    std::fs::remove_file(p.path("input.txt")).unwrap();
    let out = p.runner(&["run", "m.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("input.txt does not exist (params.src, read by a.src")
            && err.contains("--set params.src=PATH"),
        "{err}"
    );
    // Input paths can come from shared params, and --set moves them.
    let out = p.runner(&["run", "m.toml", "--set", "params.src=elsewhere.txt"]);
    assert!(
        stderr(&out).contains("elsewhere.txt does not exist (params.src, read by a.src"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        p.take_runs(),
        Vec::<String>::new(),
        "nothing runs when an input is missing"
    );
    // --dry-run still validates and prints the plan.
    let out = p.ok(&["run", "m.toml", "--dry-run"]);
    assert!(out.contains("input.txt"), "{out}");
}

#[test]
fn a_missing_declared_output_fails_the_stage() {
    let p = setup(3);
    let out = p.runner(&["run", "m.toml", "d", "--set", "d.cmd=true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("did not produce its declared output `d.txt`"),
        "{}",
        stdout(&out)
    );
}

/// A long failure message stays out of the run table: the table is as narrow as its
/// columns, and the whole message and the log path follow it.
#[test]
fn a_long_failure_message_is_printed_below_a_narrow_table() {
    let p = common::Project::new();
    let long = "o".repeat(160);
    p.write(
        "m.toml",
        &format!(
            "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"true\"\nouts = [\"{long}\"]\n"
        ),
    );
    let out = p.runner(&["run", "m.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let widest = text
        .lines()
        .filter(|l| l.contains('│'))
        .map(|l| l.chars().count())
        .max()
        .unwrap();
    assert!(widest < 80, "table {widest} columns wide: {text}");
    assert!(
        text.contains(&format!(
            "✗ a failed: stage did not produce its declared output `{long}`"
        )),
        "{text}"
    );
    assert!(text.contains("  log: ") && text.contains(".log"), "{text}");
}

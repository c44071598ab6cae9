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

/// Three runs with different `--set` values, then `runs` and `diff`: the params that
/// differ are the columns, with the metric; the diff names each value's source.
#[test]
fn runs_and_diff_compare_runs_by_their_params_sources_and_metrics() {
    let p = setup(3);
    p.write(
        "m.toml",
        &chain(
            &p,
            3,
            "[templates.t]\nkind = \"shell\"\ncmd = \"echo t > t.txt\"\nouts = [\"t.txt\"]\n\n[stages.e]\nextends = \"t\"\n",
        ),
    );
    p.ok(&["run", "m.toml"]);
    p.ok(&["run", "m.toml", "--set", "params.n=5"]);
    p.ok(&[
        "run",
        "m.toml",
        "--set",
        "params.n=2",
        "--set",
        "e.cmd=echo u > t.txt",
    ]);

    let table = p.ok(&["runs"]);
    let header = table.lines().nth(1).unwrap();
    for col in ["run", "started", "state", "params.n", "e.cmd"] {
        assert!(header.contains(col), "{table}");
    }
    // b.cmd follows params.n, which has its own column; c.bytes is the last stage's metric
    // only when asked for (it is not one of the defaults).
    assert!(!header.contains("b.cmd"), "{table}");
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("│ ")).collect();
    assert!(
        rows[1].starts_with("│ 3 ") && rows[3].starts_with("│ 1 "),
        "{table}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&p.ok(&["runs", "--metric", "c.bytes", "--format", "json"])).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let col = |i: usize, c: &str| rows[i][c].clone();
    assert_eq!(
        (col(0, "run"), col(1, "run"), col(2, "run")),
        ("3".into(), "2".into(), "1".into())
    );
    assert_eq!(
        (col(0, "params.n"), col(2, "params.n")),
        (2.into(), 3.into())
    );
    assert_eq!((col(0, "c.bytes"), col(1, "c.bytes")), (2.into(), 5.into()));
    assert_eq!((col(2, "state"), col(2, "ran")), ("ok".into(), 5.into()));
    assert_eq!((col(1, "state"), col(1, "ran")), ("ok".into(), 2.into()));
    // Run ids compare as numbers, states as words.
    let newer = p.ok(&[
        "runs", "--where", "run>1", "--where", "state=ok", "--format", "csv",
    ]);
    assert_eq!(newer.lines().count(), 3, "{newer}");

    // Filters and sorting.
    let csv = p.ok(&[
        "runs",
        "--where",
        "c.bytes>2",
        "--sort",
        "c.bytes",
        "--metric",
        "c.bytes",
        "--format",
        "csv",
    ]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].ends_with("params.n,c.bytes"), "{csv}");
    assert!(
        lines[1].starts_with("1,") && lines[1].ends_with(",3,3"),
        "{csv}"
    );
    assert!(
        lines[2].starts_with("2,") && lines[2].ends_with(",5,5"),
        "{csv}"
    );
    assert!(
        p.ok(&["runs", "--where", "params.n=7", "--format", "md"])
            .lines()
            .count()
            == 2
    );
    let bad = p.runner(&["runs", "--where", "params.n"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("is not COLUMN=VALUE"),
        "{}",
        stderr(&bad)
    );

    let text = p.ok(&["diff", "1", "3"]);
    assert!(
        text.contains("--set: (none) → params.n=2 e.cmd=echo u > t.txt"),
        "{text}"
    );
    assert!(
        text.contains("b.cmd: head -c 3 "),
        "the shared param's effect on the stage is shown: {text}"
    );
    assert!(text.contains("set by --set params.n=2"), "{text}");
    assert!(
        text.contains("e.cmd: echo t > t.txt → echo u > t.txt   (template `t` (line "),
        "{text}"
    );
    assert!(text.contains("→ --set e.cmd=echo u > t.txt)"), "{text}");
    assert!(text.contains("c.bytes: 3 → 2 (-1)"), "{text}");
    assert!(
        text.contains("c.h: "),
        "the input hash of c changed: {text}"
    );
    assert!(
        text.contains("stages: 2 with the same key, 3 different (b, c, e)"),
        "{text}"
    );

    let d: serde_json::Value = serde_json::from_str(&p.ok(&["diff", "1", "3", "--json"])).unwrap();
    let param = d["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["stage"] == "e")
        .unwrap();
    assert_eq!(param["param"], "cmd");
    assert_eq!(param["b_source"], "--set e.cmd=echo u > t.txt");
    assert!(
        param["a_source"]
            .as_str()
            .unwrap()
            .starts_with("template `t`")
    );
    let metric = &d["metrics"][0];
    assert_eq!(
        (
            metric["a"].clone(),
            metric["b"].clone(),
            metric["delta"].clone()
        ),
        (3.into(), 2.into(), (-1.0).into())
    );
    assert_eq!(d["stages"]["same_key"], serde_json::json!(["a", "d"]));

    // One stage of each run, by run:stage and by record key; `last` is the newest run.
    let rec: serde_json::Value =
        serde_json::from_str(&p.ok(&["show", "m.toml", "c", "--json"])).unwrap();
    let key = rec["key"].as_str().unwrap();
    let one = p.ok(&["diff", "2:c", &key[..10]]);
    assert!(
        one.contains("bytes: 5 → 3 (-2)") && one.contains("params (0)"),
        "{one}"
    );
    assert!(p.ok(&["diff", "last:c", "3:c"]).contains("metrics (0)"));
    for (args, msg) in [
        (&["diff", "1", "9"][..], "no run 9"),
        (&["diff", "1", "3:zz"], "has no stage `zz`"),
        (&["diff", "1", "3:c"], "compare a run with a run"),
        (&["diff", "1", "nope"], "names no run"),
    ] {
        let out = p.runner(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(msg), "{args:?}: {}", stderr(&out));
    }
}

/// `status`, `explain` and `ls` print JSON for scripts; `completions` prints a script.
#[test]
fn json_output_and_shell_completions() {
    let p = setup(3);
    p.ok(&["run", "m.toml"]);
    p.write("input.txt", "changed\n");
    let status: serde_json::Value =
        serde_json::from_str(&p.ok(&["status", "m.toml", "--json"])).unwrap();
    let states: Vec<(&str, &str)> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["stage"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("a", "out of date"),
            ("b", "out of date"),
            ("c", "out of date"),
            ("d", "cached")
        ]
    );
    let explain: serde_json::Value =
        serde_json::from_str(&p.ok(&["explain", "m.toml", "a", "--json"])).unwrap();
    assert_eq!(explain["state"], "will run");
    assert!(
        explain["differences"][0]
            .as_str()
            .unwrap()
            .contains("input src"),
        "{explain}"
    );
    let ls: serde_json::Value = serde_json::from_str(&p.ok(&["ls", "--json"])).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 4);
    assert!(ls[0]["key"].as_str().unwrap().len() == 64);
    for shell in ["bash", "zsh", "fish"] {
        let script = p.ok(&["completions", shell]);
        assert!(
            script.contains("runner") && script.contains("diff"),
            "{shell}"
        );
    }
}

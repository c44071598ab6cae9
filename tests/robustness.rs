//! Interruption, resume, concurrency, sweeps and store maintenance, driving the binary.

mod common;
use common::{Project, stdout};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A stage that counts to 30 in steps of 0.1 s, saving its position in the work dir, so an
/// interrupted run resumes where it stopped. It logs where each attempt started.
fn long_pipeline(p: &Project) {
    let log = p.runs_log();
    p.write(
        "count.sh",
        &format!(
            r#"i=$(cat state 2>/dev/null || echo 0)
echo "start $i" >> {log}
while [ "$i" -lt 30 ]; do
  sleep 0.1
  i=$((i+1))
  echo $i > state.tmp && mv state.tmp state
done
echo done > result.txt
"#
        ),
    );
    p.write(
        "m.toml",
        r#"
[pipeline]
name = "long"

[stages.count]
kind = "shell"
cmd = "sh ${inputs.script}"
inputs = { script = "count.sh" }
outs = ["result.txt"]

[stages.after]
kind = "shell"
cmd = "cp ${inputs.r} after.txt"
inputs.r = { stage = "count", output = "result.txt" }
outs = ["after.txt"]
"#,
    );
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn state_of(p: &Project) -> i64 {
    let work = p.path("artifacts/work");
    std::fs::read_dir(work)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| std::fs::read_to_string(e.ok()?.path().join("state")).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn kill_9_mid_stage_then_rerun_resumes_and_store_verifies_clean() {
    let p = Project::new();
    long_pipeline(&p);
    let mut child = p
        .cmd(&["run", "m.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the stage to make progress", || state_of(&p) >= 5);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The stage process notices its parent died and stops; its work dir stays.
    std::thread::sleep(Duration::from_millis(300));
    let reached = state_of(&p);
    assert!((5..30).contains(&reached), "state {reached}");

    let out = p.ok(&["verify"]);
    assert!(out.contains("store is clean"), "{out}");
    let out = p.ok(&["run", "m.toml"]);
    assert!(out.contains("ok (resumed)"), "{out}");
    let starts = p.read("runs.log");
    let second: i64 = starts
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("start ")
        .parse()
        .unwrap();
    assert!(
        second >= 5,
        "second attempt started at {second}, not from scratch: {starts}"
    );
    let out = p.ok(&["verify"]);
    assert!(out.contains("store is clean"), "{out}");
    // The resumed result is a normal cache entry.
    assert!(p.ok(&["run", "m.toml"]).contains("0 ran, 2 cached"));
}

#[test]
fn sigint_stops_cleanly_and_the_next_run_resumes() {
    let p = Project::new();
    long_pipeline(&p);
    let child = p
        .cmd(&["run", "m.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the stage to make progress", || state_of(&p) >= 3);
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stdout(&out));
    assert!(stdout(&out).contains("interrupted"), "{}", stdout(&out));
    let status = p.ok(&["status", "m.toml"]);
    assert!(status.contains("interrupted"), "{status}");
    let out = p.ok(&["run", "m.toml"]);
    assert!(out.contains("ok (resumed)"), "{out}");
}

#[test]
fn two_concurrent_runs_compute_each_stage_once() {
    let p = Project::new();
    let log = p.runs_log();
    p.write(
        "m.toml",
        &format!(
            r#"
[pipeline]
name = "conc"

[stages.slow]
kind = "shell"
cmd = "echo slow >> {log}; sleep 1; echo x > x.txt"
outs = ["x.txt"]

[stages.next]
kind = "shell"
cmd = "echo next >> {log}; sleep 0.5; cat ${{inputs.x}} > y.txt"
inputs.x = {{ stage = "slow", output = "x.txt" }}
outs = ["y.txt"]
"#
        ),
    );
    let a = p
        .cmd(&["run", "m.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let b = p
        .cmd(&["run", "m.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    assert_eq!(p.take_runs(), ["next", "slow"]);
    let both = stdout(&a) + &stdout(&b);
    assert!(both.contains("computed by another runner"), "{both}");
    // Each run claimed its own id in the history.
    let runs: serde_json::Value =
        serde_json::from_str(&p.ok(&["runs", "--format", "json"])).unwrap();
    let ids: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"1") && ids.contains(&"2"), "{ids:?}");
}

#[test]
fn sweep_2x2_over_a_chain_runs_the_shared_stage_once() {
    let p = Project::new();
    let log = p.runs_log();
    p.write(
        "m.toml",
        &format!(
            r#"
[pipeline]
name = "sw"

[stages.prep]
kind = "shell"
cmd = "echo prep >> {log}; seq 1 10 > data.txt"
outs = ["data.txt"]

[stages.train]
kind = "shell"
cmd = "echo train-$ADJQ_KEY >> {log}; awk '{{s += $1 * ${{params.scale}}}} END {{print s}}' ${{inputs.d}} > model.txt"
inputs.d = {{ stage = "prep", output = "data.txt" }}
outs = ["model.txt"]
env = {{ SCALE = 1 }}

[stages.eval]
kind = "shell"
cmd = "echo eval >> {log}; echo '{{\"score\": '$(( $(cat ${{inputs.m}}) + OFFSET ))'}}' > m.json"
inputs.m = {{ stage = "train", output = "model.txt" }}
env = {{ OFFSET = 0 }}
metrics = "m.json"

[params]
scale = 1

[sweep]
metrics = ["eval.score"]
"#
        ),
    );
    let out = p.ok(&[
        "sweep",
        "m.toml",
        "--grid",
        "params.scale=1,2",
        "--grid",
        "eval.env={ OFFSET = 0 },{ OFFSET = 100 }",
        "--out",
        "sweep",
    ]);
    let runs = p.take_runs();
    assert_eq!(runs.iter().filter(|r| *r == "prep").count(), 1, "{runs:?}");
    assert_eq!(
        runs.iter().filter(|r| r.starts_with("train")).count(),
        2,
        "{runs:?}"
    );
    assert_eq!(runs.iter().filter(|r| *r == "eval").count(), 4, "{runs:?}");
    let csv = p.read("sweep/results.csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 5, "{csv}");
    assert_eq!(rows[0], "params.scale,eval.env,eval.score,status");
    for want in ["55,", "110,", "155,", "210,"] {
        assert!(
            rows.iter().any(|r| r.contains(want)),
            "{want} missing in {csv}\n{out}"
        );
    }
    // Run records show one key for prep across all variants.
    let recs = p.ok(&["ls"]);
    assert_eq!(recs.matches(" prep ").count(), 1, "{recs}");
    // Sweeping again computes nothing.
    p.ok(&[
        "sweep",
        "m.toml",
        "--grid",
        "params.scale=1,2",
        "--grid",
        "eval.env={ OFFSET = 0 },{ OFFSET = 100 }",
    ]);
    assert_eq!(p.take_runs(), Vec::<String>::new());
}

#[test]
fn verify_evicts_corrupt_objects_and_gc_keeps_current_results() {
    let p = Project::new();
    p.write(
        "m.toml",
        r#"
[pipeline]
name = "g"

[params]
v = "one"

[stages.a]
kind = "shell"
cmd = "echo ${params.v} > a.txt"
outs = ["a.txt"]
"#,
    );
    p.ok(&["run", "m.toml"]);
    p.ok(&["run", "m.toml", "--set", "params.v=two"]);
    let json = p.ok(&["show", "m.toml", "a", "--json"]);
    let rec: serde_json::Value = serde_json::from_str(&json).unwrap();
    let hash = rec["outputs"]["a.txt"]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let obj = p.path(&format!("artifacts/objects/{}/{hash}", &hash[..2]));
    assert!(
        std::fs::metadata(&obj).unwrap().permissions().readonly(),
        "objects are read-only"
    );

    // Corrupt the current object: verify finds it, evicts it and the record; rerun heals.
    let mut perm = std::fs::metadata(&obj).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&obj, perm).unwrap();
    std::fs::write(&obj, "tampered\n").unwrap();
    let out = p.runner(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!("corrupt object {hash}")),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("record of stage `a`"),
        "{}",
        stdout(&out)
    );
    assert!(p.ok(&["run", "m.toml"]).contains("1 ran"));
    assert!(p.ok(&["verify"]).contains("store is clean"));

    // gc with keep-runs 0 keeps only what the manifest currently resolves to.
    let out = p.ok(&["gc", "m.toml", "--keep-runs", "0"]);
    assert!(out.contains("1 records kept, 1 removed"), "{out}");
    assert!(p.ok(&["run", "m.toml"]).contains("0 ran, 1 cached"));
    assert!(
        p.ok(&["run", "m.toml", "--set", "params.v=two"])
            .contains("1 ran")
    );
}

/// A sweep whose metrics include an accuracy and a score gets a Pareto plot, and
/// results.md names the front.
#[test]
fn sweep_with_accuracy_and_score_writes_the_pareto_plot() {
    let p = Project::new();
    p.write(
        "m.toml",
        r#"
[pipeline]
name = "pareto"

[params]
top1 = 0.5
score = 1.0

[stages.eval]
kind = "shell"
cmd = "echo '{\"top1\": ${params.top1}, \"official_score\": ${params.score}}' > m.json"
metrics = "m.json"

[sweep]
metrics = ["eval.top1", "eval.official_score"]
"#,
    );
    let out = p.ok(&[
        "sweep",
        "m.toml",
        "--grid",
        "params.top1=0.5,0.9",
        "--grid",
        "params.score=0.25,2.0",
        "--out",
        "sweep",
    ]);
    let png = std::fs::read(p.path("sweep/pareto.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG", "{out}");
    assert!(p.read("sweep/pareto.svg").starts_with("<svg"));
    // (top1 0.9, score 0.25) beats every other variant.
    let md = p.read("sweep/results.md");
    assert!(
        md.contains("Pareto front (eval.top1 against eval.official_score): `top1=0.9 score=0.25`"),
        "{md}"
    );
}

/// `ls`, `verify` and `gc` only read or trim a store: where there is none they say so
/// (exit 2) and create nothing, in the current directory or at `--store`.
#[test]
fn store_commands_refuse_to_make_a_store_where_there_is_none() {
    let p = Project::new();
    p.write(
        "m.toml",
        "[pipeline]\nname = \"p\"\n\n[stages.a]\nkind = \"shell\"\ncmd = \"true\"\n",
    );
    for args in [
        &["ls"][..],
        &["verify"],
        &["gc"],
        &["gc", "m.toml"],
        &["--store", "elsewhere", "ls"],
        &["--store", "elsewhere", "verify"],
        &["runs"],
        &["runs", "m.toml"],
        &["diff", "1", "2"],
        &["tensorboard"],
    ] {
        let out = p.runner(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no store at "), "{args:?}: {err}");
        assert!(err.contains("--store DIR"), "{args:?}: {err}");
    }
    // Looking at a pipeline reads its store as it is: nothing is created either.
    assert!(p.ok(&["status", "m.toml"]).contains("out of date"));
    p.ok(&["explain", "m.toml", "a"]);
    assert!(!p.path("artifacts").exists() && !p.path("elsewhere").exists());
    p.ok(&["run", "m.toml"]);
    assert!(p.ok(&["ls"]).contains("1 records"));
    assert!(p.ok(&["verify"]).contains("store is clean"));
}

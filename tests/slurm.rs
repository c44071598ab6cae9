//! `--executor slurm` against a real Slurm cluster (`.ci/slurm-up` starts a one-node one
//! on this machine): stages as `sbatch` jobs, sweeps, faults, requeue and resume, two
//! runners on one store. Without a cluster the tests say so and pass, unless
//! `ADJQ_REQUIRE_SLURM=1` (CI sets it), when they fail.

mod common;
use common::{Project, stderr, stdout};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a Slurm cluster with an up node answers.
fn cluster() -> bool {
    let up = Command::new("sinfo")
        .args(["--noheader", "--format=%T"])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|s| ["idle", "mixed", "allocated"].contains(&s.trim_end_matches('*')))
        });
    if !up {
        assert!(
            std::env::var("ADJQ_REQUIRE_SLURM").as_deref() != Ok("1"),
            "ADJQ_REQUIRE_SLURM=1 but no Slurm cluster answers `sinfo` with an up node; `.ci/slurm-up` starts one"
        );
        eprintln!(
            "skipped: no Slurm cluster (`sinfo` shows no up node); `sudo .ci/slurm-up` starts one here"
        );
    }
    up
}

/// A pipeline name no other test (or earlier CI run on the same cluster) uses, so jobs
/// can be counted by name.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The Slurm jobs named `name` (any state Slurm still shows): (id, state).
fn jobs_named(name: &str) -> Vec<(String, String)> {
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%i|%T|%j"])
        .output()
        .expect("squeue runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().splitn(3, '|').collect();
            (f.len() == 3 && f[2] == name).then(|| (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

/// The one job named `name` once it is in `state`.
fn wait_for_job(name: &str, state: &str) -> String {
    let mut id = None;
    wait_for(&format!("job {name} to be {state}"), || {
        id = jobs_named(name)
            .into_iter()
            .find(|(_, s)| s == state)
            .map(|(i, _)| i);
        id.is_some()
    });
    id.unwrap()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn slurm(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a requeued job (Slurm holds one back for a while) once it is pending again.
/// Not within the second of the requeue: slurmd refuses to launch a job whose credential
/// is no newer (in whole seconds) than its revocation ("Job credential revoked").
fn release(name: &str) {
    let id = wait_for_job(name, "PENDING");
    std::thread::sleep(Duration::from_secs(2));
    slurm(&[
        "scontrol",
        "update",
        &format!("JobId={id}"),
        "StartTime=now",
    ]);
}

/// `runner run m.toml` on Slurm, in a test project with its own store.
const SLURM_RUN: &[&str] = &[
    "--store",
    "artifacts",
    "run",
    "m.toml",
    "--executor",
    "slurm",
];

/// [`SLURM_RUN`] in `p`, in the background, its output captured.
fn spawn_run(p: &Project) -> std::process::Child {
    p.cmd(SLURM_RUN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

const FAST_POLL: &str = "\n[executor.slurm]\npoll_seconds = 0.3\n";

/// The repo's iris-shell pipeline in `p`, named `name`, with fast polling.
fn iris(p: &Project, name: &str) {
    let repo = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(Path::new(repo).join("pipelines/iris-shell.toml"))
        .unwrap()
        .replace("name = \"iris-shell\"", &format!("name = {name:?}"))
        .replace("root = \"..\"", &format!("root = {repo:?}"));
    assert!(text.contains(name), "iris-shell.toml names its pipeline");
    p.write("m.toml", &(text + FAST_POLL));
}

fn output_hashes(p: &Project, stage: &str) -> serde_json::Value {
    let rec: serde_json::Value =
        serde_json::from_str(&p.ok(&["--store", "artifacts", "show", "m.toml", stage, "--json"]))
            .unwrap();
    rec["outputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["hash"].clone()))
        .collect()
}

#[test]
fn iris_shell_runs_as_slurm_jobs_with_the_local_results() {
    if !cluster() {
        return;
    }
    let name = unique("iris");
    let (local, remote) = (Project::new(), Project::new());
    iris(&local, &name);
    iris(&remote, &name);
    local.ok(&["--store", "artifacts", "run", "m.toml"]);
    let out = remote.ok(SLURM_RUN);
    assert!(out.contains("3 ran, 0 cached"), "{out}");
    for stage in ["split", "train", "eval"] {
        let jobs = jobs_named(&format!("{name}/{stage}"));
        assert_eq!(jobs.len(), 1, "{stage}: {jobs:?}");
        assert_eq!(jobs[0].1, "COMPLETED");
        assert_eq!(output_hashes(&local, stage), output_hashes(&remote, stage));
    }
    let again = remote.ok(SLURM_RUN);
    assert!(again.contains("0 ran, 3 cached"), "{again}");
    assert_eq!(
        jobs_named(&format!("{name}/eval")).len(),
        1,
        "cached: nothing submitted"
    );
}

#[test]
fn a_sweep_on_slurm_fans_out_and_runs_shared_stages_once() {
    if !cluster() {
        return;
    }
    let name = unique("iris-sweep");
    let p = Project::new();
    iris(&p, &name);
    let out = p.runner(&[
        "--store",
        "artifacts",
        "sweep",
        "m.toml",
        "--executor",
        "slurm",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // 2 holdouts × 3 shrinks: split depends on the holdout only.
    let count = |stage: &str| jobs_named(&format!("{name}/{stage}")).len();
    assert_eq!((count("split"), count("train"), count("eval")), (2, 6, 6));
    let csv = std::fs::read_to_string(
        std::fs::read_dir(p.path("artifacts/sweeps"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join("results.csv"),
    )
    .unwrap();
    assert_eq!(csv.lines().count(), 7, "a header and six variants:\n{csv}");
}

/// A shell stage that counts to `steps` in 0.1 s steps, keeping its count in the work
/// dir, so a stopped job resumes where it was.
fn counting(p: &Project, name: &str, steps: u32) {
    p.write(
        "count.sh",
        &format!(
            "i=$(cat state 2>/dev/null || echo 0)\necho \"start $i\" >> {log}\nwhile [ \"$i\" -lt {steps} ]; do\n  sleep 0.1\n  i=$((i+1))\n  echo $i > state.tmp && mv state.tmp state\ndone\necho done > result.txt\n",
            log = p.runs_log()
        ),
    );
    p.write(
        "m.toml",
        &format!(
            "[pipeline]\nname = {name:?}\n\n[stages.count]\nkind = \"shell\"\ncmd = \"sh ${{inputs.script}}\"\ninputs = {{ script = \"count.sh\" }}\nouts = [\"result.txt\"]\n\n[stages.after]\nkind = \"shell\"\ncmd = \"cp ${{inputs.r}} after.txt\"\ninputs.r = {{ stage = \"count\", output = \"result.txt\" }}\nouts = [\"after.txt\"]\n{FAST_POLL}"
        ),
    );
}

#[test]
fn a_job_cancelled_outside_runner_fails_its_stage_naming_the_state() {
    if !cluster() {
        return;
    }
    let name = unique("cancelled");
    let p = Project::new();
    counting(&p, &name, 600);
    let run = spawn_run(&p);
    let id = wait_for_job(&format!("{name}/count"), "RUNNING");
    let status = p.ok(&["--store", "artifacts", "status", "m.toml"]);
    assert!(
        status.contains(&format!("slurm job {id} RUNNING")),
        "{status}"
    );
    slurm(&["scancel", &id]);
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out) + &stderr(&out);
    assert!(
        text.contains(&format!("Slurm job {id} ended CANCELLED")),
        "{text}"
    );
    assert!(
        text.contains("logs/"),
        "the failure points at its log: {text}"
    );
    assert!(
        jobs_named(&format!("{name}/after")).is_empty(),
        "its dependant was not submitted"
    );
}

#[test]
fn ctrl_c_cancels_this_runners_jobs_only_and_a_rerun_resumes() {
    if !cluster() {
        return;
    }
    let name = unique("ctrl-c");
    let p = Project::new();
    counting(&p, &name, 40);
    let bystander = unique("bystander");
    slurm(&[
        "sbatch",
        "--quiet",
        &format!("--job-name={bystander}"),
        "--output=/dev/null",
        "--wrap=sleep 120",
    ]);
    let run = spawn_run(&p);
    let id = wait_for_job(&format!("{name}/count"), "RUNNING");
    wait_for("the stage to count", || {
        p.read("runs.log").contains("start 0")
    });
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling the runner this test started.
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let ours = jobs_named(&format!("{name}/count"));
    assert_eq!(ours, [(id.clone(), "CANCELLED".to_string())]);
    let theirs = jobs_named(&bystander);
    assert!(
        theirs.iter().all(|(_, s)| s == "RUNNING" || s == "PENDING"),
        "the other job goes on: {theirs:?}"
    );
    for (other, _) in theirs {
        slurm(&["scancel", &other]);
    }
    let again = p.ok(SLURM_RUN);
    assert!(again.contains("resumed"), "{again}");
    let starts = p.take_runs();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert_ne!(starts[1], "start 0", "the rerun resumed: {starts:?}");
}

#[test]
fn two_runners_on_one_store_submit_each_stage_once() {
    if !cluster() {
        return;
    }
    let name = unique("two");
    let p = Project::new();
    counting(&p, &name, 20);
    let (a, b) = (spawn_run(&p), spawn_run(&p));
    for run in [a, b] {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    }
    assert_eq!(jobs_named(&format!("{name}/count")).len(), 1);
    assert_eq!(jobs_named(&format!("{name}/after")).len(), 1);
    assert_eq!(p.take_runs(), ["start 0"], "the stage ran once");
}

#[test]
fn jobs_slurm_refuses_are_an_error_before_anything_is_submitted() {
    if !cluster() {
        return;
    }
    let name = unique("refused");
    let p = Project::new();
    counting(&p, &name, 1);
    let text = p.read("m.toml").replace(
        "outs = [\"after.txt\"]",
        "outs = [\"after.txt\"]\nresources = { mem = \"900T\" }",
    );
    p.write("m.toml", &text);
    let out = p.runner(SLURM_RUN);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("nothing was submitted"), "{err}");
    assert!(
        err.contains("stage after: Slurm refuses `sbatch --mem=900T`"),
        "{err}"
    );
    assert!(!err.contains("stage count"), "count's job is fine: {err}");
    assert!(
        err.contains("Requested node configuration is not available"),
        "{err}"
    );
    p.write(
        "m.toml",
        &format!("{}partition = \"nope\"\n", p.read("m.toml")),
    );
    let out = p.runner(SLURM_RUN);
    let err = stderr(&out);
    assert!(err.contains("invalid partition specified: nope"), "{err}");
    assert!(
        err.contains("stages after, count") || err.contains("stage count"),
        "{err}"
    );
    assert!(jobs_named(&format!("{name}/count")).is_empty());
}

/// Without Slurm's commands the executor says what is missing (no cluster needed).
#[test]
fn no_sbatch_on_path_is_a_clear_error() {
    let p = Project::new();
    counting(&p, "no-sbatch", 1);
    let out = p
        .cmd(SLURM_RUN)
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--executor slurm needs `sbatch` on PATH"),
        "{}",
        stderr(&out)
    );
    assert!(
        !p.path("artifacts/slurm").exists()
            || std::fs::read_dir(p.path("artifacts/slurm"))
                .unwrap()
                .next()
                .is_none()
    );
}

fn digits() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits")
}

/// The `state-N` the training stage last saved (0 before the first).
fn saved_state(p: &Project) -> usize {
    let Ok(work) = std::fs::read_dir(p.path("artifacts/work")) else {
        return 0;
    };
    work.filter_map(Result::ok)
        .filter_map(|d| std::fs::read_to_string(d.path().join(".checkpoints/latest")).ok())
        .filter_map(|s| s.trim().strip_prefix("state-")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// A training job requeued by Slurm (preemption: SIGTERM) and one that requeues itself at
/// its time limit's warning (SIGUSR1) resume from their last state; the trained model
/// and metrics are byte-identical to an uninterrupted run's.
#[test]
fn requeued_training_jobs_resume_to_identical_outputs() {
    if !cluster() {
        return;
    }
    let name = unique("requeue");
    let manifest = format!(
        "[pipeline]\nname = {name:?}\ndefaults = {{ crop_padding = 0.0, min_crop_area = 0.5, flip = false }}\n\n[stages.pretrain]\nkind = \"pretrain\"\nmodel = \"efficientnet-tiny\"\nepochs = 4\nbatch_size = 32\nlr = 3e-3\ninputs.data = {:?}\n{FAST_POLL}",
        digits().display().to_string()
    );
    let straight = Project::new();
    straight.write("m.toml", &manifest);
    straight.ok(&["--store", "artifacts", "run", "m.toml"]);
    let p = Project::new();
    p.write("m.toml", &manifest);
    let run = spawn_run(&p);
    let job = format!("{name}/pretrain");
    let id = wait_for_job(&job, "RUNNING");
    wait_for("a first saved state", || saved_state(&p) >= 1);
    slurm(&["scontrol", "requeue", &id]);
    release(&job);
    wait_for_job(&job, "RUNNING");
    wait_for("a second saved state", || saved_state(&p) >= 2);
    slurm(&["scancel", "--batch", "--signal=USR1", &id]);
    release(&job);
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("resumed"), "{}", stdout(&out));
    let log = std::fs::read_to_string(
        std::fs::read_dir(p.path("artifacts/logs"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    assert!(
        log.contains(&format!("Slurm job {id} requeued itself")),
        "{log}"
    );
    assert_eq!(jobs_named(&job).len(), 1, "one job, requeued twice");
    // Every output but the TensorBoard events, which carry wall times.
    let (resumed, uninterrupted) = (
        output_hashes(&p, "pretrain"),
        output_hashes(&straight, "pretrain"),
    );
    for output in ["model", "metrics.jsonl"] {
        assert!(resumed[output].is_string(), "{resumed}");
        assert_eq!(resumed[output], uninterrupted[output], "{output}");
    }
}

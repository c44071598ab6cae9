//! Malformed manifests: each gives a located error (file:line:col), names the offending key
//! and never panics. Loaded through the library (fast) and a few through the binary.

mod common;
use adjq::manifest::{self, Override};
use std::path::Path;

const HEAD: &str = "[pipeline]\nname = \"p\"\n";

/// (case, manifest text, expected line, expected message fragment, expected hint fragment)
const CASES: &[(&str, &str, usize, &str, &str)] = &[
    (
        "toml syntax",
        "[pipeline]\nname = \"p\"\n[stages.a\nkind = \"shell\"\n",
        3,
        "unclosed table, expected `]`",
        "",
    ),
    ("unterminated string", "[pipeline]\nname = \"p\n", 2, "", ""),
    (
        "duplicate stage",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n[stages.a]\nkind = \"shell\"\n",
        6,
        "duplicate key",
        "only once",
    ),
    (
        "duplicate key",
        "[pipeline]\nname = \"p\"\nname = \"q\"\n",
        3,
        "duplicate key",
        "",
    ),
    (
        "missing pipeline",
        "[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n",
        1,
        "missing [pipeline]",
        "name =",
    ),
    (
        "pipeline without name",
        "[pipeline]\nstore = \"s\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n",
        1,
        "has no `name`",
        "",
    ),
    (
        "bad pipeline name",
        "[pipeline]\nname = \"a b\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n",
        1,
        "pipeline name `a b` is not valid",
        "letters",
    ),
    (
        "unknown top-level table",
        "[pipeline]\nname = \"p\"\n[stage.a]\nkind = \"shell\"\n",
        3,
        "unknown top-level key `stage`",
        "did you mean `stages`?",
    ),
    (
        "unknown pipeline key",
        "[pipeline]\nname = \"p\"\nstroe = \"x\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n",
        3,
        "unknown key `stroe` in [pipeline]",
        "did you mean `store`?",
    ),
    (
        "no stages",
        "[pipeline]\nname = \"p\"\n",
        1,
        "declares no stages",
        "",
    ),
    (
        "stage without kind",
        "[pipeline]\nname = \"p\"\n[stages.a]\ncmd = \"x\"\n",
        3,
        "stage `a` has no `kind`",
        "shell",
    ),
    (
        "unknown kind",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shel\"\ncmd = \"x\"\n",
        4,
        "unknown stage kind `shel`",
        "did you mean `shell`?",
    ),
    (
        "kind not a string",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = 3\n",
        4,
        "`stages.a.kind` must be a string, found an integer",
        "",
    ),
    (
        "unknown param",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\nouts_ = []\n",
        6,
        "unknown param `outs_` for stage `a`",
        "did you mean `outs`?",
    ),
    (
        "wrong type",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = 42\n",
        5,
        "param `cmd`: expected string, found integer `42`",
        "",
    ),
    (
        "wrong element type",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\nouts = [\"a\", 2]\n",
        6,
        "element 1: expected string",
        "",
    ),
    (
        "missing required param",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\n",
        3,
        "missing required param `cmd`",
        "sh -c",
    ),
    (
        "undefined params reference",
        "[pipeline]\nname = \"p\"\n[params]\nlr = 0.1\n[stages.a]\nkind = \"shell\"\ncmd = \"run ${params.lrr}\"\n",
        7,
        "undefined reference `${params.lrr}`",
        "did you mean `params.lr`?",
    ),
    (
        "unterminated reference",
        "[pipeline]\nname = \"p\"\n[params]\nx = 1\n[stages.a]\nkind = \"shell\"\ncmd = \"run ${params.x\"\n",
        7,
        "unterminated `${params.` reference",
        "",
    ),
    (
        "reference to unknown stage",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\ninputs.i = { stage = \"b\", output = \"o\" }\n",
        6,
        "refers to undefined stage `b`",
        "",
    ),
    (
        "reference to unknown output",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\nouts = [\"model.bin\"]\n[stages.b]\nkind = \"shell\"\ncmd = \"y\"\ninputs.m = { stage = \"a\", output = \"model.bn\" }\n",
        10,
        "stage `a` has no output `model.bn`",
        "did you mean `model.bin`?",
    ),
    (
        "self reference",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\nouts = [\"o\"]\ninputs.i = { stage = \"a\", output = \"o\" }\n",
        7,
        "refers to the stage itself",
        "",
    ),
    (
        "cycle",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\nouts = [\"o\"]\ninputs.i = { stage = \"b\", output = \"o\" }\n[stages.b]\nkind = \"shell\"\ncmd = \"y\"\nouts = [\"o\"]\ninputs.i = { stage = \"a\", output = \"o\" }\n",
        3,
        "dependency cycle between stages: a -> b -> a",
        "break the cycle",
    ),
    (
        "input of wrong shape",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\ninputs.i = { stage = \"b\" }\n",
        6,
        "input `i` has keys {stage}",
        "{ stage = \"NAME\", output = \"OUT\" }",
    ),
    (
        "input of wrong type",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\ninputs.i = 5\n",
        6,
        "input `i` must be a path or a table, found an integer",
        "",
    ),
    (
        "inputs not a table",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\ninputs = \"data\"\n",
        6,
        "`stages.a.inputs` must be a table",
        "",
    ),
    (
        "stage not a table",
        "[pipeline]\nname = \"p\"\n[stages]\na = 1\n",
        4,
        "`stages.a` must be a table",
        "",
    ),
    (
        "bad stage name",
        "[pipeline]\nname = \"p\"\n[stages.\"a.b\"]\nkind = \"shell\"\ncmd = \"x\"\n",
        3,
        "stage name `a.b` is not valid",
        "no dots",
    ),
    (
        "unknown resource",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\nresources = { gpux = 1 }\n",
        3,
        "uses unknown resource `gpux`",
        "did you mean `gpu`?",
    ),
    (
        "too many slots",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\nresources = { gpu = 2 }\n",
        3,
        "needs 2 `gpu` slots but the pipeline allows 1",
        "",
    ),
    (
        "resource not an integer",
        "[pipeline]\nname = \"p\"\nresources = { gpu = \"one\" }\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n",
        3,
        "must be an integer slot count",
        "",
    ),
    (
        "unknown default",
        "[pipeline]\nname = \"p\"\ndefaults = { sead = 1 }\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n",
        3,
        "default `sead` is not a param of any stage kind",
        "",
    ),
    (
        "non-finite float",
        "[pipeline]\nname = \"p\"\n[params]\nx = nan\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n",
        4,
        "is not finite",
        "",
    ),
    (
        "date-time param",
        "[pipeline]\nname = \"p\"\n[params]\nwhen = 1979-05-27\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n",
        4,
        "date-time",
        "quote it",
    ),
    (
        "sweep of unknown param",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n[sweep]\ngrid = { \"a.lr\" = [1, 2] }\n",
        7,
        "stage `a` (kind `shell`) has no param `lr`",
        "params: cmd",
    ),
    (
        "sweep of wrong type",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n[sweep]\ngrid = { \"a.outs\" = [1] }\n",
        7,
        "expected array of string",
        "",
    ),
    (
        "sweep metric of unknown stage",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n[sweep]\nmetrics = [\"b.top1\"]\n",
        7,
        "sweep.metrics: no stage `b`",
        "",
    ),
    (
        "unknown sweep key",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n[sweep]\ngird = {}\n",
        7,
        "unknown key `gird` in [sweep]",
        "did you mean `grid`?",
    ),
    (
        "unknown template",
        "[pipeline]\nname = \"p\"\n[templates.swa]\nkind = \"shell\"\ncmd = \"x\"\n[stages.a]\nextends = \"swb\"\n",
        7,
        "stage `a` extends unknown template `swb`",
        "did you mean `swa`?",
    ),
    (
        "template that extends",
        "[pipeline]\nname = \"p\"\n[templates.t]\nextends = \"u\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n",
        4,
        "template `t` cannot extend another template",
        "one template",
    ),
    (
        "negative count",
        "[pipeline]\nname = \"p\"\n[stages.e]\nkind = \"eval\"\nval_samples = -1\ninputs.model = \"m\"\ninputs.data = \"d\"\n",
        5,
        "expected an integer ≥ 0, found `-1`",
        "",
    ),
    (
        "unknown executor",
        "[pipeline]\nname = \"p\"\n[executor.slurmm]\npartition = \"gpu\"\n",
        3,
        "unknown executor `slurmm`",
        "did you mean `slurm`?",
    ),
    (
        "unknown slurm key",
        "[pipeline]\nname = \"p\"\n[executor.slurm]\npartion = \"gpu\"\n",
        4,
        "unknown key `partion` in [executor.slurm]",
        "did you mean `partition`?",
    ),
    (
        "bad slurm time",
        "[pipeline]\nname = \"p\"\n[executor.slurm]\ntime = \"12h\"\n",
        4,
        "`executor.slurm.time` = \"12h\" is not a Slurm time limit",
        "HH:MM:SS",
    ),
    (
        "bad stage memory",
        "[pipeline]\nname = \"p\"\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\nresources = { mem = \"32GB\" }\n",
        6,
        "`stages.a.resources.mem` = \"32GB\" is not a memory size",
        "\"32G\"",
    ),
    (
        "cluster request as a pipeline limit",
        "[pipeline]\nname = \"p\"\nresources = { cpus = 8 }\n",
        3,
        "`pipeline.resources.cpus` is a cluster request, not a slot limit",
        "[executor.slurm]",
    ),
];

#[test]
fn every_malformed_manifest_gives_a_located_message() {
    assert!(CASES.len() >= 20);
    for (name, text, line, msg, hint) in CASES {
        let err = match manifest::parse(Path::new("bad.toml"), text, &[], adjq::stages::kinds()) {
            Ok(_) => panic!("case `{name}` loaded without error"),
            Err(e) => e,
        };
        let rendered = err.to_string();
        let d = &err.0[0];
        assert_eq!(
            d.origin,
            adjq::manifest::diag::Origin::File {
                line: *line,
                col: match d.origin {
                    adjq::manifest::diag::Origin::File { col, .. } => col,
                    _ => 0,
                }
            },
            "case `{name}`: wrong location\n{rendered}"
        );
        assert!(
            rendered.starts_with(&format!("bad.toml:{line}:")),
            "case `{name}`:\n{rendered}"
        );
        assert!(
            rendered.contains(msg),
            "case `{name}`: expected `{msg}` in\n{rendered}"
        );
        assert!(
            rendered.contains(hint),
            "case `{name}`: expected hint `{hint}` in\n{rendered}"
        );
    }
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = format!(
        "{HEAD}[stages.a]\nkind = \"shell\"\ncmd = 1\nfoo = 2\n[stages.b]\nkind = \"nope\"\n"
    );
    let err = manifest::parse(Path::new("m.toml"), &text, &[], adjq::stages::kinds())
        .err()
        .unwrap();
    assert_eq!(err.0.len(), 3, "{err}");
}

#[test]
fn bad_overrides_name_the_flag() {
    let text = format!("{HEAD}[params]\nn = 1\n[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n");
    let cases = [
        ("b.cmd=y", "no stage `b`"),
        ("a.cmdd=y", "unknown param `cmdd`"),
        ("a.outs=3", "expected array of string, found integer `3`"),
        ("params.n=abc", "expected integer, found string"),
        ("params.m=1", "no shared param `m`"),
        ("a.kind=shell", "`kind` cannot be overridden"),
    ];
    for (flag, msg) in cases {
        let o = Override::parse(flag).unwrap();
        let err = manifest::parse(Path::new("m.toml"), &text, &[o], adjq::stages::kinds())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("error in `--set {flag}`")),
            "{flag}: {err}"
        );
        assert!(err.contains(msg), "{flag}: expected `{msg}` in {err}");
    }
    assert!(Override::parse("nodot=1").is_err());
    assert!(Override::parse("a.b").is_err());
}

#[test]
fn typed_overrides_and_defaults_apply() {
    let text = format!(
        "{HEAD}[params]\nlr = 0.5\n[stages.a]\nkind = \"shell\"\ncmd = \"${{params.lr}}\"\n"
    );
    let o = Override::parse("params.lr=2").unwrap();
    let m = manifest::parse(Path::new("m.toml"), &text, &[o], adjq::stages::kinds()).unwrap();
    // An integer given for a float param widens, so the string form is the float's.
    assert_eq!(m.params["lr"], adjq::manifest::value::Value::Float(2.0));
    use adjq::manifest::value::Value;
    assert_eq!(
        m.stages[0].params.get("cmd"),
        Some(&Value::Str("2.0".into()))
    );
    assert_eq!(m.stages[0].params.get("outs"), Some(&Value::List(vec![])));
}

#[test]
fn the_binary_exits_2_with_the_message() {
    let p = common::Project::new();
    p.write(
        "m.toml",
        &format!("{HEAD}[stages.a]\nkind = \"shell\"\ncmd = \"x\"\nouts_ = []\n"),
    );
    let out = p.runner(&["run", "m.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    assert!(
        err.contains("m.toml:6:1: error: unknown param `outs_`"),
        "{err}"
    );
    assert!(err.contains("6 | outs_ = []"), "{err}");
    // "error:" once: the diagnostic carries it.
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    let out = p.runner(&["run", "missing.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    assert!(
        err.contains("missing.toml: error: cannot read manifest"),
        "{err}"
    );
    assert_eq!(err.matches("error:").count(), 1, "{err}");
}

#[test]
fn invalid_utf8_is_located_at_its_first_bad_byte() {
    let p = common::Project::new();
    let mut bytes = format!(
        "{HEAD}[stages.a]
kind = \"shell\"\ncmd = \"é"
    )
    .into_bytes();
    bytes.extend([0xff, 0xfe]);
    bytes.extend(b"\"\n");
    std::fs::write(p.path("m.toml"), &bytes).unwrap();
    let out = p.runner(&["run", "m.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    // Line 5; "é" is one column, so the bad byte is column 9.
    assert!(
        err.contains("m.toml:5:9: error: invalid UTF-8 (byte 0xff)"),
        "{err}"
    );
    assert!(err.contains("5 | cmd = \"é\u{fffd}"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
}

/// A stage that `extends` a template takes its keys; the stage's own keys win and its
/// inputs merge with the template's; errors in the template name the stage too.
#[test]
fn templates_give_stages_their_keys_and_errors_name_both_places() {
    use adjq::manifest::value::Value;
    let text = format!(
        "{HEAD}[templates.t]\nkind = \"shell\"\ncmd = \"base\"\nenv = {{ A = \"1\" }}\ninputs.x = \"x\"\n\
         [stages.a]\nextends = \"t\"\ncmd = \"own\"\ninputs.y = \"y\"\n[stages.b]\nextends = \"t\"\n"
    );
    let m = manifest::parse(Path::new("m.toml"), &text, &[], adjq::stages::kinds()).unwrap();
    let (a, b) = (m.stage("a").unwrap(), m.stage("b").unwrap());
    assert_eq!(a.kind.name(), "shell");
    assert_eq!(a.params.get("cmd"), Some(&Value::Str("own".into())));
    assert_eq!(b.params.get("cmd"), Some(&Value::Str("base".into())));
    assert_eq!(a.params.get("env"), b.params.get("env"));
    let names = |s: &adjq::manifest::Stage| s.inputs.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(a), ["x", "y"]);
    assert_eq!(names(b), ["x"]);

    // A bad key in the template: located there, with the stage that extends it.
    let text = format!(
        "{HEAD}[templates.t]\nkind = \"shell\"\ncmdd = \"x\"\n[stages.a]\nextends = \"t\"\ncmd = \"y\"\n"
    );
    let Err(err) = manifest::parse(Path::new("m.toml"), &text, &[], adjq::stages::kinds()) else {
        panic!("a bad template key loaded");
    };
    let err = err.to_string();
    assert!(
        err.starts_with("m.toml:5:1: error: unknown param `cmdd`"),
        "{err}"
    );
    assert!(
        err.contains("note: in template `t`, which stage `a` (line 6) extends"),
        "{err}"
    );
}

#[test]
fn executor_settings_and_cluster_requests_are_read_and_keep_cache_keys() {
    let slurm = "[executor.slurm]\npartition = \"gpu\"\naccount = \"lab\"\ntime = \"1-00:00:00\"\nextra_args = [\"--constraint=a100\"]\npoll_seconds = 2\n";
    let stage = "[stages.a]\nkind = \"shell\"\ncmd = \"x\"\n";
    let with = format!(
        "{HEAD}{slurm}{stage}resources = {{ gpu = 1, cpus = 8, mem = \"32G\", time = \"12:00:00\" }}\n"
    );
    let m = manifest::parse(Path::new("m.toml"), &with, &[], adjq::stages::kinds()).unwrap();
    assert_eq!(m.slurm.partition.as_deref(), Some("gpu"));
    assert_eq!(m.slurm.account.as_deref(), Some("lab"));
    assert_eq!(m.slurm.time.as_deref(), Some("1-00:00:00"));
    assert_eq!(m.slurm.extra_args, ["--constraint=a100"]);
    assert_eq!(m.slurm.poll_seconds, 2.0);
    let a = m.stage("a").unwrap();
    assert_eq!(a.cluster.cpus, Some(8));
    assert_eq!(a.cluster.mem.as_deref(), Some("32G"));
    assert_eq!(a.cluster.time.as_deref(), Some("12:00:00"));
    assert_eq!(a.resources.get("gpu"), Some(&1));
    assert!(!a.resources.contains_key("cpus"), "a request, not a slot");
    // Where a stage runs is not what it computes: the params (and so the key) are the same.
    let without = format!("{HEAD}{stage}");
    let plain = manifest::parse(Path::new("m.toml"), &without, &[], adjq::stages::kinds()).unwrap();
    assert_eq!(plain.stage("a").unwrap().params, a.params);
}

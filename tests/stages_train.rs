//! The training stage kinds run under `runner` on the bundled digits data with the tiny
//! EfficientNet: thresholds → adjq → select → SWA → eval → report, cached on a second
//! run; adjq killed mid-stage resumes and ends with the same weights as an uninterrupted
//! run (flex CPU backend, deterministic for a fixed seed).

mod common;

use adjq::artifacts::model_dir::{self as dir, ModelInfo};
use adjq::ckpt;
use adjq::model::{EfficientNet, EfficientNetConfig};
use burn::prelude::*;
use common::Project;
use std::path::Path;

/// A random tiny float model as a model directory (BN statistics from one batch).
fn write_float_model(path: &Path) {
    let d = Device::flex().autodiff();
    d.seed(5);
    let mut cfg = EfficientNetConfig::preset("efficientnet-tiny").unwrap();
    cfg.bn_momentum = 0.0;
    let m = EfficientNet::new(&cfg, &d);
    let _ = m.forward(Tensor::random(
        [16, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &d,
    ));
    cfg.bn_momentum = 0.99;
    let m = m.valid();
    let info = ModelInfo::float(&cfg, serde_json::json!({"test": "random"}));
    dir::write(path, &adjq::model::import::export(&m), &info).unwrap();
}

/// `runner ARGS` (on `m.toml` = `manifest`) run uninterrupted in one project, and in
/// another killed at a random point after up to `max_states` saved states, `after_kill`
/// done to it, and run again, which must resume. With `float`, both start from the same
/// random float model. Returns (uninterrupted, resumed, where the kill landed).
fn uninterrupted_and_resumed(
    manifest: &str,
    args: &[&str],
    float: bool,
    max_states: usize,
    after_kill: impl FnOnce(&Project),
) -> (Project, Project, KillPoint) {
    let straight = Project::new();
    if float {
        write_float_model(&straight.path("float"));
    }
    straight.write("m.toml", manifest);
    straight.ok(args);
    let p = Project::new();
    if float {
        copy_float_model(&straight, &p);
    }
    p.write("m.toml", manifest);
    let point = KillPoint::random(max_states);
    kill_at(&p, args, point);
    after_kill(&p);
    let out = p.ok(args);
    assert!(out.contains("resumed"), "{out}");
    (straight, p, point)
}

/// `from`'s float model into `to` (the device RNG is shared with tests running beside
/// this one, so a second random model would differ).
fn copy_float_model(from: &Project, to: &Project) {
    std::fs::create_dir_all(to.path("float")).unwrap();
    for f in ["model.safetensors", "model.json"] {
        std::fs::copy(from.path("float").join(f), to.path("float").join(f)).unwrap();
    }
}

fn manifest(digits: &Path, max_epoch: usize) -> String {
    format!(
        r#"[pipeline]
name = "t"

[params]
data = {data:?}

[stages.thresholds]
kind = "thresholds"
samples = 200
inputs.model = "float"
inputs.data = "${{params.data}}"

[stages.adjq]
kind = "adjq"
max_epoch = {max_epoch}
batch_size = 50
lr = 1e-3
lr_bits = 2e-2
alpha = 1.0
beta = 5.0
target = 0.0
params_baseline = 2e4
ops_baseline = 2e6
val_samples = 50
swa_delay = 0.5
swa_freq = 0.2
inputs.init = "float"
inputs.teacher = "float"
inputs.thresholds = {{ stage = "thresholds", output = "thresholds.json" }}
inputs.data = "${{params.data}}"

[stages.select]
kind = "select"
rule = "lowest_metric"
min_top1 = 0.0
inputs.checkpoints = {{ stage = "adjq", output = "checkpoints" }}
inputs.metrics = {{ stage = "adjq", output = "metrics.jsonl" }}

[stages.swa]
kind = "adjq"
finetune = true
max_epoch = 1
batch_size = 50
lr = 1e-4
alpha = 25.0
beta = 0.0
params_baseline = 2e4
ops_baseline = 2e6
val_samples = 50
swa_delay = 0.2
swa_freq = 0.1
inputs.init = {{ stage = "select", output = "model" }}
inputs.teacher = "float"
inputs.data = "${{params.data}}"

[stages.eval]
kind = "eval"
val_samples = 100
params_baseline = 2e4
ops_baseline = 2e6
inputs.model = {{ stage = "swa", output = "model" }}
inputs.data = "${{params.data}}"

[stages.eval_float]
kind = "eval"
val_samples = 100
params_baseline = 2e4
ops_baseline = 2e6
inputs.model = "float"
inputs.data = "${{params.data}}"

[stages.eval_ptq]
kind = "eval"
val_samples = 100
weight_bits = 6.0
act_bits = 7.0
params_baseline = 2e4
ops_baseline = 2e6
inputs.model = "float"
inputs.thresholds = {{ stage = "thresholds", output = "thresholds.json" }}
inputs.data = "${{params.data}}"

[stages.report]
kind = "report"
description = "the test report"
curves = ["adjq", "swa"]
inputs.float = {{ stage = "eval_float", output = "eval.json" }}
inputs.final = {{ stage = "eval", output = "eval.json" }}
inputs.ptq = {{ stage = "eval_ptq", output = "eval.json" }}
inputs.final_bits = {{ stage = "eval", output = "quant_info.json" }}
inputs.swa = {{ stage = "swa", output = "metrics.jsonl" }}
inputs.adjq = {{ stage = "adjq", output = "metrics.jsonl" }}
inputs.select = {{ stage = "select", output = "selection.json" }}
"#,
        data = digits.display().to_string()
    )
}

/// The most resident memory a stage process of these tiny pipelines may use (measured:
/// 89 MB for adjq, the largest).
const PEAK_RSS_BOUND: u64 = 256 << 20;

fn digits() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits")
}

fn output(p: &Project, stage: &str, name: &str) -> std::path::PathBuf {
    let rec: serde_json::Value =
        serde_json::from_str(&p.ok(&["show", "m.toml", stage, "--json"])).unwrap();
    let h = rec["outputs"][name]["hash"].as_str().unwrap().to_string();
    p.path(&format!("artifacts/objects/{}/{h}", &h[..2]))
}

#[test]
fn thresholds_adjq_eval_run_cache_and_report() {
    let p = Project::new();
    write_float_model(&p.path("float"));
    p.write("m.toml", &manifest(&digits(), 1));
    let first = p.ok(&["run", "m.toml"]);
    let again = p.ok(&["run", "m.toml"]);
    assert!(again.contains("0 ran, 8 cached"), "{again}");
    runs_and_diff_of_the_tiny_pipeline(&p);
    // The run ends with the report's summary and where the page is.
    for out in [&first, &again] {
        assert!(out.contains("report — the test report"), "{out}");
        assert!(
            out.contains("top-1: float ") && out.contains(" → final "),
            "{out}"
        );
        assert!(out.contains("report.html"), "{out}");
    }

    let metrics = std::fs::read_to_string(output(&p, "adjq", "metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10, "one line per mini-epoch");
    // beta pushes the metric down while bits train (every other mini-epoch).
    let first = lines[0]["metric"].as_f64().unwrap();
    let last = lines[9]["metric"].as_f64().unwrap();
    assert!(last < first, "metric {first} → {last}");
    assert_eq!(lines[0]["trained_bits"], true);
    assert_eq!(lines[1]["trained_bits"], false);
    let ckpts = std::fs::read_dir(output(&p, "adjq", "checkpoints"))
        .unwrap()
        .count();
    assert_eq!(ckpts, 10, "a checkpoint per mini-epoch");
    // The curves, read with a decoder of this test's own: one event per mini-epoch, in
    // step order, stamped when each happened; an HParams session of the stage's params
    // and its final metrics. They are where `runner tensorboard` says, by stage name.
    let logdir = p.ok(&["tensorboard", "m.toml"]);
    let named = Path::new(logdir.trim()).join("adjq");
    assert_eq!(
        std::fs::canonicalize(&named).unwrap(),
        std::fs::canonicalize(output(&p, "adjq", "tensorboard")).unwrap()
    );
    let events = tb_events(&named.join("events.out.tfevents.0.adjq"));
    let scalars: Vec<&TbEvent> = events
        .iter()
        .filter(|e| e.tags.contains(&"accuracy/top1".to_string()))
        .collect();
    assert_eq!(
        scalars.iter().map(|e| e.step).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(
        scalars.windows(2).all(|w| w[1].wall_time > w[0].wall_time),
        "wall times increase: {:?}",
        scalars.iter().map(|e| e.wall_time).collect::<Vec<_>>()
    );
    assert!(
        events
            .iter()
            .any(|e| e.tags == ["_hparams_/session_start_info"])
    );
    assert!(
        events
            .iter()
            .any(|e| e.step == 10 && e.tags.contains(&"final/top1".to_string()))
    );
    assert!(events.last().unwrap().tags == ["_hparams_/session_end_info"]);

    // Every stage process's peak memory is in its record and `runner show`, and stays
    // under the bound README states for the tiny model (the demo's is there too).
    for stage in ["thresholds", "adjq", "select", "swa", "eval", "report"] {
        let rec: serde_json::Value =
            serde_json::from_str(&p.ok(&["show", "m.toml", stage, "--json"])).unwrap();
        let peak = rec["peak_rss_bytes"].as_u64().expect("peak_rss_bytes");
        eprintln!("{stage}: peak RSS {} MB", peak >> 20);
        assert!(
            (1 << 20..PEAK_RSS_BOUND).contains(&peak),
            "{stage}: peak RSS {peak} bytes"
        );
    }
    assert!(p.ok(&["show", "m.toml", "adjq"]).contains("peak memory"));

    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output(&p, "eval", "eval.json")).unwrap())
            .unwrap();
    assert_eq!(eval["quantized"], true);
    assert!(eval["top1"].as_f64().unwrap() >= 0.0);
    assert!(eval["official"]["score"].as_f64().unwrap() > 0.0);
    assert!(eval["paper_metric"]["metric"].as_f64().unwrap() > 0.0);
    let table = std::fs::read_to_string(output(&p, "eval", "score.txt")).unwrap();
    assert!(table.contains("official MicroNet score") && table.contains("paper metric"));
    // select: the lowest metric (ties: the later checkpoint), and why.
    let why: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(output(&p, "select", "selection.json")).unwrap(),
    )
    .unwrap();
    let lowest = lines
        .iter()
        .map(|l| l["metric"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(why["metric"].as_f64().unwrap(), lowest);
    // The SWA finetune keeps the selected bits and averages its snapshots.
    let bits = |stage: &str| -> serde_json::Value {
        let qi: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(output(&p, stage, "model").join("quant_info.json")).unwrap(),
        )
        .unwrap();
        qi["layers"].clone()
    };
    assert_eq!(bits("select"), bits("swa"), "finetune keeps the bits");
    let rec: serde_json::Value =
        serde_json::from_str(&p.ok(&["show", "m.toml", "swa", "--json"])).unwrap();
    assert_eq!(
        rec["metrics"]["swa_snapshots"].as_u64(),
        Some(8),
        "mini-epochs 2..9"
    );
    // Post-training quantization of the float model at the given bits.
    let ptq: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(output(&p, "eval_ptq", "eval.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ptq["quantized"], true);
    assert!((ptq["avg_weight_bits"].as_f64().unwrap() - 6.0).abs() < 1e-9);
    let float: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(output(&p, "eval_float", "eval.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(float["quantized"], false);
    let score = |v: &serde_json::Value| v["official"]["score"].as_f64().unwrap();
    assert!(score(&ptq) < score(&float));

    // The report: every chart as PNG and SVG, the page in Markdown and standalone HTML.
    let report = output(&p, "report", "report");
    for chart in [
        "final_bits_weight_bits",
        "final_bits_activation_bits",
        "final_bits_bit_histogram",
        "training_curves",
    ] {
        let png = std::fs::read(report.join(format!("{chart}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{chart}");
        let svg = std::fs::read_to_string(report.join(format!("{chart}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{chart}");
    }
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("![training curves](training_curves.png)"),
        "{md}"
    );
    assert!(md.contains("| top-1 |"), "{md}");
    // Columns float first, and the layer table names every layer.
    assert!(md.contains("|  | float | final | ptq |"), "{md}");
    assert!(md.contains("| blocks.0.depthwise |"), "{md}");
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 4);
    assert!(!html.contains("src=\"training_curves.png\""));
    let summary = std::fs::read_to_string(report.join("summary.txt")).unwrap();
    let final_top1 = format!("{:.2}%", 100.0 * eval["top1"].as_f64().unwrap());
    assert!(summary.contains(&final_top1), "{summary}");

    // The thresholds really are ranges of the model's points.
    let t = adjq::quant::Thresholds::load(&output(&p, "thresholds", "thresholds.json")).unwrap();
    for key in [
        "Conv/output",
        "expanded_conv_0/project/output",
        "Conv_1/output",
    ] {
        assert!(t.points.contains_key(key), "{key}");
    }

    // The selected checkpoint carries both Adam states and the SWA stage continues them;
    // the first adjq stage (from a float model) starts fresh.
    for f in adjq::train::adjq::OPTIMIZER_FILES {
        assert!(output(&p, "select", "model").join(f).is_file(), "{f}");
    }
    let state = |stage: &str| -> serde_json::Value {
        let rec: serde_json::Value =
            serde_json::from_str(&p.ok(&["show", "m.toml", stage, "--json"])).unwrap();
        rec["metrics"]["optimizer_state"].clone()
    };
    assert_eq!(state("swa"), "continued");
    assert_eq!(state("adjq"), "fresh");
}

/// Two more runs with `--set` (on cheap stages), then `runs` and `diff` on all four.
fn runs_and_diff_of_the_tiny_pipeline(p: &Project) {
    p.ok(&["run", "m.toml", "--set", "eval_ptq.weight_bits=5.0"]);
    p.ok(&[
        "run",
        "m.toml",
        "--set",
        "eval_ptq.weight_bits=4.0",
        "--set",
        "eval.val_samples=60",
    ]);
    let table = p.ok(&["runs", "m.toml"]);
    let header = table.lines().nth(1).unwrap();
    for col in [
        "eval.val_samples",
        "eval_ptq.weight_bits",
        "report.top1",
        "report.avg_weight_bits",
        "report.paper_metric",
        "report.official_score",
    ] {
        assert!(header.contains(col), "{col}: {table}");
    }
    let rows: serde_json::Value =
        serde_json::from_str(&p.ok(&["runs", "m.toml", "--format", "json"])).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let ids: Vec<&str> = rows.iter().map(|r| r["run"].as_str().unwrap()).collect();
    assert_eq!(ids, ["4", "3", "2", "1"]);
    let bits: Vec<f64> = rows
        .iter()
        .map(|r| r["eval_ptq.weight_bits"].as_f64().unwrap())
        .collect();
    assert_eq!(bits, [4.0, 5.0, 6.0, 6.0]);
    assert_eq!(
        (rows[2]["state"].clone(), rows[2]["ran"].clone()),
        ("ok".into(), 0.into())
    );
    assert_eq!(rows[0]["ran"], 3, "eval, eval_ptq and report");
    // The report's numbers are those of the final eval: a different val_samples moves them.
    for r in rows {
        assert!(r["report.top1"].as_f64().is_some(), "{r}");
    }

    let text = p.ok(&["diff", "1", "4"]);
    assert!(
        text.contains("eval_ptq.weight_bits: 6.0 → 4.0   (manifest line "),
        "{text}"
    );
    assert!(text.contains("→ --set eval_ptq.weight_bits=4.0)"), "{text}");
    assert!(text.contains("eval.val_samples: 100 → 60"), "{text}");
    assert!(
        text.contains("eval_ptq.avg_weight_bits: 6.0000 → 4.0000 (-2.0000)"),
        "{text}"
    );
    assert!(
        text.contains("report.final: "),
        "the report read a new eval.json: {text}"
    );
    assert!(
        text.contains("stages: 5 with the same key, 3 different (eval, eval_ptq, report)"),
        "{text}"
    );
    let d: serde_json::Value = serde_json::from_str(&p.ok(&["diff", "3", "4", "--json"])).unwrap();
    let params: Vec<String> = d["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}.{}",
                c["stage"].as_str().unwrap(),
                c["param"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(params, ["eval.val_samples", "eval_ptq.weight_bits"]);
    assert!(
        d["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["stage"] == "eval_ptq"
                && m["metric"] == "avg_weight_bits"
                && m["delta"] == -1.0)
    );
}

/// One TensorBoard event as an independent reader sees it.
#[derive(Debug)]
struct TbEvent {
    wall_time: f64,
    step: i64,
    tags: Vec<String>,
}

/// Reads a TFRecord file of `tensorflow.Event`s: wall_time (1), step (2) and the tags of
/// summary (5) values (1 → tag 1). Written apart from src/ on purpose.
fn tb_events(path: &Path) -> Vec<TbEvent> {
    fn varint(b: &[u8], i: &mut usize) -> u64 {
        let mut v = 0;
        let mut shift = 0;
        loop {
            let x = b[*i];
            *i += 1;
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    /// (field, wire type, payload) of each field of a message.
    fn fields(b: &[u8]) -> Vec<(u64, u64, &[u8])> {
        let (mut i, mut out) = (0, Vec::new());
        while i < b.len() {
            let k = varint(b, &mut i);
            let start = i;
            let len = match k & 7 {
                0 => {
                    varint(b, &mut i);
                    i - start
                }
                1 => 8,
                2 => varint(b, &mut i) as usize,
                5 => 4,
                w => panic!("wire type {w}"),
            };
            let from = if k & 7 == 2 { i } else { start };
            out.push((k >> 3, k & 7, &b[from..from + len]));
            i = from + len;
        }
        out
    }
    let bytes = std::fs::read(path).unwrap();
    let (mut at, mut events) = (0, Vec::new());
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let data = &bytes[at + 12..at + 12 + len];
        at += 12 + len + 4;
        let mut e = TbEvent {
            wall_time: 0.0,
            step: 0,
            tags: Vec::new(),
        };
        for (f, _, v) in fields(data) {
            match f {
                1 => e.wall_time = f64::from_le_bytes(v.try_into().unwrap()),
                2 => e.step = varint(v, &mut 0) as i64,
                5 => {
                    for (_, _, value) in fields(v) {
                        for (vf, _, tag) in fields(value) {
                            if vf == 1 {
                                e.tags.push(String::from_utf8(tag.to_vec()).unwrap());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        events.push(e);
    }
    events
}

fn find_latest(dir: &Path) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.ends_with(".checkpoints/latest") {
            return Some(p);
        }
        if p.is_dir()
            && let Some(f) = find_latest(&p)
        {
            return Some(f);
        }
    }
    None
}

#[test]
fn adjq_killed_mid_stage_resumes_to_the_same_weights() {
    // 10 mini-epochs, each saved; SWA records from mini-epoch 5 on.
    let (straight, p, point) = uninterrupted_and_resumed(
        &manifest(&digits(), 1),
        &["run", "m.toml", "adjq"],
        true,
        8,
        |p| {
            plant_cut_short_write(p, "checkpoints");
            // While it ran, its curves were live at their named place, in its work dir.
            let live = std::fs::read_link(p.path("artifacts/tensorboard/t/adjq")).unwrap();
            assert!(
                live.starts_with(p.path("artifacts/work")),
                "{}",
                live.display()
            );
        },
    );
    // The resumed curve has each mini-epoch once, in order: what the killed attempt
    // wrote past its last saved state was dropped.
    let events = tb_events(&output(&p, "adjq", "tensorboard").join("events.out.tfevents.0.adjq"));
    let steps: Vec<i64> = events
        .iter()
        .filter(|e| e.tags.contains(&"loss/total".to_string()))
        .map(|e| e.step)
        .collect();
    assert_eq!(
        steps,
        (1..=10).collect::<Vec<_>>(),
        "after resume at {point}"
    );
    assert!(events.windows(2).all(|w| w[1].wall_time >= w[0].wall_time));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.tags == ["_hparams_/session_start_info"])
            .count(),
        1
    );
    let (expected, _) =
        ckpt::safetensors::read(&output(&straight, "adjq", "model").join("model.safetensors"))
            .unwrap();
    let rec: serde_json::Value =
        serde_json::from_str(&p.ok(&["show", "m.toml", "adjq", "--json"])).unwrap();
    let at = rec["metrics"]["resumed_at_mini_epoch"].as_u64().unwrap();
    assert!(
        at as usize >= point.states,
        "resumed from mini-epoch {at}, not from the saved state: {point}"
    );
    let (got, _) =
        ckpt::safetensors::read(&output(&p, "adjq", "model").join("model.safetensors")).unwrap();
    assert_eq!(got.len(), expected.len());
    for (name, t) in &expected {
        assert_eq!(
            got[name].to_f32_vec().unwrap(),
            t.to_f32_vec().unwrap(),
            "{name} differs after resume at {point}"
        );
    }
    // Every output later stages read is byte-identical to the uninterrupted run's: the
    // model, every mini-epoch checkpoint (with its Adam states), metrics.jsonl (values
    // written before the kill are read back exactly) and quant_info.json. TensorBoard
    // events carry wall times, so they are not compared.
    let names = ["model", "checkpoints", "metrics.jsonl", "quant_info.json"];
    assert_same_outputs(&straight, &p, "adjq", &names, point);
}

/// `keep_checkpoints = "selectable"` keeps exactly the checkpoints some select rule can
/// pick (checked here by brute force over both rules at every threshold the records
/// define) and the select stage picks the same one as with every checkpoint kept.
#[test]
fn adjq_keeps_only_selectable_checkpoints_when_asked() {
    let p = Project::new();
    write_float_model(&p.path("float"));
    let all = manifest(&digits(), 1);
    p.write("all.toml", &all);
    let selectable = all.replace(
        "[stages.adjq]\n",
        "[stages.adjq]\nkeep_checkpoints = \"selectable\"\n",
    );
    p.write("kept.toml", &selectable);
    let output = |m: &str, stage: &str, name: &str| -> (String, std::path::PathBuf) {
        let rec: serde_json::Value =
            serde_json::from_str(&p.ok(&["show", m, stage, "--json"])).unwrap();
        let h = rec["outputs"][name]["hash"].as_str().unwrap().to_string();
        let path = p.path(&format!("artifacts/objects/{}/{h}", &h[..2]));
        (h, path)
    };
    let names = |dir: &Path| -> std::collections::BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    for m in ["all.toml", "kept.toml"] {
        p.ok(&["run", m, "select"]);
    }
    let (_, metrics) = output("kept.toml", "adjq", "metrics.jsonl");
    // (checkpoint, metric, top-1) of each mini-epoch.
    type Row = (String, f64, f64);
    let rows: Vec<Row> = std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let get = |k: &str| v[k].as_f64().unwrap();
            (
                v["checkpoint"].as_str().unwrap().to_string(),
                get("metric"),
                v["accuracy"]["top1"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 10);
    // Both rules (ties to the later row) at every threshold the rows define.
    let mut pickable = std::collections::BTreeSet::new();
    for (_, metric, top1) in &rows {
        let latest_best = |eligible: &dyn Fn(&Row) -> bool, better: &dyn Fn(&Row, &Row) -> bool| {
            let mut best: Option<&Row> = None;
            for r in rows.iter().filter(|r| eligible(r)) {
                if best.is_none_or(|b| !better(b, r)) {
                    best = Some(r);
                }
            }
            best.map(|b| b.0.clone())
        };
        pickable.extend(latest_best(&|r| r.2 >= *top1, &|a, b| a.1 < b.1));
        pickable.extend(latest_best(&|r| r.1 <= *metric, &|a, b| a.2 > b.2));
    }
    let (_, kept) = output("kept.toml", "adjq", "checkpoints");
    let (_, every) = output("all.toml", "adjq", "checkpoints");
    assert_eq!(names(&every).len(), 10);
    assert_eq!(names(&kept), pickable);
    assert!(
        pickable.len() < 10,
        "some checkpoint was dominated: {rows:?}"
    );
    assert_eq!(
        output("all.toml", "select", "model").0,
        output("kept.toml", "select", "model").0,
        "the same checkpoint selected"
    );
}

/// Where a kill -9 lands: after `states` saved resume states, then `delay_ms` into the
/// work that follows (a step, validation, a checkpoint write, the next save). Drawn at
/// random; `ADJQ_KILL_SEED=N` replays the point a failure names.
#[derive(Clone, Copy)]
struct KillPoint {
    seed: u64,
    states: usize,
    delay_ms: u64,
}

impl std::fmt::Display for KillPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the kill {} ms after saved state {} (ADJQ_KILL_SEED={})",
            self.delay_ms, self.states, self.seed
        )
    }
}

impl KillPoint {
    /// A point after 1..=`max_states` saved states and 0–300 ms more (each test's stages
    /// take seconds between saves, so the run is still going).
    fn random(max_states: usize) -> KillPoint {
        let seed = std::env::var("ADJQ_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        // splitmix64: two draws from the seed, no dependency for it.
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let states = 1 + (next() % max_states as u64) as usize;
        let point = KillPoint {
            seed,
            states,
            delay_ms: next() % 300,
        };
        eprintln!("kill point: {point}");
        point
    }
}

/// Runs `runner ARGS` in `p` and kill -9s it (its stage processes die with it) at `point`.
fn kill_at(p: &Project, args: &[&str], point: KillPoint) {
    let mut child = p.cmd(args).spawn().unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let saved = find_latest(&p.path("artifacts"))
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| {
                s.trim()
                    .strip_prefix("state-")
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .unwrap_or(0);
        if saved >= point.states {
            break;
        }
        assert!(t0.elapsed().as_secs() < 300, "no state appeared: {point}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed: {point}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(point.delay_ms));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it could be killed: {point}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A file where a kill -9 in the middle of an atomic write leaves one (the temp file
/// beside its target, never renamed), inside the output directory `output` of the
/// unfinished stage in `p`.
fn plant_cut_short_write(p: &Project, output: &str) {
    let work = std::fs::read_dir(p.path("artifacts/work"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(work.join(output).join(".tmp-Zq81xW"), b"half a checkpoi").unwrap();
}

/// The named outputs of `stage` have the same content hash in both projects.
fn assert_same_outputs(a: &Project, b: &Project, stage: &str, names: &[&str], point: KillPoint) {
    let outputs = |p: &Project| -> serde_json::Value {
        let rec: serde_json::Value =
            serde_json::from_str(&p.ok(&["show", "m.toml", stage, "--json"])).unwrap();
        rec["outputs"].clone()
    };
    let (a, b) = (outputs(a), outputs(b));
    for name in names {
        assert_eq!(
            a[name]["hash"], b[name]["hash"],
            "{stage}: {name} differs after resume at {point}"
        );
    }
}

/// Every output of every record in `p`'s store but TensorBoard events (wall times), by key.
fn all_outputs(p: &Project) -> std::collections::BTreeMap<String, serde_json::Value> {
    std::fs::read_dir(p.path("artifacts/records"))
        .unwrap()
        .map(|e| {
            let rec: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            let mut outputs = rec["outputs"].clone();
            outputs.as_object_mut().unwrap().remove("tensorboard");
            (rec["key"].as_str().unwrap().to_string(), outputs)
        })
        .collect()
}

/// A sweep killed at a random point (two adjq variants training side by side) and run
/// again ends with the same records, every output byte-identical, as an uninterrupted
/// sweep.
#[test]
fn a_killed_sweep_resumes_to_the_outputs_of_an_uninterrupted_one() {
    let full = manifest(&digits(), 1);
    let sweep = format!(
        "{}[sweep]\ngrid = {{ \"adjq.alpha\" = [1.0, 2.0] }}\n",
        &full[..full.find("[stages.select]").unwrap()]
    );
    let (straight, p, point) =
        uninterrupted_and_resumed(&sweep, &["sweep", "m.toml"], true, 8, |_| ());
    let (expected, got) = (all_outputs(&straight), all_outputs(&p));
    assert_eq!(expected.len(), 3, "thresholds and two adjq variants");
    assert_eq!(expected, got, "after resume at {point}");
}

/// pretrain killed at a random point after one of its first two epochs resumes to outputs
/// byte-identical to an uninterrupted run's (its metrics are f64 values read back from the saved progress).
#[test]
fn pretrain_killed_mid_stage_resumes_to_identical_outputs() {
    let manifest = format!(
        r#"[pipeline]
name = "pk"
defaults = {{ crop_padding = 0.0, min_crop_area = 0.5, flip = false }}

[stages.pretrain]
kind = "pretrain"
model = "efficientnet-tiny"
epochs = 3
batch_size = 32
lr = 3e-3
inputs.data = {:?}
"#,
        digits().display().to_string()
    );
    let (straight, p, point) =
        uninterrupted_and_resumed(&manifest, &["run", "m.toml"], false, 2, |_| ());
    assert_same_outputs(
        &straight,
        &p,
        "pretrain",
        &["model", "metrics.jsonl"],
        point,
    );
}

#[test]
fn pretrain_learns_the_digits_and_qat_keeps_its_accuracy() {
    let p = Project::new();
    p.write(
        "m.toml",
        &format!(
            r#"[pipeline]
name = "pt"
defaults = {{ crop_padding = 0.0, min_crop_area = 0.5, flip = false }}

[stages.pretrain]
kind = "pretrain"
model = "efficientnet-tiny"
epochs = 2
batch_size = 32
lr = 3e-3
inputs.data = "${{params.data}}"

[params]
data = {:?}

[stages.qat]
kind = "qat"
epochs = 1
inputs.model = {{ stage = "pretrain", output = "model" }}
inputs.data = "${{params.data}}"

[stages.eval]
kind = "eval"
inputs.model = {{ stage = "qat", output = "model" }}
inputs.data = "${{params.data}}"
"#,
            digits().display().to_string()
        ),
    );
    p.ok(&["run", "m.toml"]);
    assert!(p.ok(&["run", "m.toml"]).contains("0 ran, 3 cached"));
    let rec: serde_json::Value =
        serde_json::from_str(&p.ok(&["show", "m.toml", "pretrain", "--json"])).unwrap();
    let top1 = rec["metrics"]["top1"].as_f64().unwrap();
    assert!(
        top1 > 0.5,
        "two epochs on the digits reach {top1} top-1 (chance is 0.1)"
    );
    let metrics = std::fs::read_to_string(output(&p, "pretrain", "metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    let info = dir::read_info(&output(&p, "pretrain", "model")).unwrap();
    assert_eq!(info.config.name, "efficientnet-tiny");
    assert!(info.quantized.is_none());

    // 8-bit QAT keeps the float model's accuracy within two of the 99 validation images
    // (one image is 1.01 points), and its weights come out as a float model that loads,
    // folds back to the same weights and evaluates.
    let qat: serde_json::Value =
        serde_json::from_str(&p.ok(&["show", "m.toml", "qat", "--json"])).unwrap();
    let (float_top1, q_top1) = (
        qat["metrics"]["float_top1"].as_f64().unwrap(),
        qat["metrics"]["top1"].as_f64().unwrap(),
    );
    assert_eq!(float_top1, top1, "qat measured the pretrained model");
    assert!(
        q_top1 >= float_top1 - 0.021,
        "8-bit QAT top-1 {q_top1} vs float {float_top1}"
    );
    let ranges: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output(&p, "qat", "ranges.json")).unwrap())
            .unwrap();
    assert!(ranges["ranges"]["Conv/output"].is_array());
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output(&p, "eval", "eval.json")).unwrap())
            .unwrap();
    assert!(eval["top1"].as_f64().unwrap() > 0.5);
}

/// qat killed at a random point after one of its first two epochs resumes to outputs
/// byte-identical to an uninterrupted run's: the model, the EMA activation ranges and the metrics.
#[test]
fn qat_killed_mid_stage_resumes_to_identical_outputs() {
    let manifest = format!(
        r#"[pipeline]
name = "qk"
defaults = {{ crop_padding = 0.0, min_crop_area = 0.5, flip = false }}

[stages.qat]
kind = "qat"
epochs = 3
batch_size = 50
inputs.model = "float"
inputs.data = {:?}
"#,
        digits().display().to_string()
    );
    let (straight, p, point) =
        uninterrupted_and_resumed(&manifest, &["run", "m.toml"], true, 2, |_| ());
    let names = ["model", "ranges.json", "metrics.jsonl"];
    assert_same_outputs(&straight, &p, "qat", &names, point);
}

/// `metric_rule` set in a manifest decides the score adjq trains against: the official
/// rule's metric is the eval stage's official MicroNet score of the same model, the paper
/// rule's its paper metric.
#[test]
fn metric_rule_from_the_manifest_trains_against_that_score() {
    let p = Project::new();
    write_float_model(&p.path("float"));
    let mut m = format!(
        r#"[pipeline]
name = "rule"

[params]
data = {:?}

[stages.thresholds]
kind = "thresholds"
samples = 100
inputs.model = "float"
inputs.data = "${{params.data}}"
"#,
        digits().display().to_string()
    );
    for rule in ["official", "paper"] {
        m += &format!(
            r#"
[stages.adjq_{rule}]
kind = "adjq"
metric_rule = "{rule}"
max_epoch = 1
batch_size = 100
lr_bits = 2e-2
beta = 5.0
target = 0.0
params_baseline = 2e4
ops_baseline = 2e6
val_samples = 20
inputs.init = "float"
inputs.teacher = "float"
inputs.thresholds = {{ stage = "thresholds", output = "thresholds.json" }}
inputs.data = "${{params.data}}"

[stages.eval_{rule}]
kind = "eval"
val_samples = 20
params_baseline = 2e4
ops_baseline = 2e6
inputs.model = {{ stage = "adjq_{rule}", output = "model" }}
inputs.data = "${{params.data}}"
"#
        );
    }
    p.write("m.toml", &m);
    p.ok(&["run", "m.toml"]);
    let record = |stage: &str| -> serde_json::Value {
        serde_json::from_str(&p.ok(&["show", "m.toml", stage, "--json"])).unwrap()
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-3);
    for (rule, score) in [("official", "official_score"), ("paper", "paper_metric")] {
        let trained = record(&format!("adjq_{rule}"));
        let eval = record(&format!("eval_{rule}"));
        assert_eq!(trained["params"]["metric_rule"], rule);
        let (metric, want) = (
            trained["metrics"]["metric"].as_f64().unwrap(),
            eval["metrics"][score].as_f64().unwrap(),
        );
        assert!(
            close(metric, want),
            "{rule}: trained against {metric}, eval {score} {want}"
        );
    }
    // The two scores differ, so the match above tells the rules apart.
    let eval = record("eval_official");
    let (official, paper) = (
        eval["metrics"]["official_score"].as_f64().unwrap(),
        eval["metrics"]["paper_metric"].as_f64().unwrap(),
    );
    assert!(
        !close(official, paper),
        "official {official} ≈ paper {paper}"
    );
}

/// The first `n` digits of a bundled split as (label, encoded image, Example), sorted by
/// label then index: the order an ImageFolder tree lists them in.
fn digits_sorted(split: &str, n: usize) -> Vec<(i64, Vec<u8>, adjq::data::Example)> {
    use adjq::data::{Example, Feature, RecordReader};
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(digits())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{split}-"))
        })
        .collect();
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for r in RecordReader::new(bytes.as_slice(), &f) {
            let ex = Example::parse(&r.unwrap()).unwrap();
            let Some(Feature::Int64(l)) = ex.features.get("image/class/label") else {
                panic!("no label")
            };
            let Some(Feature::Bytes(b)) = ex.features.get("image/encoded") else {
                panic!("no image")
            };
            out.push((l[0] - 1, b[0].clone(), ex.clone()));
        }
    }
    out.truncate(n);
    let mut indexed: Vec<_> = out.into_iter().enumerate().collect();
    indexed.sort_by_key(|(i, (l, _, _))| (*l, *i));
    indexed.into_iter().map(|(_, x)| x).collect()
}

/// The same digits as plain TFRecords, GZIP TFRecords, an ImageFolder tree and CSV/JSONL
/// lists (all in one order): eval gives the same top-1 on each, and training gives the
/// same weights wherever the layouts shuffle alike (TFRecords: shards then a buffer, as
/// tf.data; folders and lists: every file).
#[test]
fn the_digits_in_every_layout_evaluate_and_train_alike() {
    use adjq::data::RecordWriter;
    use std::io::Write;
    let p = Project::new();
    write_float_model(&p.path("float"));
    for (split, folder, n) in [("train", "train", 200), ("validation", "val", 100)] {
        let rows = digits_sorted(split, n);
        let mut plain = RecordWriter::new(Vec::new());
        let mut csv = String::from("path,label\n");
        let mut jsonl = String::new();
        for (i, (label, image, ex)) in rows.iter().enumerate() {
            plain.write_record(&ex.encode()).unwrap();
            let name = format!("{split}/{i:04}.jpg");
            p.write(&format!("folder/{folder}/d{label}/{i:04}.jpg"), "");
            std::fs::write(
                p.path(&format!("folder/{folder}/d{label}/{i:04}.jpg")),
                image,
            )
            .unwrap();
            p.write(&format!("list/{name}"), "");
            std::fs::write(p.path(&format!("list/{name}")), image).unwrap();
            csv.push_str(&format!("{name},{label}\n"));
            jsonl.push_str(&format!("{{\"path\": \"{name}\", \"label\": {label}}}\n"));
        }
        let plain = plain.into_inner().unwrap();
        p.write(&format!("tf/{split}-00000-of-00001"), "");
        std::fs::write(p.path(&format!("tf/{split}-00000-of-00001")), &plain).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        p.write(&format!("gz/{split}-00000-of-00001"), "");
        std::fs::write(
            p.path(&format!("gz/{split}-00000-of-00001")),
            gz.finish().unwrap(),
        )
        .unwrap();
        // Training from a CSV list, validation from a JSONL one.
        if split == "train" {
            p.write("list/train.csv", &csv);
        } else {
            p.write("list/validation.jsonl", &jsonl);
        }
    }
    let mut m = String::from(
        "[pipeline]\nname = \"layouts\"\ndefaults = { crop_padding = 0.0, min_crop_area = 0.5, flip = false }\n",
    );
    for layout in ["tf", "gz", "folder", "list"] {
        m.push_str(&format!(
            r#"
[stages.eval_{layout}]
kind = "eval"
params_baseline = 2e4
ops_baseline = 2e6
inputs.model = "float"
inputs.data = "{layout}"

[stages.train_{layout}]
kind = "pretrain"
model = "efficientnet-tiny"
epochs = 1
batch_size = 25
lr = 3e-3
inputs.data = "{layout}"
"#
        ));
    }
    p.write("m.toml", &m);
    p.ok(&["run", "m.toml"]);
    let rec = |stage: &str| -> serde_json::Value {
        serde_json::from_str(&p.ok(&["show", "m.toml", stage, "--json"])).unwrap()
    };
    let tf = rec("eval_tf");
    assert!(tf["metrics"]["top1"].as_f64().unwrap() > 0.0);
    for layout in ["gz", "folder", "list"] {
        let r = rec(&format!("eval_{layout}"));
        assert_eq!(r["metrics"]["top1"], tf["metrics"]["top1"], "{layout}");
        assert_eq!(
            r["outputs"]["eval.json"]["hash"], tf["outputs"]["eval.json"]["hash"],
            "{layout}"
        );
    }
    // The weights (model.json names the stage, so the directories differ by that).
    let weights =
        |stage: &str| std::fs::read(output(&p, stage, "model").join("model.safetensors")).unwrap();
    assert!(
        weights("train_tf") == weights("train_gz"),
        "plain and GZIP TFRecords"
    );
    assert!(
        weights("train_folder") == weights("train_list"),
        "folder and list"
    );
    assert!(
        weights("train_tf") != weights("train_folder"),
        "they shuffle differently"
    );

    // A file that is no image: `skip` leaves it out and counts it, `error` names it.
    std::fs::create_dir_all(p.path("bad/val/d1")).unwrap();
    std::fs::copy(
        p.path("folder/val/d0/0000.jpg"),
        p.path("bad/val/d1/0000.jpg"),
    )
    .unwrap();
    std::fs::create_dir_all(p.path("bad/val/d0")).unwrap();
    std::fs::write(p.path("bad/val/d0/0001.jpg"), "not a jpeg").unwrap();
    let bad = |policy: &str| {
        format!(
            "[pipeline]\nname = \"bad\"\n\n[stages.eval]\nkind = \"eval\"\non_bad_record = \"{policy}\"\ncrop_padding = 0.0\nparams_baseline = 2e4\nops_baseline = 2e6\ninputs.model = \"float\"\ninputs.data = \"bad\"\n"
        )
    };
    p.write("skip.toml", &bad("skip"));
    p.ok(&["run", "skip.toml"]);
    let r: serde_json::Value =
        serde_json::from_str(&p.ok(&["show", "skip.toml", "eval", "--json"])).unwrap();
    assert_eq!(r["metrics"]["skipped_records"], 1);
    p.write("error.toml", &bad("error"));
    let out = p.runner(&["run", "error.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = common::stdout(&out);
    assert!(text.contains("bad/val/d0/0001.jpg: record 0: "), "{text}");
}

//! The `runner` command line.

mod progress;

use crate::exec::launcher::LocalLauncher;
use crate::exec::plan::{self, Plan, Resolution, Resolver};
use crate::exec::{self, JobState, Outcome, RunOptions};
use crate::manifest::diag::ManifestErrors;
use crate::manifest::schema::{InputsSpec, ParamDefault};
use crate::manifest::{self, Manifest, Override};
use crate::store::{self, RunLog, Store, gc, verify};
use crate::{graph, stages, sweep};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "runner",
    version,
    about = "Declarative, cached, resumable pipelines for quantization research",
    long_about = "Runs the stages a TOML manifest declares, in dependency order, caching every \
                  result in a content-addressed store: a stage reruns only when its kind, params \
                  or input content change. See README.md for the manifest format."
)]
struct Cli {
    /// Artifact store to use instead of the one the manifest names (default: <root>/artifacts).
    #[arg(long, global = true, value_name = "DIR", env = "ADJQ_STORE")]
    store: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bars or per-stage lines (the summary is still printed).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Tensor backend for model work: flex (CPU, default) or wgpu (GPU; needs a binary
    /// built with `--features wgpu`).
    #[arg(long, global = true, value_enum, default_value_t, env = "ADJQ_BACKEND")]
    backend: crate::backend::Backend,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline's stages (or the named ones and what they need); cached stages are skipped.
    Run(RunArgs),
    /// Run every point of a parameter grid; stages whose keys coincide run once.
    Sweep(SweepArgs),
    /// Show each stage's state: cached, stale (and why), new, running or failed.
    Status(ManifestArgs),
    /// Explain why a stage would (or would not) run: the params and inputs that changed.
    Explain(StageArgs),
    /// Print the stage graph as text, Graphviz dot or Mermaid.
    Dag(DagArgs),
    /// Show a stage's record: params, inputs, output paths, metrics, timings, log.
    Show(ShowArgs),
    /// List the records in the store.
    Ls,
    /// Delete store entries that neither the given manifests nor the last runs reference.
    Gc(GcArgs),
    /// Rehash every stored object; evict corrupt ones and the records that need them.
    Verify,
    /// List stage kinds, or describe one kind's params and inputs.
    Kinds {
        /// Kind to describe.
        kind: Option<String>,
        /// Print Markdown (the README's stage reference is generated with this).
        #[arg(long)]
        markdown: bool,
    },
    /// Classify images with a converted model (or a raw checkpoint and --preset): top-k classes.
    Predict(PredictArgs),
    /// Count a model's MicroNet score (official rules) and the paper's training metric,
    /// per layer, at given bit-widths or from a quant_info.json.
    Score(ScoreArgs),
    /// Print the content hash of files or directories, as cache keys see them.
    Hash {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List the tensors of a checkpoint (TensorFlow, PyTorch or safetensors) with totals.
    InspectCkpt(InspectCkptArgs),
    /// Internal: run one stage (the child side of `run`).
    #[command(name = "__exec-stage", hide = true)]
    ExecStage,
}

#[derive(Args)]
struct ManifestArgs {
    /// Pipeline manifest (TOML).
    manifest: PathBuf,
    /// Override a param: STAGE.PARAM=VALUE or params.NAME=VALUE (VALUE is TOML, or a bare string).
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    set: Vec<String>,
}

#[derive(Args)]
struct ExecArgs {
    /// Stages that may run at the same time.
    #[arg(short, long, default_value_t = 2)]
    jobs: usize,
    /// Rerun STAGE even if cached (repeatable). Dependants rerun only if its outputs change.
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
    /// After a failure, keep running stages that do not depend on it.
    #[arg(short, long)]
    keep_going: bool,
    /// Resource slot limit, e.g. gpu=2 (default gpu=1 and the pipeline's [pipeline] resources).
    #[arg(long, value_name = "NAME=N")]
    resource: Vec<String>,
    /// Print what would run and why, then stop.
    #[arg(short = 'n', long)]
    dry_run: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    manifest: ManifestArgs,
    /// Run only these stages (and their upstream).
    stages: Vec<String>,
    #[command(flatten)]
    exec: ExecArgs,
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    manifest: ManifestArgs,
    /// A grid axis: STAGE.PARAM=V1,V2,... (repeatable; replaces the same axis of [sweep]).
    #[arg(long, value_name = "STAGE.PARAM=V1,V2")]
    grid: Vec<String>,
    /// A metric column STAGE.METRIC (repeatable; default [sweep] metrics, else all final-stage metrics).
    #[arg(long, value_name = "STAGE.METRIC")]
    metric: Vec<String>,
    /// Where to write results.csv, results.md and the Pareto plot pareto.png/.svg (default <store>/sweeps/<pipeline>-<time>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    exec: ExecArgs,
}

#[derive(Args)]
struct StageArgs {
    #[command(flatten)]
    manifest: ManifestArgs,
    /// Stage name.
    stage: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Args)]
struct DagArgs {
    #[command(flatten)]
    manifest: ManifestArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = DagFormat::Text)]
    format: DagFormat,
}

#[derive(Args)]
struct ShowArgs {
    #[command(flatten)]
    stage: StageArgs,
    /// Print the raw JSON record.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PredictArgs {
    /// The model: MANIFEST.toml:STAGE (a finished convert stage), a directory holding
    /// model.safetensors and model.json, or a checkpoint file (with --preset).
    #[arg(long, value_name = "MODEL")]
    model: String,
    /// Architecture of a raw checkpoint file, e.g. efficientnet-lite0.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Image files (JPEG or PNG).
    #[arg(long = "image", value_name = "FILE", required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
}

#[derive(Args)]
struct ScoreArgs {
    /// Architecture preset (efficientnet-b0, efficientnet-lite0, efficientnet-small,
    /// efficientnet-tiny); default: the quant_info's model, else efficientnet-b0.
    #[arg(long, value_name = "PRESET")]
    model: Option<String>,
    /// Input resolution; default: the quant_info's, else the preset's.
    #[arg(long, value_name = "PIXELS")]
    resolution: Option<usize>,
    /// Per-channel bits written by an adjq/eval stage (layers it omits count as fp32).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["weight_bits", "act_bits"])]
    quant_info: Option<PathBuf>,
    /// Every weight at N bits (default 32).
    #[arg(long, value_name = "N")]
    weight_bits: Option<u32>,
    /// Every activation (and activation-function input) at N bits (default 32).
    #[arg(long, value_name = "N")]
    act_bits: Option<u32>,
    /// Bias bits (default 32, or the quant_info's).
    #[arg(long, value_name = "N")]
    bias_bits: Option<u32>,
    /// Never apply the 16-bit freebie (by default it applies when nothing is below 16 bits).
    #[arg(long)]
    no_freebie: bool,
    /// Count skip adds at the expanded width, as the challenge notebook's driver did
    /// (+1,050,560 additions for B0 at 224); for comparing with its published number.
    #[arg(long)]
    notebook_skip_slip: bool,
    /// Parameter baseline of both scores.
    #[arg(long, default_value_t = 6.9e6, value_name = "N")]
    params_baseline: f64,
    /// Operation baseline of both scores.
    #[arg(long, default_value_t = 1170e6, value_name = "N")]
    ops_baseline: f64,
    /// Print the full report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GcArgs {
    /// Manifests whose current results must be kept (their [sweep] variants too).
    manifests: Vec<PathBuf>,
    /// Also keep everything the newest N runs used.
    #[arg(long, default_value_t = 5, value_name = "N")]
    keep_runs: usize,
    /// Report what would be deleted without deleting.
    #[arg(short = 'n', long)]
    dry_run: bool,
}

#[derive(Args)]
struct InspectCkptArgs {
    /// A TF checkpoint prefix, its `.index`, or a directory with a `checkpoint` file; or a
    /// `.pth`/`.pt`/`.safetensors` file.
    path: PathBuf,
    /// Checkpoint format (auto: by file names and magic bytes).
    #[arg(long, value_enum, default_value_t = CkptFormat::Auto)]
    format: CkptFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum CkptFormat {
    Auto,
    Tf,
    Pytorch,
    Safetensors,
}

/// Exit codes: 0 success, 1 a stage failed, 2 bad usage or manifest, 130 interrupted.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let child = matches!(cli.command, Command::ExecStage);
    init_logging(cli.verbose, child);
    if child {
        let Some(store) = cli.store else {
            eprintln!("__exec-stage needs --store");
            return 2;
        };
        return exec::child::main(store, stages::registry());
    }
    match dispatch(cli) {
        Ok(code) => code,
        // Manifest diagnostics carry their own `error:` labels.
        Err(e) if e.downcast_ref::<ManifestErrors>().is_some() => {
            eprint!("{e}");
            2
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<Usage>() {
                Some(_) => 2,
                None => 1,
            }
        }
    }
}

/// An error in what the user asked for (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// A sweep's manifest diagnostics as they are; a bad grid as a usage error.
fn expand_error(e: sweep::ExpandError) -> anyhow::Error {
    match e {
        sweep::ExpandError::Manifest(m) => m.into(),
        sweep::ExpandError::Grid(msg) => usage(msg),
    }
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

fn init_logging(verbose: u8, child: bool) {
    let default = match (child, verbose) {
        (true, _) => "info",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!child && std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

fn dispatch(cli: Cli) -> Result<i32> {
    let progress = !cli.quiet && std::io::stderr().is_terminal();
    let store_flag = cli.store.clone();
    let backend = cli.backend;
    match cli.command {
        Command::Run(a) => run(a, store_flag.as_deref(), progress, backend),
        Command::Sweep(a) => run_sweep(a, store_flag.as_deref(), progress, backend),
        Command::Status(a) => {
            let m = load(&a)?;
            let store = open_store(&m, store_flag.as_deref())?;
            let plan = Plan::build(&[(vec![], m)], &[]).map_err(usage)?;
            print_plan(&plan, &store, &BTreeSet::new(), true);
            Ok(0)
        }
        Command::Explain(a) => explain(a, store_flag.as_deref()),
        Command::Dag(a) => {
            let m = load(&a.manifest)?;
            let dag = graph::Dag::new(&m);
            print!(
                "{}",
                match a.format {
                    DagFormat::Text => dag.text(),
                    DagFormat::Dot => dag.dot(),
                    DagFormat::Mermaid => dag.mermaid(),
                }
            );
            Ok(0)
        }
        Command::Show(a) => show(a, store_flag.as_deref()),
        Command::Ls => ls(&Store::open(
            &store_flag.unwrap_or_else(|| PathBuf::from("artifacts")),
        )?),
        Command::Gc(a) => run_gc(a, store_flag.as_deref()),
        Command::Verify => {
            let store = Store::open(&store_flag.unwrap_or_else(|| PathBuf::from("artifacts")))?;
            let _lock = store.use_lock(true)?;
            let r = verify::verify(&store)?;
            println!(
                "checked {} objects ({})",
                r.objects_checked,
                human_bytes(r.bytes_checked)
            );
            for (h, why) in &r.corrupt {
                println!("corrupt object {h}: {why} (evicted)");
            }
            for (stage, key) in &r.records_evicted {
                println!(
                    "record of stage `{stage}` ({}) evicted: an output was corrupt or missing; it will rerun",
                    &key[..12]
                );
            }
            for p in &r.unreadable_records {
                println!("unreadable record {p} (removed)");
            }
            if r.clean() {
                println!("store is clean");
                Ok(0)
            } else {
                Ok(1)
            }
        }
        Command::Kinds { kind, markdown } => kinds(kind.as_deref(), markdown),
        Command::Predict(a) => {
            let device = backend.device(None)?;
            let source = model_source(&a.model, a.preset.as_deref(), store_flag.as_deref())?;
            let classifier = crate::predict::Classifier::load(&source, &device)?;
            let results = classifier.classify(&a.images, a.top, &device)?;
            print!("{}", crate::predict::render(&a.images, &results));
            Ok(0)
        }
        Command::Score(a) => score(a),
        Command::Hash { paths } => {
            let cache = store::hash::StatCache::none();
            for p in paths {
                let t0 = Instant::now();
                let (kind, h) = cache
                    .hash_path(&p)
                    .with_context(|| format!("cannot hash {}", p.display()))?;
                let bytes = store::tree_size(&p);
                let secs = t0.elapsed().as_secs_f64();
                println!("{h}  {}", p.display());
                tracing::info!(
                    "{kind:?} {} in {secs:.3}s ({}/s)",
                    human_bytes(bytes),
                    human_bytes((bytes as f64 / secs.max(1e-9)) as u64)
                );
            }
            Ok(0)
        }
        Command::InspectCkpt(a) => inspect_ckpt(&a),
        Command::ExecStage => unreachable!("handled before dispatch"),
    }
}

fn overrides(a: &ManifestArgs) -> Result<Vec<Override>> {
    a.set
        .iter()
        .map(|s| Override::parse(s).map_err(|e| usage(format!("--set {e}"))))
        .collect()
}

fn load(a: &ManifestArgs) -> Result<Manifest> {
    Ok(manifest::load(
        &a.manifest,
        &overrides(a)?,
        stages::kinds(),
    )?)
}

fn open_store(m: &Manifest, flag: Option<&Path>) -> Result<Store> {
    Store::open(flag.unwrap_or(&m.store))
}

fn run_options(
    e: &ExecArgs,
    manifests: &[&Manifest],
    backend: crate::backend::Backend,
) -> Result<RunOptions> {
    let mut resources = BTreeMap::new();
    for m in manifests {
        resources.extend(m.resources.clone());
    }
    for r in &e.resource {
        let (name, n) = r
            .split_once('=')
            .and_then(|(k, v)| Some((k.to_string(), v.parse::<u32>().ok()?)))
            .ok_or_else(|| usage(format!("--resource `{r}` is not NAME=N")))?;
        resources.insert(name, n);
    }
    for f in &e.force {
        if !manifests.iter().any(|m| m.stage(f).is_some()) {
            let names: Vec<&str> = manifests[0].stage_names().collect();
            return Err(usage(format!(
                "--force {f}: no such stage; stages: {}",
                names.join(", ")
            )));
        }
    }
    Ok(RunOptions {
        jobs: e.jobs,
        force: e.force.iter().cloned().collect(),
        keep_going: e.keep_going,
        resources,
        backend,
    })
}

/// Fails fast, before anything runs, when a file input is missing.
/// Fails before anything runs when input paths are missing: one line per path, with the
/// stage inputs that need it and the `[params]` entry that sets it.
fn check_inputs(plan: &Plan, manifest: &Manifest) -> Result<()> {
    let mut missing: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for j in &plan.jobs {
        for (name, input) in &j.inputs {
            if let plan::JobInput::Path(p) = input
                && !p.exists()
            {
                missing
                    .entry(p.clone())
                    .or_default()
                    .insert(format!("{}.{name}", j.stage.name));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut lines = Vec::new();
    let mut params = Vec::new();
    for (path, users) in &missing {
        let set_by: Vec<&String> = manifest
            .params
            .iter()
            .filter(|(_, v)| {
                v.as_str()
                    .is_some_and(|s| manifest::normalize(&manifest.root.join(s)) == *path)
            })
            .map(|(k, _)| k)
            .collect();
        let origin = match set_by.first() {
            Some(k) => {
                params.push(format!("--set params.{k}=PATH"));
                format!("params.{k}, ")
            }
            None => String::new(),
        };
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        lines.push(format!(
            "  {} does not exist ({origin}read by {})",
            path.display(),
            users.join(", ")
        ));
    }
    let hint = if params.is_empty() {
        "fix the paths in the manifest or pass them with --set params.NAME=PATH".to_string()
    } else {
        format!("fix them in [params] or pass {}", params.join(" "))
    };
    bail!(
        "missing input paths; nothing ran:\n{}\n  = hint: {hint}",
        lines.join("\n")
    )
}

fn run(
    a: RunArgs,
    store_flag: Option<&Path>,
    progress: bool,
    backend: crate::backend::Backend,
) -> Result<i32> {
    let m = load(&a.manifest)?;
    let store = open_store(&m, store_flag)?;
    let opts = run_options(&a.exec, &[&m], backend)?;
    let variants = [(vec![], m)];
    let plan = Plan::build(&variants, &a.stages).map_err(usage)?;
    let session = Session {
        manifest: &variants[0].1,
        store: &store,
        opts: &opts,
        progress,
    };
    session.execute(&plan, a.exec.dry_run).map(|(code, _)| code)
}

/// What one `run` or `sweep` invocation executes with.
struct Session<'a> {
    /// The (first) manifest: its path and pipeline name go into the run log.
    manifest: &'a Manifest,
    store: &'a Store,
    opts: &'a RunOptions,
    progress: bool,
}

impl Session<'_> {
    /// Runs the plan (or prints it, for a dry run), logs the run and prints the summary.
    fn execute(&self, plan: &Plan, dry_run: bool) -> Result<(i32, Vec<Outcome>)> {
        let store = self.store;
        let _use = store.use_lock(false)?;
        if dry_run {
            print_plan(plan, store, &self.opts.force, false);
            return Ok((0, Vec::new()));
        }
        check_inputs(plan, self.manifest)?;
        let started = store::now_rfc3339();
        let t0 = Instant::now();
        let resolver = Resolver::new(store);
        let launcher = LocalLauncher::new(store);
        let bars = progress::Bars::new(self.progress);
        let outcomes = exec::execute(plan, store, &resolver, self.opts, &launcher, &bars);
        let log = RunLog {
            manifest: self.manifest.path.display().to_string(),
            pipeline: self.manifest.name.clone(),
            started,
            finished: store::now_rfc3339(),
            keys: outcomes.iter().filter_map(|o| o.key.clone()).collect(),
        };
        store.write_run_log(&log)?;
        print_summary(plan, &outcomes, t0.elapsed().as_secs_f64(), store);
        if plan.variants.len() == 1 {
            print_reports(plan, &outcomes, store);
        }
        let code = if outcomes.iter().all(|o| o.state.ok()) {
            0
        } else if outcomes.iter().any(|o| o.state == JobState::Interrupted) {
            130
        } else {
            1
        };
        Ok((code, outcomes))
    }
}

fn run_sweep(
    a: SweepArgs,
    store_flag: Option<&Path>,
    progress: bool,
    backend: crate::backend::Backend,
) -> Result<i32> {
    let base = overrides(&a.manifest)?;
    let axes = a
        .grid
        .iter()
        .map(|g| sweep::parse_grid_flag(g).map_err(usage))
        .collect::<Result<Vec<_>>>()?;
    let variants =
        sweep::expand(&a.manifest.manifest, &base, &axes, stages::kinds()).map_err(expand_error)?;
    let first = &variants[0].1;
    let store = open_store(first, store_flag)?;
    let opts = run_options(
        &a.exec,
        &variants.iter().map(|(_, m)| m).collect::<Vec<_>>(),
        backend,
    )?;
    let metrics = if a.metric.is_empty() {
        first.sweep.metrics.clone()
    } else {
        a.metric.clone()
    };
    let pipeline = first.name.clone();
    let plan = Plan::build(&variants, &[]).map_err(usage)?;
    eprintln!(
        "sweep: {} variants, {} distinct stage runs (of {} stage instances)",
        plan.variants.len(),
        plan.jobs.len(),
        plan.variants.iter().map(|v| v.stages.len()).sum::<usize>()
    );
    let session = Session {
        manifest: first,
        store: &store,
        opts: &opts,
        progress,
    };
    let (code, outcomes) = session.execute(&plan, a.exec.dry_run)?;
    if a.exec.dry_run {
        return Ok(code);
    }
    let table = sweep::table(&plan, &outcomes, &metrics);
    let dir = a.out.unwrap_or_else(|| {
        let stamp = store::now_rfc3339().replace([':', '-'], "");
        store
            .root
            .join("sweeps")
            .join(format!("{pipeline}-{stamp}"))
    });
    crate::atomic::write(&dir.join("results.csv"), &table.csv()?)?;
    let mut md = table.markdown();
    if let Some(chart) = table.pareto() {
        let front = crate::report::plots::pareto_front(&chart.points);
        md.push_str(&format!(
            "\nPareto front ({} against {}): {}\n\n![pareto](pareto.png)\n",
            chart.y_label.split(' ').next().unwrap_or(""),
            chart.x_label.split(' ').next().unwrap_or(""),
            front
                .iter()
                .map(|&i| format!("`{}`", chart.points[i].label))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        crate::report::plots::save(&chart, &dir.join("pareto"))?;
    }
    crate::atomic::write(&dir.join("results.md"), md.as_bytes())?;
    println!("\n{md}");
    println!("results: {}", dir.join("results.md").display());
    Ok(code)
}

fn short(key: &Option<String>) -> String {
    key.as_deref()
        .map(|k| k[..12].to_string())
        .unwrap_or_else(|| "-".into())
}

/// The run table (one narrow row per stage), each failure's whole message and log path
/// below it, and the counts.
fn print_summary(plan: &Plan, outcomes: &[Outcome], secs: f64, store: &Store) {
    let multi = plan.variants.len() > 1;
    let mut header = vec!["stage", "status", "cached", "duration", "key"];
    if multi {
        header.push("variants");
    }
    let mut t = new_table(header);
    for (i, (j, o)) in plan.jobs.iter().zip(outcomes).enumerate() {
        let (status, cached) = match &o.state {
            JobState::Cached => ("ok".to_string(), "yes"),
            JobState::Ran { resumed: true } => ("ok (resumed)".to_string(), "no"),
            JobState::Ran { resumed: false } => ("ok".to_string(), "no"),
            JobState::Reused => ("ok (computed by another runner)".to_string(), "yes"),
            JobState::Failed(_) => ("FAILED (below)".to_string(), "no"),
            JobState::Interrupted => ("interrupted".to_string(), "no"),
            JobState::Skipped(up) => (format!("skipped ({up} failed)"), "no"),
            JobState::NotRun => ("not run".to_string(), "no"),
        };
        let dur = o
            .duration
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        let mut row = vec![
            j.stage.name.clone(),
            status,
            cached.into(),
            dur,
            short(&o.key),
        ];
        if multi {
            let vs: Vec<String> = plan
                .variants
                .iter()
                .enumerate()
                .filter(|(_, v)| v.stages.values().any(|x| *x == i))
                .map(|(n, _)| (n + 1).to_string())
                .collect();
            row.push(vs.join(","));
        }
        t.add_row(row);
    }
    println!("{t}");
    for (j, o) in plan.jobs.iter().zip(outcomes) {
        if let JobState::Failed(msg) = &o.state {
            println!("\n✗ {} failed: {}", j.stage.name, msg.trim_end());
            if let Some(key) = &o.key {
                println!("  log: {}", store.root.join(store.log_rel(key)).display());
            }
        }
    }
    let cached = outcomes
        .iter()
        .filter(|o| o.state == JobState::Cached)
        .count();
    let ran = outcomes
        .iter()
        .filter(|o| matches!(o.state, JobState::Ran { .. }))
        .count();
    let bad = outcomes.iter().filter(|o| !o.state.ok()).count();
    println!(
        "{} stages: {ran} ran, {cached} cached, {bad} not ok, in {secs:.2}s",
        outcomes.len()
    );
}

/// The summary of every finished `report` stage, with where its page is.
fn print_reports(plan: &Plan, outcomes: &[Outcome], store: &Store) {
    use crate::stages::report;
    for (job, outcome) in plan.jobs.iter().zip(outcomes) {
        let Some(dir) = outcome
            .record
            .as_ref()
            .filter(|_| outcome.state.ok() && job.stage.kind.name() == "report")
            .and_then(|r| r.outputs.get(report::OUTPUT))
            .map(|o| store.object_path(&o.hash))
        else {
            continue;
        };
        let summary = std::fs::read_to_string(dir.join(report::SUMMARY)).unwrap_or_default();
        println!(
            "\n{} — {}",
            job.stage.name,
            job.stage.description.as_deref().unwrap_or("report")
        );
        for line in summary.lines() {
            println!("  {line}");
        }
        println!("  report: {}", dir.join(report::HTML).display());
    }
}

/// The plan as it stands now; `status` also shows running and failed keys.
fn print_plan(plan: &Plan, store: &Store, force: &BTreeSet<String>, status: bool) {
    let resolver = Resolver::new(store);
    let res = plan::resolve_all(plan, &resolver, &|j| force.contains(&j.stage.name));
    let mut t = new_table(vec!["stage", "kind", "state", "why"]);
    for (j, r) in plan.jobs.iter().zip(&res) {
        let (state, why) = match r {
            Resolution::Cached(rec) => (
                "cached".to_string(),
                format!("{} finished {}", &rec.key[..12], rec.finished),
            ),
            Resolution::Run { key, reason, .. } => {
                let failed = store.failed(key).map(|f| f.status);
                let state = if status && store.key_busy(key) {
                    "running"
                } else if status && failed == Some(store::RunStatus::Interrupted) {
                    "interrupted (will resume)"
                } else if status && failed.is_some() {
                    "failed"
                } else if status {
                    "out of date"
                } else {
                    "will run"
                };
                (state.to_string(), reason.clone())
            }
            Resolution::Waiting(ups) => {
                let names: Vec<&str> = ups
                    .iter()
                    .map(|u| plan.jobs[*u].stage.name.as_str())
                    .collect();
                (
                    if status { "out of date" } else { "will run" }.to_string(),
                    format!(
                        "upstream changed ({}); may be cut off if their outputs come out identical",
                        names.join(", ")
                    ),
                )
            }
            Resolution::BadInput(msg) => ("error".to_string(), msg.clone()),
        };
        t.add_row(vec![
            j.stage.name.clone(),
            j.stage.kind.name().to_string(),
            state,
            why,
        ]);
    }
    println!("{t}");
}

fn stage_job(plan: &Plan, stage: &str) -> Result<usize> {
    plan.variants[0]
        .stages
        .get(stage)
        .copied()
        .ok_or_else(|| usage(format!("no stage `{stage}`")))
}

fn explain(a: StageArgs, store_flag: Option<&Path>) -> Result<i32> {
    let (store, plan, job, res) = resolve_stage(load(&a.manifest)?, &a.stage, store_flag)?;
    let j = &plan.jobs[job];
    println!(
        "stage `{}` (kind `{}` v{})",
        j.stage.name,
        j.stage.kind.name(),
        j.stage.kind.version()
    );
    let prev = store.last_run(&j.pipeline, &j.stage.name);
    match &res[job] {
        Resolution::Cached(rec) => {
            println!(
                "cached: key {} (finished {}, took {:.1}s); nothing to do",
                rec.key, rec.finished, rec.duration_s
            );
        }
        Resolution::Run {
            key,
            inputs,
            reason,
        } => {
            println!("will run: key {key}\n{reason}");
            if let Some(prev) = &prev {
                println!(
                    "compared with the last run ({}, key {}):",
                    prev.finished,
                    &prev.key[..12]
                );
                let d = plan::diff(prev, j, inputs);
                if d.is_empty() {
                    println!("  no differences in params or inputs");
                }
                for line in d {
                    println!("  {line}");
                }
            }
        }
        Resolution::Waiting(ups) => {
            let names: Vec<&str> = ups
                .iter()
                .map(|u| plan.jobs[*u].stage.name.as_str())
                .collect();
            println!(
                "key not yet known: upstream stages {} must run first; it is then decided by their outputs",
                names.join(", ")
            );
            if let Some(prev) = &prev {
                for (n, v) in &j.stage.params.0 {
                    if prev.params.get(n) != Some(v) {
                        println!(
                            "  param {n}: {} -> {v}",
                            prev.params
                                .get(n)
                                .map(|x| x.to_string())
                                .unwrap_or("unset".into())
                        );
                    }
                }
            }
        }
        Resolution::BadInput(msg) => println!("cannot run: {msg}"),
    }
    Ok(0)
}

fn show(a: ShowArgs, store_flag: Option<&Path>) -> Result<i32> {
    let (store, plan, job, res) =
        resolve_stage(load(&a.stage.manifest)?, &a.stage.stage, store_flag)?;
    let j = &plan.jobs[job];
    let (rec, current) = match &res[job] {
        Resolution::Cached(r) => ((**r).clone(), true),
        _ => match store.last_run(&j.pipeline, &j.stage.name) {
            Some(r) => (r, false),
            None => bail!(
                "stage `{}` has never run in {}",
                j.stage.name,
                store.root.display()
            ),
        },
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
        return Ok(0);
    }
    if !current {
        println!("note: this is the last run; the stage is out of date now (see `runner explain`)");
    }
    println!(
        "stage     {} ({} v{})",
        rec.stage, rec.kind, rec.kind_version
    );
    println!("key       {}", rec.key);
    println!(
        "status    {:?}{}",
        rec.status,
        rec.error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    println!(
        "ran       {} → {} ({:.1}s) on {}{}",
        rec.started,
        rec.finished,
        rec.duration_s,
        rec.host,
        if rec.resumed { ", resumed" } else { "" }
    );
    println!("log       {}", store.root.join(&rec.log).display());
    println!("params");
    for (k, v) in &rec.params.0 {
        println!("  {k} = {v}");
    }
    println!("inputs");
    for (k, v) in &rec.inputs {
        println!("  {k}: {} ({})", v.source, &v.hash[..12]);
    }
    println!("outputs");
    for (k, o) in &rec.outputs {
        println!(
            "  {k}: {} ({})",
            store.object_path(&o.hash).display(),
            human_bytes(o.bytes)
        );
    }
    if !rec.metrics.is_empty() {
        println!("metrics");
        for (k, v) in &rec.metrics {
            println!("  {k} = {v}");
        }
    }
    // Training stages log one JSON line per (mini-)epoch: show them as a table.
    if let Some(o) = rec.outputs.get("metrics.jsonl") {
        let text = std::fs::read_to_string(store.object_path(&o.hash)).unwrap_or_default();
        if let Some(t) = jsonl_table(&text) {
            println!("training log (metrics.jsonl)\n{t}");
        }
    }
    Ok(0)
}

/// A table of the numeric and boolean fields of JSON lines (nested keys joined by `.`).
fn jsonl_table(text: &str) -> Option<Table> {
    fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&key, v, out);
                }
            }
            serde_json::Value::Number(n) => out.push((
                prefix.to_string(),
                match (n.as_u64(), n.as_f64()) {
                    (Some(i), _) => i.to_string(),
                    (_, Some(f)) => format!("{f:.4}"),
                    _ => n.to_string(),
                },
            )),
            serde_json::Value::Bool(b) => out.push((prefix.to_string(), b.to_string())),
            _ => {}
        }
    }
    // Bookkeeping fields that would only widen the table.
    const SKIP: &[&str] = &["steps", "loss.sign", "loss.metric", "accuracy.images"];
    let rows: Vec<Vec<(String, String)>> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let mut out = Vec::new();
            leaves("", &v, &mut out);
            out.retain(|(k, _)| !SKIP.contains(&k.as_str()));
            out
        })
        .collect();
    let header: Vec<String> = rows.first()?.iter().map(|(k, _)| k.clone()).collect();
    let mut t = new_table(header.iter().map(String::as_str).collect());
    for r in &rows {
        t.add_row(
            header
                .iter()
                .map(|h| {
                    r.iter()
                        .find(|(k, _)| k == h)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>(),
        );
    }
    Some(t)
}

/// Plans `stage` (and its upstream) of `m` without running anything: the store, the plan,
/// the stage's job index and every job's resolution.
fn resolve_stage(
    m: Manifest,
    stage: &str,
    store_flag: Option<&Path>,
) -> Result<(Store, Plan, usize, Vec<Resolution>)> {
    let store = open_store(&m, store_flag)?;
    let plan = Plan::build(&[(vec![], m)], &[stage.to_string()]).map_err(usage)?;
    let job = stage_job(&plan, stage)?;
    let res = plan::resolve_all(&plan, &Resolver::new(&store), &|_| false);
    Ok((store, plan, job, res))
}

/// Resolves `--model`: `MANIFEST.toml:STAGE` names a finished model-producing stage;
/// anything else is a model directory or a checkpoint file (see [`crate::predict::source`]).
fn model_source(
    spec: &str,
    preset: Option<&str>,
    store_flag: Option<&Path>,
) -> Result<crate::predict::Source> {
    let Some((manifest, stage)) = spec.rsplit_once(':').filter(|(m, _)| m.ends_with(".toml"))
    else {
        return crate::predict::source(spec, preset);
    };
    let (rec, store) = finished_record(Path::new(manifest), stage, store_flag)?;
    let dir = rec
        .outputs
        .get(crate::artifacts::model_dir::OUTPUT)
        .map(|o| store.object_path(&o.hash))
        .with_context(|| {
            format!("stage `{stage}` has no output `model`: is it a model-producing stage?")
        })?;
    crate::predict::source(&dir.to_string_lossy(), preset)
}

/// The record of `stage`'s current, finished run (and the store holding it).
fn finished_record(
    manifest_path: &Path,
    stage: &str,
    store_flag: Option<&Path>,
) -> Result<(store::Record, Store)> {
    let m = manifest::load(manifest_path, &[], stages::kinds())?;
    let (store, _, job, mut res) = resolve_stage(m, stage, store_flag)?;
    match res.swap_remove(job) {
        Resolution::Cached(r) => Ok((*r, store)),
        _ => bail!(
            "stage `{stage}` has no finished result for the manifest as it is now; run `runner run {} {stage}` first",
            manifest_path.display()
        ),
    }
}

fn ls(store: &Store) -> Result<i32> {
    let mut recs = store.records();
    recs.sort_by(|a, b| a.finished.cmp(&b.finished));
    let mut t = new_table(vec![
        "pipeline", "stage", "kind", "finished", "took", "outputs", "key",
    ]);
    for r in &recs {
        let bytes: u64 = r.outputs.values().map(|o| o.bytes).sum();
        t.add_row(vec![
            r.pipeline.clone(),
            r.stage.clone(),
            r.kind.clone(),
            r.finished.clone(),
            format!("{:.1}s", r.duration_s),
            human_bytes(bytes),
            r.key[..12].to_string(),
        ]);
    }
    println!("{t}");
    println!("{} records in {}", recs.len(), store.root.display());
    Ok(0)
}

fn run_gc(a: GcArgs, store_flag: Option<&Path>) -> Result<i32> {
    let mut keep = BTreeSet::new();
    let mut store_root = store_flag.map(Path::to_path_buf);
    for path in &a.manifests {
        let m = manifest::load(path, &[], stages::kinds())?;
        let root = store_root.get_or_insert_with(|| m.store.clone()).clone();
        let variants = if m.sweep.grid.is_empty() {
            vec![(vec![], m)]
        } else {
            sweep::expand(path, &[], &[], stages::kinds()).map_err(expand_error)?
        };
        let store = Store::open(&root)?;
        let plan = Plan::build(&variants, &[]).map_err(usage)?;
        for r in plan::resolve_all(&plan, &Resolver::new(&store), &|_| false) {
            match r {
                Resolution::Cached(rec) => {
                    keep.insert(rec.key);
                }
                Resolution::Run { key, .. } => {
                    keep.insert(key);
                }
                _ => {}
            }
        }
    }
    let store = Store::open(&store_root.unwrap_or_else(|| PathBuf::from("artifacts")))?;
    let _lock = store.use_lock(true)?;
    let r = gc::collect(&store, keep, a.keep_runs, a.dry_run)?;
    println!(
        "{}{} records kept, {} removed; {} objects and {} work dirs removed; {} freed",
        if a.dry_run { "dry run: " } else { "" },
        r.records_kept,
        r.records_removed,
        r.objects_removed,
        r.work_dirs_removed,
        human_bytes(r.bytes_freed)
    );
    Ok(0)
}

fn kinds(name: Option<&str>, markdown: bool) -> Result<i32> {
    let list: Vec<_> = match name {
        None => stages::kinds().iter().collect(),
        Some(n) => vec![stages::kinds().find(n).ok_or_else(|| {
            let names: Vec<&str> = stages::kinds().names().collect();
            usage(format!("no stage kind `{n}`; kinds: {}", names.join(", ")))
        })?],
    };
    for k in list {
        if markdown {
            println!(
                "### `{}` (version {})\n\n{}\n",
                k.name(),
                k.version(),
                k.doc()
            );
        } else {
            println!("{} (version {})\n  {}\n", k.name(), k.version(), k.doc());
        }
        let mut t = new_table(vec!["param", "type", "default", "meaning"]);
        if markdown {
            t.load_style(comfy_table::presets::ASCII_MARKDOWN);
        }
        for p in k.params() {
            let default = match &p.default {
                ParamDefault::Required => "required".to_string(),
                ParamDefault::Absent => "unset".to_string(),
                ParamDefault::Value(v) => show_default(v),
            };
            // Markdown cells cannot hold a bare `|`.
            let cell = |s: String| if markdown { s.replace('|', "\\|") } else { s };
            t.add_row(vec![
                p.name.to_string(),
                cell(p.ty.to_string()),
                cell(default),
                cell(p.doc.to_string()),
            ]);
        }
        println!("{t}");
        let bullet = if markdown { "\n- " } else { "\n" };
        match k.inputs() {
            InputsSpec::Any => print!("{bullet}inputs: any names"),
            InputsSpec::Named(specs) => {
                for s in specs {
                    print!(
                        "{bullet}input `{}`{}: {}",
                        s.name,
                        if s.required { "" } else { " (optional)" },
                        s.doc
                    );
                }
            }
        }
        let outputs = k.outputs(&manifest::Params::default());
        if !outputs.is_empty() {
            print!(
                "{bullet}outputs: {}",
                outputs
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        println!("\n");
    }
    Ok(0)
}

/// A default as a manifest would write it; floats in the shorter of decimal and
/// exponent form (`1e-4`, `6.9e6`, `0.999`).
fn show_default(v: &manifest::value::Value) -> String {
    match v {
        manifest::value::Value::Float(x) => {
            let (plain, exp) = (format!("{x:?}"), format!("{x:e}"));
            if exp.len() < plain.len() { exp } else { plain }
        }
        other => other.to_string(),
    }
}

fn inspect_ckpt(a: &InspectCkptArgs) -> Result<i32> {
    use crate::ckpt::{self, Format};
    let format = match a.format {
        CkptFormat::Auto => None,
        CkptFormat::Tf => Some(Format::TfBundle),
        CkptFormat::Pytorch => Some(Format::PyTorch),
        CkptFormat::Safetensors => Some(Format::Safetensors),
    };
    let ins = ckpt::inspect(&a.path, format)?;
    let mut t = new_table(vec!["name", "dtype", "shape", "numel", "note"]);
    let mut rows: Vec<(&str, Vec<String>)> = ins
        .rows
        .iter()
        .map(|r| {
            let cells = vec![
                r.name.clone(),
                r.dtype.to_string(),
                format!("{:?}", r.shape),
                r.numel.to_string(),
                String::new(),
            ];
            (r.name.as_str(), cells)
        })
        .collect();
    rows.extend(ins.unreadable.iter().map(|u| {
        let cells = vec![
            u.name.clone(),
            u.dtype.clone(),
            format!("{:?}", u.shape),
            u.shape.iter().product::<usize>().to_string(),
            format!("cannot be loaded: {}", u.why),
        ];
        (u.name.as_str(), cells)
    }));
    // One list in the checkpoint's name order, loadable or not.
    rows.sort_by(|a, b| a.0.cmp(b.0));
    for (_, cells) in rows {
        t.add_row(cells);
    }
    println!("{t}");
    let unreadable = match ins.unreadable.len() {
        0 => String::new(),
        n => format!(" ({n} cannot be loaded)"),
    };
    println!(
        "{}: {} tensors{unreadable}, {} parameters (floating-point elements), {} bytes{}",
        ins.format,
        ins.rows.len() + ins.unreadable.len(),
        ins.params(),
        ins.bytes(),
        match ins.bytes() {
            0..1024 => String::new(),
            b => format!(" ({})", human_bytes(b as u64)),
        }
    );
    Ok(0)
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn new_table(header: Vec<&str>) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY);
    t.set_header(header);
    t
}

fn score(a: ScoreArgs) -> Result<i32> {
    use crate::score::{counter, metric};
    // The quant_info names the model and resolution it was written for.
    let (info_model, info_res) = match &a.quant_info {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", p.display()))?;
            (
                v["model"].as_str().map(String::from),
                v["resolution"].as_u64().map(|r| r as usize),
            )
        }
        None => (None, None),
    };
    let name = a
        .model
        .or(info_model)
        .unwrap_or_else(|| "efficientnet-b0".to_string());
    let Some(config) = crate::model::EfficientNetConfig::preset(&name) else {
        bail!(
            "unknown model `{name}`; presets: {}",
            crate::model::config::PRESETS.join(", ")
        );
    };
    let resolution = a.resolution.or(info_res).unwrap_or(config.resolution);
    let mut q = match &a.quant_info {
        Some(p) => counter::Quantization::float().read_quant_info(p)?,
        None => {
            counter::Quantization::uniform(a.weight_bits.unwrap_or(32), a.act_bits.unwrap_or(32))
        }
    };
    if let Some(b) = a.bias_bits {
        q.bias_bits = b;
    }
    let options = counter::Options {
        freebie: !a.no_freebie,
        notebook_skip_slip: a.notebook_skip_slip,
        params_baseline: a.params_baseline,
        ops_baseline: a.ops_baseline,
    };
    let report = counter::count(&config, resolution, &q, &options)?;
    let mcfg = metric::MetricConfig {
        params_baseline: a.params_baseline,
        ops_baseline: a.ops_baseline,
        ..Default::default()
    };
    let paper = metric::paper_metric(&config, resolution, &q, &mcfg);
    if a.json {
        let v = serde_json::json!({
            "model": name,
            "resolution": resolution,
            "official": report,
            "paper_metric": paper,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{name} at {resolution}×{resolution}");
        print!("{}", counter::render_table(&report));
        println!(
            "paper metric (the original's training metric: additions at low precision, no \
             pooling/SE-scale/skip ops): {:.5}  (params {:.0}, ops {:.0})",
            paper.metric, paper.params, paper.ops
        );
    }
    Ok(0)
}

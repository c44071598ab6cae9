//! The `runner` command line.

mod args;
mod history;
mod inspect;
mod models;
mod progress;
mod run;
mod store_cmds;

use args::*;
use history::*;
use inspect::*;
use models::*;
use run::*;
use store_cmds::*;

use crate::exec::launcher::{Launcher, LocalLauncher};
use crate::exec::plan::{self, Plan, Resolution, Resolver};
use crate::exec::slurm::SlurmLauncher;
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

/// Exit codes: 0 success, 1 a stage failed, 2 bad usage or manifest, 130 interrupted.
pub fn main() -> i32 {
    crate::malloc::keep_freed_blocks();
    let cli = Cli::parse();
    let child = matches!(cli.command, Command::ExecStage { .. });
    init_logging(cli.verbose, child);
    if !matches!(
        cli.command,
        Command::Run(_) | Command::Sweep(_) | Command::ExecStage { .. }
    ) {
        die_quietly_on_broken_pipe();
    }
    if let Command::ExecStage { spec } = cli.command {
        let Some(store) = cli.store else {
            eprintln!("__exec-stage needs --store");
            return 2;
        };
        return exec::child::main(store, spec, stages::registry());
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

/// `runner runs | head` should stop quietly when `head` does, as other command-line
/// tools do, instead of panicking on the failed write. Only for commands that start no
/// stage processes: `run` and `sweep` write specs to their children's stdin, and a child
/// that dies early must fail its stage, not kill the runner.
fn die_quietly_on_broken_pipe() {
    // SAFETY: restoring the default disposition of one signal, before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
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

/// The store a command that reads or trims it works on: `root`, which must already be a
/// store (`runner run` makes one; these commands never do).
fn existing_store(root: &Path) -> Result<Store> {
    if !Store::exists_at(root) {
        return Err(usage(format!(
            "no store at {}: name one with --store DIR (or ADJQ_STORE); `runner run` creates a store",
            root.display()
        )));
    }
    Store::open(root)
}

/// `--store` (or ADJQ_STORE), else `./artifacts`: the store of commands not given a
/// manifest.
fn default_store(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from("artifacts"))
}

/// The store of a command that may name a manifest: `--store`, else the manifest's,
/// else `./artifacts`. It must exist.
fn store_for(manifest: Option<&Manifest>, flag: Option<&Path>) -> Result<Store> {
    let root = match (flag, manifest) {
        (Some(f), _) => f.to_path_buf(),
        (None, Some(m)) => m.store.clone(),
        (None, None) => default_store(None),
    };
    existing_store(&root)
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
            let m = load(&a.manifest)?;
            let store = read_store(&m, store_flag.as_deref())?;
            let plan = Plan::build(&[(vec![], m)], &[]).map_err(usage)?;
            if a.json {
                let rows = plan_rows(&plan, &store, &BTreeSet::new(), true);
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_plan(&plan, &store, &BTreeSet::new(), true);
            }
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
        Command::Ls(a) => ls(&existing_store(&default_store(store_flag))?, a.json),
        Command::Runs(a) => runs(a, store_flag.as_deref()),
        Command::Diff(a) => diff(a, store_flag.as_deref()),
        Command::Tensorboard(a) => tensorboard(a, store_flag.as_deref()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "runner",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Gc(a) => run_gc(a, store_flag.as_deref()),
        Command::Verify => {
            let store = existing_store(&default_store(store_flag))?;
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
            let sets = parse_overrides(&a.set)?;
            let source = model_source(&a.model, &sets, a.preset.as_deref(), store_flag.as_deref())?;
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
        Command::ExecStage { .. } => unreachable!("handled before dispatch"),
    }
}

fn overrides(a: &ManifestArgs) -> Result<Vec<Override>> {
    parse_overrides(&a.set)
}

fn parse_overrides(sets: &[String]) -> Result<Vec<Override>> {
    sets.iter()
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

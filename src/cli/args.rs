//! Command-line arguments: every flag, with the `--help` text it shows.

use super::*;

#[derive(Parser)]
#[command(
    name = "runner",
    version,
    about = "Declarative, cached, resumable pipelines for quantization research",
    long_about = "Runs the stages a TOML manifest declares, in dependency order, caching every \
                  result in a content-addressed store: a stage reruns only when its kind, params \
                  or input content change. See README.md for the manifest format."
)]
pub(super) struct Cli {
    /// Artifact store to use instead of the one the manifest names (default: <root>/artifacts).
    #[arg(long, global = true, value_name = "DIR", env = "ADJQ_STORE")]
    pub(super) store: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(super) verbose: u8,
    /// No progress bars or per-stage lines (the summary is still printed).
    #[arg(short, long, global = true)]
    pub(super) quiet: bool,
    /// Tensor backend for model work: flex (CPU, default) or wgpu (GPU; needs a binary
    /// built with `--features wgpu`).
    #[arg(long, global = true, value_enum, default_value_t, env = "ADJQ_BACKEND")]
    pub(super) backend: crate::backend::Backend,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// Run the pipeline's stages (or the named ones and what they need); cached stages are skipped.
    Run(RunArgs),
    /// Run every point of a parameter grid; stages whose keys coincide run once.
    Sweep(SweepArgs),
    /// Show each stage's state: cached, stale (and why), new, running or failed.
    Status(StatusArgs),
    /// Explain why a stage would (or would not) run: the params and inputs that changed.
    Explain(ExplainArgs),
    /// Print the stage graph as text, Graphviz dot or Mermaid.
    Dag(DagArgs),
    /// Show a stage's record: params, inputs, output paths, metrics, timings, log.
    Show(ShowArgs),
    /// List the records in the store.
    Ls(LsArgs),
    /// List logged runs, newest first: the params that differ between them and metrics.
    Runs(RunsArgs),
    /// Compare two runs (or two stage records): params with their sources, input hashes,
    /// metric deltas.
    Diff(DiffArgs),
    /// Print the TensorBoard logdir: every training stage's curves, named
    /// PIPELINE/STAGE[/SWEEP-POINT], live while a stage runs.
    Tensorboard(TensorboardArgs),
    /// Print a shell completion script: `runner completions bash > ~/.local/share/bash-completion/completions/runner`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
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
    ExecStage {
        /// The job spec (JSON); default stdin.
        #[arg(long)]
        spec: Option<PathBuf>,
    },
}

#[derive(Args)]
pub(super) struct ManifestArgs {
    /// Pipeline manifest (TOML).
    pub(super) manifest: PathBuf,
    /// Override a param: STAGE.PARAM=VALUE or params.NAME=VALUE (VALUE is TOML, or a bare string).
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub(super) set: Vec<String>,
}

#[derive(Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    pub(super) manifest: ManifestArgs,
    /// Print JSON: one object per stage (stage, kind, state, why, key).
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub(super) struct ExplainArgs {
    #[command(flatten)]
    pub(super) stage: StageArgs,
    /// Print JSON: state, key, reason and the differences from the last run.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub(super) struct LsArgs {
    /// Print JSON: one object per record.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Clone, Copy, Default, ValueEnum)]
pub(super) enum TableFormat {
    /// A table for the terminal.
    #[default]
    Table,
    /// A Markdown table.
    Md,
    /// CSV with full precision (missing cells empty).
    Csv,
    /// A JSON array, one object per row.
    Json,
}

#[derive(Args)]
pub(super) struct RunsArgs {
    /// A manifest: its store, and only its pipeline's runs (default: --store, else ./artifacts, all pipelines).
    pub(super) manifest: Option<PathBuf>,
    /// Only runs of this pipeline.
    #[arg(long, value_name = "NAME")]
    pub(super) pipeline: Option<String>,
    /// Only runs that include STAGE; the default metric columns are then its metrics.
    #[arg(long, value_name = "STAGE")]
    pub(super) stage: Option<String>,
    /// Keep rows where COLUMN=VALUE (also !=, <, <=, >, >=), e.g. adjq_hi.beta=10, report.top1>0.9 (repeatable).
    #[arg(long = "where", value_name = "FILTER")]
    pub(super) filters: Vec<String>,
    /// A metric column STAGE.METRIC (repeatable; default: top-1, average bits, paper metric and official score of the last stages).
    #[arg(long, value_name = "STAGE.METRIC")]
    pub(super) metric: Vec<String>,
    /// Sort by this column (a param, metric, run or started) instead of newest first.
    #[arg(long, value_name = "COLUMN")]
    pub(super) sort: Option<String>,
    /// Reverse the order (with --sort: descending).
    #[arg(short, long)]
    pub(super) reverse: bool,
    /// At most N rows (0: all).
    #[arg(short = 'n', long, default_value_t = 20, value_name = "N")]
    pub(super) limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub(super) format: TableFormat,
}

#[derive(Args)]
pub(super) struct DiffArgs {
    /// The first run: an id (3), `last`, a sweep point (5/2), one stage of a run (3:eval), or a record key prefix (8+ hex digits).
    pub(super) a: String,
    /// The second, in the same forms.
    pub(super) b: String,
    /// A manifest whose store to read (default: --store, else ./artifacts).
    #[arg(short, long, value_name = "MANIFEST")]
    pub(super) manifest: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub(super) struct TensorboardArgs {
    /// A manifest: print its pipeline's directory (default: the store's whole tree, from --store, else ./artifacts).
    pub(super) manifest: Option<PathBuf>,
}

#[derive(Args)]
pub(super) struct ExecArgs {
    /// Where stages run: child processes here, or Slurm batch jobs ([executor.slurm]).
    #[arg(long, value_enum, default_value_t, env = "ADJQ_EXECUTOR")]
    pub(super) executor: Executor,
    /// Stages that may run (or, on Slurm, be queued) at the same time [default: 2 here, no limit on Slurm].
    #[arg(short, long)]
    pub(super) jobs: Option<usize>,
    /// Rerun STAGE even if cached (repeatable). Dependants rerun only if its outputs change.
    #[arg(long, value_name = "STAGE")]
    pub(super) force: Vec<String>,
    /// After a failure, keep running stages that do not depend on it.
    #[arg(short, long)]
    pub(super) keep_going: bool,
    /// Resource slot limit, e.g. gpu=2 (default gpu=1 and the pipeline's [pipeline] resources; on Slurm the cluster places GPUs).
    #[arg(long, value_name = "NAME=N")]
    pub(super) resource: Vec<String>,
    /// Print what would run and why, then stop.
    #[arg(short = 'n', long)]
    pub(super) dry_run: bool,
}

#[derive(Clone, Copy, Default, PartialEq, ValueEnum)]
pub(super) enum Executor {
    /// Each stage a child process of this runner.
    #[default]
    Local,
    /// Each stage an `sbatch` job against the same store (on a shared filesystem).
    Slurm,
}

#[derive(Args)]
pub(super) struct RunArgs {
    #[command(flatten)]
    pub(super) manifest: ManifestArgs,
    /// Run only these stages (and their upstream).
    pub(super) stages: Vec<String>,
    #[command(flatten)]
    pub(super) exec: ExecArgs,
}

#[derive(Args)]
pub(super) struct SweepArgs {
    #[command(flatten)]
    pub(super) manifest: ManifestArgs,
    /// A grid axis: STAGE.PARAM=V1,V2,... (repeatable; replaces the same axis of [sweep]).
    #[arg(long, value_name = "STAGE.PARAM=V1,V2")]
    pub(super) grid: Vec<String>,
    /// A metric column STAGE.METRIC (repeatable; default [sweep] metrics, else all final-stage metrics).
    #[arg(long, value_name = "STAGE.METRIC")]
    pub(super) metric: Vec<String>,
    /// Where to write results.csv, results.md and the Pareto plot pareto.png/.svg (default <store>/sweeps/<pipeline>-<time>).
    #[arg(long, value_name = "DIR")]
    pub(super) out: Option<PathBuf>,
    #[command(flatten)]
    pub(super) exec: ExecArgs,
}

#[derive(Args)]
pub(super) struct StageArgs {
    #[command(flatten)]
    pub(super) manifest: ManifestArgs,
    /// Stage name.
    pub(super) stage: String,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Args)]
pub(super) struct DagArgs {
    #[command(flatten)]
    pub(super) manifest: ManifestArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = DagFormat::Text)]
    pub(super) format: DagFormat,
}

#[derive(Args)]
pub(super) struct ShowArgs {
    #[command(flatten)]
    pub(super) stage: StageArgs,
    /// Print the raw JSON record.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub(super) struct PredictArgs {
    /// The model: MANIFEST.toml:STAGE (a finished stage with a float `model` output:
    /// convert, pretrain, qat; with the --set overrides it was run with), a model directory
    /// (model.safetensors and model.json), or a checkpoint file (with --preset).
    #[arg(long, value_name = "MODEL")]
    pub(super) model: String,
    /// Override a param of the --model manifest, as the stage was run: STAGE.PARAM=VALUE or
    /// params.NAME=VALUE.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub(super) set: Vec<String>,
    /// Architecture of a raw checkpoint file, e.g. efficientnet-lite0.
    #[arg(long, value_name = "NAME")]
    pub(super) preset: Option<String>,
    /// Image files (JPEG or PNG).
    #[arg(long = "image", value_name = "FILE", required = true, num_args = 1..)]
    pub(super) images: Vec<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub(super) top: usize,
}

#[derive(Args)]
pub(super) struct ScoreArgs {
    /// Architecture preset (efficientnet-b0, efficientnet-lite0, efficientnet-small,
    /// efficientnet-tiny); default: the quant_info's model, else efficientnet-b0.
    #[arg(long, value_name = "PRESET")]
    pub(super) model: Option<String>,
    /// Input resolution; default: the quant_info's, else the preset's.
    #[arg(long, value_name = "PIXELS")]
    pub(super) resolution: Option<usize>,
    /// Per-channel bits written by an adjq/eval stage (layers it omits count as fp32).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["weight_bits", "act_bits"])]
    pub(super) quant_info: Option<PathBuf>,
    /// Every weight at N bits (default 32).
    #[arg(long, value_name = "N")]
    pub(super) weight_bits: Option<u32>,
    /// Every activation (and activation-function input) at N bits (default 32).
    #[arg(long, value_name = "N")]
    pub(super) act_bits: Option<u32>,
    /// Bias bits (default 32, or the quant_info's).
    #[arg(long, value_name = "N")]
    pub(super) bias_bits: Option<u32>,
    /// Never apply the 16-bit freebie (by default it applies when nothing is below 16 bits).
    #[arg(long)]
    pub(super) no_freebie: bool,
    /// Count skip adds at the expanded width, as the challenge notebook's driver did
    /// (+1,050,560 additions for B0 at 224); for comparing with its published number.
    #[arg(long)]
    pub(super) notebook_skip_slip: bool,
    /// Parameter baseline of both scores.
    #[arg(long, default_value_t = 6.9e6, value_name = "N")]
    pub(super) params_baseline: f64,
    /// Operation baseline of both scores.
    #[arg(long, default_value_t = 1170e6, value_name = "N")]
    pub(super) ops_baseline: f64,
    /// Print the full report as JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub(super) struct GcArgs {
    /// Manifests whose current results must be kept (their [sweep] variants too).
    pub(super) manifests: Vec<PathBuf>,
    /// Also keep everything the newest N runs used.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub(super) keep_runs: usize,
    /// Report what would be deleted without deleting.
    #[arg(short = 'n', long)]
    pub(super) dry_run: bool,
}

#[derive(Args)]
pub(super) struct InspectCkptArgs {
    /// A TF checkpoint prefix, its `.index`, or a directory with a `checkpoint` file; or a
    /// `.pth`/`.pt`/`.safetensors` file.
    pub(super) path: PathBuf,
    /// Checkpoint format (auto: by file names and magic bytes).
    #[arg(long, value_enum, default_value_t = CkptFormat::Auto)]
    pub(super) format: CkptFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum CkptFormat {
    Auto,
    Tf,
    Pytorch,
    Safetensors,
}

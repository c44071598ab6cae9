//! `run` and `sweep`: plan, check inputs, execute, log the run, print the summary.

use super::*;

/// The store `run` and `sweep` write to (created if need be).
pub(super) fn open_store(m: &Manifest, flag: Option<&Path>) -> Result<Store> {
    Store::open(flag.unwrap_or(&m.store))
}

/// The store commands that only look read, as it is (nothing is created).
pub(super) fn read_store(m: &Manifest, flag: Option<&Path>) -> Result<Store> {
    Store::at(flag.unwrap_or(&m.store))
}

pub(super) fn run_options(
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
    let cluster = e.executor == Executor::Slurm;
    Ok(RunOptions {
        // Local stages share this machine; queued Slurm jobs cost nothing while they wait.
        jobs: e.jobs.unwrap_or(if cluster { usize::MAX } else { 2 }),
        force: e.force.iter().cloned().collect(),
        keep_going: e.keep_going,
        resources,
        backend,
        cluster,
    })
}

/// Fails fast, before anything runs, when a file input is missing.
/// Fails before anything runs when input paths are missing: one line per path, with the
/// stage inputs that need it and the `[params]` entry that sets it.
pub(super) fn check_inputs(plan: &Plan, manifest: &Manifest) -> Result<()> {
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

pub(super) fn run(
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
        command: "run",
        manifests: vec![&variants[0].1],
        sets: &a.manifest.set,
        store: &store,
        opts: &opts,
        executor: a.exec.executor,
        progress,
    };
    session.execute(&plan, a.exec.dry_run).map(|(code, _)| code)
}

/// What one `run` or `sweep` invocation executes with.
pub(super) struct Session<'a> {
    /// `run` or `sweep`, for the run log.
    command: &'static str,
    /// One per variant (the plan's order); the first names the pipeline and its settings.
    manifests: Vec<&'a Manifest>,
    /// The `--set` flags, for the run log.
    sets: &'a [String],
    store: &'a Store,
    opts: &'a RunOptions,
    executor: Executor,
    progress: bool,
}

/// The cluster requests of the jobs that will run (not those already cached), for
/// Slurm to vet before anything is submitted.
fn slurm_requests<'a>(
    plan: &'a Plan,
    resolver: &Resolver,
    opts: &RunOptions,
) -> Vec<exec::slurm::Request<'a>> {
    let res = plan::resolve_all(plan, resolver, &|j| opts.force.contains(&j.stage.name));
    plan.jobs
        .iter()
        .enumerate()
        .zip(&res)
        .filter(|(_, r)| !matches!(r, Resolution::Cached(_)))
        .map(|((i, j), _)| exec::slurm::Request {
            stage: &j.stage.name,
            gpus: exec::gpus_of(plan, i, opts),
            cluster: &j.stage.cluster,
        })
        .collect()
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
        let first = self.manifests[0];
        check_inputs(plan, first)?;
        let t0 = Instant::now();
        let resolver = Resolver::new(store);
        let launcher: Box<dyn Launcher> = match self.executor {
            Executor::Local => Box::new(LocalLauncher::new(store)),
            Executor::Slurm => {
                let slurm = SlurmLauncher::new(store, first.slurm.clone())?;
                slurm.check(&slurm_requests(plan, &resolver, self.opts))?;
                Box::new(slurm)
            }
        };
        let mut log = self.run_log(plan);
        store.start_run_log(&mut log)?;
        let bars = progress::Bars::new(self.progress);
        let outcomes = exec::execute(plan, store, &resolver, self.opts, &*launcher, &bars);
        let code = if outcomes.iter().all(|o| o.state.ok()) {
            0
        } else if outcomes.iter().any(|o| o.state == JobState::Interrupted) {
            130
        } else {
            1
        };
        log.finished = store::now_rfc3339();
        log.exit_code = Some(code);
        log.keys = outcomes.iter().filter_map(|o| o.key.clone()).collect();
        log.variants = exec::run_log::variants(plan, &self.manifests, Some(&outcomes));
        store.write_run_log(&log)?;
        print_summary(plan, &outcomes, t0.elapsed().as_secs_f64(), store);
        if plan.variants.len() == 1 {
            print_reports(plan, &outcomes, store);
        }
        eprintln!(
            "logged as run {}: `runner runs` lists the runs, `runner diff A B` compares two",
            log.id
        );
        Ok((code, outcomes))
    }

    /// The log of this run as it starts: where the manifest and code were, what was set,
    /// and each variant's stages as planned.
    fn run_log(&self, plan: &Plan) -> RunLog {
        let first = self.manifests[0];
        RunLog {
            command: self.command.to_string(),
            manifest: first.path.display().to_string(),
            manifest_hash: std::fs::read(&first.path)
                .map(|b| blake3::hash(&b).to_hex().to_string())
                .unwrap_or_default(),
            pipeline: first.name.clone(),
            sets: self.sets.to_vec(),
            runner_version: env!("CARGO_PKG_VERSION").to_string(),
            git: std::path::absolute(&first.path)
                .ok()
                .as_deref()
                .and_then(Path::parent)
                .and_then(store::runs::GitState::of),
            backend: self.opts.backend.to_string(),
            executor: match self.executor {
                Executor::Local => "local",
                Executor::Slurm => "slurm",
            }
            .to_string(),
            started: store::now_rfc3339(),
            variants: exec::run_log::variants(plan, &self.manifests, None),
            ..RunLog::default()
        }
    }
}

pub(super) fn run_sweep(
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
        command: "sweep",
        manifests: variants.iter().map(|(_, m)| m).collect(),
        sets: &a.manifest.set,
        store: &store,
        opts: &opts,
        executor: a.exec.executor,
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

pub(super) fn short(key: &Option<String>) -> String {
    key.as_deref()
        .map(|k| k[..12].to_string())
        .unwrap_or_else(|| "-".into())
}

/// The run table (one narrow row per stage), each failure's whole message and log path
/// below it, and the counts.
pub(super) fn print_summary(plan: &Plan, outcomes: &[Outcome], secs: f64, store: &Store) {
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
pub(super) fn print_reports(plan: &Plan, outcomes: &[Outcome], store: &Store) {
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

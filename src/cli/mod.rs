//! The command line: parsing (the clap types are in `args`) and one function per
//! subcommand. Stage code never sees clap: each command turns its arguments into the
//! stage's own config (`BuildConfig`, `PretrainConfig`, `FinetuneConfig`, `EvaluateConfig`).
//!
//! Exit codes: 0 success, 2 error. Errors print once as `error: ...` with indented causes.

mod args;
mod reporter;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Context;
use clap::Parser;

use crate::build::{BuildConfig, run_build};
use crate::corpus::overlap::OverlapConfig;
use crate::pack::PackSettings;
use crate::pack::tokenizer::TokenizerConfig;
use crate::plugin::{Outcome, Plugin};
use crate::synth::SynthConfig;
use crate::train::finetune::{FinetuneConfig, Ranks};
use crate::train::pretrain::PretrainConfig;
use crate::train::pretrain::call_as_rank;
use args::*;
use ehrprep_plugin_api::requests::{
    FinetuneRequest, LeaveRequest, PretrainRequest, SessionRequest, World,
};
use reporter::BarReporter;

/// Parses arguments, runs the command, prints any error, and returns the exit code.
pub fn main() -> ExitCode {
    show_table_rows();
    install_panic_hook();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {err}");
            for cause in err.chain().skip(1) {
                let _ = writeln!(stderr, "  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if !matches!(
        cli.command,
        Command::Pretrain(_)
            | Command::Finetune(_)
            | Command::FinetuneRank(_)
            | Command::Sql(_)
            | Command::Plugins(_)
    ) {
        one_process_only()?;
    }
    match cli.command {
        Command::Build(args) => build(args),
        Command::Synth(args) => synth(args),
        Command::Sql(args) => sql(args),
        Command::Pretrain(args) => pretrain(args),
        Command::Finetune(args) => finetune(args),
        Command::FinetuneRank(args) => finetune_rank(args),
        Command::Evaluate(args) => {
            let (run, plugin) = args.run.resolve("generate")?;
            let config = crate::eval::evaluate::EvaluateConfig {
                task: args.task.into(),
                data: args.data,
                checkpoint: args.checkpoint,
                split: args.split.into(),
                run,
            };
            let cancel = cancel_on_ctrl_c();
            let e = crate::eval::evaluate::run(&config, &plugin, cancel)?;
            let scores: Vec<String> = e
                .metrics
                .iter()
                .map(|(m, v)| format!("{m} {v:.4}"))
                .collect();
            println!(
                "{} {} on {} examples: {}",
                e.eval_run_id,
                e.checkpoint.display(),
                e.examples,
                scores.join(", ")
            );
            Ok(())
        }
        Command::Experiment(ExperimentCommand::Run {
            file,
            out,
            plugin,
            quiet,
        }) => {
            let experiment = crate::experiment::Experiment::read(&file)?;
            let plugin = find_plugin("finetune", plugin.as_deref())?;
            let cancel = cancel_on_ctrl_c();
            let reporter = BarReporter::new(quiet);
            let log = crate::experiment::run(&experiment, &out, &plugin, cancel, &reporter)?;
            for (stage, what) in log.0 {
                println!("{stage}: {what}");
            }
            Ok(())
        }
        Command::Report { db, out } => {
            let report = crate::eval::report::write(&db, &out)?;
            println!(
                "{} ({} plots)",
                report.markdown.display(),
                report.plots.len()
            );
            Ok(())
        }
        Command::Plugins(PluginsCommand::List { plugin }) => plugins_list(plugin.as_deref()),
        Command::BenchPack(args) => {
            let report = crate::pack::bench::pack(&args.db, &args.tokenizer, &args.scratch)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

fn pretrain(args: PretrainArgs) -> anyhow::Result<()> {
    if let Some(nproc) = args.nproc_per_node {
        // Ctrl-C reaches the ranks through the launcher, once each time.
        let interrupts: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let _ = ctrlc::set_handler(move || {
            interrupts.fetch_add(1, Ordering::SeqCst);
        });
        let program = std::env::current_exe()?;
        let args = without_nproc(std::env::args_os());
        let count = || interrupts.load(Ordering::SeqCst);
        crate::train::world::launch(&program, &args, nproc, &count)?;
        return Ok(());
    }
    // First, so that a stop signal during the seconds libtorch takes to load is a stop.
    let cancel = cancel_on_ctrl_c();
    let world = crate::train::world::from_env(args.dist_timeout)?.map(|w| World {
        backend: (args.dist_backend != "auto").then(|| args.dist_backend.clone()),
        ..w
    });
    let lead = world.as_ref().is_none_or(|w| w.rank == 0);
    let plugin = find_plugin("pretrain", args.plugin.as_deref())?;
    let resume = args.resume.is_some();
    let request = PretrainRequest {
        model: args.model,
        init: args.init,
        steps: args.steps,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        optimizer: args.optimizer.into(),
        lr: args.lr,
        warmup: args.warmup,
        clip: args.clip,
        dropout: args.dropout,
        device: args.device,
        seed: args.seed,
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        save_every: args.save_every,
        keep_last: args.keep_last,
        threads: args.threads,
        ..PretrainRequest::default()
    };
    let config = PretrainConfig {
        build: args.build,
        out: args
            .resume
            .or(args.out)
            .expect("clap requires --out or --resume"),
        resume,
        request,
        world,
    };
    if !lead {
        crate::train::pretrain::run(&config, &plugin, cancel, &BarReporter::new(true))?;
        return Ok(());
    }
    if !args.quiet {
        eprintln!(
            "plugin {} {} ({})",
            plugin.info.name,
            plugin.info.version,
            plugin.path.display()
        );
    }
    let reporter = BarReporter::new(args.quiet);
    let summary = crate::train::pretrain::run(&config, &plugin, cancel, &reporter)?;
    let r = &summary.result;
    println!(
        "run {} {} at step {} (loss {}, validation loss {}); checkpoint {}",
        summary.run_id,
        summary.status,
        r["step"],
        r["last_loss"],
        r["validation_loss"],
        r["checkpoint"].as_str().unwrap_or("none"),
    );
    if summary.status == "cancelled" {
        println!(
            "resume with: ehrprep pretrain --resume {} --steps {}",
            config.out.display(),
            config.request.steps
        );
    }
    Ok(())
}

fn finetune(args: FinetuneArgs) -> anyhow::Result<()> {
    // First, so that a stop signal during the seconds libtorch takes to load is a stop.
    let cancel = cancel_on_ctrl_c();
    let world = crate::train::world::from_env(args.dist_timeout)?
        .filter(|w| w.size > 1)
        .map(|w| World {
            backend: (args.dist_backend != "auto").then(|| args.dist_backend.clone()),
            ..w
        });
    if let Some(w) = &world
        && args.nproc_per_node.is_some()
    {
        anyhow::bail!(
            "--nproc-per-node starts the ranks itself, but the environment makes this rank {} of {} (torchrun or srun): leave it out",
            w.rank,
            w.size
        );
    }
    let (run, plugin) = args.run.resolve("finetune")?;
    if let Some(world) = &world {
        if !plugin.info.capabilities.iter().any(|c| c == "session") {
            anyhow::bail!(
                "plugin `{}` cannot finetune as one rank of many (no `session` capability)",
                plugin.info.name
            );
        }
        let session = serde_json::to_string(&SessionRequest {
            world: world.clone(),
            device: run.device.clone(),
        })?;
        if world.rank > 0 {
            // Trains what rank 0 sends; rank 0 records everything.
            let (Outcome::Finished(json) | Outcome::Cancelled(json)) =
                call_as_rank(&plugin, "session-follow", &session, world.rank, cancel)?;
            let epochs = serde_json::from_str::<serde_json::Value>(&json)
                .ok()
                .and_then(|v| v["epochs"].as_u64())
                .with_context(|| {
                    format!(
                        "plugin `{}`: session-follow answered `{json}`, not {{\"epochs\": N}}",
                        plugin.info.name
                    )
                })?;
            println!(
                "rank {} of {}: trained {epochs} epoch{} for rank 0",
                world.rank,
                world.size,
                if epochs == 1 { "" } else { "s" }
            );
            return Ok(());
        }
        call_as_rank(&plugin, "session-join", &session, 0, cancel)?;
    }
    let mut config = FinetuneConfig::new(args.task.into(), args.data, args.checkpoint);
    config.fractions = args.fractions;
    config.seeds = args.seeds;
    config.epochs = args.epochs;
    config.effective_batch = args.effective_batch;
    config.lr = args.lr;
    config.out = args.out;
    config.run = run;
    config.ranks = match (&world, args.nproc_per_node) {
        (Some(world), _) => Some(Ranks::Session(world.clone())),
        (None, Some(count)) => Some(Ranks::Local {
            program: std::env::current_exe()?,
            count,
            timeout_s: args.dist_timeout,
            backend: args.dist_backend,
        }),
        (None, None) => None,
    };
    let reporter = BarReporter::new(args.quiet);
    let runs = crate::train::finetune::run(&config, &plugin, cancel, &reporter);
    if world.is_some() {
        // The other ranks return with rank 0, with an error when it failed.
        let leave = serde_json::to_string(&LeaveRequest {
            failed: runs.is_err(),
        })?;
        let left = call_as_rank(&plugin, "session-leave", &leave, 0, cancel);
        if runs.is_ok() {
            left?;
        }
    }
    for run in runs? {
        let scores: Vec<String> = run
            .test
            .iter()
            .map(|(m, v)| format!("{m} {v:.4}"))
            .collect();
        println!(
            "{} fraction {} seed {}: {} (best epoch {}) test {}",
            run.eval_run_id,
            run.fraction,
            run.seed,
            run.status,
            run.best_epoch
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            scores.join(", ")
        );
    }
    Ok(())
}

/// The plugin with `capability`, its declared environment set. Every command that runs a
/// plugin finds it here first, before the Ctrl-C handler, the progress bars or DuckDB start
/// threads.
fn find_plugin(capability: &str, explicit: Option<&Path>) -> anyhow::Result<Plugin> {
    let plugin = crate::plugin::find(capability, explicit)?;
    // SAFETY: called before ehrprep starts any thread of its own (see above). A library
    // the plugin loaded may have started threads while the plugin answered `info` (the
    // CUDA driver does when asked for devices); they read the environment when they start,
    // and the variables a plugin declares are read later, by libraries not yet started.
    #[allow(unsafe_code)]
    unsafe {
        plugin.prepare_environment()
    };
    Ok(plugin)
}

/// One rank of a data-parallel finetuning epoch: the request from the orchestrating
/// `finetune`, this rank's place from the launcher's environment; rank 0 writes the answer.
fn finetune_rank(args: FinetuneRankArgs) -> anyhow::Result<()> {
    let world = crate::train::world::from_env(args.dist_timeout)?
        .context("finetune-rank runs as a rank that `ehrprep finetune --nproc-per-node` starts")?;
    let rank = world.rank;
    let text = std::fs::read_to_string(&args.request)
        .with_context(|| format!("reading `{}`", args.request.display()))?;
    let mut request: FinetuneRequest = serde_json::from_str(&text)
        .with_context(|| format!("`{}` is not a finetune request", args.request.display()))?;
    let cancel = cancel_on_ctrl_c();
    request.world = Some(World {
        backend: (args.dist_backend != "auto").then_some(args.dist_backend),
        ..world
    });
    let plugin = find_plugin("finetune", Some(&args.plugin))?;
    let json = serde_json::to_string(&request)?;
    let outcome = crate::train::pretrain::call_as_rank(&plugin, "finetune", &json, rank, cancel)?;
    if let Outcome::Finished(answer) = outcome
        && rank == 0
    {
        crate::fsutil::write_atomic(&args.result, answer.as_bytes())?;
    }
    Ok(())
}

/// Only `pretrain` and `finetune` train data-parallel. Under torchrun or srun every rank of
/// any other command would write the same outputs, so it is refused before it starts.
fn one_process_only() -> anyhow::Result<()> {
    if let Some(world) = crate::train::world::from_env(0)?
        && world.size > 1
    {
        anyhow::bail!(
            "this command runs as one process, but the environment makes it rank {} of {} (RANK/WORLD_SIZE or srun's SLURM_PROCID/SLURM_STEP_NUM_TASKS): every rank would write the same outputs; only `ehrprep pretrain` and `ehrprep finetune` train data-parallel",
            world.rank,
            world.size
        );
    }
    Ok(())
}

/// This program's arguments, the subcommand's included, without `--nproc-per-node N`:
/// what each rank runs.
fn without_nproc(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args.skip(1) {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        match arg.to_str() {
            Some("--nproc-per-node") => skip_value = true,
            Some(a) if a.starts_with("--nproc-per-node=") => {}
            _ => out.push(arg),
        }
    }
    out
}

/// First Ctrl-C (or SIGTERM, SIGHUP: a scheduler's stop): stop at the next step boundary
/// with a checkpoint. Second: quit now.
fn cancel_on_ctrl_c() -> &'static AtomicBool {
    let cancel: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let _ = ctrlc::set_handler(move || {
        if cancel.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("stopping at the next step (Ctrl-C again to quit without a checkpoint)");
    });
    cancel
}

fn plugins_list(explicit: Option<&Path>) -> anyhow::Result<()> {
    let found = crate::plugin::discover(explicit);
    if explicit.is_none() {
        let dirs = crate::plugin::search_path();
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        eprintln!("searched: {}", dirs.join(", "));
    }
    let mut usable = 0;
    let mut refusals = Vec::new();
    for (path, loaded) in found {
        match loaded {
            Ok(p) => {
                usable += 1;
                println!(
                    "{}\t{}\tabi {}\t{}\t{}",
                    p.info.name,
                    p.info.version,
                    ehrprep_plugin_api::ABI_VERSION,
                    p.info.capabilities.join(","),
                    path.display()
                );
            }
            Err(e) => refusals.push(e),
        }
    }
    for e in &refusals {
        eprintln!("skipped: {e}");
    }
    if let (Some(_), Some(e)) = (explicit, refusals.into_iter().next()) {
        return Err(e.into());
    }
    if usable == 0 {
        eprintln!("no plugins found; set EHRPREP_PLUGIN_PATH or pass --plugin PATH");
    }
    Ok(())
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let mut config = BuildConfig::new(args.mimic_dir, args.out);
    config.recipe = args.recipe.into();
    config.near_duplicates = !args.no_near_duplicates;
    config.deid = args.deid.into();
    config.task_data = args.task_data;
    if !(args.task_overlap_threshold > 0.0 && args.task_overlap_threshold <= 1.0) {
        anyhow::bail!("--task-overlap-threshold must be above 0 and at most 1");
    }
    config.task_overlap = (!args.no_task_overlap).then(|| OverlapConfig {
        threshold: args.task_overlap_threshold,
        ..OverlapConfig::default()
    });
    config.exclude_subjects = args.exclude_subjects;
    config.force = args.force;
    config.batch_notes = args.batch_notes;
    if !(0.0..1.0).contains(&args.validation_fraction) {
        anyhow::bail!("--validation-fraction must be at least 0 and below 1");
    }
    if args.input_length < 16 {
        anyhow::bail!("--input-length must be at least 16");
    }
    config.pack = (!args.no_shards).then(|| PackSettings {
        tokenizer: args.tokenizer,
        tokenizer_config: TokenizerConfig {
            vocab_size: args.vocab_size,
            sample_chars: args.tokenizer_sample_chars,
            lowercase: args.lowercase,
            ..TokenizerConfig::default()
        },
        inputs_length: args.input_length,
        validation_fraction: args.validation_fraction,
        seed: args.seed,
        rows_per_shard: args.rows_per_shard.max(1),
    });
    let reporter = BarReporter::new(args.quiet);
    let summary = run_build(&config, &reporter)?;

    let mut out = std::io::stdout().lock();
    let s = &summary.stats;
    writeln!(
        out,
        "build {}: {} notes in, {} kept, {} dropped; {:.1} M characters in, {:.1} M kept; {:.1} s",
        summary.build_id,
        s.notes_in(),
        s.kept(),
        s.notes_in() - s.kept(),
        s.chars_in as f64 / 1e6,
        s.count(crate::corpus::select::Reason::Kept).chars as f64 / 1e6,
        s.seconds
    )?;
    let frame = s.to_frame().context("summarizing the build")?;
    writeln!(out, "{frame}")?;
    if let Some(m) = &summary.manifest {
        for (split, st) in &m.splits {
            writeln!(
                out,
                "{}: {} notes, {} patients, {} rows of {} tokens in {} shards",
                split.as_str(),
                st.notes,
                st.subjects,
                st.rows,
                m.raw_length,
                m.shards.iter().filter(|s| s.split == *split).count()
            )?;
        }
        writeln!(
            out,
            "tokenizer: {} ids, sha256 {}",
            m.tokenizer.vocab_size, m.tokenizer.sha256
        )?;
    }
    writeln!(out, "catalog: {}", summary.catalog.display())?;
    Ok(())
}

fn synth(args: SynthArgs) -> anyhow::Result<()> {
    let config = SynthConfig {
        notes: args.notes,
        seed: args.seed,
        gzip: !args.plain,
        long_notes: args.long_notes,
    };
    let written = crate::synth::write(&args.out, &config)?;
    let mut out = std::io::stdout().lock();
    for (path, records) in written {
        writeln!(out, "{records:>9}  {}", path.display())?;
    }
    Ok(())
}

fn sql(args: SqlArgs) -> anyhow::Result<()> {
    let conn = crate::catalog::open_read_only(&args.db)?;
    let mut frame = crate::catalog::query::run(&conn, &args.query)?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Table => writeln!(out, "{frame}")?,
        Format::Csv => crate::catalog::query::write_csv(&mut frame, &mut out)?,
        Format::Json => crate::catalog::query::write_json(&mut frame, &mut out)?,
    }
    Ok(())
}

/// Polars prints ten rows of a table and elides the rest unless `POLARS_FMT_MAX_ROWS` says
/// otherwise; the build summary has more, and a query's rows are what the user asked for.
fn show_table_rows() {
    if std::env::var_os("POLARS_FMT_MAX_ROWS").is_none() {
        #[allow(unsafe_code)] // writing the environment; see SAFETY
        // SAFETY: this runs first in `main`, before the process has any other thread.
        unsafe {
            std::env::set_var("POLARS_FMT_MAX_ROWS", "200")
        };
    }
}

/// Panics never print their payload: it could hold note text. The location is enough to
/// report a bug.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if crate::catalog::query::PANIC_IS_HANDLED.load(Ordering::Relaxed) {
            return;
        }
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error at {place}; please report it (details withheld: they may contain note text)"
        );
    }));
}

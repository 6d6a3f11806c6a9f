//! The command line: clap types, parsing, and one function per subcommand. Stage code never
//! sees these types; it gets a [`BuildConfig`] or plain values.
//!
//! Exit codes: 0 success, 2 error. Errors print once as `error: ...` with indented causes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::normalize::Deid;
use crate::pack::PackSettings;
use crate::pipeline::{BuildConfig, Recipe, run_build};
use crate::pretrain::PretrainConfig;
use crate::progress::Reporter;
use crate::synth::SynthConfig;
use crate::tokenizer::TokenizerConfig;

/// Turn MIMIC-III and MIMIC-IV-Note clinical notes into a clean, leakage-free pretraining
/// corpus, with every decision recorded in a DuckDB catalog.
#[derive(Debug, Parser)]
#[command(name = "ehrprep", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the corpus and token shards: find the MIMIC files, apply the recipe, normalize,
    /// find near duplicates, train the tokenizer, pack shards; every decision in the catalog.
    Build(BuildArgs),
    /// Write MIMIC-shaped synthetic notes and task files, for everyone without MIMIC access.
    Synth(SynthArgs),
    /// Run SQL against a catalog and print the result as a table, CSV or JSON.
    Sql(SqlArgs),
    /// Pretrain T5 on a build's shards with the trainer plugin; steps, losses and
    /// checkpoints go to the build's catalog. Ctrl-C stops at the next step with a checkpoint.
    Pretrain(PretrainArgs),
    /// Finetune a pretrained checkpoint on MedNLI, RadQA or CLIP for each training fraction
    /// and seed, pick the best epoch on validation, score it on test; all in the catalog.
    Finetune(FinetuneArgs),
    /// Score a finetuned checkpoint (a finetuning run folder's best epoch, or a checkpoint
    /// folder) on a task's test or validation split, without training.
    Evaluate(EvaluateArgs),
    /// Write a markdown report with PNG plots: loss curves, metrics by training fraction
    /// beside the paper's.
    Report {
        #[arg(long, value_name = "FILE")]
        db: PathBuf,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// The whole protocol from one TOML file: (synth) -> build -> pretrain -> finetune ->
    /// report, running only what is missing.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
    /// Trainer plugins: where ehrprep looks for them and what they offer.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Time tokenize+pack against plain batch encoding on a finished build (JSON out).
    #[command(hide = true)]
    BenchPack(BenchPackArgs),
}

#[derive(Debug, Subcommand)]
enum ExperimentCommand {
    /// Run (or continue) an experiment into OUT.
    Run {
        /// The experiment's TOML file (see fixtures/experiments/).
        file: PathBuf,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, value_name = "PATH")]
        plugin: Option<PathBuf>,
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List the plugins found: name, version, ABI, capabilities, path. Libraries on the
    /// search path that are not usable plugins are listed with the reason.
    List {
        /// Check this library only.
        #[arg(long, value_name = "PATH")]
        plugin: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct EvaluateArgs {
    #[arg(long, value_enum)]
    task: crate::task_data::Task,
    /// The task's official files.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// A finetuning run folder (RUN/finetune/TASK-F-sS) or a checkpoint folder.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    #[arg(long, value_enum, default_value_t = crate::evaluate::Split::Test)]
    split: crate::evaluate::Split,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    run: ModelRunArgs,
}

/// What finetuning and evaluation share: where the model runs, how long answers may be,
/// and which catalog, tokenizer and plugin to use.
#[derive(Debug, clap::Args)]
struct ModelRunArgs {
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Longest generated answer, in tokens.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// The catalog [default: the pretraining build's].
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// The tokenizer [default: the pretraining build's].
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    plugin: Option<PathBuf>,
}

impl ModelRunArgs {
    /// Sets these in `config` and returns the plugin with the `capability`.
    fn apply(
        self,
        config: &mut crate::finetune::FinetuneConfig,
        capability: &str,
    ) -> anyhow::Result<crate::plugin::Plugin> {
        let plugin = crate::plugin::find(capability, self.plugin.as_deref())?;
        config.device = self.device;
        config.threads = self.threads;
        config.max_new_tokens = self.max_new_tokens;
        config.db = self.db;
        config.tokenizer = self.tokenizer;
        Ok(plugin)
    }
}

#[derive(Debug, clap::Args)]
struct FinetuneArgs {
    #[arg(long, value_enum)]
    task: crate::task_data::Task,
    /// The task's official files (MedNLI jsonl, RadQA json, CLIP csv).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// A pretraining run folder (its latest checkpoint) or a checkpoint folder.
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// Fractions of the training set, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    fractions: Vec<f64>,
    /// Seeds, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// Epochs [default: the paper's: MedNLI 40, RadQA 50, CLIP 40].
    #[arg(long)]
    epochs: Option<usize>,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Examples per optimizer step, by accumulation.
    #[arg(long, default_value_t = 64)]
    effective_batch: usize,
    /// Adafactor's constant learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Where the runs go [default: CHECKPOINT_RUN/finetune].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    run: ModelRunArgs,
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
struct PretrainArgs {
    /// A finished build folder (catalog.duckdb and shards/).
    #[arg(long, value_name = "OUT", required_unless_present = "resume")]
    build: Option<PathBuf>,
    /// The run folder for checkpoints (owner-only).
    #[arg(long, value_name = "RUN", required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in RUN from its latest checkpoint, up to --steps in total.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["build", "out", "model", "init"])]
    resume: Option<PathBuf>,
    /// Model size: tiny, tiny-v1_1, t5-small, t5-base, t5-large, t5-v1_1-small,
    /// t5-v1_1-base, t5-v1_1-large.
    #[arg(long, default_value = "t5-base")]
    model: String,
    /// Start from a Hugging Face T5 folder (config.json, model.safetensors) instead.
    #[arg(long, value_name = "DIR")]
    init: Option<PathBuf>,
    /// Total optimizer steps.
    #[arg(long)]
    steps: u64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// adafactor (T5's) or adamw.
    #[arg(long, default_value = "adafactor")]
    optimizer: String,
    /// Peak learning rate [default: 1/sqrt(warmup) for Adafactor, 1e-3 for AdamW].
    #[arg(long)]
    lr: Option<f64>,
    /// Steps at the peak rate before the inverse-sqrt decay.
    #[arg(long, default_value_t = 40_000)]
    warmup: u64,
    /// Clip the gradient norm to this (0: off).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// auto, cpu, cuda or cuda:N. CUDA trains in bf16, the CPU in f32.
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Validation loss every N steps (0: at checkpoints only).
    #[arg(long, default_value_t = 1000)]
    eval_every: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 20)]
    eval_batches: usize,
    /// Checkpoint every N steps (and always at the end and on Ctrl-C).
    #[arg(long, default_value_t = 1000)]
    save_every: u64,
    /// Checkpoints kept (0: all).
    #[arg(long, default_value_t = 3)]
    keep_last: usize,
    /// CPU threads for libtorch [default: libtorch's].
    #[arg(long)]
    threads: Option<i32>,
    /// Use this plugin library instead of searching EHRPREP_PLUGIN_PATH and the binary's folder.
    #[arg(long, value_name = "PATH")]
    plugin: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
struct BenchPackArgs {
    #[arg(long)]
    db: PathBuf,
    #[arg(long)]
    tokenizer: PathBuf,
    /// Where the benchmark's shards go (overwritten).
    #[arg(long)]
    scratch: PathBuf,
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// Folder with MIMIC-III (NOTEEVENTS.csv[.gz]), MIMIC-IV-Note (note/discharge.csv[.gz],
    /// note/radiology.csv[.gz]) or a parent of both.
    #[arg(long, value_name = "DIR")]
    mimic_dir: PathBuf,
    /// Output folder; the catalog is written to OUT/catalog.duckdb.
    #[arg(long, value_name = "OUT")]
    out: PathBuf,
    /// Corpus recipe.
    #[arg(long, value_enum, default_value_t = RecipeArg::Paper)]
    recipe: RecipeArg,
    /// Skip near-duplicate detection (MinHash): `dedup_clusters` stays empty, the build is
    /// faster. The paper's recipe does not use it; `--recipe strict` needs it.
    #[arg(long)]
    no_near_duplicates: bool,
    /// Downstream task files (RadQA json, CLIP sentence_level.csv): their patients are removed.
    #[arg(long, value_name = "DIR")]
    task_data: Option<PathBuf>,
    /// File of subject ids to remove, one per line (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    exclude_subjects: Option<PathBuf>,
    /// De-identification placeholders: replace with typed tags, or keep as they are.
    #[arg(long, value_enum, default_value_t = DeidArg::Tags)]
    deid: DeidArg,
    /// Replace a finished build in OUT.
    #[arg(long)]
    force: bool,
    /// Notes normalized per batch (memory grows with it: up to three batches are held).
    #[arg(long, default_value_t = 8192, value_name = "N")]
    batch_notes: usize,
    /// Stop after the corpus: no tokenizer, no shards.
    #[arg(long)]
    no_shards: bool,
    /// Use this tokenizer (a tokenizer.json or a folder holding one, e.g. T5's) instead of
    /// training one; missing sentinels and de-id tags are added.
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    /// Pieces of the trained tokenizer, special tokens included.
    #[arg(long, default_value_t = 32_000, value_name = "N")]
    vocab_size: u32,
    /// Characters of corpus text the tokenizer trains on, taken evenly across the corpus.
    #[arg(long, default_value_t = 200_000_000, value_name = "N")]
    tokenizer_sample_chars: usize,
    /// Encoder input length after span corruption (512 packs raw chunks of 568 tokens).
    #[arg(long, default_value_t = 512, value_name = "N")]
    input_length: usize,
    /// Share of patients in the validation split.
    #[arg(long, default_value_t = 0.01, value_name = "F")]
    validation_fraction: f64,
    /// Seed of the note order in the shards.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Raw chunks per shard file.
    #[arg(long, default_value_t = 100_000, value_name = "N", hide = true)]
    rows_per_shard: usize,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RecipeArg {
    /// The paper's recipe: error flags, era overlap, task patients, drafts, empty, exact
    /// copies; near duplicates are recorded in `dedup_clusters` but kept.
    Paper,
    /// The paper's recipe, and near duplicates are dropped too.
    Strict,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeidArg {
    /// `[**Known lastname 12**]` and `___` become typed tags such as `[Name]`.
    Tags,
    /// Placeholders stay as they are.
    Keep,
}

#[derive(Debug, clap::Args)]
struct SynthArgs {
    /// Output folder (gets mimiciii/, mimic-iv-note/note/ and tasks/).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Number of notes to write across both releases.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    notes: u64,
    /// Random seed; the same seed gives byte-identical files.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Write plain .csv instead of .csv.gz.
    #[arg(long)]
    plain: bool,
    /// Also write notes longer than DuckDB's default 2 MB line limit (about one per 50,000).
    #[arg(long)]
    long_notes: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, clap::Args)]
struct SqlArgs {
    /// Catalog file (OUT/catalog.duckdb); opened read-only.
    #[arg(long, value_name = "FILE")]
    db: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// The query.
    query: String,
}

/// Parses arguments, runs the command, prints any error, and returns the exit code.
pub fn main() -> ExitCode {
    // SAFETY: first thing in `main`, while this is the process's only thread. A trainer
    // plugin on CUDA needs the variable set before cuBLAS starts.
    #[allow(unsafe_code)]
    unsafe {
        ehrprep_plugin_api::fix_cublas_workspace();
    }
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
    match cli.command {
        Command::Build(args) => build(args),
        Command::Synth(args) => synth(args),
        Command::Sql(args) => sql(args),
        Command::Pretrain(args) => pretrain(args),
        Command::Finetune(args) => finetune(args),
        Command::Evaluate(args) => {
            let mut config =
                crate::finetune::FinetuneConfig::new(args.task, args.data, args.checkpoint);
            config.batch_size = args.batch_size;
            let plugin = args.run.apply(&mut config, "generate")?;
            let cancel = cancel_on_ctrl_c();
            let e = crate::evaluate::run(&config, args.split, &plugin, cancel)?;
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
            let plugin = crate::plugin::find("finetune", plugin.as_deref())?;
            let cancel = cancel_on_ctrl_c();
            let reporter = BarReporter::new(quiet);
            let log = crate::experiment::run(&experiment, &out, &plugin, cancel, &reporter)?;
            for (stage, what) in log.0 {
                println!("{stage}: {what}");
            }
            Ok(())
        }
        Command::Report { db, out } => {
            let report = crate::report::write(&db, &out)?;
            println!(
                "{} ({} plots)",
                report.markdown.display(),
                report.plots.len()
            );
            Ok(())
        }
        Command::Plugins(PluginsCommand::List { plugin }) => plugins_list(plugin.as_deref()),
        Command::BenchPack(args) => {
            let report = crate::bench::pack(&args.db, &args.tokenizer, &args.scratch)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

fn pretrain(args: PretrainArgs) -> anyhow::Result<()> {
    let plugin = crate::plugin::find("pretrain", args.plugin.as_deref())?;
    let cancel = cancel_on_ctrl_c();
    let resume = args.resume.is_some();
    let config = PretrainConfig {
        build: args.build,
        out: args
            .resume
            .or(args.out)
            .expect("clap requires --out or --resume"),
        resume,
        model: (!resume).then_some(args.model),
        init: args.init,
        steps: args.steps,
        batch_size: Some(args.batch_size),
        grad_accum: Some(args.grad_accum),
        optimizer: Some(args.optimizer),
        lr: args.lr,
        warmup: Some(args.warmup),
        clip: Some(args.clip),
        device: Some(args.device),
        seed: Some(args.seed),
        eval_every: Some(args.eval_every),
        eval_batches: Some(args.eval_batches),
        save_every: Some(args.save_every),
        keep_last: Some(args.keep_last),
        threads: args.threads,
    };
    eprintln!(
        "plugin {} {} ({})",
        plugin.info.name,
        plugin.info.version,
        plugin.path.display()
    );
    let reporter = BarReporter::new(args.quiet);
    let summary = crate::pretrain::run(&config, &plugin, cancel, &reporter)?;
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
            config.steps
        );
    }
    Ok(())
}

fn finetune(args: FinetuneArgs) -> anyhow::Result<()> {
    let mut config = crate::finetune::FinetuneConfig::new(args.task, args.data, args.checkpoint);
    config.fractions = args.fractions;
    config.seeds = args.seeds;
    config.epochs = args.epochs;
    config.batch_size = args.batch_size;
    config.effective_batch = args.effective_batch;
    config.lr = args.lr;
    config.out = args.out;
    let plugin = args.run.apply(&mut config, "finetune")?;
    let cancel = cancel_on_ctrl_c();
    let reporter = BarReporter::new(args.quiet);
    for run in crate::finetune::run(&config, &plugin, cancel, &reporter)? {
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

/// First Ctrl-C: stop at the next step boundary with a checkpoint. Second: quit now.
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
    config.recipe = match args.recipe {
        RecipeArg::Paper => Recipe::Paper,
        RecipeArg::Strict => Recipe::Strict,
    };
    config.near_duplicates = !args.no_near_duplicates;
    config.deid = match args.deid {
        DeidArg::Tags => Deid::Tags,
        DeidArg::Keep => Deid::Keep,
    };
    config.task_data = args.task_data;
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
        s.count(crate::select::Reason::Kept).chars as f64 / 1e6,
        s.seconds
    )?;
    let frame = s.to_frame().context("summarizing the build")?;
    writeln!(out, "{frame}")?;
    if let Some(m) = &summary.manifest {
        for (split, st) in &m.splits {
            writeln!(
                out,
                "{split}: {} notes, {} patients, {} rows of {} tokens in {} shards",
                st.notes,
                st.subjects,
                st.rows,
                m.raw_length,
                m.shards
                    .iter()
                    .filter(|s| s.split.as_str() == *split)
                    .count()
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
    let mut frame = crate::query::run(&conn, &args.query)?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Table => writeln!(out, "{frame}")?,
        Format::Csv => crate::query::write_csv(&mut frame, &mut out)?,
        Format::Json => crate::query::write_json(&mut frame, &mut out)?,
    }
    Ok(())
}

/// Panics never print their payload: it could hold note text. The location is enough to
/// report a bug.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if crate::query::PANIC_IS_HANDLED.load(Ordering::Relaxed) {
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

/// Progress bars on stderr, hidden when stderr is not a terminal or with `--quiet`.
struct BarReporter {
    bar: Mutex<Option<ProgressBar>>,
    hidden: bool,
    quiet: bool,
}

impl BarReporter {
    fn new(quiet: bool) -> BarReporter {
        BarReporter {
            bar: Mutex::new(None),
            hidden: quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()),
            quiet,
        }
    }
}

impl Reporter for BarReporter {
    fn start(&self, stage: &str, total: u64, unit: &str) {
        let bar = ProgressBar::with_draw_target(
            Some(total),
            if self.hidden {
                ProgressDrawTarget::hidden()
            } else {
                ProgressDrawTarget::stderr()
            },
        );
        let template = if unit == "steps" {
            "{prefix:>12} [{bar:30}] {human_pos}/{human_len} {msg} ETA {eta}"
        } else if unit == "bytes" {
            "{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
        } else {
            "{msg:>24} [{bar:30}] {human_pos}/{human_len} {per_sec} ETA {eta}"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        if unit == "steps" {
            bar.set_prefix(stage.to_string());
        } else {
            bar.set_message(stage.to_string());
        }
        *self.bar.lock().expect("bar lock") = Some(bar);
    }

    fn advance(&self, done: u64) {
        if let Some(bar) = self.bar.lock().expect("bar lock").as_ref() {
            bar.inc(done);
        }
    }

    fn status(&self, status: &str) {
        if let Some(bar) = self.bar.lock().expect("bar lock").as_ref() {
            bar.set_message(status.to_string());
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("bar lock").take() {
            bar.finish_and_clear();
        }
    }

    /// Warnings show even with `--quiet`.
    fn note(&self, line: &str) {
        if !self.quiet || line.starts_with("warning:") {
            match self.bar.lock().expect("bar lock").as_ref() {
                Some(bar) => bar.suspend(|| eprintln!("{line}")),
                None => eprintln!("{line}"),
            }
        }
    }
}

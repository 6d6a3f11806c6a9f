//! The command line's clap types: one struct per subcommand, a doc line per flag. They
//! turn into the stages' settings in [`super`]; stage code never sees them.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::build::{BuildConfig, Recipe};
use crate::corpus::normalize::Deid;
use crate::corpus::overlap::OverlapConfig;
use crate::eval::evaluate::Split;
use crate::eval::scoring::ModelRun;
use crate::eval::task_data::Task;
use crate::pack::PackSettings;
use crate::plugin::Plugin;
use crate::synth::SynthConfig;
use crate::train::finetune::FinetuneConfig;
use ehrprep_plugin_api::requests::{OptimizerKind, PretrainRequest};

/// Turn MIMIC-III and MIMIC-IV-Note clinical notes into a clean, leakage-free pretraining
/// corpus, with every decision recorded in a DuckDB catalog.
#[derive(Debug, Parser)]
#[command(name = "ehrprep", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// One rank of a data-parallel finetuning epoch (started by `finetune --nproc-per-node`).
    #[command(hide = true)]
    FinetuneRank(FinetuneRankArgs),
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
pub(crate) enum ExperimentCommand {
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
pub(crate) enum PluginsCommand {
    /// List the plugins found: name, version, ABI, capabilities, path. Libraries on the
    /// search path that are not usable plugins are listed with the reason.
    List {
        /// Check this library only.
        #[arg(long, value_name = "PATH")]
        plugin: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct EvaluateArgs {
    #[arg(long, value_enum)]
    pub(crate) task: TaskArg,
    /// The task's official files.
    #[arg(long, value_name = "DIR")]
    pub(crate) data: PathBuf,
    /// A finetuning run folder (RUN/finetune/TASK-F-sS) or a checkpoint folder.
    #[arg(long, value_name = "DIR")]
    pub(crate) checkpoint: PathBuf,
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    pub(crate) split: SplitArg,
    #[command(flatten)]
    pub(crate) run: ModelRunArgs,
}

/// What finetuning and evaluation share: where the model runs, how long answers may be,
/// and which catalog, tokenizer and plugin to use. Defaults come from [`ModelRun`].
#[derive(Debug, clap::Args)]
pub(crate) struct ModelRunArgs {
    #[arg(long, default_value_t = ModelRun::default().device)]
    pub(crate) device: String,
    #[arg(long, default_value_t = ModelRun::default().threads)]
    pub(crate) threads: i32,
    /// Examples per micro-batch, in training and in generation.
    #[arg(long, default_value_t = ModelRun::default().batch_size)]
    pub(crate) batch_size: usize,
    /// Longest generated answer, in tokens [default: the task's: RadQA 30, as the paper's
    /// code, which also cuts RadQA's training answers to 30; MedNLI and CLIP 64].
    #[arg(long)]
    pub(crate) max_new_tokens: Option<usize>,
    /// The catalog [default: the pretraining build's].
    #[arg(long, value_name = "FILE")]
    pub(crate) db: Option<PathBuf>,
    /// The tokenizer [default: the pretraining build's].
    #[arg(long, value_name = "PATH")]
    pub(crate) tokenizer: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    pub(crate) plugin: Option<PathBuf>,
}

impl ModelRunArgs {
    /// The settings, and the plugin with the `capability`.
    pub(crate) fn resolve(self, capability: &str) -> anyhow::Result<(ModelRun, Plugin)> {
        let plugin = super::find_plugin(capability, self.plugin.as_deref())?;
        let run = ModelRun {
            device: self.device,
            threads: self.threads,
            batch_size: self.batch_size,
            max_new_tokens: self.max_new_tokens,
            db: self.db,
            tokenizer: self.tokenizer,
        };
        Ok((run, plugin))
    }
}

/// The build's defaults, as the stages define them.
static BUILD: std::sync::LazyLock<BuildConfig> =
    std::sync::LazyLock::new(|| BuildConfig::new(PathBuf::new(), PathBuf::new()));
static PACK: std::sync::LazyLock<PackSettings> = std::sync::LazyLock::new(PackSettings::default);
static OVERLAP: std::sync::LazyLock<OverlapConfig> =
    std::sync::LazyLock::new(OverlapConfig::default);

static SYNTH: std::sync::LazyLock<SynthConfig> = std::sync::LazyLock::new(SynthConfig::default);

/// The pretraining defaults: the request's own.
static PRETRAIN: std::sync::LazyLock<PretrainRequest> =
    std::sync::LazyLock::new(PretrainRequest::default);

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum OptimizerArg {
    Adafactor,
    Adamw,
}

impl From<OptimizerKind> for OptimizerArg {
    fn from(o: OptimizerKind) -> OptimizerArg {
        match o {
            OptimizerKind::Adafactor => OptimizerArg::Adafactor,
            OptimizerKind::Adamw => OptimizerArg::Adamw,
        }
    }
}

impl From<OptimizerArg> for OptimizerKind {
    fn from(o: OptimizerArg) -> OptimizerKind {
        match o {
            OptimizerArg::Adafactor => OptimizerKind::Adafactor,
            OptimizerArg::Adamw => OptimizerKind::Adamw,
        }
    }
}

/// The finetuning defaults, as [`FinetuneConfig::new`] sets them.
static FINETUNE: std::sync::LazyLock<FinetuneConfig> =
    std::sync::LazyLock::new(|| FinetuneConfig::new(Task::Mednli, PathBuf::new(), PathBuf::new()));

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum TaskArg {
    Mednli,
    Radqa,
    Clip,
}

impl From<TaskArg> for Task {
    fn from(t: TaskArg) -> Task {
        match t {
            TaskArg::Mednli => Task::Mednli,
            TaskArg::Radqa => Task::Radqa,
            TaskArg::Clip => Task::Clip,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum SplitArg {
    Validation,
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Validation => Split::Validation,
            SplitArg::Test => Split::Test,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct FinetuneArgs {
    #[arg(long, value_enum)]
    pub(crate) task: TaskArg,
    /// The task's official files (MedNLI jsonl, RadQA json, CLIP csv).
    #[arg(long, value_name = "DIR")]
    pub(crate) data: PathBuf,
    /// A pretraining run folder (its latest checkpoint) or a checkpoint folder.
    #[arg(long, value_name = "DIR")]
    pub(crate) checkpoint: PathBuf,
    /// Fractions of the training set, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = FINETUNE.fractions.clone())]
    pub(crate) fractions: Vec<f64>,
    /// Seeds, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = FINETUNE.seeds.clone())]
    pub(crate) seeds: Vec<u64>,
    /// Epochs [default: the paper's: MedNLI 40, RadQA 50, CLIP 40].
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Examples per optimizer step, by accumulation.
    #[arg(long, default_value_t = FINETUNE.effective_batch)]
    pub(crate) effective_batch: usize,
    /// Adafactor's constant learning rate.
    #[arg(long, default_value_t = FINETUNE.lr)]
    pub(crate) lr: f64,
    /// Where the runs go [default: CHECKPOINT_RUN/finetune].
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Train each epoch data-parallel on N local processes (on CUDA, one GPU each): a step's
    /// micro-batches (--batch-size each) are dealt out to them, so the result is the same as
    /// one process's; validation and test generation stay in this process.
    #[arg(long, value_name = "N")]
    pub(crate) nproc_per_node: Option<usize>,
    /// Seconds a rank waits for the others (joining, each collective) before failing. Under
    /// torchrun or srun the other ranks wait out rank 0's validation, test scoring and the
    /// next run's encoding between epochs: more than those take.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    pub(crate) dist_timeout: u64,
    /// auto (NCCL on CUDA where the plugin has it, else Gloo), nccl or gloo.
    #[arg(long, value_name = "BACKEND", default_value = "auto", value_parser = ["auto", "nccl", "gloo"])]
    pub(crate) dist_backend: String,
    #[command(flatten)]
    pub(crate) run: ModelRunArgs,
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// One rank of a data-parallel finetuning epoch, started by `ehrprep finetune
/// --nproc-per-node`; not for users.
#[derive(Debug, clap::Args)]
pub(crate) struct FinetuneRankArgs {
    /// The epoch's request (JSON).
    #[arg(long)]
    pub(crate) request: PathBuf,
    /// Where rank 0 writes the plugin's answer.
    #[arg(long)]
    pub(crate) result: PathBuf,
    #[arg(long)]
    pub(crate) plugin: PathBuf,
    #[arg(long, default_value_t = 1800)]
    pub(crate) dist_timeout: u64,
    #[arg(long, default_value = "auto")]
    pub(crate) dist_backend: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PretrainArgs {
    /// A finished build folder (catalog.duckdb and shards/).
    #[arg(long, value_name = "OUT", required_unless_present = "resume")]
    pub(crate) build: Option<PathBuf>,
    /// The run folder for checkpoints (owner-only).
    #[arg(long, value_name = "RUN", required_unless_present = "resume")]
    pub(crate) out: Option<PathBuf>,
    /// Continue the run in RUN from its latest checkpoint, up to --steps in total.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["build", "out", "model", "init"])]
    pub(crate) resume: Option<PathBuf>,
    /// Model size: tiny, tiny-v1_1, t5-small, t5-base, t5-large, t5-v1_1-small,
    /// t5-v1_1-base, t5-v1_1-large.
    #[arg(long, default_value_t = PRETRAIN.model.clone())]
    pub(crate) model: String,
    /// Start from a Hugging Face T5 folder (config.json, model.safetensors) instead.
    #[arg(long, value_name = "DIR")]
    pub(crate) init: Option<PathBuf>,
    /// Total optimizer steps.
    #[arg(long)]
    pub(crate) steps: u64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = PRETRAIN.batch_size)]
    pub(crate) batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = PRETRAIN.grad_accum)]
    pub(crate) grad_accum: usize,
    /// adafactor (T5's) or adamw.
    #[arg(long, value_enum, default_value_t = PRETRAIN.optimizer.into())]
    pub(crate) optimizer: OptimizerArg,
    /// Peak learning rate [default: 1/sqrt(warmup) for Adafactor, 1e-3 for AdamW].
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// Steps at the peak rate before the inverse-sqrt decay.
    #[arg(long, default_value_t = PRETRAIN.warmup)]
    pub(crate) warmup: u64,
    /// Clip the gradient norm to this (0: off).
    #[arg(long, default_value_t = PRETRAIN.clip)]
    pub(crate) clip: f64,
    /// Dropout in training [default: the model family's: T5 v1.0 presets 0.1, as the paper
    /// pretrained; v1.1 presets 0.0; an --init checkpoint its own].
    #[arg(long)]
    pub(crate) dropout: Option<f64>,
    /// auto, cpu, cuda or cuda:N. CUDA trains in bf16, the CPU in f32.
    #[arg(long, default_value_t = PRETRAIN.device.clone())]
    pub(crate) device: String,
    #[arg(long, default_value_t = PRETRAIN.seed)]
    pub(crate) seed: u64,
    /// Validation loss every N steps (0: at checkpoints only).
    #[arg(long, default_value_t = PRETRAIN.eval_every)]
    pub(crate) eval_every: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = PRETRAIN.eval_batches)]
    pub(crate) eval_batches: usize,
    /// Checkpoint every N steps (and always at the end and on Ctrl-C).
    #[arg(long, default_value_t = PRETRAIN.save_every)]
    pub(crate) save_every: u64,
    /// Checkpoints kept (0: all).
    #[arg(long, default_value_t = PRETRAIN.keep_last)]
    pub(crate) keep_last: usize,
    /// CPU threads for libtorch (0: libtorch's default).
    #[arg(long, default_value_t = PRETRAIN.threads)]
    pub(crate) threads: i32,
    /// Train data-parallel on N local processes (ranks; on CUDA, one GPU each), started
    /// here as torchrun would; --batch-size is then per rank. Under torchrun or srun, leave
    /// it out: the ranks come from RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
    #[arg(long, value_name = "N")]
    pub(crate) nproc_per_node: Option<usize>,
    /// The collectives' backend for data-parallel runs: auto (NCCL on CUDA where the plugin
    /// has it, else Gloo), nccl or gloo.
    #[arg(long, value_name = "BACKEND", default_value = "auto", value_parser = ["auto", "nccl", "gloo"])]
    pub(crate) dist_backend: String,
    /// Seconds a rank waits for the others (joining, each collective) before failing; more
    /// than rank 0's validation and checkpoint take, which the others wait out.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    pub(crate) dist_timeout: u64,
    /// Use this plugin library instead of searching EHRPREP_PLUGIN_PATH and the binary's folder.
    #[arg(long, value_name = "PATH")]
    pub(crate) plugin: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BenchPackArgs {
    #[arg(long)]
    pub(crate) db: PathBuf,
    #[arg(long)]
    pub(crate) tokenizer: PathBuf,
    /// Where the benchmark's shards go (overwritten).
    #[arg(long)]
    pub(crate) scratch: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// Folder with MIMIC-III (NOTEEVENTS.csv[.gz]), MIMIC-IV-Note (note/discharge.csv[.gz],
    /// note/radiology.csv[.gz]) or a parent of both.
    #[arg(long, value_name = "DIR")]
    pub(crate) mimic_dir: PathBuf,
    /// Output folder; the catalog is written to OUT/catalog.duckdb.
    #[arg(long, value_name = "OUT")]
    pub(crate) out: PathBuf,
    /// Corpus recipe.
    #[arg(long, value_enum, default_value_t = BUILD.recipe.into())]
    pub(crate) recipe: RecipeArg,
    /// Skip near-duplicate detection (MinHash): `dedup_clusters` stays empty, the build is
    /// faster. The paper's recipe does not use it; `--recipe strict` needs it.
    #[arg(long)]
    pub(crate) no_near_duplicates: bool,
    /// Downstream task files (RadQA json, CLIP sentence_level.csv): their patients are
    /// removed, and so is every note that holds one of their documents' text.
    #[arg(long, value_name = "DIR")]
    pub(crate) task_data: Option<PathBuf>,
    /// Share of a task document's 5-word shingles a note must hold to be dropped as
    /// `task_text_overlap` (placeholders ignored).
    #[arg(long, default_value_t = OVERLAP.threshold, value_name = "F")]
    pub(crate) task_overlap_threshold: f64,
    /// Do not look for task documents' text in the notes: only task patients are removed.
    #[arg(long)]
    pub(crate) no_task_overlap: bool,
    /// File of subject ids to remove, one per line: `123` in both releases, `mimic-iii:123`
    /// or `mimic-iv:10000032` in one (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    pub(crate) exclude_subjects: Option<PathBuf>,
    /// De-identification placeholders: replace with typed tags, or keep as they are.
    #[arg(long, value_enum, default_value_t = BUILD.deid.into())]
    pub(crate) deid: DeidArg,
    /// Replace a finished build in OUT.
    #[arg(long)]
    pub(crate) force: bool,
    /// Notes normalized per batch (memory grows with it: up to three batches are held).
    #[arg(long, default_value_t = BUILD.batch_notes, value_name = "N")]
    pub(crate) batch_notes: usize,
    /// Stop after the corpus: no tokenizer, no shards.
    #[arg(long)]
    pub(crate) no_shards: bool,
    /// Use this tokenizer (a tokenizer.json or a folder holding one, e.g. T5's) instead of
    /// training one; missing sentinels and de-id tags are added.
    #[arg(long, value_name = "PATH")]
    pub(crate) tokenizer: Option<PathBuf>,
    /// Pieces of the trained tokenizer, special tokens included.
    #[arg(long, default_value_t = PACK.tokenizer_config.vocab_size, value_name = "N")]
    pub(crate) vocab_size: u32,
    /// Lowercase text before the trained tokenizer sees it, to replicate the paper's
    /// Clinical-T5-Base (lowercased by a mistake in its script); its Large model is cased.
    #[arg(long)]
    pub(crate) lowercase: bool,
    /// Characters of corpus text the tokenizer trains on, taken evenly across the corpus.
    #[arg(long, default_value_t = PACK.tokenizer_config.sample_chars, value_name = "N")]
    pub(crate) tokenizer_sample_chars: usize,
    /// Encoder input length after span corruption (512 packs raw chunks of 568 tokens).
    #[arg(long, default_value_t = PACK.inputs_length, value_name = "N")]
    pub(crate) input_length: usize,
    /// Share of patients in the validation split.
    #[arg(long, default_value_t = PACK.validation_fraction, value_name = "F")]
    pub(crate) validation_fraction: f64,
    /// Seed of the note order in the shards.
    #[arg(long, default_value_t = PACK.seed)]
    pub(crate) seed: u64,
    /// Raw chunks per shard file.
    #[arg(long, default_value_t = PACK.rows_per_shard, value_name = "N", hide = true)]
    pub(crate) rows_per_shard: usize,
    /// No progress bars.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum RecipeArg {
    /// The paper's recipe: error flags, era overlap, task patients, drafts, empty, exact
    /// copies; near duplicates are recorded in `dedup_clusters` but kept.
    Paper,
    /// The paper's recipe, and near duplicates are dropped too.
    Strict,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum DeidArg {
    /// `[**Known lastname 12**]` and `___` become typed tags such as `[Name]`.
    Tags,
    /// Placeholders stay as they are.
    Keep,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SynthArgs {
    /// Output folder (gets mimiciii/, mimic-iv-note/note/ and tasks/).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Number of notes to write across both releases.
    #[arg(long, default_value_t = SYNTH.notes, value_name = "N")]
    pub(crate) notes: u64,
    /// Random seed; the same seed gives byte-identical files.
    #[arg(long, default_value_t = SYNTH.seed)]
    pub(crate) seed: u64,
    /// Write plain .csv instead of .csv.gz.
    #[arg(long)]
    pub(crate) plain: bool,
    /// Also write notes longer than DuckDB's default 2 MB line limit (about one per 50,000).
    #[arg(long)]
    pub(crate) long_notes: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SqlArgs {
    /// Catalog file (OUT/catalog.duckdb); opened read-only.
    #[arg(long, value_name = "FILE")]
    pub(crate) db: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
    /// The query.
    pub(crate) query: String,
}

impl From<Recipe> for RecipeArg {
    fn from(r: Recipe) -> RecipeArg {
        match r {
            Recipe::Paper => RecipeArg::Paper,
            Recipe::Strict => RecipeArg::Strict,
        }
    }
}

impl From<RecipeArg> for Recipe {
    fn from(r: RecipeArg) -> Recipe {
        match r {
            RecipeArg::Paper => Recipe::Paper,
            RecipeArg::Strict => Recipe::Strict,
        }
    }
}

impl From<Deid> for DeidArg {
    fn from(d: Deid) -> DeidArg {
        match d {
            Deid::Tags => DeidArg::Tags,
            Deid::Keep => DeidArg::Keep,
        }
    }
}

impl From<DeidArg> for Deid {
    fn from(d: DeidArg) -> Deid {
        match d {
            DeidArg::Tags => Deid::Tags,
            DeidArg::Keep => Deid::Keep,
        }
    }
}

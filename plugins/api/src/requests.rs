//! What the host asks a trainer plugin and what the plugin reports back, as typed structs
//! both sides share. They cross the ABI as JSON; every default lives here, once, so a
//! hand-written request, the command line and an experiment file mean the same thing.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adafactor as T5 used it: factored second moments, no momentum, decay step^-0.8,
    /// update clipping at RMS 1, step size scaled by the parameter's RMS.
    Adafactor,
    /// AdamW: betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on matrices.
    Adamw,
}

impl OptimizerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerKind::Adafactor => "adafactor",
            OptimizerKind::Adamw => "adamw",
        }
    }
}

/// `pretrain`: span-corruption pretraining on a build's shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainRequest {
    /// The build's `shards/` folder (with `manifest.json`).
    #[serde(default)]
    pub shards_dir: PathBuf,
    /// The run folder: checkpoints and `run.json`.
    #[serde(default)]
    pub out: PathBuf,
    /// A preset name (`t5-base`, `tiny`, ...), used unless `init` is given.
    #[serde(default = "default_model")]
    pub model: String,
    /// A Hugging Face T5 directory to continue from (`config.json`, `model.safetensors`).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Continue the run in `out` from its latest checkpoint.
    #[serde(default)]
    pub resume: bool,
    /// Total optimizer steps (a resumed run continues up to this count).
    #[serde(default)]
    pub steps: u64,
    /// Sequences per micro-batch.
    #[serde(default = "default_pretrain_batch")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerKind,
    /// Peak learning rate; default 1/sqrt(warmup) for Adafactor (T5's schedule), 1e-3 for AdamW.
    #[serde(default)]
    pub lr: Option<f64>,
    /// Warmup steps of the inverse square root schedule.
    #[serde(default = "default_warmup")]
    pub warmup: u64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[serde(default = "one_f")]
    pub clip: f64,
    /// Dropout in training; default: the model family's (T5 v1.0 presets 0.1, as the
    /// paper pretrained; v1.1 presets 0.0, as T5 v1.1 did; an `init` checkpoint its own).
    #[serde(default)]
    pub dropout: Option<f64>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Seeds initialization, the example order and the span-corruption masks.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Validation loss every this many steps (0: only at checkpoints).
    #[serde(default = "default_every")]
    pub eval_every: u64,
    /// Validation batches per evaluation.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// A checkpoint every this many steps (and at the end).
    #[serde(default = "default_every")]
    pub save_every: u64,
    /// Checkpoints kept (the latest is never removed).
    #[serde(default = "default_keep")]
    pub keep_last: usize,
    /// CPU threads for libtorch (0: libtorch's default).
    #[serde(default)]
    pub threads: i32,
    /// The host's id for this run, kept in run.json so the host finds it again.
    #[serde(default)]
    pub run_id: Option<String>,
    /// This process's place in a data-parallel run (from torchrun's, SLURM's or ehrprep's
    /// launcher environment); none: one process. `batch_size` is then per rank. Left out
    /// of the JSON when none, so a plugin that predates it still reads the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<World>,
}

/// One rank of a data-parallel run and how to reach the others (torch.distributed's
/// environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// The rank on this machine: which CUDA device it takes.
    pub local_rank: usize,
    /// Where rank 0 serves the rendezvous store.
    pub master_addr: String,
    pub master_port: u16,
    /// The network interface Gloo binds to (GLOO_SOCKET_IFNAME); none: loopback when the
    /// master is local, else the address this machine's hostname resolves to.
    #[serde(default)]
    pub interface: Option<String>,
    /// Under torchrun, its agent serves the store at MASTER_ADDR:MASTER_PORT and the ranks
    /// are its clients under this key prefix (`/worker/attempt_N`); none: rank 0 serves it.
    #[serde(default)]
    pub agent_store: Option<String>,
    /// `nccl`, `gloo` or none (auto: NCCL for CUDA where the plugin has it, else Gloo).
    #[serde(default)]
    pub backend: Option<String>,
    /// How long a collective or the rendezvous may wait for a rank before failing.
    #[serde(default = "default_world_timeout")]
    pub timeout_s: u64,
}

fn default_world_timeout() -> u64 {
    1800
}

impl Default for PretrainRequest {
    fn default() -> Self {
        PretrainRequest {
            shards_dir: PathBuf::new(),
            out: PathBuf::new(),
            model: default_model(),
            init: None,
            resume: false,
            steps: 0,
            batch_size: default_pretrain_batch(),
            grad_accum: one(),
            optimizer: default_optimizer(),
            lr: None,
            warmup: default_warmup(),
            clip: one_f(),
            dropout: None,
            device: default_device(),
            seed: default_seed(),
            eval_every: default_every(),
            eval_batches: default_eval_batches(),
            save_every: default_every(),
            keep_last: default_keep(),
            threads: 0,
            run_id: None,
            world: None,
        }
    }
}

impl PretrainRequest {
    /// The model's name for the catalog: the `init` folder, else the preset.
    pub fn model_name(&self) -> String {
        match &self.init {
            Some(init) => init.display().to_string(),
            None => self.model.clone(),
        }
    }
}

/// `finetune`: one epoch on examples the host has tokenized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneRequest {
    /// Encoded training examples (JSON lines `{"id", "input_ids", "target_ids"}`).
    pub train: PathBuf,
    /// The checkpoint to start from (pretrained, or the previous epoch's).
    pub init: PathBuf,
    /// Continue the optimizer state in `init` (false for the first epoch).
    #[serde(default)]
    pub resume_optimizer: bool,
    /// Where this epoch's checkpoint goes (created; replaced if present).
    pub out: PathBuf,
    /// 0-based; seeds this epoch's order and dropout.
    pub epoch: u64,
    #[serde(default = "default_task_batch")]
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Adafactor's constant learning rate.
    #[serde(default = "default_finetune_lr")]
    pub lr: f64,
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub threads: i32,
    /// This process's place in a data-parallel epoch; none: one process. The step's
    /// micro-batches are dealt out to the ranks, so any number of ranks trains the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<World>,
}

impl FinetuneRequest {
    /// Dropout while finetuning (T5's).
    pub const DROPOUT: f64 = 0.1;
}

/// `session-join` (rank 0) and `session-follow` (every other rank): finetuning as one
/// rank of a launched world (torchrun, srun). The ranks join one process group that lasts
/// until `session-leave`; while rank 0 holds it, each `finetune` call with a `world` trains
/// on it and first sends its request to the others, which wait for it in `session-follow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub world: World,
    #[serde(default = "default_device")]
    pub device: String,
}

/// `session-leave` (rank 0): the followers return, with an error when `failed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveRequest {
    #[serde(default)]
    pub failed: bool,
}

/// What `finetune` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneResult {
    pub steps: u64,
    /// The epoch's mean training loss.
    pub mean_loss: f64,
    pub checkpoint: PathBuf,
    pub seconds: f64,
}

/// `generate`: predictions for encoded examples, written as JSON lines `{"id", "ids"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub checkpoint: PathBuf,
    pub examples: PathBuf,
    /// JSON lines `{"id", "ids"}` in the examples' order.
    pub out: PathBuf,
    /// 1: greedy.
    #[serde(default = "one")]
    pub beams: usize,
    /// Longest generated answer, in tokens.
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "default_task_batch")]
    pub batch_size: usize,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub threads: i32,
}

/// What a pretraining plugin reports while it runs, through the host's `event` callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrainEvent {
    /// Once, when the model is ready: where training starts and on what.
    Start {
        start_step: u64,
        steps: u64,
        device: String,
        parameters: i64,
        /// The model's Hugging Face `config.json`.
        model_config: serde_json::Value,
        /// The dropout it trains with, where the plugin says.
        #[serde(default)]
        dropout: Option<f64>,
        /// The collectives' backend of a data-parallel run (`nccl`, `gloo`).
        #[serde(default)]
        backend: Option<String>,
    },
    /// After every optimizer step.
    TrainStep {
        step: u64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens: u64,
        tokens_per_s: f64,
        elapsed_s: f64,
    },
    /// Validation loss at `step`.
    Validation { step: u64, loss: f64 },
    /// A checkpoint written and synced.
    Checkpoint {
        step: u64,
        path: PathBuf,
        validation_loss: Option<f64>,
        sha256: String,
    },
    /// A finetuning epoch finished.
    FinetuneEpoch { epoch: u64, steps: u64, loss: f64 },
}

fn default_model() -> String {
    "t5-base".into()
}
fn default_pretrain_batch() -> usize {
    128
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Adafactor
}
fn default_warmup() -> u64 {
    40_000
}
/// Where a model runs unless told: a CUDA device when there is one, else the CPU.
pub fn default_device() -> String {
    "auto".into()
}
fn default_seed() -> u64 {
    42
}
fn default_every() -> u64 {
    1000
}
fn default_eval_batches() -> usize {
    20
}
fn default_keep() -> usize {
    3
}
/// Finetuning and generation batch.
pub fn default_task_batch() -> usize {
    8
}
/// Finetuning's constant learning rate (the paper: 1e-4).
pub fn default_finetune_lr() -> f64 {
    1e-4
}
fn default_dropout() -> f64 {
    FinetuneRequest::DROPOUT
}
/// Longest generated answer by default.
pub fn default_new_tokens() -> usize {
    64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_pretrain_request_takes_every_default() {
        let parsed: PretrainRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(parsed, PretrainRequest::default());
        assert_eq!(parsed.batch_size, 128);
        assert_eq!(parsed.warmup, 40_000);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<PretrainRequest>(r#"{"batch_szie": 4}"#).unwrap_err();
        assert!(err.to_string().contains("batch_szie"), "{err}");
    }

    #[test]
    fn events_round_trip_with_their_kind() {
        let e = TrainEvent::Validation { step: 3, loss: 1.5 };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"kind":"validation","step":3,"loss":1.5}"#);
        assert_eq!(serde_json::from_str::<TrainEvent>(&json).unwrap(), e);
    }
}

//! The pretraining loop: span-corrupted batches from the shards, Adafactor (or AdamW) on an
//! inverse-sqrt schedule, gradient accumulation and clipping, periodic validation, and
//! atomic checkpoints that resume exactly.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ehrprep_plugin_api::requests::{OptimizerKind, PretrainRequest, TrainEvent, World};
use ehrprep_plugin_api::{CallError, Host};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor, nn};

use ehrprep_data::examples::{Examples, Rows};
use ehrprep_data::rng::GOLDEN;
use ehrprep_data::shards::{Manifest, Split};

use crate::data::{batch, failed};
use crate::dist::Group;
use crate::model::{T5, T5Config};
use crate::optim::{Optimizer, Schedule, clip_grad_norm};

/// What a finished (or stopped) run reports back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainResult {
    pub step: u64,
    pub checkpoint: Option<PathBuf>,
    pub last_loss: Option<f64>,
    pub validation_loss: Option<f64>,
    pub device: String,
    pub parameters: i64,
    pub model_config: T5Config,
}

/// `trainer_state.json` in every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: u64,
    /// Examples consumed: the data position.
    pub examples: u64,
    pub seed: u64,
    pub optimizer: OptimizerKind,
    pub build_id: String,
    pub tokenizer_sha256: String,
    pub validation_loss: Option<f64>,
}

/// The parameters that take gradients.
pub(crate) fn trainable(params: &[(String, Tensor)]) -> Vec<Tensor> {
    params
        .iter()
        .filter(|(_, p)| p.requires_grad())
        .map(|(_, p)| p.shallow_clone())
        .collect()
}

/// The seed of the dropout masks of micro-batch `micro` of optimizer step `step` (0-based);
/// in a data-parallel run, `micro` counts every rank's micro-batches (`micro * world + rank`).
fn dropout_seed(seed: u64, step: u64, micro: u64) -> i64 {
    let mut r = ehrprep_data::rng::Rng::new(
        seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ micro.wrapping_mul(GOLDEN),
    );
    (r.next_u64() >> 1) as i64
}

/// The device a request names; choosing a CUDA device turns on deterministic algorithms.
pub fn device_for(name: &str) -> Result<Device, String> {
    let device = named_device(name)?;
    if device.is_cuda() {
        crate::cuda::deterministic_algorithms();
    }
    Ok(device)
}

/// The device a request names, for a rank: a rank asked for `auto` or `cuda` takes the
/// CUDA device of its local rank, as torchrun expects; where the launcher shows each rank
/// only its own GPU (SLURM's --gpus-per-task 1), that is 0.
pub fn rank_device(name: &str, world: Option<&World>) -> Result<Device, String> {
    if world.is_some_and(|w| w.size > 1) && name.starts_with("cuda:") {
        return Err(format!(
            "`--device {name}` would put every rank on one GPU; give `cuda` or `auto`, and \
             each rank takes its LOCAL_RANK's"
        ));
    }
    match world {
        Some(w) if matches!(name, "auto" | "cuda") && tch::Cuda::is_available() => {
            let visible = tch::Cuda::device_count().max(1) as usize;
            device_for(&format!("cuda:{}", w.local_rank % visible))
        }
        _ => device_for(name),
    }
}

fn named_device(name: &str) -> Result<Device, String> {
    match name {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        _ if name.starts_with("cuda") => {
            let index = name
                .strip_prefix("cuda:")
                .map(|i| {
                    i.parse::<usize>()
                        .map_err(|_| format!("bad device `{name}`"))
                })
                .transpose()?
                .unwrap_or(0);
            if !tch::Cuda::is_available() || index >= tch::Cuda::device_count() as usize {
                return Err(format!(
                    "device `{name}` is not available (CUDA devices: {})",
                    tch::Cuda::device_count()
                ));
            }
            Ok(Device::Cuda(index))
        }
        other => Err(format!(
            "unknown device `{other}` (auto, cpu, cuda, cuda:N)"
        )),
    }
}

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The checkpoint the run folder's `latest` file names.
pub fn latest_checkpoint(run: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(run.join("latest")).ok()?;
    let dir = run.join(name.trim());
    dir.join("trainer_state.json").exists().then_some(dir)
}

fn err(context: &str) -> impl Fn(tch::TchError) -> CallError + '_ {
    move |e| CallError::Failed(format!("{context}: {e}"))
}

pub fn pretrain(req: &PretrainRequest, host: &Host<'_>) -> Result<PretrainResult, CallError> {
    if req.threads > 0 {
        tch::set_num_threads(req.threads);
    }
    for (field, path) in [("shards_dir", &req.shards_dir), ("out", &req.out)] {
        if path.as_os_str().is_empty() {
            return Err(CallError::Failed(format!(
                "the pretrain request names no `{field}`"
            )));
        }
    }
    let device = rank_device(&req.device, req.world.as_ref())?;
    let manifest = Manifest::read(&req.shards_dir).map_err(failed)?;
    let train_rows = Rows::load(&req.shards_dir, &manifest, Split::Train).map_err(failed)?;
    let valid_rows = Rows::load(&req.shards_dir, &manifest, Split::Validation).map_err(failed)?;
    if train_rows.is_empty() {
        return Err(CallError::Failed(format!(
            "`{}` has no training rows",
            req.shards_dir.display()
        )));
    }
    if req.batch_size == 0 || req.grad_accum == 0 {
        return Err(CallError::Failed(
            "batch size and accumulation must be at least 1".into(),
        ));
    }

    if !req.resume && latest_checkpoint(&req.out).is_some() {
        return Err(CallError::Failed(format!(
            "`{}` already holds a run; resume it or choose another folder",
            req.out.display()
        )));
    }
    let resume_from = if req.resume {
        Some(latest_checkpoint(&req.out).ok_or_else(|| {
            CallError::Failed(format!(
                "`{}` has no checkpoint to resume from",
                req.out.display()
            ))
        })?)
    } else {
        None
    };
    // Every rank has checked the run folder before rank 0 can write to it: joining waits
    // for all of them (under torchrun's agent store, the first collective does).
    let group = req
        .world
        .as_ref()
        .map(|w| Group::join(w, device))
        .transpose()?;
    let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank, g.size));
    let lead = rank == 0;
    let mut config = match (&resume_from, &req.init) {
        (Some(dir), _) | (None, Some(dir)) => T5Config::read(dir)?,
        (None, None) => T5Config::preset(&req.model).ok_or_else(|| {
            CallError::Failed(format!(
                "unknown model `{}`; presets: {}",
                req.model,
                T5Config::PRESETS.join(", ")
            ))
        })?,
    };
    // The vocabulary holds every id the tokenizer makes, rounded up like T5's 32128. A preset
    // gets exactly that: rows no id reaches would cost the output layer's time and hold
    // logits that training must first push down (a tiny model with a 1,000-id tokenizer
    // spent most of its time on 31,000 such rows). Initial weights only grow.
    let needed = (manifest.tokenizer.vocab_size as u64).div_ceil(128) as i64 * 128;
    let init_vocab = config.vocab_size;
    match (&resume_from, &req.init) {
        (None, None) => config.vocab_size = needed,
        (None, Some(_)) if config.vocab_size < needed => config.vocab_size = needed,
        _ => {}
    }
    if config.vocab_size < manifest.tokenizer.vocab_size as i64 {
        return Err(CallError::Failed(format!(
            "the model's vocabulary ({}) is smaller than the tokenizer's ({})",
            config.vocab_size, manifest.tokenizer.vocab_size
        )));
    }
    // The paper pretrained T5 v1.0 configs with dropout 0.1; T5 v1.1 turned it off. A
    // checkpoint continued (or resumed) keeps its own unless the request names one.
    config.dropout_rate = match (req.dropout, &resume_from, &req.init) {
        (Some(p), _, _) => p,
        (None, None, None) => {
            if config.gated() {
                0.0
            } else {
                0.1
            }
        }
        (None, _, _) => config.dropout_rate,
    };
    if !(0.0..1.0).contains(&config.dropout_rate) {
        return Err(CallError::Failed(format!(
            "dropout {} is not in [0, 1)",
            config.dropout_rate
        )));
    }
    // The tokenizer decides the special ids; generation stops at its `</s>`.
    let (pad, eos) = (
        manifest.tokenizer.pad_id as i64,
        manifest.tokenizer.eos_id as i64,
    );
    if resume_from.is_some() && (config.pad_token_id, config.eos_token_id) != (pad, eos) {
        return Err(CallError::Failed(format!(
            "the checkpoint uses pad {} and </s> {}; the build's tokenizer uses {pad} and {eos}",
            config.pad_token_id, config.eos_token_id
        )));
    }
    (
        config.pad_token_id,
        config.eos_token_id,
        config.decoder_start_token_id,
    ) = (pad, eos, pad);

    let mut vs = nn::VarStore::new(device);
    let compute = if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let model = {
        // libtorch's generator is global: seed and draw the initial weights in one piece.
        let _guard = crate::GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(req.seed as i64);
        T5::new(&vs, config.clone(), compute)
    };
    let mut optimizer = Optimizer::new(req.optimizer);
    let mut start_step = 0;
    let mut examples_seen = 0;
    if let Some(dir) = &resume_from {
        crate::checkpoint::load_weights(&mut vs, &dir.join("model.safetensors"))?;
        let state: TrainerState = crate::checkpoint::read_json(&dir.join("trainer_state.json"))?;
        if state.optimizer != req.optimizer || state.seed != req.seed {
            return Err(CallError::Failed(format!(
                "`{}` was trained with {:?} and seed {}; resume it with the same",
                req.out.display(),
                state.optimizer,
                state.seed
            )));
        }
        if state.build_id != manifest.build_id
            || state.tokenizer_sha256 != manifest.tokenizer.sha256
        {
            return Err(CallError::Failed(format!(
                "`{}` was trained on build {} with another tokenizer or corpus; it cannot resume on build {}",
                req.out.display(),
                state.build_id,
                manifest.build_id
            )));
        }
        let named = Tensor::read_safetensors(dir.join("optimizer.safetensors"))
            .map_err(err("reading optimizer state"))?;
        optimizer.load_state(state.step, named, device)?;
        start_step = state.step;
        examples_seen = state.examples;
        if lead {
            host.info(&format!(
                "resuming from step {start_step} ({})",
                dir.display()
            ));
        }
    } else if let Some(dir) = &req.init {
        crate::checkpoint::load_hf(&mut vs, dir, init_vocab)?;
        if lead {
            host.info(&format!("initialized from {}", dir.display()));
        }
    }
    if lead {
        crate::checkpoint::prepare_run_dir(&req.out, req)?;
    }

    let lr_schedule = match (req.optimizer, req.lr) {
        (_, Some(lr)) => Schedule::InverseSqrt {
            peak: lr,
            warmup: req.warmup,
        },
        (OptimizerKind::Adafactor, None) => {
            let peak = 1.0 / (req.warmup.max(1) as f64).sqrt();
            // T5 warmed up 10,000 steps, so its peak was 0.01. A short warmup makes the
            // default far larger (0.32 at 10 steps), and such a checkpoint finetuned slower
            // than a freshly initialized model.
            if lead && resume_from.is_none() && peak > 0.01 {
                host.warn(&format!(
                    "with warmup {} the default peak learning rate, 1/sqrt(warmup), is \
                     {peak:.3}, above T5's 0.01; give the rate (--lr; T5's: 0.01)",
                    req.warmup
                ));
            }
            Schedule::InverseSqrt {
                peak,
                warmup: req.warmup,
            }
        }
        (OptimizerKind::Adamw, None) => Schedule::InverseSqrt {
            peak: 1e-3,
            warmup: req.warmup,
        },
    };
    let params: Vec<(String, Tensor)> = {
        let mut v: Vec<_> = vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    // The ranks start from the same weights whatever each one drew or read: rank 0's.
    if let Some(g) = &group {
        g.broadcast_all(params.iter().map(|(_, p)| p))?;
    }
    let overlap = match &group {
        Some(g) => Some(g.overlap(&trainable(&params))?),
        None => None,
    };
    let device_label = device_name(device);
    let parameters = config.parameters();
    // Rank 0 speaks for the run: events, validation, checkpoints.
    let event = |e: &TrainEvent| {
        if lead {
            host.event(e)
        }
    };
    event(&TrainEvent::Start {
        start_step,
        steps: req.steps,
        device: device_label.clone(),
        parameters,
        model_config: serde_json::to_value(&config).expect("the config serializes"),
        dropout: Some(config.dropout_rate),
        backend: group.as_ref().map(|g| g.backend.to_string()),
    });

    let mut train = Examples::new(&train_rows, &manifest, req.seed, true);
    let started = Instant::now();
    let mut last_loss = None;
    let mut validation_loss = None;
    let mut last_checkpoint = resume_from.clone();
    let mut step = start_step;
    let validate = |model: &T5| -> Option<f64> {
        if valid_rows.is_empty() {
            return None;
        }
        let mut valid = Examples::new(&valid_rows, &manifest, req.seed, false);
        let n = (req.eval_batches * req.batch_size)
            .min(valid_rows.len())
            .max(1);
        let mut total = 0.0;
        let mut batches = 0;
        tch::no_grad(|| {
            let mut first = 0;
            while first < n as u64 {
                let size = req.batch_size.min(n - first as usize);
                let b = batch(&mut valid, first, size, device);
                total += model
                    .loss(&b.inputs, &b.mask, &b.labels, false)
                    .double_value(&[])
                    * size as f64;
                batches += size;
                first += size as u64;
            }
        });
        Some(total / batches as f64)
    };

    // A data-parallel step takes `world` micro-batches side by side: rank r the r-th
    // `batch_size` examples of each, so the ranks together see what one process with
    // `world * batch_size` would, in the same order.
    let stride = (world * req.batch_size) as u64;
    while step < req.steps {
        // Every rank stops at the same step when any one is asked to.
        let stop = match &group {
            Some(g) => g.sum(&[f64::from(u8::from(host.cancelled()))])?[0] > 0.0,
            None => host.cancelled(),
        };
        if stop {
            break;
        }
        let t0 = Instant::now();
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        let mut zeroed = false;
        for micro in 0..req.grad_accum as u64 {
            let first = examples_seen + (rank * req.batch_size) as u64;
            let b = batch(&mut train, first, req.batch_size, device);
            examples_seen += stride;
            // Dropout masks are a function of (seed, step, micro-batch), so a resumed run
            // draws the ones an uninterrupted run would have.
            let loss = {
                let _guard = crate::GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
                tch::manual_seed(dropout_seed(
                    req.seed,
                    step,
                    micro * world as u64 + rank as u64,
                ));
                model.loss(&b.inputs, &b.mask, &b.labels, true)
            };
            if !zeroed {
                for (_, p) in &params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
                zeroed = true;
            }
            if let Some(o) = &overlap
                && micro + 1 == req.grad_accum as u64
            {
                o.arm()?;
            }
            (&loss / req.grad_accum as f64).backward();
            loss_sum += loss.double_value(&[]);
            tokens += b.input_tokens;
        }
        if let (Some(g), Some(o)) = (&group, &overlap) {
            o.finish(world as f64)?;
            let sums = g.sum(&[loss_sum, tokens as f64])?;
            (loss_sum, tokens) = (sums[0], sums[1] as usize);
        }
        // Every rank holds the same averaged gradients and loss, so all stop here together.
        let loss = loss_sum / (req.grad_accum * world) as f64;
        if !loss.is_finite() {
            return Err(CallError::Failed(format!(
                "the loss is {loss} at step {}; stopping",
                step + 1
            )));
        }
        let grad_norm = clip_grad_norm(&params, req.clip);
        if !grad_norm.is_finite() {
            return Err(CallError::Failed(format!(
                "the gradient norm is {grad_norm} at step {}; stopping before the weights are spoiled",
                step + 1
            )));
        }
        step += 1;
        let lr = lr_schedule.lr(step);
        optimizer.step(&params, lr);
        let seconds = t0.elapsed().as_secs_f64();
        last_loss = Some(loss);
        event(&TrainEvent::TrainStep {
            step,
            loss,
            lr,
            grad_norm,
            tokens: tokens as u64,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
            elapsed_s: started.elapsed().as_secs_f64(),
        });
        let save =
            lead && (step == req.steps || (req.save_every > 0 && step % req.save_every == 0));
        if lead && (save || (req.eval_every > 0 && step % req.eval_every == 0)) {
            validation_loss = validate(&model);
            if let Some(loss) = validation_loss {
                event(&TrainEvent::Validation { step, loss });
            }
        }
        if save {
            last_checkpoint = Some(write_checkpoint(
                &vs,
                &model,
                &optimizer,
                &manifest,
                req,
                step,
                examples_seen,
                validation_loss,
                host,
            )?);
        }
    }

    let result = PretrainResult {
        step,
        checkpoint: last_checkpoint.clone(),
        last_loss,
        validation_loss,
        device: device_label,
        parameters,
        model_config: config,
    };
    if step < req.steps {
        // Stopped by the user: leave a checkpoint at this exact step to resume from.
        let saved = last_checkpoint
            .as_ref()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        let result = if lead
            && saved.as_deref() != Some(&crate::checkpoint::dir_name(step))
            && step > start_step
        {
            let dir = write_checkpoint(
                &vs,
                &model,
                &optimizer,
                &manifest,
                req,
                step,
                examples_seen,
                validation_loss,
                host,
            )?;
            PretrainResult {
                checkpoint: Some(dir),
                ..result
            }
        } else {
            result
        };
        return Err(CallError::Cancelled(
            serde_json::to_string(&result).expect("result serializes"),
        ));
    }
    Ok(result)
}

#[allow(clippy::too_many_arguments)]
fn write_checkpoint(
    vs: &nn::VarStore,
    model: &T5,
    optimizer: &Optimizer,
    manifest: &Manifest,
    req: &PretrainRequest,
    step: u64,
    examples: u64,
    validation_loss: Option<f64>,
    host: &Host<'_>,
) -> Result<PathBuf, CallError> {
    let state = TrainerState {
        step,
        examples,
        seed: req.seed,
        optimizer: req.optimizer,
        build_id: manifest.build_id.clone(),
        tokenizer_sha256: manifest.tokenizer.sha256.clone(),
        validation_loss,
    };
    let dir = crate::checkpoint::save(&req.out, vs, &model.config, Some((optimizer, &state)))?;
    let sha = sha256_file(&dir.join("model.safetensors"))?;
    host.event(&TrainEvent::Checkpoint {
        step,
        path: dir.clone(),
        validation_loss,
        sha256: sha.clone(),
    });
    crate::checkpoint::prune(&req.out, req.keep_last)?;
    Ok(dir)
}

pub fn sha256_file(path: &Path) -> Result<String, CallError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CallError::Failed(format!("reading `{}`: {e}", path.display())))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

//! Finetuning one epoch at a time and generating predictions, on examples the host has
//! tokenized (JSON lines of ids). The host drives the epochs: it scores each epoch's
//! validation predictions itself (the metrics need the tokenizer), keeps the best
//! checkpoint, and resumes after a crash at the last finished epoch.

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use ehrprep_plugin_api::requests::{
    FinetuneRequest, FinetuneResult, GenerateRequest, OptimizerKind, TrainEvent,
};
use ehrprep_plugin_api::{CallError, Host};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::dist::Group;
use crate::model::{T5, T5Config};
use crate::optim::{Optimizer, clip_grad_norm};
use crate::train::{TrainerState, device_for, rank_device};

/// One tokenized example; `target_ids` end with `</s>`, `input_ids` too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Encoded {
    pub id: String,
    pub input_ids: Vec<i64>,
    #[serde(default)]
    pub target_ids: Vec<i64>,
}

pub fn read_encoded(path: &Path) -> Result<Vec<Encoded>, CallError> {
    let file = std::fs::File::open(path)
        .map_err(|e| CallError::Failed(format!("`{}`: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| CallError::Failed(format!("`{}`: {e}", path.display())))?;
        if line.is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| {
            CallError::Failed(format!(
                "`{}` line {}: not an encoded example: {e}",
                path.display(),
                i + 1
            ))
        })?);
    }
    Ok(out)
}

/// Ranks on other machines read the epoch's files through paths rank 0 chose: a copy that
/// differs there would train silently on other data, so every rank checks it holds what
/// rank 0 holds (the examples, the optimizer's step and the shapes of its state) before
/// the first step.
fn same_start(
    group: &Group,
    examples: &[Encoded],
    optimizer: &Optimizer,
    train: &Path,
) -> Result<(), CallError> {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut mix = |v: i64| {
        for b in v.to_le_bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    mix(optimizer.step as i64);
    for (name, t) in optimizer.state_tensors() {
        name.bytes().for_each(|b| mix(i64::from(b)));
        t.size().into_iter().for_each(&mut mix);
    }
    for e in examples {
        for ids in [&e.input_ids, &e.target_ids] {
            mix(ids.len() as i64);
            ids.iter().copied().for_each(&mut mix);
        }
    }
    let mine = hash.to_le_bytes();
    let rank_0s = group.broadcast_bytes((group.rank == 0).then_some(&mine[..]))?;
    let differ = group.sum(&[f64::from(u8::from(rank_0s != mine))])?[0];
    if differ > 0.0 {
        return Err(CallError::Failed(format!(
            "{differ} of {} ranks read other training examples or optimizer state than rank 0 \
             from `{}` and the checkpoint it names: ranks on other machines need the same files \
             at the same paths",
            group.size,
            train.display()
        )));
    }
    Ok(())
}

fn load(dir: &Path, device: Device, dropout: Option<f64>) -> Result<(nn::VarStore, T5), CallError> {
    let mut config = T5Config::read(dir)?;
    if let Some(p) = dropout {
        config.dropout_rate = p;
    }
    let mut vs = nn::VarStore::new(device);
    let compute = if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let model = {
        // The initial draws, overwritten below, still come from the global generator.
        let _guard = crate::GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
        T5::new(&vs, config.clone(), compute)
    };
    crate::checkpoint::load_hf(&mut vs, dir, config.vocab_size)?;
    Ok((vs, model))
}

/// Pads rows to the longest with `pad` and returns ids and mask [B, T].
fn pad(rows: &[&[i64]], pad: i64, device: Device) -> (Tensor, Tensor) {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut mask = Vec::with_capacity(rows.len() * width);
    for r in rows {
        ids.extend_from_slice(r);
        ids.extend(std::iter::repeat_n(pad, width - r.len()));
        mask.extend(std::iter::repeat_n(1i64, r.len()));
        mask.extend(std::iter::repeat_n(0i64, width - r.len()));
    }
    let shape = [rows.len() as i64, width as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}

/// The seed of the dropout masks of micro-batch `micro` of step `step` in the epoch that
/// `mix` stands for: the same whichever rank trains it.
fn micro_seed(mix: u64, step: usize, micro: usize) -> i64 {
    let mut r = ehrprep_data::rng::Rng::new(
        mix ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
            ^ (micro as u64).wrapping_mul(ehrprep_data::rng::GOLDEN),
    );
    (r.next_u64() >> 1) as i64
}

/// One epoch. In a data-parallel epoch every rank walks the same order and steps, and
/// micro-batch m of a step is trained by rank m mod N; the weighted gradients are summed
/// over the ranks, so N ranks give one process's update. Rank 0 writes the checkpoint.
pub fn finetune(req: &FinetuneRequest, host: &Host<'_>) -> Result<FinetuneResult, CallError> {
    if req.world.is_some()
        && let Some(result) = crate::session::lead(req, |group| epoch(req, host, group))?
    {
        return Ok(result);
    }
    let group = match &req.world {
        Some(w) => Some(Group::join(w, rank_device(&req.device, Some(w))?)?),
        None => None,
    };
    epoch(req, host, group.as_ref())
}

/// [`finetune`] on a group already joined (or none).
pub(crate) fn epoch(
    req: &FinetuneRequest,
    host: &Host<'_>,
    group: Option<&Group>,
) -> Result<FinetuneResult, CallError> {
    if req.threads > 0 {
        tch::set_num_threads(req.threads);
    }
    let device = rank_device(&req.device, req.world.as_ref())?;
    if req.batch_size == 0 || req.grad_accum == 0 {
        return Err(CallError::Failed(
            "batch size and accumulation must be at least 1".into(),
        ));
    }
    let examples = read_encoded(&req.train)?;
    if examples.is_empty() {
        return Err(CallError::Failed(format!(
            "`{}` has no examples",
            req.train.display()
        )));
    }
    let (rank, world) = group.map_or((0, 1), |g| (g.rank, g.size));
    let (vs, model) = load(&req.init, device, Some(req.dropout))?;
    let mut optimizer = Optimizer::new(OptimizerKind::Adafactor);
    optimizer.scale_parameter = false;
    let opt_path = req.init.join("optimizer.safetensors");
    if req.resume_optimizer {
        let state: TrainerState =
            crate::checkpoint::read_json(&req.init.join("trainer_state.json"))?;
        let named = Tensor::read_safetensors(&opt_path)
            .map_err(|e| CallError::Failed(format!("reading `{}`: {e}", opt_path.display())))?;
        optimizer.load_state(state.step, named, device)?;
    }
    let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(g) = group {
        same_start(g, &examples, &optimizer, &req.train)?;
        // Whatever checkpoint copy each machine read, every rank starts from rank 0's.
        let state = optimizer.state_tensors().map(|(_, t)| t);
        g.broadcast_all(params.iter().map(|(_, p)| p).chain(state))?;
    }

    // This epoch's order and dropout masks follow from (seed, epoch) alone.
    let mix = req.seed.wrapping_mul(ehrprep_data::rng::GOLDEN)
        ^ req.epoch.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    // Held for the epoch: the dropout masks come from libtorch's global generator.
    let _guard = crate::GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut rng = ehrprep_data::rng::Rng::new(mix);
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let started = Instant::now();
    let per_step = req.batch_size * req.grad_accum.max(1);
    let (mut steps, mut loss_sum, mut batches) = (0u64, 0.0, 0u64);
    let pad_id = model.config.pad_token_id;
    let overlap = match group {
        Some(g) => Some(g.overlap(&crate::train::trainable(&params))?),
        None => None,
    };
    for (step, chunk) in order.chunks(per_step).enumerate() {
        // Every rank stops at the same step when any one is asked to.
        let stop = match group {
            Some(g) => g.sum(&[f64::from(u8::from(host.cancelled()))])?[0] > 0.0,
            None => host.cancelled(),
        };
        if stop {
            return Err(CallError::Cancelled("{}".into()));
        }
        for (_, p) in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let micros = chunk.len().div_ceil(req.batch_size.max(1));
        // This rank's last micro-batch of the step, if it has one.
        let last = (0..micros).rev().find(|m| m % world == rank);
        for (m, micro) in chunk.chunks(req.batch_size.max(1)).enumerate() {
            if m % world != rank {
                continue;
            }
            tch::manual_seed(micro_seed(mix, step, m));
            let inputs: Vec<&[i64]> = micro.iter().map(|&i| &examples[i].input_ids[..]).collect();
            let targets: Vec<&[i64]> = micro.iter().map(|&i| &examples[i].target_ids[..]).collect();
            let (x, mask) = pad(&inputs, pad_id, device);
            let (y, ymask) = pad(&targets, pad_id, device);
            let labels = y.masked_fill(&ymask.eq(0), -100);
            let loss = model.loss(&x, &mask, &labels, true);
            if let Some(o) = &overlap
                && Some(m) == last
            {
                o.arm()?;
            }
            // Each micro-batch weighs by its share of the step's examples.
            (&loss * (micro.len() as f64 / chunk.len() as f64)).backward();
            loss_sum += loss.double_value(&[]);
            batches += 1;
        }
        if let Some(o) = &overlap {
            // Each micro-batch's gradient is already weighted by its share of the step; a
            // rank without one this step adds zeros.
            o.finish(1.0)?;
        }
        let norm = clip_grad_norm(&params, 1.0);
        if !norm.is_finite() {
            return Err(CallError::Failed(format!(
                "the gradient norm is {norm} in epoch {}; stopping",
                req.epoch + 1
            )));
        }
        optimizer.step(&params, req.lr);
        steps += 1;
    }
    let state = TrainerState {
        step: optimizer.step,
        examples: (req.epoch + 1) * examples.len() as u64,
        seed: req.seed,
        optimizer: OptimizerKind::Adafactor,
        build_id: String::new(),
        tokenizer_sha256: String::new(),
        validation_loss: None,
    };
    if let Some(g) = group {
        let sums = g.sum(&[loss_sum, batches as f64])?;
        (loss_sum, batches) = (sums[0], sums[1] as u64);
    }
    let mean_loss = loss_sum / batches.max(1) as f64;
    if rank == 0 {
        crate::checkpoint::write_dir(&req.out, &vs, &model.config, Some((&optimizer, &state)))?;
        host.event(&TrainEvent::FinetuneEpoch {
            epoch: req.epoch,
            steps,
            loss: mean_loss,
        });
    }
    Ok(FinetuneResult {
        steps,
        mean_loss,
        checkpoint: req.out.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub fn generate(req: &GenerateRequest, host: &Host<'_>) -> Result<serde_json::Value, CallError> {
    if req.threads > 0 {
        tch::set_num_threads(req.threads);
    }
    let device = device_for(&req.device)?;
    let examples = read_encoded(&req.examples)?;
    let (_vs, model) = load(&req.checkpoint, device, None)?;
    // Batches of similar lengths pad little; results go back in the file's order.
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].input_ids.len());
    let mut predictions: Vec<Vec<i64>> = vec![Vec::new(); examples.len()];
    for batch in order.chunks(req.batch_size.max(1)) {
        if host.cancelled() {
            return Err(CallError::Cancelled("{}".into()));
        }
        let inputs: Vec<&[i64]> = batch.iter().map(|&i| &examples[i].input_ids[..]).collect();
        let (x, mask) = pad(&inputs, model.config.pad_token_id, device);
        let out = crate::generate::generate(&model, &x, &mask, req.beams, req.max_new_tokens);
        for (&i, ids) in batch.iter().zip(out) {
            predictions[i] = ids;
        }
    }
    let mut bytes = Vec::new();
    for (e, ids) in examples.iter().zip(&predictions) {
        serde_json::to_writer(&mut bytes, &serde_json::json!({"id": e.id, "ids": ids}))
            .expect("predictions serialize");
        bytes.push(b'\n');
    }
    crate::checkpoint::write_atomic(&req.out, &bytes)?;
    Ok(serde_json::json!({"predictions": examples.len(), "out": req.out}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::tests::{free_port, join};

    fn message(e: CallError) -> String {
        match e {
            CallError::Failed(m) | CallError::Cancelled(m) => m,
        }
    }

    fn examples(last_target: i64) -> Vec<Encoded> {
        (0..3)
            .map(|i| Encoded {
                id: format!("e{i}"),
                input_ids: vec![i, 5, 1],
                target_ids: vec![7, if i == 2 { last_target } else { 3 }, 1],
            })
            .collect()
    }

    /// Each rank's outcome of `same_start` when rank 1 holds `rank_1s` examples at `step`.
    fn start(rank_1s: Vec<Encoded>, step: u64) -> [Result<(), String>; 2] {
        let port = free_port();
        let path = Path::new("runs/train.jsonl");
        let one = std::thread::spawn(move || {
            let mut optimizer = Optimizer::new(OptimizerKind::Adafactor);
            optimizer.step = step;
            let group = join(1, 2, port);
            same_start(&group, &rank_1s, &optimizer, Path::new("runs/train.jsonl")).map_err(message)
        });
        let group = join(0, 2, port);
        let zero = same_start(
            &group,
            &examples(3),
            &Optimizer::new(OptimizerKind::Adafactor),
            path,
        )
        .map_err(message);
        [zero, one.join().expect("rank 1 finished")]
    }

    #[test]
    fn ranks_that_read_other_examples_or_another_step_stop_together_with_the_path() {
        assert_eq!(start(examples(3), 0), [Ok(()), Ok(())]);
        for (rank_1s, step) in [
            (examples(4), 0),
            (examples(3), 1),
            (examples(3)[..2].to_vec(), 0),
        ] {
            for outcome in start(rank_1s, step) {
                let e = outcome.unwrap_err();
                assert!(e.contains("1 of 2 ranks"), "{e}");
                assert!(e.contains("`runs/train.jsonl`"), "{e}");
            }
        }
    }
}

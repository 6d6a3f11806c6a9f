//! Batched generation with a key/value cache: greedy, and beam search with length-normalized
//! scores. Outputs are token ids without the start token and without `</s>`.

use tch::{Device, Kind, Tensor};

use crate::model::T5;

/// One batch of encoder inputs, padded: ids and mask [B, S].
pub fn generate(
    model: &T5,
    input_ids: &Tensor,
    mask: &Tensor,
    beams: usize,
    max_new_tokens: usize,
) -> Vec<Vec<i64>> {
    tch::no_grad(|| {
        if beams <= 1 {
            greedy(model, input_ids, mask, max_new_tokens)
        } else {
            beam_search(model, input_ids, mask, beams, max_new_tokens)
        }
    })
}

fn greedy(model: &T5, input_ids: &Tensor, mask: &Tensor, max_new: usize) -> Vec<Vec<i64>> {
    let c = &model.config;
    let b = input_ids.size()[0] as usize;
    let memory = model.encode(input_ids, mask, false);
    let mut cache = model.start_decoding(&memory, mask);
    let device = input_ids.device();
    let mut tokens = Tensor::full([b as i64], c.decoder_start_token_id, (Kind::Int64, device));
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for _ in 0..max_new {
        let logits = model.decode_step(&tokens, &mut cache);
        let next = logits.argmax(-1, false);
        let ids: Vec<i64> = Vec::try_from(&next.to_device(Device::Cpu)).expect("int64 ids");
        for (row, &id) in ids.iter().enumerate() {
            if done[row] {
                continue;
            }
            if id == c.eos_token_id {
                done[row] = true;
            } else {
                out[row].push(id);
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        tokens = next;
    }
    out
}

struct Hypothesis {
    tokens: Vec<i64>,
    score: f64,
}

/// Beam search: `beams` running hypotheses per row; a hypothesis ending in `</s>` is
/// finished with score `sum(log p) / length` (length counts `</s>`). A row stops once it
/// has `beams` finished hypotheses and no running one can still beat the worst of them;
/// at `max_new` tokens the running ones compete too.
fn beam_search(
    model: &T5,
    input_ids: &Tensor,
    mask: &Tensor,
    beams: usize,
    max_new: usize,
) -> Vec<Vec<i64>> {
    let c = &model.config;
    let device = input_ids.device();
    let b = input_ids.size()[0] as usize;
    let k = beams as i64;
    let memory = model.encode(input_ids, mask, false);
    let memory = memory.repeat_interleave_self_int(k, Some(0), None);
    let mask = mask.repeat_interleave_self_int(k, Some(0), None);
    let mut cache = model.start_decoding(&memory, &mask);
    // Running hypotheses, row-major: row r's beams are r*k .. r*k+k.
    let mut seqs: Vec<Vec<i64>> = vec![Vec::new(); b * beams];
    let mut scores: Vec<f64> = (0..b * beams)
        .map(|i| {
            if i % beams == 0 {
                0.0
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect();
    let mut finished: Vec<Vec<Hypothesis>> = (0..b).map(|_| Vec::new()).collect();
    let mut done = vec![false; b];
    let mut tokens = Tensor::full(
        [b as i64 * k],
        c.decoder_start_token_id,
        (Kind::Int64, device),
    );
    for step in 0..max_new {
        let logp = model
            .decode_step(&tokens, &mut cache)
            .log_softmax(-1, Kind::Float);
        let vocab = logp.size()[1];
        let running = Tensor::from_slice(&scores)
            .to_device(device)
            .to_kind(Kind::Float);
        let candidates = (logp + running.unsqueeze(1)).view([b as i64, k * vocab]);
        let (top_scores, top_index) = candidates.topk(2 * k, -1, true, true);
        let top_scores: Vec<f32> =
            Vec::try_from(&top_scores.to_device(Device::Cpu).view([-1])).expect("f32");
        let top_index: Vec<i64> =
            Vec::try_from(&top_index.to_device(Device::Cpu).view([-1])).expect("i64");
        let mut next_tokens = Vec::with_capacity(b * beams);
        let mut origins = Vec::with_capacity(b * beams);
        let mut next_scores = Vec::with_capacity(b * beams);
        let mut next_seqs = Vec::with_capacity(b * beams);
        let length = (step + 1) as f64;
        for row in 0..b {
            let mut kept = 0;
            for rank in 0..2 * beams {
                let at = row * 2 * beams + rank;
                let (score, index) = (top_scores[at] as f64, top_index[at]);
                let beam = (index / vocab) as usize;
                let token = index % vocab;
                let origin = row * beams + beam;
                if token == c.eos_token_id {
                    if rank < beams && !done[row] && score.is_finite() {
                        finished[row].push(Hypothesis {
                            tokens: seqs[origin].clone(),
                            score: score / length,
                        });
                    }
                    continue;
                }
                if kept == beams {
                    continue;
                }
                kept += 1;
                let mut seq = seqs[origin].clone();
                seq.push(token);
                next_seqs.push(seq);
                next_tokens.push(token);
                origins.push(origin as i64);
                next_scores.push(score);
            }
            // `2k` candidates always leave `k` that are not `</s>`.
            debug_assert_eq!(kept, beams);
            if !done[row] && finished[row].len() >= beams {
                let worst = finished[row]
                    .iter()
                    .map(|h| h.score)
                    .fold(f64::INFINITY, f64::min);
                let best_running = next_scores[row * beams..]
                    .iter()
                    .copied()
                    .fold(f64::NEG_INFINITY, f64::max);
                // Log probabilities only fall, so length `max_new` is the most a running
                // hypothesis's normalized score can gain from.
                if best_running / max_new as f64 <= worst && best_running / length <= worst {
                    done[row] = true;
                }
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        seqs = next_seqs;
        scores = next_scores;
        let origins = Tensor::from_slice(&origins).to_device(device);
        cache.select(&origins);
        tokens = Tensor::from_slice(&next_tokens).to_device(device);
        if step + 1 == max_new {
            for row in 0..b {
                if done[row] {
                    continue;
                }
                for beam in 0..beams {
                    let i = row * beams + beam;
                    finished[row].push(Hypothesis {
                        tokens: seqs[i].clone(),
                        score: scores[i] / max_new as f64,
                    });
                }
            }
        }
    }
    finished
        .into_iter()
        .map(|hyps| {
            hyps.into_iter()
                .max_by(|a, b| a.score.total_cmp(&b.score))
                .map(|h| h.tokens)
                .unwrap_or_default()
        })
        .collect()
}

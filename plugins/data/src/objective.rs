//! T5's span-corruption objective with seqio semantics, for the trainer to apply at load
//! time: raw token chunks in, (inputs, targets) out.
//!
//! Masks are seeded per (seed, epoch, example), so a resumed run sees exactly the masks an
//! uninterrupted one would have.

use crate::rng::{GOLDEN, Rng};

/// The objective's settings; the defaults are T5's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanCorruption {
    pub noise_density: f64,
    pub mean_noise_span_length: f64,
}

impl Default for SpanCorruption {
    fn default() -> Self {
        SpanCorruption {
            noise_density: 0.15,
            mean_noise_span_length: 3.0,
        }
    }
}

/// Python's `round`: halves go to the even neighbour.
fn round_half_even(x: f64) -> u64 {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    };
    r.max(0.0) as u64
}

impl SpanCorruption {
    /// (noise tokens, noise spans) for a raw chunk of `length` tokens.
    pub fn counts(&self, length: usize) -> (usize, usize) {
        let noise = round_half_even(length as f64 * self.noise_density) as usize;
        let noise = noise.clamp(1, length.saturating_sub(1).max(1));
        let spans = round_half_even(noise as f64 / self.mean_noise_span_length) as usize;
        (noise, spans.max(1))
    }

    /// (inputs, targets) lengths, both with `</s>`, for a raw chunk of `length` tokens.
    pub fn output_lengths(&self, length: usize) -> (usize, usize) {
        let noise = round_half_even(length as f64 * self.noise_density) as usize;
        let spans = round_half_even(noise as f64 / self.mean_noise_span_length) as usize;
        (length - noise + spans + 1, noise + spans + 1)
    }

    /// The raw chunk length whose inputs fill `inputs_length` exactly, with the targets
    /// length (T5's `compute_input_and_target_lengths`): 512 -> (568, 114).
    pub fn raw_length_for(&self, inputs_length: usize) -> (usize, usize) {
        let mut tokens = inputs_length - 1;
        while self.output_lengths(tokens + 1).0 <= inputs_length {
            tokens += 1;
        }
        (tokens, self.output_lengths(tokens).1)
    }

    /// The noise mask for one example: alternating non-noise / noise spans, the first
    /// non-noise, with the counts of [`counts`](Self::counts).
    pub fn noise_mask(&self, length: usize, rng: &mut Rng) -> Vec<bool> {
        if length < 2 {
            return vec![false; length];
        }
        let (noise, spans) = self.counts(length);
        let noise_lengths = random_segmentation(noise, spans, rng);
        let nonnoise_lengths = random_segmentation(length - noise, spans, rng);
        let mut mask = Vec::with_capacity(length);
        for (keep, hide) in nonnoise_lengths.into_iter().zip(noise_lengths) {
            mask.extend(std::iter::repeat_n(false, keep));
            mask.extend(std::iter::repeat_n(true, hide));
        }
        mask
    }

    /// Corrupts one raw chunk: noise spans become sentinels in the inputs, and the targets
    /// list each sentinel before the span it hid. Sentinels count down from `sentinel0`
    /// (`<extra_id_0>`); both sequences end with `eos`.
    pub fn apply(
        &self,
        tokens: &[u32],
        sentinel0: u32,
        eos: u32,
        rng: &mut Rng,
    ) -> (Vec<u32>, Vec<u32>) {
        let mask = self.noise_mask(tokens.len(), rng);
        let mut inputs = Vec::with_capacity(tokens.len());
        let mut targets = Vec::new();
        let mut span = 0u32;
        for (i, (&t, &noise)) in tokens.iter().zip(&mask).enumerate() {
            if noise {
                if i == 0 || !mask[i - 1] {
                    let sentinel = sentinel0 - span;
                    inputs.push(sentinel);
                    targets.push(sentinel);
                    span += 1;
                }
                targets.push(t);
            } else {
                inputs.push(t);
            }
        }
        inputs.push(eos);
        targets.push(eos);
        (inputs, targets)
    }
}

/// The generator for example `example` of `epoch` under `seed`.
pub fn example_rng(seed: u64, epoch: u64, example: u64) -> Rng {
    // Mix the three so neighbouring examples and epochs get unrelated streams.
    let mut r = Rng::new(seed);
    let a = r.next_u64() ^ epoch.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let mut r = Rng::new(a);
    Rng::new(r.next_u64() ^ example.wrapping_mul(GOLDEN))
}

/// Splits `items` into `segments` non-empty runs at random; returns their lengths.
fn random_segmentation(items: usize, segments: usize, rng: &mut Rng) -> Vec<usize> {
    debug_assert!(segments >= 1 && segments <= items);
    // Choose `segments - 1` distinct cut points among the `items - 1` gaps (partial
    // Fisher-Yates over the gap indices).
    let mut gaps: Vec<usize> = (1..items).collect();
    for i in 0..segments - 1 {
        let j = i + rng.below((gaps.len() - i) as u64) as usize;
        gaps.swap(i, j);
    }
    let mut cuts = gaps[..segments - 1].to_vec();
    cuts.sort_unstable();
    let mut lengths = Vec::with_capacity(segments);
    let mut last = 0;
    for c in cuts {
        lengths.push(c - last);
        last = c;
    }
    lengths.push(items - last);
    lengths
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENTINEL0: u32 = 32_099;
    const EOS: u32 = 1;

    #[test]
    fn t5_lengths() {
        let sc = SpanCorruption::default();
        assert_eq!(sc.raw_length_for(512), (568, 114));
        assert_eq!(sc.raw_length_for(1024), (1137, 229));
        assert_eq!(sc.output_lengths(568), (512, 114));
        // Computed with T5's Python code (banker's rounding).
        assert_eq!(sc.raw_length_for(128), (141, 29));
        assert_eq!(sc.raw_length_for(64), (70, 14));
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(85.2), 85);
    }

    /// Puts the hidden spans back in place of their sentinels.
    fn reconstruct(inputs: &[u32], targets: &[u32]) -> Vec<u32> {
        let mut spans = std::collections::HashMap::new();
        let mut current = None;
        for &t in &targets[..targets.len() - 1] {
            if t > SENTINEL0 - 100 && t <= SENTINEL0 {
                current = Some(t);
                spans.insert(t, Vec::new());
            } else {
                spans
                    .get_mut(&current.expect("targets start with a sentinel"))
                    .unwrap()
                    .push(t);
            }
        }
        let mut out = Vec::new();
        for &t in &inputs[..inputs.len() - 1] {
            match spans.get(&t) {
                Some(span) => out.extend(span),
                None => out.push(t),
            }
        }
        out
    }

    #[test]
    fn properties_hold_over_many_examples() {
        let sc = SpanCorruption::default();
        for length in [568usize, 1137, 100, 20, 2] {
            let (noise, spans) = sc.counts(length);
            for example in 0..200 {
                let tokens: Vec<u32> = (0..length as u32)
                    .map(|i| 3 + (i * 7919) % 32_000)
                    .collect();
                let mut rng = example_rng(11, 0, example);
                let mask = sc.noise_mask(length, &mut rng);
                assert_eq!(mask.len(), length);
                assert!(!mask[0], "first span is non-noise");
                assert_eq!(mask.iter().filter(|&&m| m).count(), noise);
                let starts = (0..length)
                    .filter(|&i| mask[i] && (i == 0 || !mask[i - 1]))
                    .count();
                assert_eq!(starts, spans);

                let mut rng = example_rng(11, 0, example);
                let (inputs, targets) = sc.apply(&tokens, SENTINEL0, EOS, &mut rng);
                assert_eq!(inputs.len(), length - noise + spans + 1);
                assert_eq!(targets.len(), noise + spans + 1);
                if length == 568 {
                    assert_eq!((inputs.len(), targets.len()), (512, 114));
                }
                assert_eq!(*inputs.last().unwrap(), EOS);
                assert_eq!(*targets.last().unwrap(), EOS);
                assert_eq!(targets[0], SENTINEL0);
                assert_eq!(reconstruct(&inputs, &targets), tokens);
            }
        }
    }

    #[test]
    fn masks_depend_on_seed_epoch_and_example_only() {
        let sc = SpanCorruption::default();
        let mask = |s, e, x| sc.noise_mask(568, &mut example_rng(s, e, x));
        assert_eq!(mask(1, 2, 3), mask(1, 2, 3));
        assert_ne!(mask(1, 2, 3), mask(1, 2, 4));
        assert_ne!(mask(1, 2, 3), mask(1, 3, 3));
        assert_ne!(mask(1, 2, 3), mask(2, 2, 3));
    }

    #[test]
    fn noise_fraction_and_span_lengths_match_the_settings() {
        let sc = SpanCorruption::default();
        let mut total_noise = 0;
        let mut total_spans = 0;
        for example in 0..500 {
            let mask = sc.noise_mask(568, &mut example_rng(3, 1, example));
            total_noise += mask.iter().filter(|&&m| m).count();
            total_spans += (0..568)
                .filter(|&i| mask[i] && (i == 0 || !mask[i - 1]))
                .count();
        }
        let density = total_noise as f64 / (500.0 * 568.0);
        let mean_span = total_noise as f64 / total_spans as f64;
        assert!((density - 0.15).abs() < 0.001, "{density}");
        assert!((mean_span - 3.0).abs() < 0.1, "{mean_span}");
    }
}

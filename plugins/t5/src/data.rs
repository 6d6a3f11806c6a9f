//! Training examples from a build's shards: rows in a seeded order per epoch, span-corrupted
//! at load time with masks seeded per (seed, epoch, example), so the data seen at any step
//! is a pure function of the step and a resumed run sees exactly what an uninterrupted one
//! would have.

use std::path::Path;

use ehrprep::objective::{SpanCorruption, example_rng};
use ehrprep::synth::Rng;
use serde::Deserialize;
use tch::{Device, Tensor};

/// The parts of `shards/manifest.json` training needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub build_id: String,
    pub inputs_length: usize,
    pub raw_length: usize,
    pub targets_length: usize,
    pub tokenizer: TokenizerInfo,
    pub shards: Vec<ShardEntry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenizerInfo {
    pub sha256: String,
    pub vocab_size: usize,
    pub pad_id: u32,
    pub eos_id: u32,
    pub sentinel0: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ShardEntry {
    pub split: String,
    pub file: String,
    pub rows: u64,
}

impl Manifest {
    pub fn read(shards_dir: &Path) -> Result<Manifest, String> {
        let path = shards_dir.join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading `{}`: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("`{}` is not a shard manifest: {e}", path.display()))
    }
}

/// All rows of one split, each `raw_length` tokens, read in place from the mapped shards.
pub struct Rows {
    pub raw_length: usize,
    shards: Vec<ehrprep::shards::MappedShard>,
    /// The first row of each shard.
    starts: Vec<usize>,
    len: usize,
}

impl Rows {
    pub fn load(shards_dir: &Path, manifest: &Manifest, split: &str) -> Result<Rows, String> {
        let (mut shards, mut starts, mut len) = (Vec::new(), Vec::new(), 0);
        for entry in manifest.shards.iter().filter(|s| s.split == split) {
            let path = shards_dir.join(&entry.file);
            let shard = ehrprep::shards::MappedShard::open(&path).map_err(|e| e.to_string())?;
            if shard.width() != manifest.raw_length || shard.rows() as u64 != entry.rows {
                return Err(format!(
                    "`{}` has {} rows of {} tokens; the manifest says {} of {}",
                    path.display(),
                    shard.rows(),
                    shard.width(),
                    entry.rows,
                    manifest.raw_length
                ));
            }
            starts.push(len);
            len += shard.rows();
            shards.push(shard);
        }
        Ok(Rows {
            raw_length: manifest.raw_length,
            shards,
            starts,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn row(&self, i: usize) -> Vec<u32> {
        let s = self.starts.partition_point(|&start| start <= i) - 1;
        self.shards[s]
            .row(i - self.starts[s])
            .iter()
            .map(|&t| t as u32)
            .collect()
    }
}

/// Turns example numbers into span-corrupted batches.
pub struct Examples<'a> {
    rows: &'a Rows,
    seed: u64,
    shuffle: bool,
    objective: SpanCorruption,
    sentinel0: u32,
    eos: u32,
    /// The row order of one epoch, cached.
    order: Option<(u64, Vec<u32>)>,
}

/// One batch as tensors: inputs [B, I], attention mask [B, I], labels [B, T].
pub struct Batch {
    pub inputs: Tensor,
    pub mask: Tensor,
    pub labels: Tensor,
    pub input_tokens: usize,
}

impl<'a> Examples<'a> {
    pub fn new(rows: &'a Rows, manifest: &Manifest, seed: u64, shuffle: bool) -> Examples<'a> {
        Examples {
            rows,
            seed,
            shuffle,
            objective: SpanCorruption::default(),
            sentinel0: manifest.tokenizer.sentinel0,
            eos: manifest.tokenizer.eos_id,
            order: None,
        }
    }

    /// The row that example `n` (counted over all epochs) reads.
    fn row_of(&mut self, n: u64) -> (u64, usize) {
        let len = self.rows.len() as u64;
        let (epoch, pos) = (n / len, (n % len) as usize);
        if !self.shuffle {
            return (epoch, pos);
        }
        if self.order.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let mut order: Vec<u32> = (0..len as u32).collect();
            let mut rng = Rng::new(self.seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407));
            for i in (1..order.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                order.swap(i, j);
            }
            self.order = Some((epoch, order));
        }
        let order = &self.order.as_ref().expect("just set").1;
        (epoch, order[pos] as usize)
    }

    /// Example `n`: (inputs, targets), both ending in `</s>`.
    pub fn example(&mut self, n: u64) -> (Vec<u32>, Vec<u32>) {
        let (epoch, row) = self.row_of(n);
        let tokens = self.rows.row(row);
        let mut rng = example_rng(self.seed, epoch, n);
        self.objective
            .apply(&tokens, self.sentinel0, self.eos, &mut rng)
    }

    /// Examples `first .. first + size` as one batch on `device`.
    pub fn batch(&mut self, first: u64, size: usize, device: Device) -> Batch {
        let mut inputs = Vec::new();
        let mut targets = Vec::new();
        let (mut ilen, mut tlen) = (0, 0);
        for n in first..first + size as u64 {
            let (i, t) = self.example(n);
            (ilen, tlen) = (i.len(), t.len());
            inputs.extend(i.into_iter().map(i64::from));
            targets.extend(t.into_iter().map(i64::from));
        }
        let b = size as i64;
        let inputs = Tensor::from_slice(&inputs)
            .view([b, ilen as i64])
            .to_device(device);
        Batch {
            mask: inputs.ones_like(),
            inputs,
            labels: Tensor::from_slice(&targets)
                .view([b, tlen as i64])
                .to_device(device),
            input_tokens: size * ilen,
        }
    }
}

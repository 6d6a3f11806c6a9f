//! Training examples from a build's shards: rows in a seeded order per epoch, span-corrupted
//! at load time with masks seeded per (seed, epoch, example), so the data seen at any step
//! is a pure function of the step and a resumed run sees exactly what an uninterrupted one
//! would have.

use std::path::Path;

use crate::objective::{SpanCorruption, example_rng};
use crate::rng::Rng;
use crate::shards::{Manifest, MappedShard, Split};
use crate::{Error, Result};

/// All rows of one split, each `raw_length` tokens, read in place from the mapped shards.
pub struct Rows {
    shards: Vec<MappedShard>,
    /// The first row of each shard.
    starts: Vec<usize>,
    len: usize,
}

impl Rows {
    pub fn load(shards_dir: &Path, manifest: &Manifest, split: Split) -> Result<Rows> {
        let (mut shards, mut starts, mut len) = (Vec::new(), Vec::new(), 0);
        for entry in manifest.shards.iter().filter(|s| s.split == split) {
            let path = shards_dir.join(&entry.file);
            let shard = MappedShard::open(&path)?;
            if shard.width() != manifest.raw_length || shard.rows() as u64 != entry.rows {
                return Err(Error::Invalid(format!(
                    "`{}` has {} rows of {} tokens; the manifest says {} of {}",
                    path.display(),
                    shard.rows(),
                    shard.width(),
                    entry.rows,
                    manifest.raw_length
                )));
            }
            starts.push(len);
            len += shard.rows();
            shards.push(shard);
        }
        Ok(Rows {
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

/// Turns example numbers into span-corrupted (inputs, targets) pairs.
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
}

//! Tokenize and pack: kept notes, each followed by `</s>`, in a seed-shuffled order,
//! concatenated and cut into fixed raw chunks, written as Arrow IPC files.
//!
//! A shard is an Arrow IPC *file* (memory-mappable, self-describing) with one column,
//! `input_ids`: `FixedSizeList<UInt16 | UInt32, raw_length>`, one row per raw chunk; UInt16
//! when every id fits. Each shard is written under a temporary name and renamed when
//! complete. Memory does not grow with the corpus: notes stream through in batches.
//! Readers live in `ehrprep_data`, which trainers share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, UInt16Array, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use ehrprep_data::shards::{ShardInfo, Split};

use crate::fsutil::hex;
use crate::{Error, Result};

/// A stable 64-bit hash, the same on every platform and version.
pub fn stable_hash(parts: &[u64]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.to_le_bytes());
    }
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// Patient-level split: a subject is in validation when its hash falls in the first
/// `fraction` of the range, so no patient is in both splits.
pub fn split_of(subject_id: i64, fraction: f64) -> Split {
    let h = stable_hash(&[0x5917, subject_id as u64]);
    if (h as f64) < fraction * u64::MAX as f64 {
        Split::Validation
    } else {
        Split::Train
    }
}

/// The seeded order of notes: by a hash of (seed, note sequence number).
pub fn shuffle_key(seed: u64, seq: i64) -> u64 {
    stable_hash(&[seed, seq as u64])
}

/// Packing settings.
#[derive(Debug, Clone, Serialize)]
pub struct PackConfig {
    /// Tokens per raw chunk (568 for 512 encoder inputs after span corruption).
    pub raw_length: usize,
    /// Rows per shard file (bounds shard size: 100,000 x 568 x 2 bytes is about 114 MB).
    pub rows_per_shard: usize,
    /// Rows per Arrow record batch inside a shard.
    pub rows_per_batch: usize,
}

impl Default for PackConfig {
    fn default() -> Self {
        PackConfig {
            raw_length: 568,
            rows_per_shard: 100_000,
            rows_per_batch: 1024,
        }
    }
}

/// Streams token ids into fixed-length rows and rows into shard files.
pub struct Packer {
    dir: PathBuf,
    split: Split,
    config: PackConfig,
    wide: bool,
    buffer: Vec<u32>,
    rows: Vec<u32>,
    writer: Option<ShardWriter>,
    pub shards: Vec<ShardInfo>,
    /// Tokens of the last, incomplete chunk, which is dropped.
    pub dropped_tokens: u64,
    pub notes: u64,
}

struct ShardWriter {
    tmp: PathBuf,
    path: PathBuf,
    writer: arrow::ipc::writer::FileWriter<std::fs::File>,
    rows: u64,
}

impl Packer {
    /// `vocab_size` decides the id type: UInt16 when every id fits.
    pub fn new(dir: &Path, split: Split, vocab_size: usize, config: PackConfig) -> Packer {
        Packer {
            dir: dir.to_path_buf(),
            split,
            wide: vocab_size > u16::MAX as usize + 1,
            config,
            buffer: Vec::new(),
            rows: Vec::new(),
            writer: None,
            shards: Vec::new(),
            dropped_tokens: 0,
            notes: 0,
        }
    }

    fn schema(&self) -> Arc<Schema> {
        let item = if self.wide {
            DataType::UInt32
        } else {
            DataType::UInt16
        };
        Arc::new(Schema::new(vec![Field::new(
            "input_ids",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", item, false)),
                self.config.raw_length as i32,
            ),
            false,
        )]))
    }

    /// Adds one note's ids (already ending in `</s>`).
    pub fn push(&mut self, ids: &[u32]) -> Result<()> {
        self.notes += 1;
        self.buffer.extend_from_slice(ids);
        let n = self.config.raw_length;
        let whole = self.buffer.len() / n * n;
        if whole > 0 {
            self.rows.extend(self.buffer.drain(..whole));
        }
        while self.rows.len() >= self.config.rows_per_batch * n {
            let rest = self.rows.split_off(self.config.rows_per_batch * n);
            let batch = std::mem::replace(&mut self.rows, rest);
            self.write_rows(&batch)?;
        }
        Ok(())
    }

    fn write_rows(&mut self, flat: &[u32]) -> Result<()> {
        let n = self.config.raw_length;
        let mut offset = 0;
        while offset < flat.len() {
            if self.writer.is_none() {
                self.open_shard()?;
            }
            let w = self.writer.as_mut().expect("opened");
            let room = self.config.rows_per_shard - w.rows as usize;
            let take = room.min((flat.len() - offset) / n);
            let part = &flat[offset..offset + take * n];
            let values: ArrayRef = if self.wide {
                Arc::new(UInt32Array::from(part.to_vec()))
            } else {
                Arc::new(UInt16Array::from(
                    part.iter().map(|&x| x as u16).collect::<Vec<_>>(),
                ))
            };
            let schema = self.schema();
            let DataType::FixedSizeList(field, size) = schema.field(0).data_type().clone() else {
                unreachable!("the schema has one fixed-size list column")
            };
            let list = FixedSizeListArray::try_new(field, size, values, None)
                .map_err(|e| Error::Invalid(format!("building a shard batch: {e}")))?;
            let batch = RecordBatch::try_new(schema, vec![Arc::new(list)])
                .map_err(|e| Error::Invalid(format!("building a shard batch: {e}")))?;
            let w = self.writer.as_mut().expect("opened");
            w.writer
                .write(&batch)
                .map_err(|e| Error::Invalid(format!("writing `{}`: {e}", w.tmp.display())))?;
            w.rows += take as u64;
            offset += take * n;
            if w.rows as usize == self.config.rows_per_shard {
                self.close_shard()?;
            }
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<()> {
        let name = format!("{}-{:05}.arrow", self.split.as_str(), self.shards.len());
        let path = self.dir.join(name);
        let (tmp, file) = crate::fsutil::create_partial(&path)?;
        let writer = arrow::ipc::writer::FileWriter::try_new(file, &self.schema())
            .map_err(|e| Error::Invalid(format!("starting `{}`: {e}", tmp.display())))?;
        self.writer = Some(ShardWriter {
            tmp,
            path,
            writer,
            rows: 0,
        });
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        let Some(mut w) = self.writer.take() else {
            return Ok(());
        };
        w.writer
            .finish()
            .map_err(|e| Error::Invalid(format!("finishing `{}`: {e}", w.tmp.display())))?;
        drop(w.writer);
        let bytes = std::fs::read(&w.tmp).map_err(Error::io(&w.tmp))?;
        let sha256 = hex(&Sha256::digest(&bytes));
        crate::fsutil::commit(&w.tmp, &w.path)?;
        self.shards.push(ShardInfo {
            split: self.split,
            file: w
                .path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            rows: w.rows,
            tokens: w.rows * self.config.raw_length as u64,
            sha256,
        });
        Ok(())
    }

    /// Writes what is left (whole chunks only) and closes the last shard.
    pub fn finish(mut self) -> Result<(Vec<ShardInfo>, u64, u64)> {
        let rows = std::mem::take(&mut self.rows);
        self.write_rows(&rows)?;
        self.close_shard()?;
        self.dropped_tokens = self.buffer.len() as u64;
        Ok((self.shards, self.dropped_tokens, self.notes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehrprep_data::shards::{MappedShard, read_ids};

    #[test]
    fn split_is_by_patient_and_near_the_fraction() {
        let val = (0..10_000)
            .filter(|&s| split_of(s, 0.05) == Split::Validation)
            .count();
        assert!((400..600).contains(&val), "{val}");
        assert_eq!(split_of(42, 0.05), split_of(42, 0.05));
        assert!((0..1000).all(|s| split_of(s, 0.0) == Split::Train));
    }

    #[test]
    fn packs_fixed_rows_across_shards_and_drops_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let config = PackConfig {
            raw_length: 7,
            rows_per_shard: 3,
            rows_per_batch: 2,
        };
        let mut p = Packer::new(dir.path(), Split::Train, 32_128, config);
        let mut all: Vec<u32> = Vec::new();
        for note in 0..10u32 {
            let ids: Vec<u32> = (0..note % 4 + 2)
                .map(|i| 100 + note * 10 + i)
                .chain([1])
                .collect();
            all.extend(&ids);
            p.push(&ids).unwrap();
        }
        let (shards, dropped, notes) = p.finish().unwrap();
        assert_eq!(notes, 10);
        let total_rows = all.len() / 7;
        assert_eq!(dropped as usize, all.len() % 7);
        assert_eq!(
            shards.iter().map(|s| s.rows).sum::<u64>() as usize,
            total_rows
        );
        assert!(shards.iter().all(|s| s.rows <= 3));
        let mut read = Vec::new();
        for s in &shards {
            let path = dir.path().join(&s.file);
            assert_eq!(
                s.sha256,
                hex(&Sha256::digest(std::fs::read(&path).unwrap()))
            );
            let (width, ids) = read_ids(&path).unwrap();
            assert_eq!(width, 7);
            // The mapped reader sees the same rows in place, across record batches.
            let mapped = MappedShard::open(&path).unwrap();
            assert_eq!((mapped.width(), mapped.rows() as u64), (7, s.rows));
            let in_place: Vec<u32> = (0..mapped.rows())
                .flat_map(|r| mapped.row(r).iter().map(|&t| t as u32))
                .collect();
            assert_eq!(in_place, ids);
            read.extend(ids);
        }
        assert_eq!(read, all[..total_rows * 7]);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".partial"))
        );
    }
}

//! Shard files and their manifest, as the host writes them and a trainer reads them.
//!
//! A shard is an Arrow IPC *file* (memory-mappable, self-describing) with one column,
//! `input_ids`: `FixedSizeList<UInt16 | UInt32, raw_length>`, one row per raw chunk.
//! `shards/manifest.json` says what the shards hold and which tokenizer made them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which part of the corpus a note belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }
}

/// One finished shard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardInfo {
    pub split: Split,
    pub file: String,
    pub rows: u64,
    pub tokens: u64,
    pub sha256: String,
}

/// Per-split counts, as in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SplitStats {
    pub notes: u64,
    pub subjects: u64,
    pub tokens: u64,
    pub rows: u64,
    pub dropped_tokens: u64,
}

/// `OUT/shards/manifest.json`: everything needed to read and trust the shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub ehrprep_version: String,
    pub build_id: String,
    pub seed: u64,
    pub inputs_length: usize,
    pub raw_length: usize,
    pub targets_length: usize,
    pub dtype: String,
    pub tokenizer: TokenizerInfo,
    pub splits: BTreeMap<Split, SplitStats>,
    pub shards: Vec<ShardInfo>,
}

/// The tokenizer that made the shards: a trainer checks its ids against these.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub sha256: String,
    pub vocab_size: usize,
    pub pad_id: u32,
    pub eos_id: u32,
    pub sentinel0: u32,
    pub origin: String,
}

/// The manifest's file name inside the shards folder.
pub const MANIFEST_FILE: &str = "manifest.json";

impl Manifest {
    /// Reads `shards_dir/manifest.json`.
    pub fn read(shards_dir: &Path) -> Result<Manifest> {
        let path = shards_dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!("`{}` is not a shard manifest: {e}", path.display()))
        })
    }
}

/// Reads a shard back: its row length and all ids, row after row. For tests and for
/// consumers in Rust; other languages read the same file with any Arrow IPC reader.
pub fn read_ids(path: &Path) -> Result<(usize, Vec<u32>)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{UInt16Type, UInt32Type};
    let bad =
        |e: &dyn std::fmt::Display| Error::Invalid(format!("reading `{}`: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let reader = arrow::ipc::reader::FileReader::try_new(file, None).map_err(|e| bad(&e))?;
    let mut width = 0;
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?;
        let list = batch
            .column(0)
            .as_fixed_size_list_opt()
            .ok_or_else(|| bad(&"column 0 is not a fixed-size list"))?;
        width = list.value_length() as usize;
        let values = list.values();
        match values.data_type() {
            DataType::UInt16 => ids.extend(
                values
                    .as_primitive::<UInt16Type>()
                    .values()
                    .iter()
                    .map(|&v| v as u32),
            ),
            DataType::UInt32 => ids.extend(values.as_primitive::<UInt32Type>().values().iter()),
            other => return Err(bad(&format!("unexpected id type {other}"))),
        }
    }
    Ok((width, ids))
}

/// A shard file mapped into memory: rows are read in place, never copied, so a trainer's
/// memory does not grow with the corpus.
pub struct MappedShard {
    width: usize,
    rows: usize,
    /// Each record batch's ids, pointing into the mapping.
    batches: Vec<arrow::buffer::ScalarBuffer<u16>>,
    /// The first row of each batch.
    starts: Vec<usize>,
}

impl MappedShard {
    /// Maps a u16 shard as the host writes it.
    #[allow(unsafe_code)] // memory mapping; see SAFETY below
    pub fn open(path: &Path) -> Result<MappedShard> {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::UInt16Type;
        use arrow::ipc::reader::{FileDecoder, read_footer_length};
        let bad = |e: &dyn std::fmt::Display| {
            Error::Invalid(format!("`{}` is not a readable shard: {e}", path.display()))
        };
        let file = std::fs::File::open(path).map_err(Error::io(path))?;
        // SAFETY: shards are written under a temporary name and renamed when complete;
        // nothing writes to a finished shard, so the mapped bytes do not change under us.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(path))?;
        let buffer = arrow::buffer::Buffer::from(bytes::Bytes::from_owner(map));
        if buffer.len() < 10 {
            return Err(bad(&"the file is too short"));
        }
        let trailer = buffer.len() - 10;
        let footer_len = read_footer_length(buffer[trailer..].try_into().expect("10 bytes"))
            .map_err(|e| bad(&e))?;
        let footer_start = trailer
            .checked_sub(footer_len)
            .ok_or_else(|| bad(&"the footer length is past the file's start"))?;
        let footer =
            arrow::ipc::root_as_footer(&buffer[footer_start..trailer]).map_err(|e| bad(&e))?;
        let schema = footer.schema().ok_or_else(|| bad(&"no schema"))?;
        let schema = Arc::new(arrow::ipc::convert::try_fb_to_schema(schema).map_err(|e| bad(&e))?);
        let decoder = FileDecoder::new(schema, footer.version());
        let (mut width, mut rows) = (0, 0);
        let (mut batches, mut starts) = (Vec::new(), Vec::new());
        for block in footer.recordBatches().into_iter().flatten() {
            let len = block.metaDataLength() as usize + block.bodyLength() as usize;
            let offset = block.offset() as usize;
            if offset + len > buffer.len() {
                return Err(bad(&"a record batch lies past the file's end"));
            }
            let data = buffer.slice_with_length(offset, len);
            let batch = decoder
                .read_record_batch(block, &data)
                .map_err(|e| bad(&e))?
                .ok_or_else(|| bad(&"an empty record batch block"))?;
            let list = batch
                .column(0)
                .as_fixed_size_list_opt()
                .ok_or_else(|| bad(&"column 0 is not a fixed-size list"))?;
            let ids = list
                .values()
                .as_primitive_opt::<UInt16Type>()
                .ok_or_else(|| bad(&"ids are not u16"))?;
            width = list.value_length() as usize;
            starts.push(rows);
            rows += list.len();
            batches.push(
                ids.values()
                    .slice(list.offset() * width, list.len() * width),
            );
        }
        Ok(MappedShard {
            width,
            rows,
            batches,
            starts,
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `i`'s ids, in place.
    pub fn row(&self, i: usize) -> &[u16] {
        let b = self.starts.partition_point(|&s| s <= i) - 1;
        let at = (i - self.starts[b]) * self.width;
        &self.batches[b][at..at + self.width]
    }
}

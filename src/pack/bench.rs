//! `ehrprep bench-pack`: the tokenize+pack stage beside plain `tokenizers` batch encoding of
//! the same text, in the same process, so the ratio is measured on the same machine state.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::pack::shards::{PackConfig, Packer, Split};
use crate::{Error, Result};

#[derive(Debug, Serialize)]
pub struct PackBench {
    pub notes: usize,
    pub tokens: u64,
    /// Plain `encode_batch_fast` in the same batches, nothing kept: the limit.
    pub encode_tokens_per_s: f64,
    /// ehrprep's batches of 4096 notes, streamed into shards.
    pub pack_tokens_per_s: f64,
    /// Whether ehrprep's word-cache path is in use for this tokenizer.
    pub word_cache: bool,
    /// Notes whose ehrprep ids differ from plain `tokenizers` ids (checked after timing;
    /// must be 0).
    pub differing_notes: usize,
}

/// Reads the corpus of a finished build and times both paths.
pub fn pack(catalog: &Path, tokenizer: &Path, scratch: &Path) -> Result<PackBench> {
    let conn = crate::catalog::open_read_only(catalog)?;
    let mut stmt = conn
        .prepare(crate::catalog::sql::PACK.get("all_texts"))
        .map_err(Error::catalog("reading the corpus"))?;
    let texts: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(Error::catalog("reading the corpus"))?;
    // Each path gets a freshly loaded tokenizer, so neither profits from the other's
    // warmed word cache.
    let tok = crate::pack::tokenizer::load(tokenizer)?;
    let start = Instant::now();
    let mut tokens = 0u64;
    for chunk in texts.chunks(4096) {
        tokens += plain(&tok, chunk)?
            .iter()
            .map(|e| e.len() as u64)
            .sum::<u64>();
    }
    let encode_s = start.elapsed().as_secs_f64();

    let tok = crate::pack::tokenizer::load(tokenizer)?;
    crate::fsutil::create_private_dir(scratch)?;
    let start = Instant::now();
    let mut packer = Packer::new(
        scratch,
        Split::Train,
        tok.get_vocab_size(true),
        PackConfig::default(),
    );
    let encoder = crate::pack::encoder::Encoder::new(&tok);
    for chunk in texts.chunks(4096) {
        for ids in encoder.encode_batch(chunk)? {
            packer.push(&ids)?;
        }
    }
    packer.finish()?;
    let pack_s = start.elapsed().as_secs_f64();

    let mut differing_notes = 0;
    for chunk in texts.chunks(4096) {
        let ours = encoder.encode_batch(chunk)?;
        let theirs = plain(&tok, chunk)?;
        differing_notes += ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.as_slice() != b.get_ids())
            .count();
    }
    Ok(PackBench {
        notes: texts.len(),
        tokens,
        encode_tokens_per_s: tokens as f64 / encode_s,
        pack_tokens_per_s: tokens as f64 / pack_s,
        word_cache: encoder.is_fast(),
        differing_notes,
    })
}

fn plain(tok: &tokenizers::Tokenizer, texts: &[String]) -> Result<Vec<tokenizers::Encoding>> {
    tok.encode_batch_fast(texts.to_vec(), true)
        .map_err(|e| Error::Invalid(format!("tokenizing: {e}")))
}

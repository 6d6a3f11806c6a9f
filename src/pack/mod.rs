//! The build's second half: tokenizer (trained on a sample of the corpus, or loaded), a
//! patient-level train/validation split, and token shards with a manifest, all recorded in
//! the catalog.
//!
//! [`tokenizer`] trains and saves the T5 tokenizer, [`encoder`] turns corpus text into ids,
//! [`shards`] splits patients and packs ids into shard files; [`bench`] measures packing.

pub mod bench;
pub mod encoder;
pub mod shards;
pub mod tokenizer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use duckdb::Connection;
use serde::Serialize;

use self::shards::{PackConfig, Packer, Split};
use self::tokenizer::TokenizerConfig;
use crate::catalog::sql::PACK;
use crate::progress::Reporter;
use crate::{Error, Result};
use ehrprep_data::objective::SpanCorruption;

/// Settings of the tokenize-and-pack stage.
#[derive(Debug, Clone, Serialize)]
pub struct PackSettings {
    /// An existing tokenizer (file or folder with `tokenizer.json`) instead of training one.
    pub tokenizer: Option<PathBuf>,
    pub tokenizer_config: TokenizerConfig,
    /// Encoder input length after span corruption; the raw chunk length follows from it.
    pub inputs_length: usize,
    pub validation_fraction: f64,
    pub seed: u64,
    #[serde(skip)]
    pub rows_per_shard: usize,
}

impl Default for PackSettings {
    fn default() -> Self {
        PackSettings {
            tokenizer: None,
            tokenizer_config: TokenizerConfig::default(),
            inputs_length: 512,
            validation_fraction: 0.01,
            seed: 42,
            rows_per_shard: PackConfig::default().rows_per_shard,
        }
    }
}

pub use ehrprep_data::shards::{Manifest, SplitStats, TokenizerInfo};

const BATCH: i64 = 4096;

/// Runs the stage into `out` (`tokenizer/`, `shards/`), recording it in `conn`.
pub fn run(
    conn: &Connection,
    out: &Path,
    build_id: &str,
    settings: &PackSettings,
    reporter: &dyn Reporter,
) -> Result<Manifest> {
    conn.execute_batch(PACK.get("schema"))
        .map_err(Error::catalog("creating the shard tables"))?;
    let (notes, chars): (i64, i64) = conn
        .query_row(PACK.get("corpus_size"), [], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(Error::catalog("sizing the corpus"))?;
    if notes == 0 {
        return Err(Error::Invalid(
            "the corpus is empty; there is nothing to tokenize".into(),
        ));
    }

    let (tok, origin) = match &settings.tokenizer {
        Some(path) => (tokenizer::load(path)?, path.display().to_string()),
        None => {
            let every = (chars as usize / settings.tokenizer_config.sample_chars.max(1)).max(1);
            let mut stmt = conn
                .prepare(PACK.get("sample"))
                .map_err(Error::catalog("sampling"))?;
            let texts: Vec<String> = stmt
                .query_map([every as i64], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(Error::catalog("sampling"))?;
            reporter.note(&format!("training the tokenizer on {} notes", texts.len()));
            (
                tokenizer::train(&texts, &settings.tokenizer_config)?,
                "trained".to_string(),
            )
        }
    };
    let tok_dir = out.join("tokenizer");
    let sha256 = tokenizer::save(&tok, &tok_dir, settings.inputs_length)?;
    let vocab_size = tok.get_vocab_size(true);
    let info = TokenizerInfo {
        sha256,
        vocab_size,
        pad_id: tok.token_to_id(tokenizer::PAD).unwrap_or(0),
        eos_id: tok.token_to_id(tokenizer::EOS).unwrap_or(1),
        sentinel0: tokenizer::sentinel0(&tok)?,
        origin,
    };
    conn.execute(
        PACK.get("insert_tokenizer"),
        duckdb::params![
            build_id,
            info.sha256,
            info.origin,
            info.vocab_size as i64,
            info.eos_id as i64,
            info.sentinel0 as i64,
            serde_json::to_string(&settings.tokenizer_config).expect("json")
        ],
    )
    .map_err(Error::catalog("recording the tokenizer"))?;

    // Patient-level split and the seeded order, computed over per-note ids only.
    let mut stmt = conn
        .prepare(PACK.get("notes_for_split"))
        .map_err(Error::catalog("splitting"))?;
    let ids: Vec<(i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .map_err(Error::catalog("splitting"))?;
    let mut order: Vec<(Split, u64, i64, i64)> = ids
        .into_iter()
        .map(|(seq, subject)| {
            (
                shards::split_of(subject, settings.validation_fraction),
                shards::shuffle_key(settings.seed, seq),
                seq,
                subject,
            )
        })
        .collect();
    order.sort_unstable();
    {
        let mut app = conn
            .appender("pack_order")
            .map_err(Error::catalog("ordering notes"))?;
        let mut pos = 0i64;
        let mut last = None;
        for (split, _, seq, _) in &order {
            if last != Some(*split) {
                pos = 0;
                last = Some(*split);
            }
            app.append_row(duckdb::params![seq, split.as_str(), pos])
                .map_err(Error::catalog("ordering notes"))?;
            pos += 1;
        }
        app.flush().map_err(Error::catalog("ordering notes"))?;
    }

    let sc = SpanCorruption::default();
    let (raw_length, targets_length) = sc.raw_length_for(settings.inputs_length);
    let shard_dir = out.join("shards");
    crate::fsutil::create_private_dir(&shard_dir)?;
    let pack_config = PackConfig {
        raw_length,
        rows_per_shard: settings.rows_per_shard,
        ..PackConfig::default()
    };
    let mut manifest = Manifest {
        ehrprep_version: env!("CARGO_PKG_VERSION").to_string(),
        build_id: build_id.to_string(),
        seed: settings.seed,
        inputs_length: settings.inputs_length,
        raw_length,
        targets_length,
        dtype: if vocab_size > u16::MAX as usize + 1 {
            "uint32"
        } else {
            "uint16"
        }
        .to_string(),
        tokenizer: info,
        splits: Default::default(),
        shards: Vec::new(),
    };
    let mut batch_stmt = conn
        .prepare(PACK.get("batch_in_order"))
        .map_err(Error::catalog("reading the corpus"))?;
    let encoder = crate::pack::encoder::Encoder::new(&tok);
    reporter.start("tokenizing", order.len() as u64, "notes");
    for split in [Split::Train, Split::Validation] {
        let in_split: Vec<_> = order.iter().filter(|o| o.0 == split).collect();
        let subjects: HashSet<i64> = in_split.iter().map(|o| o.3).collect();
        let mut packer = Packer::new(&shard_dir, split, vocab_size, pack_config.clone());
        let mut lo = 0i64;
        while lo < in_split.len() as i64 {
            let texts: Vec<String> = batch_stmt
                .query_map(duckdb::params![split.as_str(), lo, lo + BATCH], |r| {
                    r.get(0)
                })
                .and_then(|rows| rows.collect())
                .map_err(Error::catalog("reading the corpus"))?;
            let n = texts.len() as u64;
            for ids in encoder.encode_batch(&texts)? {
                packer.push(&ids)?;
            }
            reporter.advance(n);
            lo += BATCH;
        }
        let (infos, dropped, notes) = packer.finish()?;
        let stats = SplitStats {
            notes,
            subjects: subjects.len() as u64,
            tokens: infos.iter().map(|s| s.tokens).sum(),
            rows: infos.iter().map(|s| s.rows).sum(),
            dropped_tokens: dropped,
        };
        conn.execute(
            PACK.get("insert_split"),
            duckdb::params![
                build_id,
                split.as_str(),
                stats.notes as i64,
                stats.subjects as i64,
                stats.tokens as i64,
                stats.dropped_tokens as i64
            ],
        )
        .map_err(Error::catalog("recording splits"))?;
        for s in &infos {
            conn.execute(
                PACK.get("insert_shard"),
                duckdb::params![
                    build_id,
                    s.split.as_str(),
                    s.file,
                    s.rows as i64,
                    s.tokens as i64,
                    s.sha256
                ],
            )
            .map_err(Error::catalog("recording shards"))?;
        }
        manifest.splits.insert(split, stats);
        manifest.shards.extend(infos);
    }
    reporter.finish();
    let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
    crate::fsutil::write_atomic(&shard_dir.join("manifest.json"), json.as_bytes())?;
    Ok(manifest)
}

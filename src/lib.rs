//! ehrprep turns MIMIC-III and MIMIC-IV-Note clinical notes into a clean, leakage-free
//! pretraining corpus, recording every decision in a DuckDB catalog.
//!
//! The stages, in pipeline order, each a module: [`corpus`] reads the MIMIC files and
//! decides every note (recipe rules, normalization, de-duplication), [`pack`] trains or
//! loads the tokenizer and writes token shards, [`train`] drives a trainer plugin to
//! pretrain and finetune, and [`eval`] scores, records and reports. [`synth`] writes
//! MIMIC-shaped synthetic data for everyone without MIMIC access; [`experiment`] runs a
//! whole protocol from a TOML file.
//!
//! [`build`] composes the corpus and pack stages into one `ehrprep build`.
//!
//! Imports run one way: [`cli`] -> [`experiment`] and [`build`] -> the stages -> the core
//! ([`catalog`], [`plugin`], [`fsutil`], [`progress`], [`memory`]). Stage code never sees
//! clap types. Among the stages, `pack` uses `corpus`, `eval` uses both (task text is
//! normalized and tokenized as notes are), and `train` uses `eval` (finetuning picks each
//! run's best epoch by its score); none imports a stage that imports it.
//!
//! ```no_run
//! use ehrprep::build::{BuildConfig, run_build};
//! let config = BuildConfig::new("fixtures/mimic".into(), "out".into());
//! let summary = run_build(&config, &ehrprep::progress::Silent)?;
//! println!("kept {} of {} notes", summary.kept(), summary.notes_in());
//! # Ok::<(), ehrprep::Error>(())
//! ```

pub mod build;
pub mod catalog;
pub mod cli;
pub mod corpus;
mod error;
pub mod eval;
pub mod experiment;
pub mod fsutil;
pub mod memory;
pub mod pack;
pub mod plugin;
pub mod progress;
pub mod synth;
pub mod train;

pub use error::{Error, Result};

use serde::{Deserialize, Serialize};

/// Which MIMIC release a note came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Source {
    #[serde(rename = "mimic-iii")]
    MimicIii,
    #[serde(rename = "mimic-iv")]
    MimicIv,
}

impl Source {
    /// The value stored in the catalog's `source` columns.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::MimicIii => "mimic-iii",
            Source::MimicIv => "mimic-iv",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "mimic-iii" => Some(Source::MimicIii),
            "mimic-iv" => Some(Source::MimicIv),
            _ => None,
        }
    }
}

/// Joins a scoped thread, passing a panic in it on to the caller.
pub(crate) fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

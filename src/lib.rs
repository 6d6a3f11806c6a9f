//! ehrprep turns MIMIC-III and MIMIC-IV-Note clinical notes into a clean, leakage-free
//! pretraining corpus, recording every decision in a DuckDB catalog.
//!
//! The stages, in pipeline order:
//! [`discover`] finds the input files, [`ingest`] loads and validates them with DuckDB,
//! [`select`] applies the corpus recipe's set logic, [`normalize`] cleans each note,
//! [`pipeline`] composes them into one build, and [`catalog`] owns the database.
//! [`synth`] writes MIMIC-shaped synthetic data for everyone without MIMIC access.
//!
//! ```no_run
//! use ehrprep::pipeline::{BuildConfig, run_build};
//! let config = BuildConfig::new("fixtures/mimic".into(), "out".into());
//! let summary = run_build(&config, &ehrprep::progress::Silent)?;
//! println!("kept {} of {} notes", summary.kept(), summary.notes_in());
//! # Ok::<(), ehrprep::Error>(())
//! ```

pub mod bench;
pub mod catalog;
pub mod cli;
pub mod dedup;
pub mod discover;
pub mod encoder;
mod error;
pub mod evaluate;
pub mod experiment;
pub mod finetune;
pub mod fsutil;
pub mod ingest;
pub mod memory;
pub mod metrics;
pub mod normalize;
pub mod objective;
pub mod pack;
pub mod pipeline;
pub mod plot;
pub mod plugin;
pub mod pretrain;
pub mod progress;
pub mod query;
pub mod report;
pub mod reread;
pub mod select;
pub mod shards;
pub mod sql;
pub mod stats;
pub mod synth;
pub mod task_data;
pub mod tasks;
pub mod tokenizer;

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

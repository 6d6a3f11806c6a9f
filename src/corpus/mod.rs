//! The corpus stage: MIMIC note files in, every note decided (kept, or dropped and why),
//! the kept notes normalized into the catalog's `corpus` table.
//!
//! [`discover`] finds the input files, [`ingest`] loads and validates them with DuckDB,
//! [`select`] applies the recipe's set rules (with [`task_rows`] naming the notes of task
//! patients), [`normalize`] cleans each note's text, [`decide`] drops empty notes, notes
//! holding a task document's text ([`overlap`]) and exact duplicates and writes the corpus,
//! [`reread`] streams the text from a second read of each file, [`dedup`] finds
//! near-duplicate clusters, [`stats`] adds up what happened.
//! [`crate::build`] composes them, and then the pack stage, into one `ehrprep build`.

pub mod decide;
pub mod dedup;
pub mod discover;
pub mod ingest;
pub mod normalize;
pub mod overlap;
pub mod reread;
pub mod select;
pub mod stats;
pub mod task_rows;

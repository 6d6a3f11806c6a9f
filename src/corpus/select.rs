//! The corpus recipe's set rules, run in DuckDB over the staged notes (`sql/select_*.sql`).
//!
//! Each note gets at most one reason here; notes without one go on to normalization, where
//! the text rules (`empty`, `task_text_overlap`, `exact_duplicate`) finish the job.

use duckdb::Connection;
use serde::{Deserialize, Serialize};

use crate::catalog::sql::SELECT_PAPER;
use crate::{Error, Result};

/// Why a note is not in the corpus, or that it is. One per note, in the recipe's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    ErrorFlag,
    EraOverlap,
    TaskPatient,
    ExcludedSubject,
    DraftSuperseded,
    Empty,
    /// Contains a downstream task document's text (`--task-data`; see `corpus::overlap`).
    TaskTextOverlap,
    ExactDuplicate,
    /// Only under `--recipe strict`.
    NearDuplicate,
    Kept,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::ErrorFlag,
        Reason::EraOverlap,
        Reason::TaskPatient,
        Reason::ExcludedSubject,
        Reason::DraftSuperseded,
        Reason::Empty,
        Reason::TaskTextOverlap,
        Reason::ExactDuplicate,
        Reason::NearDuplicate,
        Reason::Kept,
    ];

    /// The value stored in `note_decisions.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ErrorFlag => "error_flag",
            Reason::EraOverlap => "era_overlap",
            Reason::TaskPatient => "task_patient",
            Reason::ExcludedSubject => "excluded_subject",
            Reason::DraftSuperseded => "draft_superseded",
            Reason::Empty => "empty",
            Reason::TaskTextOverlap => "task_text_overlap",
            Reason::ExactDuplicate => "exact_duplicate",
            Reason::NearDuplicate => "near_duplicate",
            Reason::Kept => "kept",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Options of the set rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetRules {
    /// Drop MIMIC-III radiology and discharge notes of patients who are not CareVue-only.
    pub era_overlap: bool,
}

/// Computes `stage_reasons` (each staged note's reason and metadata, in build order).
pub fn apply_set_rules(conn: &Connection, rules: SetRules) -> Result<()> {
    conn.execute_batch(SELECT_PAPER.get("metadata"))
        .map_err(Error::catalog("applying the corpus recipe"))?;
    conn.execute(SELECT_PAPER.get("reasons"), [rules.era_overlap])
        .map_err(Error::catalog("applying the corpus recipe"))?;
    conn.execute_batch(SELECT_PAPER.get("drop_notes"))
        .map_err(Error::catalog("applying the corpus recipe"))
}

/// Task ROW_IDs that match no NOTEEVENTS row.
pub fn unmatched_task_rows(conn: &Connection) -> Result<u64> {
    conn.query_row(SELECT_PAPER.get("task_rows_unmatched"), [], |r| r.get(0))
        .map_err(Error::catalog("matching task rows"))
}

//! Build statistics: a value that adds up across batches, stored as JSON in `build_runs`
//! and shown to the user as a polars frame.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::corpus::select::Reason;

/// Notes and characters for one reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub notes: u64,
    /// Characters of the raw text (for `kept` and `near_duplicate`: of the normalized text).
    pub chars: u64,
}

/// What a build did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildStats {
    pub by_reason: BTreeMap<Reason, Count>,
    /// Raw characters of every input note.
    pub chars_in: u64,
    pub seconds: f64,
    /// Kept notes that are near duplicates of an earlier kept note (dropped only under
    /// `--recipe strict`).
    pub near_duplicates: u64,
    /// Wall seconds per stage (ingest, select, normalize, dedup, pack).
    pub stage_seconds: BTreeMap<String, f64>,
}

impl BuildStats {
    pub fn add(&mut self, reason: Reason, chars: u64) {
        let c = self.by_reason.entry(reason).or_default();
        c.notes += 1;
        c.chars += chars;
    }

    /// Moves `n` notes of `chars` characters from one reason to another.
    pub fn move_notes(&mut self, from: Reason, to: Reason, n: u64, chars: u64) {
        let f = self.by_reason.entry(from).or_default();
        f.notes -= n;
        f.chars -= chars;
        let t = self.by_reason.entry(to).or_default();
        t.notes += n;
        t.chars += chars;
    }

    pub fn notes_in(&self) -> u64 {
        self.by_reason.values().map(|c| c.notes).sum()
    }

    pub fn count(&self, reason: Reason) -> Count {
        self.by_reason.get(&reason).copied().unwrap_or_default()
    }

    pub fn kept(&self) -> u64 {
        self.count(Reason::Kept).notes
    }

    /// One row per reason in recipe order (every reason shown, zero or not), then a total.
    pub fn to_frame(&self) -> PolarsResult<DataFrame> {
        let notes_in = self.notes_in().max(1) as f64;
        let mut reasons = Vec::new();
        let mut notes = Vec::new();
        let mut share = Vec::new();
        let mut chars = Vec::new();
        for reason in Reason::ALL {
            let c = self.count(reason);
            reasons.push(reason.as_str().to_string());
            notes.push(c.notes);
            share.push((c.notes as f64 / notes_in * 1000.0).round() / 10.0);
            chars.push(c.chars);
        }
        reasons.push("total".to_string());
        notes.push(self.notes_in());
        share.push(100.0);
        chars.push(self.chars_in);
        df!(
            "reason" => reasons,
            "notes" => notes,
            "percent" => share,
            "characters" => chars,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lists_every_reason_and_a_total() {
        let mut s = BuildStats::default();
        s.add(Reason::Kept, 10);
        s.add(Reason::Kept, 5);
        s.add(Reason::ErrorFlag, 7);
        s.chars_in = 22;
        let df = s.to_frame().unwrap();
        assert_eq!(df.height(), Reason::ALL.len() + 1);
        let notes = df.column("notes").unwrap().u64().unwrap();
        assert_eq!(notes.get(0), Some(1)); // error_flag
        assert_eq!(notes.get(Reason::ALL.len() - 1), Some(2)); // kept
        assert_eq!(notes.get(Reason::ALL.len()), Some(3)); // total
        let pct = df.column("percent").unwrap().f64().unwrap();
        assert_eq!(pct.get(Reason::ALL.len() - 1), Some(66.7));
        assert_eq!(s.kept(), 2);
        assert_eq!(s.count(Reason::Kept).chars, 15);
    }
}

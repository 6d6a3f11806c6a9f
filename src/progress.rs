//! Progress reporting. The library reports through [`Reporter`]; the CLI draws bars with
//! indicatif on stderr, tests use [`Silent`].

/// Receives progress from long stages.
pub trait Reporter: Sync {
    /// A stage starts with `total` units of work (`unit` names them: "notes", "bytes").
    fn start(&self, stage: &str, total: u64, unit: &str);
    /// `done` more units of the current stage are finished.
    fn advance(&self, done: u64);
    /// The current stage finished.
    fn finish(&self);
    /// A line for the user (never note text).
    fn note(&self, line: &str);
    /// A short status beside the current stage's bar (loss, rate).
    fn status(&self, _status: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Reporter for Silent {
    fn start(&self, _: &str, _: u64, _: &str) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
    fn note(&self, _: &str) {}
}

//! The library's [`Reporter`] on a terminal: indicatif bars with rate and ETA on stderr.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::Reporter;

/// Progress bars on stderr, hidden when stderr is not a terminal or with `--quiet`.
pub(crate) struct BarReporter {
    bar: Mutex<Option<ProgressBar>>,
    hidden: bool,
    quiet: bool,
}

impl BarReporter {
    pub(crate) fn new(quiet: bool) -> BarReporter {
        BarReporter {
            bar: Mutex::new(None),
            hidden: quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()),
            quiet,
        }
    }
}

impl Reporter for BarReporter {
    fn start(&self, stage: &str, total: u64, unit: &str) {
        let bar = ProgressBar::with_draw_target(
            Some(total),
            if self.hidden {
                ProgressDrawTarget::hidden()
            } else {
                ProgressDrawTarget::stderr()
            },
        );
        let template = if unit == "steps" {
            "{prefix:>12} [{bar:30}] {human_pos}/{human_len} {msg} ETA {eta}"
        } else if unit == "bytes" {
            "{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
        } else {
            "{msg:>24} [{bar:30}] {human_pos}/{human_len} {per_sec} ETA {eta}"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        if unit == "steps" {
            bar.set_prefix(stage.to_string());
        } else {
            bar.set_message(stage.to_string());
        }
        *self.bar.lock().expect("bar lock") = Some(bar);
    }

    fn advance(&self, done: u64) {
        if let Some(bar) = self.bar.lock().expect("bar lock").as_ref() {
            bar.inc(done);
        }
    }

    fn status(&self, status: &str) {
        if let Some(bar) = self.bar.lock().expect("bar lock").as_ref() {
            bar.set_message(status.to_string());
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("bar lock").take() {
            bar.finish_and_clear();
        }
    }

    /// Warnings show even with `--quiet`.
    fn note(&self, line: &str) {
        if !self.quiet || line.starts_with("warning:") {
            match self.bar.lock().expect("bar lock").as_ref() {
                Some(bar) => bar.suspend(|| eprintln!("{line}")),
                None => eprintln!("{line}"),
            }
        }
    }
}

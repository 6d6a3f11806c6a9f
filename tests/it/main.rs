//! The host's integration tests, one binary: each module drives the real `ehrprep` binary or
//! the library through the helpers in [`util`]. None needs PyTorch; the T5 plugin's
//! end-to-end tests live with the plugin.

mod bad_input;
mod build;
mod cli;
mod interop;
mod metrics;
mod plugins;
mod report;
mod shards;
mod snapshots;
mod synth;
mod util;

//! The T5 plugin driven through the host, as users run it: `ehrprep pretrain`, `finetune`,
//! `evaluate` and `experiment run` on the CPU, with the catalog checked afterwards. They
//! run the `ehrprep` binary that `cargo test --workspace` builds beside this test.

mod distributed;
mod experiment;
mod finetune;
mod pretrain;
#[path = "../../../../tests/it/util.rs"]
mod util;

//! The training stage: a trainer plugin driven from the host. [`pretrain`] runs span
//! corruption pretraining on a build's shards, in one process or as one rank of many
//! ([`world`]); [`finetune`] runs the paper's finetuning grid (task x fraction x seed),
//! choosing each run's best epoch by its validation score.

pub mod finetune;
pub mod pretrain;
pub mod world;

//! The evaluation stage: the downstream tasks' data ([`task_data`]), their metrics
//! ([`metrics`]), generation and scoring through a plugin ([`scoring`]), scoring a finished
//! checkpoint on one split ([`evaluate`]), and the report with its plots ([`report`],
//! [`plot`]).

pub mod evaluate;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod scoring;
pub mod task_data;

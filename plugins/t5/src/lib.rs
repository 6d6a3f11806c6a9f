//! ehrprep's T5 trainer plugin: T5 in libtorch (tch), loaded by the host at run time.
//!
//! The host talks to it only through the C ABI of `ehrprep_plugin_api`; methods take and
//! return JSON. This crate is also a Rust library so its tests and the standalone benchmark
//! driver can call the model directly.

pub mod checkpoint;
pub mod cuda;
pub mod data;
pub mod dist;
pub mod finetune;
pub mod generate;
pub mod model;
pub mod optim;
pub mod session;
pub mod train;

use ehrprep_plugin_api::requests::{
    FinetuneRequest, GenerateRequest, LeaveRequest, PretrainRequest, SessionRequest,
};
use ehrprep_plugin_api::{CallError, Host, Plugin, PluginInfo, export_plugin};

/// libtorch's random generator is global: whatever seeds it and then draws (initial
/// weights, dropout masks) holds this, so runs in one process cannot interleave draws.
pub(crate) static GLOBAL_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The plugin as the host sees it.
pub struct T5Plugin;

impl Plugin for T5Plugin {
    fn info() -> PluginInfo {
        let mut capabilities: Vec<String> = ["pretrain", "finetune", "generate", "session"]
            .into_iter()
            .map(String::from)
            .collect();
        if tch::Cuda::is_available() {
            capabilities.push("cuda".into());
        }
        // cuBLAS reads it when it makes its first handle; without CUDA it is never read.
        let (key, value) = cuda::CUBLAS_WORKSPACE;
        let env = vec![(key.to_string(), value.to_string())];
        PluginInfo {
            name: "t5".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities,
            description: format!(
                "T5 v1.0/v1.1 pretraining, finetuning and generation in libtorch (presets: {})",
                model::T5Config::PRESETS.join(", ")
            ),
            env,
        }
    }

    fn call(method: &str, request: &str, host: &Host<'_>) -> Result<String, CallError> {
        match method {
            "pretrain" => {
                let req: PretrainRequest = serde_json::from_str(request)
                    .map_err(|e| CallError::Failed(format!("bad pretrain request: {e}")))?;
                let result = train::pretrain(&req, host)?;
                Ok(serde_json::to_string(&result).expect("result serializes"))
            }
            "finetune" => {
                let req: FinetuneRequest = serde_json::from_str(request)
                    .map_err(|e| CallError::Failed(format!("bad finetune request: {e}")))?;
                let result = finetune::finetune(&req, host)?;
                Ok(serde_json::to_string(&result).expect("result serializes"))
            }
            "generate" => {
                let req: GenerateRequest = serde_json::from_str(request)
                    .map_err(|e| CallError::Failed(format!("bad generate request: {e}")))?;
                Ok(finetune::generate(&req, host)?.to_string())
            }
            "session-join" | "session-follow" | "session-leave" => {
                let bad =
                    |e: serde_json::Error| CallError::Failed(format!("bad {method} request: {e}"));
                match method {
                    "session-join" => session::join(&serde_json::from_str(request).map_err(bad)?),
                    "session-follow" => {
                        let req: SessionRequest = serde_json::from_str(request).map_err(bad)?;
                        session::follow(&req, host)
                    }
                    _ => {
                        let req: LeaveRequest = serde_json::from_str(request).map_err(bad)?;
                        session::leave(&req)
                    }
                }
            }
            other => Err(CallError::Failed(format!(
                "the t5 plugin has no method `{other}`"
            ))),
        }
    }
}

export_plugin!(T5Plugin);

//! The smallest ehrprep plugin, and the host's test double.
//!
//! Methods: `echo` (logs a line, sends an event, returns the request), `fail`, `panic`, and
//! `wait` (runs "steps" until the host cancels, then reports how many it ran). Setting
//! `EHRPREP_ECHO_ABI` makes it claim another ABI version, so hosts can test their refusal.

#![allow(unsafe_code)] // `no_mangle` on the entry point; no other unsafe here.

use ehrprep_plugin_api::{ABI_VERSION, CallError, Host, Plugin, PluginInfo, PluginTable, glue};

pub struct Echo;

impl Plugin for Echo {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "echo".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: vec!["echo".into(), "wait".into()],
            description: "returns what it is sent".into(),
            env: Vec::new(),
        }
    }

    fn call(method: &str, request: &str, host: &Host<'_>) -> Result<String, CallError> {
        match method {
            "echo" => {
                host.info("echo: received a request");
                host.event(&serde_json::json!({"kind": "echo", "bytes": request.len()}));
                Ok(request.to_string())
            }
            "fail" => Err(CallError::Failed("asked to fail".into())),
            "panic" => panic!("asked to panic"),
            "wait" => {
                for step in 0..1_000_000u64 {
                    if host.cancelled() {
                        return Err(CallError::Cancelled(format!("{{\"steps\":{step}}}")));
                    }
                    host.event(&serde_json::json!({"kind": "tick", "step": step}));
                }
                Ok("{\"steps\":1000000}".into())
            }
            other => Err(CallError::Failed(format!("no method `{other}`"))),
        }
    }
}

static TABLE: PluginTable = PluginTable {
    abi_version: ABI_VERSION,
    size: std::mem::size_of::<PluginTable>() as u32,
    info: glue::info::<Echo>,
    call: glue::call::<Echo>,
    free: glue::free,
};

static OTHER_ABI: PluginTable = PluginTable {
    abi_version: ABI_VERSION + 1000,
    ..TABLE
};

/// The entry point, as `export_plugin!` would write it, plus the ABI override.
#[unsafe(no_mangle)]
pub extern "C" fn ehrprep_plugin_entry() -> *const PluginTable {
    if std::env::var_os("EHRPREP_ECHO_ABI").is_some() {
        &OTHER_ABI
    } else {
        &TABLE
    }
}

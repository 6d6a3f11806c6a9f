//! The contract between the ehrprep host and a trainer plugin: a tiny, versioned C ABI.
//!
//! A plugin is a shared library exporting one symbol, [`ENTRY_SYMBOL`], which returns a
//! pointer to a static [`PluginTable`]. The table starts with the ABI version and its own
//! size, so a host can refuse a plugin built against another version before touching
//! anything else. Requests and results cross as UTF-8 JSON; bulk data (shards,
//! checkpoints, predictions) crosses as files. The host passes [`HostCallbacks`] for log
//! lines, events (metrics, checkpoints) and cancellation.
//!
//! Memory: whoever allocates frees. Bytes a plugin returns ([`PluginBytes`]) go back to the
//! plugin's `free`; everything the host passes is borrowed for the duration of the call.
//! Panics never cross the boundary: [`export_plugin!`] catches them on the plugin side and
//! the host catches its own in the callbacks.
//!
//! Plugin authors implement [`Plugin`] and call [`export_plugin!`]; they write no `unsafe`.

#![allow(unsafe_code)] // FFI is this crate's whole purpose; every block says why it holds.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::{Deserialize, Serialize};

pub mod requests;

/// Bumped whenever [`PluginTable`] or [`HostCallbacks`] change shape or meaning.
pub const ABI_VERSION: u32 = 1;

/// The one symbol a plugin exports: `extern "C" fn() -> *const PluginTable`.
pub const ENTRY_SYMBOL: &str = "ehrprep_plugin_entry";

/// `call` finished; the result bytes hold the result JSON.
pub const STATUS_OK: i32 = 0;
/// `call` failed; the result bytes hold a message for the user.
pub const STATUS_ERROR: i32 = 1;
/// `call` stopped because the host asked it to; the result bytes hold the result JSON
/// of the work done so far (for example the last checkpoint written).
pub const STATUS_CANCELLED: i32 = 2;
/// `call` panicked; the result bytes hold the panic message.
pub const STATUS_PANIC: i32 = 3;

/// Log levels for [`HostCallbacks::log`].
pub const LOG_INFO: u32 = 0;
pub const LOG_WARN: u32 = 1;

/// Bytes allocated by the plugin. The host copies them and hands them back to
/// [`PluginTable::free`].
#[repr(C)]
#[derive(Debug)]
pub struct PluginBytes {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

/// What the host offers a running call. `ctx` is the host's and opaque to the plugin.
#[repr(C)]
pub struct HostCallbacks {
    pub ctx: *mut c_void,
    /// One log line, UTF-8, at a `LOG_*` level.
    pub log: unsafe extern "C" fn(ctx: *mut c_void, level: u32, text: *const u8, len: usize),
    /// One event, a UTF-8 JSON object with a `"kind"` field (`train_step`, `checkpoint`, ...).
    pub event: unsafe extern "C" fn(ctx: *mut c_void, json: *const u8, len: usize),
    /// Whether the user asked to stop; plugins check it at step boundaries.
    pub cancelled: unsafe extern "C" fn(ctx: *mut c_void) -> bool,
}

/// The table a plugin's entry symbol returns. Fields are only ever appended; `size` lets a
/// host see which ones a plugin has.
#[repr(C)]
pub struct PluginTable {
    pub abi_version: u32,
    /// `size_of::<PluginTable>()` as the plugin was compiled.
    pub size: u32,
    /// [`PluginInfo`] as JSON.
    pub info: unsafe extern "C" fn() -> PluginBytes,
    /// Runs `method` on a JSON request; writes the result or message to `out` and returns
    /// a `STATUS_*` code.
    pub call: unsafe extern "C" fn(
        method: *const u8,
        method_len: usize,
        request: *const u8,
        request_len: usize,
        host: *const HostCallbacks,
        out: *mut PluginBytes,
    ) -> i32,
    /// Frees bytes this plugin returned.
    pub free: unsafe extern "C" fn(bytes: PluginBytes),
}

/// How a plugin introduces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    /// Methods it answers (`pretrain`, ...) and facts about it (`cuda`).
    pub capabilities: Vec<String>,
    pub description: String,
    /// Environment variables the plugin needs before the libraries it uses start, as
    /// (name, value). A host sets each one the user has not set, once, before it starts any
    /// thread of its own (the environment cannot be written safely once threads run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
}

/// Why a call did not finish.
#[derive(Debug)]
pub enum CallError {
    /// The request could not be served; the message is for the user.
    Failed(String),
    /// The host asked to stop; the JSON describes what was done.
    Cancelled(String),
}

impl<E: std::fmt::Display> From<E> for CallError {
    fn from(e: E) -> Self {
        CallError::Failed(e.to_string())
    }
}

/// A plugin's behaviour, in safe Rust.
pub trait Plugin {
    fn info() -> PluginInfo;
    /// Serves `method` with a JSON `request`; returns the result JSON.
    fn call(method: &str, request: &str, host: &Host<'_>) -> Result<String, CallError>;
}

/// The host's callbacks, safely.
pub struct Host<'a> {
    raw: &'a HostCallbacks,
}

impl Host<'_> {
    pub fn log(&self, level: u32, text: &str) {
        // SAFETY: the host guarantees the callbacks and ctx live for the whole call; the
        // text is borrowed only for the duration of the callback.
        unsafe { (self.raw.log)(self.raw.ctx, level, text.as_ptr(), text.len()) }
    }

    pub fn info(&self, text: &str) {
        self.log(LOG_INFO, text)
    }

    pub fn warn(&self, text: &str) {
        self.log(LOG_WARN, text)
    }

    /// Sends an event; `value` must serialize to a JSON object with a `kind` field.
    pub fn event<T: Serialize>(&self, value: &T) {
        let json = serde_json::to_string(value).expect("events serialize");
        // SAFETY: as in `log`.
        unsafe { (self.raw.event)(self.raw.ctx, json.as_ptr(), json.len()) }
    }

    pub fn cancelled(&self) -> bool {
        // SAFETY: as in `log`.
        unsafe { (self.raw.cancelled)(self.raw.ctx) }
    }
}

impl<'a> Host<'a> {
    /// Wraps raw callbacks, for calling a plugin's Rust code in process (tests, drivers).
    pub fn new(raw: &'a HostCallbacks) -> Host<'a> {
        Host { raw }
    }
}

/// The host's side of the callbacks, in safe Rust. Plugins call it from the thread that
/// made the call, one callback at a time.
pub trait HostSink {
    fn log(&mut self, level: u32, text: &str);
    /// `json` is one event object.
    fn event(&mut self, json: &str);
    fn cancelled(&mut self) -> bool;
}

type SinkRef<'s> = &'s mut dyn HostSink;

/// Runs `f` with C callbacks that forward to `sink`. A panic in the sink is caught (it
/// must not unwind through the plugin) and the event dropped.
pub fn with_sink<R>(sink: &mut dyn HostSink, f: impl FnOnce(&HostCallbacks) -> R) -> R {
    let mut sink: SinkRef<'_> = sink;
    let callbacks = HostCallbacks {
        ctx: (&mut sink as *mut SinkRef<'_>).cast(),
        log: sink_log,
        event: sink_event,
        cancelled: sink_cancelled,
    };
    f(&callbacks)
}

/// # Safety
/// `ctx` is the pointer `with_sink` made, still inside its call.
unsafe fn sink<'a>(ctx: *mut c_void) -> &'a mut SinkRef<'a> {
    // SAFETY: guaranteed by the caller; `with_sink` outlives every callback.
    unsafe { &mut *ctx.cast::<SinkRef<'a>>() }
}

/// # Safety
/// `text` points to `len` readable bytes.
unsafe fn text<'a>(text: *const u8, len: usize) -> std::borrow::Cow<'a, str> {
    // SAFETY: guaranteed by the caller.
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(text, len) })
}

unsafe extern "C" fn sink_log(ctx: *mut c_void, level: u32, t: *const u8, len: usize) {
    // SAFETY: the plugin passes back our ctx and a valid buffer.
    let (sink, t) = unsafe { (sink(ctx), text(t, len)) };
    let _ = catch_unwind(AssertUnwindSafe(|| sink.log(level, &t)));
}

unsafe extern "C" fn sink_event(ctx: *mut c_void, t: *const u8, len: usize) {
    // SAFETY: as in `sink_log`.
    let (sink, t) = unsafe { (sink(ctx), text(t, len)) };
    let _ = catch_unwind(AssertUnwindSafe(|| sink.event(&t)));
}

unsafe extern "C" fn sink_cancelled(ctx: *mut c_void) -> bool {
    // SAFETY: as in `sink_log`.
    let sink = unsafe { sink(ctx) };
    catch_unwind(AssertUnwindSafe(|| sink.cancelled())).unwrap_or(true)
}

fn into_bytes(s: String) -> PluginBytes {
    let mut s = std::mem::ManuallyDrop::new(s.into_bytes());
    PluginBytes {
        ptr: s.as_mut_ptr(),
        len: s.len(),
        cap: s.capacity(),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// The glue [`export_plugin!`] instantiates; not for direct use.
#[doc(hidden)]
pub mod glue {
    use super::*;

    pub unsafe extern "C" fn info<P: Plugin>() -> PluginBytes {
        let json = catch_unwind(|| serde_json::to_string(&P::info()).expect("info serializes"))
            .unwrap_or_else(|_| "{}".to_string());
        into_bytes(json)
    }

    /// # Safety
    /// `method` and `request` point to valid UTF-8 of the given lengths, `host` to live
    /// callbacks, `out` to writable memory; all for the duration of the call.
    pub unsafe extern "C" fn call<P: Plugin>(
        method: *const u8,
        method_len: usize,
        request: *const u8,
        request_len: usize,
        host: *const HostCallbacks,
        out: *mut PluginBytes,
    ) -> i32 {
        let result = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: guaranteed by the caller (see above).
            let (method, request, host) = unsafe {
                (
                    std::slice::from_raw_parts(method, method_len),
                    std::slice::from_raw_parts(request, request_len),
                    &*host,
                )
            };
            let method = std::str::from_utf8(method)
                .map_err(|_| CallError::Failed("method name is not UTF-8".into()))?;
            let request = std::str::from_utf8(request)
                .map_err(|_| CallError::Failed("request is not UTF-8".into()))?;
            P::call(method, request, &Host { raw: host })
        }));
        let (status, text) = match result {
            Ok(Ok(json)) => (STATUS_OK, json),
            Ok(Err(CallError::Failed(message))) => (STATUS_ERROR, message),
            Ok(Err(CallError::Cancelled(json))) => (STATUS_CANCELLED, json),
            Err(payload) => (STATUS_PANIC, panic_message(&*payload)),
        };
        // SAFETY: guaranteed by the caller.
        unsafe { out.write(into_bytes(text)) };
        status
    }

    /// # Safety
    /// `bytes` came from this plugin's `info` or `call` and is freed once.
    pub unsafe extern "C" fn free(bytes: PluginBytes) {
        if !bytes.ptr.is_null() {
            // SAFETY: the parts are exactly those of a Vec<u8> this plugin leaked.
            drop(unsafe { Vec::from_raw_parts(bytes.ptr, bytes.len, bytes.cap) });
        }
    }
}

/// Exports `$plugin` (a type implementing [`Plugin`]) as this library's plugin table.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The plugin's entry point; see `ehrprep_plugin_api`.
        #[unsafe(no_mangle)]
        pub extern "C" fn ehrprep_plugin_entry() -> *const $crate::PluginTable {
            static TABLE: $crate::PluginTable = $crate::PluginTable {
                abi_version: $crate::ABI_VERSION,
                size: ::std::mem::size_of::<$crate::PluginTable>() as u32,
                info: $crate::glue::info::<$plugin>,
                call: $crate::glue::call::<$plugin>,
                free: $crate::glue::free,
            };
            &TABLE
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Plugin for Echo {
        fn info() -> PluginInfo {
            PluginInfo {
                name: "echo".into(),
                version: "1".into(),
                capabilities: vec!["echo".into()],
                description: String::new(),
                env: Vec::new(),
            }
        }
        fn call(method: &str, request: &str, host: &Host<'_>) -> Result<String, CallError> {
            match method {
                "echo" => {
                    host.info("echoing");
                    host.event(&serde_json::json!({"kind": "echo"}));
                    Ok(request.to_string())
                }
                "stop" if host.cancelled() => Err(CallError::Cancelled("{}".into())),
                "panic" => panic!("deliberate"),
                _ => Err(CallError::Failed(format!("no method `{method}`"))),
            }
        }
    }

    #[derive(Default)]
    struct Recorder {
        seen: Vec<String>,
    }
    impl HostSink for Recorder {
        fn log(&mut self, _: u32, text: &str) {
            self.seen.push(text.to_string());
        }
        fn event(&mut self, json: &str) {
            self.seen.push(json.to_string());
        }
        fn cancelled(&mut self) -> bool {
            true
        }
    }

    fn run_with(sink: &mut Recorder, method: &str, request: &str) -> (i32, String) {
        let mut out = PluginBytes {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        };
        let status = with_sink(sink, |host| unsafe {
            glue::call::<Echo>(
                method.as_ptr(),
                method.len(),
                request.as_ptr(),
                request.len(),
                host,
                &mut out,
            )
        });
        let text = unsafe { String::from_utf8_lossy(std::slice::from_raw_parts(out.ptr, out.len)) }
            .into_owned();
        unsafe { glue::free(out) };
        (status, text)
    }

    fn run(method: &str, request: &str) -> (i32, String) {
        run_with(&mut Recorder::default(), method, request)
    }

    #[test]
    fn calls_cross_the_boundary_with_status_and_text() {
        let mut sink = Recorder::default();
        let result = run_with(&mut sink, "echo", "{\"a\":1}");
        assert_eq!(result, (STATUS_OK, "{\"a\":1}".into()));
        assert_eq!(sink.seen, ["echoing", "{\"kind\":\"echo\"}"]);
        assert_eq!(run("stop", ""), (STATUS_CANCELLED, "{}".into()));
        assert_eq!(run("nope", ""), (STATUS_ERROR, "no method `nope`".into()));
    }

    #[test]
    fn panics_become_a_status() {
        assert_eq!(run("panic", ""), (STATUS_PANIC, "deliberate".into()));
    }

    #[test]
    fn info_round_trips() {
        let bytes = unsafe { glue::info::<Echo>() };
        let json = unsafe { std::slice::from_raw_parts(bytes.ptr, bytes.len) }.to_vec();
        unsafe { glue::free(bytes) };
        let info: PluginInfo = serde_json::from_slice(&json).unwrap();
        assert_eq!(info, Echo::info());
    }
}

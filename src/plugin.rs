//! The plugin host: finds trainer plugins at run time, checks their ABI before trusting
//! anything else in them, and calls them with JSON.
//!
//! Search order: an explicit `--plugin PATH`; the folders in `EHRPREP_PLUGIN_PATH`; the
//! folder holding the `ehrprep` binary. A loaded plugin is never unloaded (libtorch
//! crashes on `dlclose`), and the host itself never links libtorch.

#![allow(unsafe_code)] // loading foreign code; every block says what it relies on

use std::path::{Path, PathBuf};

use ehrprep_plugin_api::{
    ABI_VERSION, ENTRY_SYMBOL, HostSink, PluginBytes, PluginInfo, PluginTable, STATUS_CANCELLED,
    STATUS_ERROR, STATUS_OK, STATUS_PANIC, with_sink,
};

use crate::{Error, Result};

/// A plugin that passed the ABI check.
pub struct Plugin {
    pub path: PathBuf,
    pub info: PluginInfo,
    table: &'static PluginTable,
}

/// How a call ended, when it did not fail.
#[derive(Debug)]
pub enum Outcome {
    Finished(String),
    /// The user stopped it; the JSON describes what was done.
    Cancelled(String),
}

fn refuse(path: &Path, problem: impl Into<String>) -> Error {
    Error::Plugin {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// The folders searched for plugins, in order.
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("EHRPREP_PLUGIN_PATH")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    dirs
}

/// Shared libraries in `dirs` (by file suffix), in search order then name order.
pub fn candidates(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(std::env::consts::DLL_SUFFIX))
            })
            .collect();
        found.sort();
        for p in found {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

impl Plugin {
    /// Sets the environment variables the plugin declares (`PluginInfo::env`) that are not
    /// set already, for the libraries it loads, which read them when they start.
    ///
    /// # Safety
    /// It writes the process environment: no other thread may exist (one reading the
    /// environment from C while it is written is undefined behaviour).
    pub unsafe fn prepare_environment(&self) {
        for (key, value) in &self.info.env {
            if std::env::var_os(key).is_none() {
                // SAFETY: the caller guarantees this is the process's only thread.
                unsafe { std::env::set_var(key, value) }
            }
        }
    }

    /// Loads `path` and checks that it is a plugin for this ABI.
    pub fn load(path: &Path) -> Result<Plugin> {
        // SAFETY: loading runs the library's initializers; a plugin is trusted code the
        // user installed, which is the premise of a plugin system.
        let library = unsafe { libloading::Library::new(path) }
            .map_err(|e| refuse(path, format!("cannot be loaded as a shared library: {e}")))?;
        // Never unloaded: libtorch and other C++ runtimes crash on dlclose.
        let library: &'static libloading::Library = Box::leak(Box::new(library));
        type Entry = unsafe extern "C" fn() -> *const PluginTable;
        // SAFETY: the symbol's type is the ABI's documented signature; a library that
        // exports the name with another type is not a plugin we can protect against.
        let entry = unsafe { library.get::<Entry>(ENTRY_SYMBOL.as_bytes()) }.map_err(|_| {
            refuse(
                path,
                format!("is not an ehrprep plugin (it exports no `{ENTRY_SYMBOL}`)"),
            )
        })?;
        // SAFETY: calling the entry point is what the ABI defines; it returns a pointer to
        // a static table or null.
        let table = unsafe { entry() };
        if table.is_null() {
            return Err(refuse(path, "its plugin entry point returned no table"));
        }
        // Only the version is read before it is checked: it is the one field every ABI
        // version shares.
        // SAFETY: the table is static and starts with a u32 in every version.
        let version = unsafe { table.cast::<u32>().read() };
        if version != ABI_VERSION {
            return Err(refuse(
                path,
                format!(
                    "was built for plugin ABI version {version}, and this ehrprep speaks version {ABI_VERSION}; rebuild the plugin against this ehrprep"
                ),
            ));
        }
        // SAFETY: same version, so the layout is ours; static for the process's life.
        let table: &'static PluginTable = unsafe { &*table };
        if (table.size as usize) < std::mem::size_of::<PluginTable>() {
            return Err(refuse(
                path,
                format!(
                    "declares a plugin table of {} bytes; ABI {ABI_VERSION} needs {}",
                    table.size,
                    std::mem::size_of::<PluginTable>()
                ),
            ));
        }
        // SAFETY: `info` is a function of this ABI; the bytes it returns go back to `free`.
        let bytes = unsafe { (table.info)() };
        let info = take(table, bytes);
        let info: PluginInfo = serde_json::from_str(&info)
            .map_err(|e| refuse(path, format!("describes itself with malformed JSON: {e}")))?;
        Ok(Plugin {
            path: path.to_path_buf(),
            info,
            table,
        })
    }

    pub fn has(&self, capability: &str) -> bool {
        self.info.capabilities.iter().any(|c| c == capability)
    }

    /// Calls `method` with a JSON request; `sink` receives logs and events meanwhile.
    pub fn call(&self, method: &str, request: &str, sink: &mut dyn HostSink) -> Result<Outcome> {
        let mut out = PluginBytes {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        };
        let status = with_sink(sink, |host| {
            // SAFETY: every pointer is valid for the call's duration; `out` is written by
            // the plugin before it returns.
            unsafe {
                (self.table.call)(
                    method.as_ptr(),
                    method.len(),
                    request.as_ptr(),
                    request.len(),
                    host,
                    &mut out,
                )
            }
        });
        let text = take(self.table, out);
        let name = &self.info.name;
        match status {
            STATUS_OK => Ok(Outcome::Finished(text)),
            STATUS_CANCELLED => Ok(Outcome::Cancelled(text)),
            STATUS_ERROR => Err(refuse(
                &self.path,
                format!("plugin `{name}` failed in `{method}`: {text}"),
            )),
            STATUS_PANIC => Err(refuse(
                &self.path,
                format!("plugin `{name}` panicked in `{method}`: {text}"),
            )),
            other => Err(refuse(
                &self.path,
                format!("plugin `{name}` returned unknown status {other} from `{method}`"),
            )),
        }
    }
}

/// Copies bytes a plugin returned and hands them back to its `free`.
fn take(table: &PluginTable, bytes: PluginBytes) -> String {
    let text = if bytes.ptr.is_null() {
        String::new()
    } else {
        // SAFETY: the plugin returned `len` initialized bytes at `ptr`.
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(bytes.ptr, bytes.len) })
            .into_owned()
    };
    // SAFETY: the bytes came from this plugin and are freed exactly once.
    unsafe { (table.free)(bytes) };
    text
}

/// Every library on the search path (or just `explicit`), loaded or refused.
pub fn discover(explicit: Option<&Path>) -> Vec<(PathBuf, Result<Plugin>)> {
    let paths = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => candidates(&search_path()),
    };
    paths
        .into_iter()
        .map(|p| {
            let loaded = Plugin::load(&p);
            (p, loaded)
        })
        .collect()
}

/// The plugin to use for `capability`: `explicit` if given (refused if it lacks the
/// capability), else the first on the search path that has it.
pub fn find(capability: &str, explicit: Option<&Path>) -> Result<Plugin> {
    if let Some(path) = explicit {
        let plugin = Plugin::load(path)?;
        if !plugin.has(capability) {
            return Err(refuse(
                path,
                format!(
                    "plugin `{}` cannot `{capability}` (it offers: {})",
                    plugin.info.name,
                    plugin.info.capabilities.join(", ")
                ),
            ));
        }
        return Ok(plugin);
    }
    let dirs = search_path();
    let mut refused = Vec::new();
    for path in candidates(&dirs) {
        match Plugin::load(&path) {
            Ok(plugin) if plugin.has(capability) => return Ok(plugin),
            Ok(_) => {}
            // Not naming these would hide, say, a T5 plugin whose libtorch is missing.
            Err(e) => refused.push(e.to_string()),
        }
    }
    let refused = if refused.is_empty() {
        String::new()
    } else {
        format!("; libraries refused: {}", refused.join("; "))
    };
    Err(Error::Invalid(format!(
        "no plugin that can `{capability}` was found; searched {} (set EHRPREP_PLUGIN_PATH or pass --plugin PATH; the T5 plugin is built with `cargo build --release -p ehrprep-t5`){refused}",
        if dirs.is_empty() {
            "nothing".to_string()
        } else {
            dirs.iter()
                .map(|d| format!("`{}`", d.display()))
                .collect::<Vec<_>>()
                .join(", ")
        }
    )))
}

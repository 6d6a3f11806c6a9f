//! The T5 plugin links the training-data contract (`ehrprep-data`) and the ABI, never the
//! host: its library carries no DuckDB, polars or tokenizers code, so loading it costs only
//! libtorch and a host can be rebuilt without rebuilding the trainer.

use std::path::PathBuf;
use std::process::Command;

#[path = "../../../tests/it/util.rs"]
mod util;

/// The plugin library `cargo test` built beside this test.
fn plugin() -> PathBuf {
    util::plugin_lib("ehrprep-t5")
}

/// Every symbol the library defines, demangled.
fn defined_symbols() -> String {
    let out = Command::new("nm")
        .args(["--demangle", "--defined-only"])
        .arg(plugin())
        .output()
        .expect("nm (binutils) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_plugin_library_links_no_host_crate() {
    let symbols = defined_symbols();
    // What it does link is visible the same way, so an absence below means something.
    for present in ["ehrprep_data::examples::", "ehrprep_plugin_api::", "tch::"] {
        assert!(
            symbols.contains(present),
            "no `{present}` symbol: is nm reading the library?"
        );
    }
    for absent in [
        "ehrprep::",
        "duckdb::",
        "libduckdb_sys::",
        "polars_core::",
        "tokenizers::",
    ] {
        let found: Vec<&str> = symbols
            .lines()
            .filter(|l| l.contains(absent))
            .take(3)
            .collect();
        assert!(
            found.is_empty(),
            "the plugin defines `{absent}` symbols: {found:?}"
        );
    }
}

#[test]
fn the_plugin_library_needs_no_host_library_at_load_time() {
    let out = Command::new("ldd")
        .arg(plugin())
        .output()
        .expect("ldd runs");
    let needed = String::from_utf8_lossy(&out.stdout);
    assert!(needed.contains("libtorch"), "{needed}");
    for absent in ["duckdb", "polars", "tokenizers", "libehrprep"] {
        assert!(!needed.contains(absent), "{needed}");
    }
}

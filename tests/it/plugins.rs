//! The plugin host: discovery, listing, ABI refusal, errors and panics across the boundary,
//! and cancellation, against the echo plugin. The T5 plugin's end-to-end tests live with it
//! (`plugins/t5/tests/host`), so the host's tests run without PyTorch.

use std::path::{Path, PathBuf};

use crate::util::*;
use ehrprep::plugin::{Outcome, Plugin};
use ehrprep_plugin_api::HostSink;

fn echo() -> PathBuf {
    plugin_lib("ehrprep-plugin-echo")
}

/// A shared library that is certainly loadable and certainly not a plugin: this process's libc.
fn libc_path() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
        .map(PathBuf::from)
        .expect("libc is mapped")
}

#[derive(Default)]
struct Recorder {
    logs: Vec<String>,
    events: Vec<serde_json::Value>,
    cancel_after: Option<usize>,
}

impl HostSink for Recorder {
    fn log(&mut self, _: u32, text: &str) {
        self.logs.push(text.to_string());
    }
    fn event(&mut self, json: &str) {
        self.events.push(serde_json::from_str(json).unwrap());
    }
    fn cancelled(&mut self) -> bool {
        self.cancel_after.is_some_and(|n| self.events.len() >= n)
    }
}

#[test]
fn list_shows_plugins_and_the_libraries_it_skipped() {
    let dir = Dir::new();
    std::fs::copy(echo(), dir.path().join("libecho.so")).unwrap();
    std::fs::write(dir.path().join("libjunk.so"), b"not a library").unwrap();
    let run = dir.ehrprep_env(&["plugins", "list"], &[("EHRPREP_PLUGIN_PATH", dir.path())]);
    run.ok();
    let stdout = run.stdout();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("echo\t"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields[1], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        fields[2],
        format!("abi {}", ehrprep_plugin_api::ABI_VERSION)
    );
    assert_eq!(fields[3], "echo,wait");
    assert!(fields[4].ends_with("libecho.so"));
    assert!(
        run.stderr()
            .contains("libjunk.so` cannot be loaded as a shared library"),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_plugin_for_another_abi_is_refused_by_name() {
    let dir = Dir::new();
    let echo = echo();
    let run = dir.ehrprep_env(
        &["plugins", "list", "--plugin", echo.to_str().unwrap()],
        &[("EHRPREP_ECHO_ABI", Path::new("1"))],
    );
    let stderr = run.fails();
    let want = format!(
        "was built for plugin ABI version {}, and this ehrprep speaks version {}",
        ehrprep_plugin_api::ABI_VERSION + 1000,
        ehrprep_plugin_api::ABI_VERSION
    );
    assert!(stderr.contains(&want), "{stderr}");
}

#[test]
fn libraries_that_are_not_plugins_are_refused() {
    let err = Plugin::load(&libc_path())
        .err()
        .expect("libc is not a plugin");
    assert!(
        err.to_string()
            .contains("is not an ehrprep plugin (it exports no `ehrprep_plugin_entry`)"),
        "{err}"
    );
    let dir = Dir::new();
    let junk = dir.path().join("libjunk.so");
    std::fs::write(&junk, b"\x7fELF but not really").unwrap();
    let err = Plugin::load(&junk).err().expect("junk is not a library");
    assert!(
        err.to_string()
            .contains("cannot be loaded as a shared library"),
        "{err}"
    );
}

#[test]
fn calls_carry_json_logs_and_events_and_errors_come_back_as_errors() {
    let plugin = Plugin::load(&echo()).unwrap();
    assert_eq!(plugin.info.name, "echo");
    let mut sink = Recorder::default();
    let out = plugin.call("echo", r#"{"x":[1,2]}"#, &mut sink).unwrap();
    assert!(
        matches!(out, Outcome::Finished(ref s) if s == r#"{"x":[1,2]}"#),
        "{out:?}"
    );
    assert_eq!(sink.logs, ["echo: received a request"]);
    assert_eq!(
        sink.events,
        [serde_json::json!({"kind": "echo", "bytes": 11})]
    );

    let err = plugin
        .call("fail", "{}", &mut Recorder::default())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("plugin `echo` failed in `fail`: asked to fail"),
        "{err}"
    );
}

#[test]
fn a_panicking_plugin_call_is_an_error_and_the_host_carries_on() {
    let plugin = Plugin::load(&echo()).unwrap();
    let err = plugin
        .call("panic", "{}", &mut Recorder::default())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("plugin `echo` panicked in `panic`: asked to panic"),
        "{err}"
    );
    // The process is intact and the plugin still answers.
    let out = plugin.call("echo", "1", &mut Recorder::default()).unwrap();
    assert!(matches!(out, Outcome::Finished(ref s) if s == "1"));
}

#[test]
fn cancellation_stops_a_call_and_returns_what_was_done() {
    let plugin = Plugin::load(&echo()).unwrap();
    let mut sink = Recorder {
        cancel_after: Some(5),
        ..Recorder::default()
    };
    let out = plugin.call("wait", "{}", &mut sink).unwrap();
    assert!(
        matches!(out, Outcome::Cancelled(ref s) if s == r#"{"steps":5}"#),
        "{out:?}"
    );
}

#[test]
fn the_host_binary_never_links_libtorch() {
    let binary = std::fs::read(ehrprep_bin()).unwrap();
    for name in [&b"libtorch.so"[..], b"libtorch_cpu.so", b"libc10.so"] {
        assert!(
            !binary.windows(name.len()).any(|w| w == name),
            "the ehrprep binary mentions {}",
            String::from_utf8_lossy(name)
        );
    }
}

#[test]
fn pretrain_without_a_plugin_says_where_it_looked() {
    let dir = Dir::new();
    let empty = dir.path().join("no-plugins");
    std::fs::create_dir(&empty).unwrap();
    // The binary's own folder is searched too: run a link to it from a folder without plugins.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("ehrprep");
    std::fs::hard_link(ehrprep_bin(), &exe)
        .or_else(|_| std::fs::copy(ehrprep_bin(), &exe).map(|_| ()))
        .unwrap();
    let out = std::process::Command::new(&exe)
        .args([
            "pretrain", "--build", "out", "--out", "runs/x", "--steps", "1",
        ])
        .env("EHRPREP_PLUGIN_PATH", &empty)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no plugin that can `pretrain` was found"),
        "{stderr}"
    );
    assert!(stderr.contains("no-plugins"), "{stderr}");
    assert!(stderr.contains(bin.to_str().unwrap()), "{stderr}");
}

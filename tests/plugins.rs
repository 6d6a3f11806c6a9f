//! The plugin host: discovery, listing, ABI refusal, errors and panics across the boundary,
//! cancellation, and `ehrprep pretrain` end to end with the T5 plugin on the CPU.

mod util;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use ehrprep::plugin::{Outcome, Plugin};
use ehrprep_plugin_api::HostSink;
use util::*;

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
    let binary = std::fs::read(env!("CARGO_BIN_EXE_ehrprep")).unwrap();
    for name in [&b"libtorch.so"[..], b"libtorch_cpu.so", b"libc10.so"] {
        assert!(
            !binary.windows(name.len()).any(|w| w == name),
            "the ehrprep binary mentions {}",
            String::from_utf8_lossy(name)
        );
    }
}

#[test]
fn pretrain_records_steps_and_checkpoints_and_resumes_in_the_catalog() {
    let dir = Dir::new();
    dir.build_fixtures_for_training("out").ok();
    let t5 = plugin_lib("ehrprep-t5");
    let t5 = t5.to_str().unwrap();
    let common = [
        "--device",
        "cpu",
        "--threads",
        "1",
        "--plugin",
        t5,
        "--quiet",
    ];
    let mut args = vec![
        "pretrain",
        "--build",
        "out",
        "--out",
        "runs/smoke",
        "--model",
        "tiny",
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--warmup",
        "10",
        "--seed",
        "11",
        "--save-every",
        "3",
        "--eval-every",
        "3",
        "--eval-batches",
        "2",
    ];
    args.extend_from_slice(&common);
    let run = dir.ehrprep(&args);
    run.ok();
    assert!(
        run.stdout().contains("finished at step 6"),
        "{}",
        run.stdout()
    );

    let runs = query(
        &dir,
        "SELECT status, steps_done, device, build_id = (SELECT build_id FROM build_runs), plugin FROM train_runs",
    );
    assert_eq!(runs, [vec!["finished", "6", "cpu", "true", "t5"]]);
    let steps = query(
        &dir,
        "SELECT count(*), count(DISTINCT step), max(step), count(validation_loss), bool_and(loss > 0 AND tokens_per_s > 0) FROM train_steps",
    );
    assert_eq!(steps, [vec!["6", "6", "6", "2", "true"]]);
    let ckpts = query(
        &dir,
        "SELECT step, path, sha256 FROM checkpoints ORDER BY step",
    );
    assert_eq!(ckpts.len(), 2);
    let last = PathBuf::from(&ckpts[1][1]);
    let sha = sha256_hex(&std::fs::read(last.join("model.safetensors")).unwrap());
    assert_eq!(ckpts[1][2], sha);
    assert_owner_only(&dir.path().join("runs/smoke"));
    assert_owner_only(&last.join("model.safetensors"));

    // Starting again into the same folder is refused; resuming continues the same run.
    let stderr = dir.ehrprep(&args).fails();
    assert!(
        stderr.contains("already holds a run; pass --resume"),
        "{stderr}"
    );
    let mut resume = vec!["pretrain", "--resume", "runs/smoke", "--steps", "8"];
    resume.extend_from_slice(&common);
    dir.ehrprep(&resume).ok();
    let runs = query(
        &dir,
        "SELECT count(*), max(status), max(steps_done) FROM train_runs",
    );
    assert_eq!(runs, [vec!["1", "finished", "8"]]);
    let steps = query(
        &dir,
        "SELECT count(*), count(DISTINCT step) FROM train_steps",
    );
    assert_eq!(steps, [vec!["8", "8"]]);

    // A moved run folder resumes where it now is, on the same catalog row.
    std::fs::rename(dir.join("runs/smoke"), dir.join("runs/moved")).unwrap();
    let mut resume = vec!["pretrain", "--resume", "runs/moved/", "--steps", "9"];
    resume.extend_from_slice(&common);
    dir.ehrprep(&resume).ok();
    let runs = query(
        &dir,
        "SELECT count(*), max(steps_done), bool_and(out LIKE '%/runs/moved') FROM train_runs",
    );
    assert_eq!(runs, [vec!["1", "9", "true"]]);
    assert!(dir.join("runs/moved/checkpoint-00000009").is_dir());
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
    std::fs::hard_link(env!("CARGO_BIN_EXE_ehrprep"), &exe)
        .or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_ehrprep"), &exe).map(|_| ()))
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

/// A catalog query; the connection closes before the next `ehrprep` run needs the file.
fn query(dir: &Dir, sql: &str) -> Vec<Vec<String>> {
    rows(&catalog(&dir.join("out")), sql)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn assert_owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
}

#[test]
fn pretrain_stops_cleanly_when_cancelled_and_marks_the_run() {
    let dir = Dir::new();
    dir.build_fixtures_for_training("out").ok();
    let plugin = Plugin::load(&plugin_lib("ehrprep-t5")).unwrap();
    let config = ehrprep::pretrain::PretrainConfig {
        build: Some(dir.path().join("out")),
        out: dir.path().join("runs/stopped"),
        model: Some("tiny".into()),
        steps: 50,
        batch_size: Some(2),
        device: Some("cpu".into()),
        threads: Some(1),
        save_every: Some(0),
        ..Default::default()
    };
    // Cancelled before the first step: the run is recorded as cancelled with no steps.
    let cancel = AtomicBool::new(true);
    let summary =
        ehrprep::pretrain::run(&config, &plugin, &cancel, &ehrprep::progress::Silent).unwrap();
    assert_eq!(summary.status, "cancelled");
    assert_eq!(
        query(&dir, "SELECT status, steps_done FROM train_runs"),
        [vec!["cancelled", "0"]]
    );
}

#[test]
fn ctrl_c_stops_at_a_step_with_a_checkpoint_and_the_run_resumes() {
    let dir = Dir::new();
    dir.build_fixtures_for_training("out").ok();
    let t5 = plugin_lib("ehrprep-t5");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ehrprep"))
        .args([
            "pretrain",
            "--build",
            "out",
            "--out",
            "runs/long",
            "--model",
            "tiny",
        ])
        .args([
            "--steps",
            "100000",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--threads",
            "1",
        ])
        .args([
            "--save-every",
            "0",
            "--eval-every",
            "0",
            "--quiet",
            "--plugin",
        ])
        .arg(&t5)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // run.json appears once the plugin has loaded the shards and is about to train.
    let started = std::time::Instant::now();
    while !dir.join("runs/long/run.json").exists() {
        assert!(started.elapsed().as_secs() < 60, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("cancelled at step"), "{stdout}");
    assert!(
        stdout.contains("resume with: ehrprep pretrain --resume"),
        "{stdout}"
    );

    let run = query(&dir, "SELECT status, steps_done FROM train_runs");
    assert_eq!(run[0][0], "cancelled");
    let stopped_at: u64 = run[0][1].parse().unwrap();
    assert!(stopped_at > 0, "no step ran before Ctrl-C");
    let ckpt = query(&dir, "SELECT step FROM checkpoints");
    assert_eq!(
        ckpt,
        [vec![stopped_at.to_string()]],
        "a checkpoint at the step it stopped"
    );

    let target = (stopped_at + 2).to_string();
    let t5 = t5.to_str().unwrap();
    dir.ehrprep(&[
        "pretrain",
        "--resume",
        "runs/long",
        "--steps",
        &target,
        "--plugin",
        t5,
        "--quiet",
    ])
    .ok();
    let run = query(&dir, "SELECT status, steps_done FROM train_runs");
    assert_eq!(run, [vec!["finished".to_string(), target]]);
}

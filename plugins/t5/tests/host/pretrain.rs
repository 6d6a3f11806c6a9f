//! `ehrprep pretrain` end to end with the T5 plugin on the CPU: steps, checkpoints and
//! resume in the catalog, cancellation, Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use ehrprep::plugin::Plugin;
use ehrprep_plugin_api::requests::PretrainRequest;

use crate::util::*;

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
        "SELECT status, steps_done, device, build_id = (SELECT build_id FROM build_runs), plugin, \
         dropout::VARCHAR FROM train_runs",
    );
    // The tiny preset is T5 v1.0: it pretrains with dropout 0.1, as the paper's models did.
    assert_eq!(runs, [vec!["finished", "6", "cpu", "true", "t5", "0.1"]]);
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
fn pretrain_stops_cleanly_when_cancelled_and_marks_the_run() {
    let dir = Dir::new();
    dir.build_fixtures_for_training("out").ok();
    let plugin = Plugin::load(&plugin_lib("ehrprep-t5")).unwrap();
    let config = ehrprep::train::pretrain::PretrainConfig {
        build: Some(dir.path().join("out")),
        out: dir.path().join("runs/stopped"),
        resume: false,
        request: PretrainRequest {
            model: "tiny".into(),
            steps: 50,
            batch_size: 2,
            device: "cpu".into(),
            threads: 1,
            save_every: 0,
            ..Default::default()
        },
        world: None,
    };
    // Cancelled before the first step: the run is recorded as cancelled with no steps.
    let cancel = AtomicBool::new(true);
    let summary =
        ehrprep::train::pretrain::run(&config, &plugin, &cancel, &ehrprep::progress::Silent)
            .unwrap();
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
    let child = std::process::Command::new(ehrprep_bin())
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

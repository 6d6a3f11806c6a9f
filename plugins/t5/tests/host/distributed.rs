//! Data-parallel pretraining on the CPU: two Gloo ranks on loopback through libtorch's
//! c10d, started by `ehrprep pretrain --nproc-per-node 2` or by hand as torchrun would.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tch::Tensor;

use crate::util::*;

/// `ehrprep pretrain` of the tiny model with everything but the batch and the ranks fixed.
fn pretrain_args<'a>(plugin: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "pretrain",
        "--build",
        "out",
        "--out",
        out,
        "--model",
        "tiny",
        "--steps",
        steps,
        "--seed",
        "11",
        "--lr",
        "0.01",
        "--warmup",
        "10",
        "--dropout",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--save-every",
        "0",
        "--eval-every",
        "0",
        "--plugin",
        plugin,
        "--quiet",
    ]
}

fn weights(run: &Path, step: u64) -> Vec<(String, Tensor)> {
    tensors(&run.join(format!("checkpoint-{step:08}/model.safetensors")))
}

fn tensors(file: &Path) -> Vec<(String, Tensor)> {
    let mut named = Tensor::read_safetensors(file).unwrap();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Every tensor of `a` within `rel` of `b`'s, relative to the tensor's largest value.
fn assert_weights_close(a: &[(String, Tensor)], b: &[(String, Tensor)], rel: f64) {
    assert_eq!(a.len(), b.len());
    for ((name, x), (other, y)) in a.iter().zip(b) {
        assert_eq!(name, other);
        let diff = (x - y).abs().max().double_value(&[]);
        let scale = x.abs().max().double_value(&[]).max(1e-3);
        assert!(
            diff <= rel * scale,
            "{name}: differs by {diff} (scale {scale})"
        );
    }
}

fn losses(dir: &Dir, out: &str) -> Vec<f64> {
    let db = catalog(&dir.join("out"));
    rows(
        &db,
        &format!(
            "SELECT s.loss::VARCHAR FROM train_steps s JOIN train_runs r USING (run_id)
             WHERE r.out LIKE '%/{out}' ORDER BY s.step"
        ),
    )
    .iter()
    .map(|r| r[0].parse().unwrap())
    .collect()
}

#[test]
fn two_ranks_train_as_one_process_with_twice_the_batch_and_resume_on_one() {
    let dir = Dir::new();
    dir.build_fixtures_for_training("out").ok();
    let plugin = t5_plugin();

    let mut two = pretrain_args(&plugin, "runs/two", "10");
    two.extend(["--batch-size", "2", "--nproc-per-node", "2"]);
    let stdout = dir.ehrprep(&two).ok();
    // Rank 0 alone reports the run.
    assert_eq!(stdout.matches("finished at step 10").count(), 1, "{stdout}");
    let mut one = pretrain_args(&plugin, "runs/one", "10");
    one.extend(["--batch-size", "4"]);
    dir.ehrprep(&one).ok();

    // Same examples in the same order, gradients averaged over the ranks: the same losses
    // and weights as one process, up to the order of float sums.
    let (l2, l1) = (losses(&dir, "runs/two"), losses(&dir, "runs/one"));
    assert_eq!(l2.len(), 10);
    for (step, (a, b)) in l2.iter().zip(&l1).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs(),
            "step {}: {a} on two ranks, {b} on one",
            step + 1
        );
    }
    // A group of one (`--nproc-per-node 1`, as on a single GPU) goes through the same
    // collectives and changes nothing.
    let mut solo = pretrain_args(&plugin, "runs/solo", "10");
    solo.extend(["--batch-size", "4", "--nproc-per-node", "1"]);
    dir.ehrprep(&solo).ok();
    assert_eq!(losses(&dir, "runs/solo"), l1);
    // A wrong split of the batch (both ranks on the same examples) would not match.
    assert!((l1[0] - l1[1]).abs() > 1e-3);
    let reference = weights(&dir.join("runs/one"), 10);
    assert_weights_close(&weights(&dir.join("runs/two"), 10), &reference, 1e-5);

    // Checkpointed at step 5 on two ranks, resumed on one: the accumulation takes up the
    // missing rank, the data position carries over, and the end is the same.
    let mut moved = pretrain_args(&plugin, "runs/moved", "5");
    moved.extend(["--batch-size", "2", "--nproc-per-node", "2"]);
    dir.ehrprep(&moved).ok();
    dir.ehrprep(&[
        "pretrain",
        "--resume",
        "runs/moved",
        "--steps",
        "10",
        "--plugin",
        &plugin,
        "--quiet",
    ])
    .ok();
    assert_weights_close(&weights(&dir.join("runs/moved"), 10), &reference, 1e-5);

    // The catalog knows how each was trained.
    let db = catalog(&dir.join("out"));
    let runs = rows(
        &db,
        "SELECT regexp_extract(out, '[a-z]+$'), world_size, batch_per_rank, global_batch,
                coalesce(dist_backend, '-'), steps_done, status
         FROM train_runs ORDER BY 1",
    );
    assert_eq!(
        runs,
        [
            ["moved", "1", "2", "4", "-", "10", "finished"],
            ["one", "1", "4", "4", "-", "10", "finished"],
            ["solo", "1", "4", "4", "gloo", "10", "finished"],
            ["two", "2", "2", "4", "gloo", "10", "finished"],
        ]
    );
}

/// A rank started by hand, as torchrun starts it.
fn rank(dir: &Dir, args: &[&str], rank: usize, port: u16) -> std::process::Child {
    Command::new(ehrprep_bin())
        .args(args)
        .current_dir(dir.path())
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits at most `limit` for `child`; kills it and fails the test if it does not end.
fn wait_at_most(child: std::process::Child, limit: Duration) -> std::process::Output {
    let started = Instant::now();
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the rank did not stop within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_rank_that_dies_stops_the_other_with_an_error_and_the_run_is_marked_failed() {
    let dir = Dir::new();
    dir.build_fixtures_for_training("out").ok();
    let plugin = t5_plugin();
    let mut args = pretrain_args(&plugin, "runs/broken", "100000");
    args.extend(["--batch-size", "2", "--dist-timeout", "30"]);
    let port = free_port();
    let lead = rank(&dir, &args, 0, port);
    let mut other = rank(&dir, &args, 1, port);
    // run.json appears once both ranks have joined; then rank 1 dies mid-training.
    let started = Instant::now();
    while !dir.join("runs/broken/run.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no run started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    other.kill().unwrap();
    other.wait().unwrap();

    let out = wait_at_most(lead, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("rank 0 of 2:"), "{stderr}");
    assert!(stderr.contains("another rank stopped"), "{stderr}");
    let db = catalog(&dir.join("out"));
    assert_eq!(
        rows(&db, "SELECT status, world_size FROM train_runs"),
        [["failed", "2"]]
    );
}

#[test]
fn a_rank_alone_gives_up_at_the_rendezvous_after_its_timeout() {
    let dir = Dir::new();
    dir.build_fixtures_for_training("out").ok();
    let plugin = t5_plugin();
    let mut args = pretrain_args(&plugin, "runs/alone", "10");
    args.extend(["--dist-timeout", "2"]);
    let port = free_port();
    let out = wait_at_most(rank(&dir, &args, 0, port), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "rank 0: joining the gloo process group at 127.0.0.1:{port} failed"
        )),
        "{stderr}"
    );
    // Nothing was written for a run that never started training.
    assert!(!dir.join("runs/alone/run.json").exists());
}

#[test]
fn a_stop_signal_on_any_rank_stops_all_at_one_step_with_rank_0s_checkpoint() {
    let dir = Dir::new();
    dir.build_fixtures_for_training("out").ok();
    let plugin = t5_plugin();
    let mut args = pretrain_args(&plugin, "runs/stopped", "100000");
    args.extend(["--batch-size", "2"]);
    let port = free_port();
    let lead = rank(&dir, &args, 0, port);
    let other = rank(&dir, &args, 1, port);
    let started = Instant::now();
    while !dir.join("runs/stopped/run.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no run started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // Only rank 1 is told to stop, as a scheduler's SIGTERM to one node's task.
    let status = Command::new("kill")
        .args(["-TERM", &other.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let other = wait_at_most(other, Duration::from_secs(60));
    let lead = wait_at_most(lead, Duration::from_secs(60));
    for out in [&other, &lead] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&lead.stdout);
    assert!(stdout.contains("cancelled at step"), "{stdout}");
    let db = catalog(&dir.join("out"));
    let run = rows(&db, "SELECT status, steps_done FROM train_runs");
    assert_eq!(run[0][0], "cancelled");
    assert_ne!(run[0][1], "0", "no step ran before Ctrl-C");
    assert_eq!(
        rows(&db, "SELECT step FROM checkpoints"),
        [[run[0][1].clone()]],
        "rank 0's checkpoint at the step all stopped at"
    );
}

#[test]
fn torchrun_starts_the_ranks_as_users_do() {
    if std::env::var("EHRPREP_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        eprintln!("skipped: EHRPREP_SKIP_PYTHON=1");
        return;
    }
    let dir = Dir::new();
    dir.build_fixtures_for_training("out").ok();
    let plugin = t5_plugin();
    let mut two = pretrain_args(&plugin, "runs/torchrun", "5");
    two.extend(["--batch-size", "2"]);
    let bin = ehrprep_bin();
    // torchrun's agent serves the rendezvous store itself; the ranks join it as clients.
    let out = Command::new(python_path())
        .args([
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
        ])
        .arg(free_port().to_string())
        .arg("--no-python")
        .arg(&bin)
        .args(&two)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("failed to bind"), "{stderr}");
    let mut one = pretrain_args(&plugin, "runs/one", "5");
    one.extend(["--batch-size", "4"]);
    dir.ehrprep(&one).ok();
    let (a, b) = (losses(&dir, "runs/torchrun"), losses(&dir, "runs/one"));
    assert_eq!(a.len(), 5);
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs(),
            "{x} under torchrun, {y} alone"
        );
    }
}

#[test]
fn nccl_on_the_cpu_is_refused_by_name() {
    let dir = Dir::new();
    dir.build_fixtures_for_training("out").ok();
    let plugin = t5_plugin();
    let mut args = pretrain_args(&plugin, "runs/nccl", "2");
    args.extend(["--nproc-per-node", "1", "--dist-backend", "nccl"]);
    let stderr = dir.ehrprep(&args).fails();
    assert!(
        stderr.contains("the nccl backend reduces CUDA tensors only"),
        "{stderr}"
    );
    assert!(stderr.contains("rank 0 of 1 failed"), "{stderr}");
    // One named GPU for several ranks is refused before any touches it.
    let mut args = pretrain_args(&plugin, "runs/gpu", "2");
    let device = args.iter().position(|a| *a == "cpu").unwrap();
    args[device] = "cuda:1";
    args.extend(["--nproc-per-node", "2"]);
    let stderr = dir.ehrprep(&args).fails();
    assert!(
        stderr.contains("would put every rank on one GPU"),
        "{stderr}"
    );
}

#[test]
fn ctrl_c_at_the_launcher_reaches_every_rank_once() {
    let dir = Dir::new();
    dir.build_fixtures_for_training("out").ok();
    let plugin = t5_plugin();
    let mut args = pretrain_args(&plugin, "runs/launched", "100000");
    args.extend(["--batch-size", "2", "--nproc-per-node", "2"]);
    let launcher = Command::new(ehrprep_bin())
        .args(&args)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !dir.join("runs/launched/run.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no run started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // The ranks are in their own process group: only the launcher is signalled here, as
    // the terminal signals it, and it passes the interrupt on once.
    let status = Command::new("kill")
        .args(["-INT", &launcher.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = wait_at_most(launcher, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("cancelled at step"), "{stdout}");
    let db = catalog(&dir.join("out"));
    let run = rows(&db, "SELECT status, steps_done FROM train_runs");
    assert_eq!(run[0][0], "cancelled");
    assert_eq!(
        rows(&db, "SELECT step FROM checkpoints"),
        [[run[0][1].clone()]],
        "a checkpoint at the step both stopped at"
    );
}

#[test]
fn finetuning_epochs_on_two_ranks_equal_one_process() {
    let dir = Dir::new();
    dir.ehrprep(&["synth", "--out", "synth", "--notes", "2000", "--seed", "3"])
        .ok();
    dir.build_fixtures_for_training("out").ok();
    let plugin = t5_plugin();
    dir.ehrprep(&pretrain_args(&plugin, "runs/p", "10")).ok();
    let finetune_args = |out: &'static str| {
        vec![
            "finetune",
            "--task",
            "mednli",
            "--data",
            "synth/tasks/mednli",
            "--checkpoint",
            "runs/p",
            "--fractions",
            "0.1",
            "--seeds",
            "1",
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--batch-size",
            "4",
            "--effective-batch",
            "16",
            "--lr",
            "5e-3",
            "--max-new-tokens",
            "12",
            "--out",
            out,
            "--plugin",
            plugin.as_str(),
            "--quiet",
        ]
    };
    let finetune = |out: &'static str, extra: &[&str]| {
        let mut args = finetune_args(out);
        args.extend_from_slice(extra);
        dir.ehrprep(&args).ok()
    };
    finetune("ft/one", &[]);
    let stdout = finetune("ft/two", &["--nproc-per-node", "2"]);
    assert!(stdout.contains("finished"), "{stdout}");

    // As torchrun or srun starts it: every rank runs `finetune`; rank 0 reads the data,
    // records and scores, and hands each epoch to rank 1 through the process group.
    let args = finetune_args("ft/joined");
    let port = free_port();
    let ranks: Vec<_> = (0..2).map(|r| rank(&dir, &args, r, port)).collect();
    let outs: Vec<_> = ranks
        .into_iter()
        .map(|child| wait_at_most(child, Duration::from_secs(300)))
        .collect();
    for out in &outs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(String::from_utf8_lossy(&outs[0].stdout).contains("finished"));
    // Rank 1 trained both epochs, and reports only that.
    assert_eq!(
        String::from_utf8_lossy(&outs[1].stdout),
        "rank 1 of 2: trained 2 epochs for rank 0\n"
    );

    // The step's four micro-batches are dealt out two and two, dropout masks follow the
    // micro-batch, not the rank: the same epochs, losses and scores as one process.
    let epoch =
        |out: &str| tensors(&dir.join(&format!("{out}/mednli-0.1-s1/epoch-002/model.safetensors")));
    assert_weights_close(&epoch("ft/two"), &epoch("ft/one"), 1e-5);
    let db = catalog(&dir.join("out"));
    let scores = |out: &str| {
        rows(
            &db,
            &format!(
                "SELECT m.split, m.epoch, m.metric, round(m.value, 5)::VARCHAR
                 FROM eval_metrics m JOIN eval_runs r USING (eval_run_id)
                 WHERE r.out LIKE '%/{out}/%' ORDER BY ALL"
            ),
        )
    };
    let one = scores("ft/one");
    assert!(one.iter().any(|r| r[0] == "train"), "{one:?}");
    assert_eq!(scores("ft/two"), one);

    assert_weights_close(&epoch("ft/joined"), &epoch("ft/one"), 1e-5);
    assert_eq!(scores("ft/joined"), one);
    let runs = rows(
        &db,
        "SELECT count(*)::VARCHAR FROM eval_runs WHERE out LIKE '%/ft/joined/%'",
    );
    assert_eq!(
        runs,
        vec![vec!["1".to_string()]],
        "rank 0 alone records the run"
    );
    // Nothing of the hand-over is left behind.
    let run = dir.join("ft/two/mednli-0.1-s1");
    assert!(!run.join("epoch-request.json").exists());
    assert!(!run.join("epoch-result.json").exists());
}

#[test]
fn a_finetuning_rank_0_that_fails_lets_the_others_go_with_an_error() {
    let dir = Dir::new();
    let plugin = t5_plugin();
    // No checkpoint and no data: rank 0 fails after the ranks have joined.
    let args = [
        "finetune",
        "--task",
        "mednli",
        "--data",
        "missing",
        "--checkpoint",
        "missing-run",
        "--device",
        "cpu",
        "--plugin",
        plugin.as_str(),
        "--dist-timeout",
        "60",
    ];
    let port = free_port();
    let ranks: Vec<_> = (0..2).map(|r| rank(&dir, &args, r, port)).collect();
    let outs: Vec<_> = ranks
        .into_iter()
        .map(|child| wait_at_most(child, Duration::from_secs(50)))
        .collect();
    let stderr = |r: usize| String::from_utf8_lossy(&outs[r].stderr).into_owned();
    assert_eq!(outs[0].status.code(), Some(2), "{}", stderr(0));
    assert!(stderr(0).contains("missing"), "{}", stderr(0));
    assert_eq!(outs[1].status.code(), Some(2), "{}", stderr(1));
    assert!(
        stderr(1).contains("rank 0 stopped with an error"),
        "{}",
        stderr(1)
    );
}

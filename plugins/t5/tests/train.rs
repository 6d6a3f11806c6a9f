//! Pretraining on the fixture corpus's shards with the tiny model, on the CPU: the loss
//! falls, a stopped run resumes bit for bit, checkpoints are Hugging Face directories.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ehrprep::build::{BuildConfig, run_build};
use ehrprep::pack::PackSettings;
use ehrprep::pack::tokenizer::TokenizerConfig;
use ehrprep_plugin_api::requests::{OptimizerKind, PretrainRequest};
use ehrprep_plugin_api::{CallError, Host, HostSink, LOG_WARN, with_sink};
use ehrprep_t5::train::{PretrainResult, pretrain};
use serde_json::Value;

/// Shards of the shipped fixtures (small vocabulary, 128-token inputs), built once.
fn shards() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mimic = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mimic");
        let mut config = BuildConfig::new(mimic, dir.path().join("build"));
        config.pack = Some(PackSettings {
            tokenizer_config: TokenizerConfig {
                vocab_size: 1000,
                ..TokenizerConfig::default()
            },
            inputs_length: 128,
            validation_fraction: 0.2,
            ..PackSettings::default()
        });
        run_build(&config, &ehrprep::progress::Silent).unwrap();
        let shards = dir.path().join("build/shards");
        (dir, shards)
    })
    .1
}

/// The ids the fixture build's tokenizer makes.
fn tokenizer_ids() -> i64 {
    ehrprep_data::shards::Manifest::read(shards())
        .unwrap()
        .tokenizer
        .vocab_size as i64
}

#[derive(Default)]
struct Recorder {
    events: Vec<Value>,
    warnings: Vec<String>,
    /// Report "cancelled" once this many steps have been seen.
    stop_after: Option<usize>,
}

impl HostSink for Recorder {
    fn log(&mut self, level: u32, text: &str) {
        if level == LOG_WARN {
            self.warnings.push(text.to_string());
        }
    }
    fn event(&mut self, json: &str) {
        self.events.push(serde_json::from_str(json).unwrap());
    }
    fn cancelled(&mut self) -> bool {
        self.stop_after.is_some_and(|n| self.losses().len() >= n)
    }
}

impl Recorder {
    fn losses(&self) -> Vec<f64> {
        self.of_kind("train_step")
            .map(|e| e["loss"].as_f64().unwrap())
            .collect()
    }
    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["kind"] == kind)
    }
}

fn request(out: &Path, steps: u64) -> PretrainRequest {
    serde_json::from_value(serde_json::json!({
        "shards_dir": shards(),
        "out": out,
        "model": "tiny",
        "steps": steps,
        "batch_size": 4,
        "warmup": 10,
        "device": "cpu",
        "seed": 11,
        "eval_every": 0,
        "eval_batches": 2,
        "save_every": 0,
        "keep_last": 2,
        "threads": 1,
    }))
    .unwrap()
}

fn run(req: &PretrainRequest, sink: &mut Recorder) -> Result<PretrainResult, CallError> {
    with_sink(sink, |raw| pretrain(req, &Host::new(raw)))
}

#[test]
fn loss_falls_over_a_short_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(dir.path(), 40);
    req.batch_size = 8;
    let mut sink = Recorder::default();
    let result = run(&req, &mut sink).unwrap();
    let losses = sink.losses();
    assert_eq!(losses.len(), 40);
    let first = losses[..3].iter().sum::<f64>() / 3.0;
    let last = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(last < first - 1.0, "loss went from {first:.3} to {last:.3}");
    assert_eq!(result.step, 40);
    // The final checkpoint: a Hugging Face directory plus the state to resume.
    let ckpt = result.checkpoint.unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(ckpt.join(file).exists(), "{file} in {}", ckpt.display());
    }
    assert!(result.validation_loss.unwrap().is_finite());
    // A preset's vocabulary is the tokenizer's rounded up to 128s, not the preset's 32,128.
    let tokenizer = tokenizer_ids();
    assert!(tokenizer < 32_000);
    assert_eq!(
        result.model_config.vocab_size,
        (tokenizer + 127) / 128 * 128
    );
    assert_eq!(sink.of_kind("checkpoint").count(), 1);
    // Warmup 10 without a rate: the default peak, 1/sqrt(10), is far above T5's 0.01.
    assert_eq!(sink.warnings.len(), 1, "{:?}", sink.warnings);
    assert!(sink.warnings[0].contains("0.316"), "{}", sink.warnings[0]);
    let step = sink.of_kind("train_step").last().unwrap();
    for field in ["lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"] {
        assert!(step[field].as_f64().unwrap() > 0.0, "{field} in {step}");
    }
}

fn weights(checkpoint: &Path) -> Vec<u8> {
    std::fs::read(checkpoint.join("model.safetensors")).unwrap()
}

#[test]
fn a_stopped_run_resumes_bit_for_bit() {
    let whole = tempfile::tempdir().unwrap();
    let mut sink = Recorder::default();
    let straight = run(&request(whole.path(), 6), &mut sink).unwrap();

    // The same run stopped by the user after 3 steps, then resumed to 6.
    let split = tempfile::tempdir().unwrap();
    let mut sink = Recorder {
        stop_after: Some(3),
        ..Recorder::default()
    };
    let stopped = run(&request(split.path(), 6), &mut sink);
    let Err(CallError::Cancelled(json)) = stopped else {
        panic!("expected a cancelled run, got {stopped:?}");
    };
    let partial: PretrainResult = serde_json::from_str(&json).unwrap();
    assert_eq!(partial.step, 3);
    let mut req = request(split.path(), 6);
    req.resume = true;
    let mut sink = Recorder::default();
    let resumed = run(&req, &mut sink).unwrap();
    // With dropout on (the tiny v1.0 preset's 0.1): the masks replay exactly too.
    let start = sink.of_kind("start").next().unwrap();
    assert_eq!(start["dropout"].as_f64(), Some(0.1));
    assert_eq!(sink.losses().len(), 3, "only the missing steps run");
    assert!(sink.warnings.is_empty(), "{:?}", sink.warnings);

    let a = weights(&straight.checkpoint.unwrap());
    let b = weights(&resumed.checkpoint.unwrap());
    assert!(
        a == b,
        "resumed weights differ from the uninterrupted run's"
    );
    // keep_last = 2: the step-3 and step-6 checkpoints.
    let mut kept: Vec<String> = std::fs::read_dir(split.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    kept.sort();
    assert_eq!(kept, ["checkpoint-00000003", "checkpoint-00000006"]);
}

#[test]
fn dropout_follows_the_model_family_unless_the_request_names_one() {
    let losses_with = |model: &str, dropout: Option<f64>| {
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(dir.path(), 2);
        req.model = model.into();
        req.dropout = dropout;
        let mut sink = Recorder::default();
        let result = run(&req, &mut sink).unwrap();
        let start = sink.of_kind("start").next().unwrap();
        let used = start["dropout"].as_f64().unwrap();
        assert_eq!(result.model_config.dropout_rate, used);
        (used, sink.losses())
    };
    // T5 v1.0 presets pretrain with 0.1, as the paper did; v1.1 presets with none.
    let (v10, with_dropout) = losses_with("tiny", None);
    assert_eq!(v10, 0.1);
    assert_eq!(losses_with("tiny-v1_1", None).0, 0.0);
    // Named in the request, it is what trains: no dropout gives other losses from the
    // same weights and data.
    let (none, without) = losses_with("tiny", Some(0.0));
    assert_eq!(none, 0.0);
    assert_ne!(with_dropout[0], without[0]);
    // The same request twice gives the same masks.
    assert_eq!(losses_with("tiny", None).1, with_dropout);
}

#[test]
fn adamw_and_accumulation_train_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(dir.path(), 4);
    req.optimizer = OptimizerKind::Adamw;
    req.grad_accum = 2;
    let mut sink = Recorder::default();
    run(&req, &mut sink).unwrap();
    let steps: Vec<&Value> = sink.of_kind("train_step").collect();
    assert_eq!(steps.len(), 4);
    // AdamW's default rate is 1e-3 whatever the warmup.
    assert!(sink.warnings.is_empty(), "{:?}", sink.warnings);
    // Two micro-batches of 4 rows of 128 input tokens per step.
    assert_eq!(steps[0]["tokens"], 2 * 4 * 128);
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(dir.path(), 1);
    req.model = "t5-huge".into();
    let err = run(&req, &mut Recorder::default()).unwrap_err();
    assert!(
        matches!(&err, CallError::Failed(m) if m.contains("unknown model `t5-huge`")),
        "{err:?}"
    );
    let mut req = request(dir.path(), 1);
    req.resume = true;
    let err = run(&req, &mut Recorder::default()).unwrap_err();
    assert!(
        matches!(&err, CallError::Failed(m) if m.contains("no checkpoint to resume")),
        "{err:?}"
    );
    // A fresh run into a folder that holds one is refused: it would prune the other's
    // checkpoints. Resuming with another optimizer is refused too.
    run(&request(dir.path(), 1), &mut Recorder::default()).unwrap();
    let err = run(&request(dir.path(), 1), &mut Recorder::default()).unwrap_err();
    assert!(
        matches!(&err, CallError::Failed(m) if m.contains("already holds a run")),
        "{err:?}"
    );
    let mut req = request(dir.path(), 2);
    req.resume = true;
    req.optimizer = OptimizerKind::Adamw;
    let err = run(&req, &mut Recorder::default()).unwrap_err();
    assert!(
        matches!(&err, CallError::Failed(m) if m.contains("resume it with the same")),
        "{err:?}"
    );
}

#[test]
fn pretraining_continues_from_hugging_face_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(dir.path(), 2);
    req.init = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/t5/v1_1"));
    req.lr = Some(0.01);
    let mut sink = Recorder::default();
    let result = run(&req, &mut sink).unwrap();
    // The fixture's 96-id vocabulary grew to hold the build's tokenizer, rounded up to 128s.
    let tokenizer = tokenizer_ids();
    assert!(tokenizer > 96);
    assert_eq!(
        result.model_config.vocab_size,
        (tokenizer + 127) / 128 * 128
    );
    assert_eq!(result.model_config.feed_forward_proj, "gated-gelu");
    assert_eq!(sink.losses().len(), 2);
    // A rate given: no warning about the default.
    assert!(sink.warnings.is_empty(), "{:?}", sink.warnings);
}

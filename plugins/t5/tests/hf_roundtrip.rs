//! Checkpoints are Hugging Face folders: `transformers.T5ForConditionalGeneration` loads them
//! with no missing or unexpected weights and computes the loss ehrprep computes.
//! Runs in the Python given by `EHRPREP_PYTHON` (default `~/.cache/ehrprep-venv`).

use std::path::PathBuf;
use std::process::Command;

use ehrprep_t5::checkpoint::write_hf;
use ehrprep_t5::model::{T5, T5Config};
use tch::{Device, Kind, Tensor, nn};

fn python() -> PathBuf {
    std::env::var_os("EHRPREP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/ehrprep-venv/bin/python")
        })
}

fn roundtrip(preset: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = T5Config::preset(preset).unwrap();
    config.vocab_size = 200;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = T5::new(&vs, config.clone(), Kind::Float);
    write_hf(dir.path(), &vs, &config).unwrap();

    let input_ids: Vec<Vec<i64>> = (0..2)
        .map(|r| (0..30).map(|i| 2 + (i * 7 + r * 13) % 190).collect())
        .collect();
    let labels: Vec<Vec<i64>> = (0..2)
        .map(|r| {
            (0..9)
                .map(|i| 2 + (i * 11 + r * 5) % 190)
                .chain([1])
                .collect()
        })
        .collect();
    let batch = dir.path().join("batch.json");
    std::fs::write(
        &batch,
        serde_json::json!({"input_ids": input_ids, "labels": labels}).to_string(),
    )
    .unwrap();
    let to_tensor = |rows: &Vec<Vec<i64>>| {
        Tensor::from_slice(&rows.concat()).view([rows.len() as i64, rows[0].len() as i64])
    };
    let (x, y) = (to_tensor(&input_ids), to_tensor(&labels));
    let ours = tch::no_grad(|| model.loss(&x, &x.ones_like(), &y, false)).double_value(&[]);

    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/checkpoint_oracle.py");
    let out = Command::new(python())
        .arg(script)
        .arg(dir.path())
        .arg(&batch)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        result["missing"],
        serde_json::json!([]),
        "{preset}: {result}"
    );
    assert_eq!(
        result["unexpected"],
        serde_json::json!([]),
        "{preset}: {result}"
    );
    assert_eq!(
        result["mismatched"],
        serde_json::json!([]),
        "{preset}: {result}"
    );
    let theirs = result["loss"].as_f64().unwrap();
    assert!(
        (ours - theirs).abs() < 1e-4,
        "{preset}: ehrprep loss {ours}, transformers {theirs}"
    );
}

#[test]
fn v1_0_checkpoints_load_in_transformers_with_the_same_loss() {
    roundtrip("tiny");
}

#[test]
fn v1_1_checkpoints_load_in_transformers_with_the_same_loss() {
    roundtrip("tiny-v1_1");
}

//! Interop with the Python ecosystem: Hugging Face `tokenizers` and `transformers` load the
//! tokenizer ehrprep trains and give the same ids.
//!
//! The oracle runs in the Python given by `EHRPREP_PYTHON` (default: the virtual environment
//! `.ci/run` makes, `$HOME/.cache/ehrprep-venv`, from `scripts/requirements-test.txt`). Without
//! it the test fails with instructions; `EHRPREP_SKIP_PYTHON=1` skips it on purpose.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use ehrprep::tokenizer::{self, TokenizerConfig};
use util::*;

fn python() -> Option<PathBuf> {
    if std::env::var("EHRPREP_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        eprintln!("skipped: EHRPREP_SKIP_PYTHON=1");
        return None;
    }
    let python = std::env::var_os("EHRPREP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/ehrprep-venv/bin/python")
        });
    let ok = Command::new(&python)
        .args(["-c", "import tokenizers, transformers"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{}` cannot import tokenizers and transformers: run `python3 -m venv ~/.cache/ehrprep-venv && \
         ~/.cache/ehrprep-venv/bin/pip install -r scripts/requirements-test.txt`, set EHRPREP_PYTHON, \
         or set EHRPREP_SKIP_PYTHON=1 to skip",
        python.display()
    );
    Some(python)
}

/// The normalized corpus of the shipped fixtures.
fn fixture_corpus(d: &Dir) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mimic = root.join("fixtures/mimic");
    d.ehrprep(&[
        "build",
        "--mimic-dir",
        mimic.to_str().unwrap(),
        "--out",
        "out",
    ])
    .ok();
    let conn = catalog(&d.join("out"));
    rows(&conn, "SELECT text FROM corpus ORDER BY seq")
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect()
}

#[test]
fn tokenizer_ids_match_hugging_face() {
    let Some(python) = python() else { return };
    let d = Dir::new();
    let texts = fixture_corpus(&d);
    let config = TokenizerConfig {
        vocab_size: 2000,
        sample_chars: usize::MAX,
        min_char_count: 2,
    };
    let tok = tokenizer::train(&texts, &config).unwrap();
    let dir = d.join("tokenizer");
    tokenizer::save(&tok, &dir, 512).unwrap();

    let mut cases: Vec<serde_json::Value> = texts
        .iter()
        .map(|t| {
            let ids = tok.encode(t.as_str(), true).unwrap().get_ids().to_vec();
            serde_json::json!({"text": t, "ids": ids})
        })
        .collect();
    // Text the trainer never saw: rare characters, tags, sentinels, digits.
    for t in [
        "µg ½ tab [Name] at [LOC] <extra_id_0> 12345",
        "  spaces\n\nand\tnewlines  ",
        "",
    ] {
        let ids = tok.encode(t, true).unwrap().get_ids().to_vec();
        cases.push(serde_json::json!({"text": t, "ids": ids}));
    }
    let cases_path = d.write("cases.json", serde_json::to_vec(&cases).unwrap());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tokenizer_oracle.py");
    let out = Command::new(python)
        .arg(script)
        .arg(&dir)
        .arg(&cases_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "oracle failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["mismatches"], 0);
    assert_eq!(report["cases"], cases.len());
    assert_eq!(report["extra_id_0"], tokenizer::sentinel0(&tok).unwrap());
    assert_eq!(
        (
            report["pad"].as_u64(),
            report["eos"].as_u64(),
            report["unk"].as_u64()
        ),
        (Some(0), Some(1), Some(2))
    );
}

/// Reads a shard the way ehrprep's own Arrow reader does.
fn read_ids(path: &Path) -> Vec<u32> {
    use arrow::array::{Array, FixedSizeListArray, UInt16Array};
    let file = std::fs::File::open(path).unwrap();
    let reader = arrow::ipc::reader::FileReader::try_new(file, None).unwrap();
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let list = batch
            .column(0)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        let values = list
            .values()
            .as_any()
            .downcast_ref::<UInt16Array>()
            .unwrap();
        ids.extend(values.values().iter().map(|&v| v as u32));
    }
    ids
}

#[test]
fn pyarrow_reads_the_shards() {
    let Some(python) = python() else { return };
    let d = Dir::new();
    let mimic = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mimic");
    d.ehrprep(&[
        "build",
        "--mimic-dir",
        mimic.to_str().unwrap(),
        "--out",
        "out",
        "--vocab-size",
        "1000",
        "--input-length",
        "128",
        "--rows-per-shard",
        "50",
    ])
    .ok();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/shards_oracle.py");
    let out = Command::new(python)
        .arg(script)
        .arg(d.join("out/shards"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "oracle failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out/shards/manifest.json")).unwrap())
            .unwrap();
    let shards = report["shards"].as_array().unwrap();
    assert_eq!(shards.len(), manifest["shards"].as_array().unwrap().len());
    for s in shards {
        let ids = read_ids(&d.join("out/shards").join(s["file"].as_str().unwrap()));
        assert_eq!(s["rows"].as_u64().unwrap() as usize * 141, ids.len());
        assert_eq!(
            s["id_sum"].as_u64().unwrap(),
            ids.iter().map(|&i| i as u64).sum::<u64>()
        );
        let first: Vec<u32> = serde_json::from_value(s["first_row"].clone()).unwrap();
        assert_eq!(first, ids[..141]);
        assert!(s["eos_count"].as_u64().unwrap() > 0, "notes end in </s>");
    }
}

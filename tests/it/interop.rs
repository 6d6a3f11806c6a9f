//! Interop with the Python ecosystem: Hugging Face `tokenizers` and `transformers` load the
//! tokenizer ehrprep trains and give the same ids.
//!
//! The oracle runs in the Python given by `EHRPREP_PYTHON` (default: the virtual environment
//! `.ci/run` makes, `$HOME/.cache/ehrprep-venv`, from `scripts/requirements-test.txt`). Without
//! it the test fails with instructions; `EHRPREP_SKIP_PYTHON=1` skips it on purpose.

use std::path::PathBuf;
use std::process::Command;

use crate::util::*;
use ehrprep::pack::tokenizer::{self, TokenizerConfig};

fn python() -> Option<PathBuf> {
    if std::env::var("EHRPREP_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        eprintln!("skipped: EHRPREP_SKIP_PYTHON=1");
        return None;
    }
    let python = python_path();
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
    d.build_fixtures("out", &[]).ok();
    let conn = catalog(&d.join("out"));
    rows(&conn, "SELECT text FROM corpus ORDER BY seq")
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect()
}

#[test]
fn tokenizer_ids_match_hugging_face() {
    for lowercase in [false, true] {
        ids_match_hugging_face(lowercase);
    }
}

fn ids_match_hugging_face(lowercase: bool) {
    let Some(python) = python() else { return };
    let d = Dir::new();
    let texts = fixture_corpus(&d);
    let config = TokenizerConfig {
        vocab_size: 2000,
        sample_chars: usize::MAX,
        min_char_count: 2,
        lowercase,
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
        "BP 120/80, HR 72; SpO2 98%... (RA) -- Pt. OK?!",
        "  spaces\n\nand\tnewlines  ",
        "",
    ] {
        let ids = tok.encode(t, true).unwrap().get_ids().to_vec();
        cases.push(serde_json::json!({"text": t, "ids": ids}));
    }
    let cases_path = d.write("cases.json", serde_json::to_vec(&cases).unwrap());
    let report = oracle(&python, "tokenizer_oracle.py", [&dir, &cases_path]);
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

#[test]
fn pyarrow_reads_the_shards() {
    let Some(python) = python() else { return };
    let d = Dir::new();
    d.build_fixtures(
        "out",
        &[
            "--vocab-size",
            "1000",
            "--input-length",
            "128",
            "--rows-per-shard",
            "50",
        ],
    )
    .ok();
    let report = oracle(&python, "shards_oracle.py", [d.join("out/shards")]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("out/shards/manifest.json")).unwrap())
            .unwrap();
    let shards = report["shards"].as_array().unwrap();
    assert_eq!(shards.len(), manifest["shards"].as_array().unwrap().len());
    for s in shards {
        let (width, ids) =
            ehrprep_data::shards::read_ids(&d.join("out/shards").join(s["file"].as_str().unwrap()))
                .unwrap();
        assert_eq!(width, 141);
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

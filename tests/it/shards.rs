//! `ehrprep build` ends in a tokenizer and token shards: complete, consistent with the
//! catalog, split by patient, and byte-identical across identical builds.

use crate::util::*;

fn build(d: &Dir, out: &str) -> serde_json::Value {
    d.build_fixtures(
        out,
        &[
            "--vocab-size",
            "1000",
            "--input-length",
            "64",
            "--validation-fraction",
            "0.2",
            "--rows-per-shard",
            "100",
        ],
    )
    .ok();
    let manifest = std::fs::read(d.join(&format!("{out}/shards/manifest.json"))).unwrap();
    serde_json::from_slice(&manifest).unwrap()
}

#[test]
fn shards_match_manifest_and_catalog() {
    let d = Dir::new();
    let m = build(&d, "out");
    assert_eq!(
        m["raw_length"], 70,
        "64 inputs need 70 raw tokens (T5 lengths, Python rounding)"
    );
    assert_eq!(m["dtype"], "uint16");
    let shards = m["shards"].as_array().unwrap();
    assert!(shards.len() >= 3, "{m}");
    for s in shards {
        let path = d.join(&format!("out/shards/{}", s["file"].as_str().unwrap()));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            ehrprep::fsutil::hex(&sha2_digest(&bytes)),
            s["sha256"].as_str().unwrap()
        );
        assert!(s["rows"].as_u64().unwrap() <= 100);
    }
    let conn = catalog(&d.join("out"));
    let from_catalog = rows(
        &conn,
        "SELECT split, sum(rows)::BIGINT, sum(tokens)::BIGINT, count(*) FROM shards GROUP BY 1 ORDER BY 1",
    );
    for r in &from_catalog {
        let split = &m["splits"][&r[0]];
        assert_eq!(r[1], split["rows"].to_string());
        assert_eq!(r[2], split["tokens"].to_string());
    }
    // Every kept note is in exactly one split, and no patient is in both.
    let counts = rows(
        &conn,
        "SELECT (SELECT count(*) FROM corpus), (SELECT count(*) FROM pack_order),
                (SELECT count(*) FROM (SELECT c.subject_id FROM pack_order o JOIN corpus c USING (seq)
                  GROUP BY 1 HAVING count(DISTINCT o.split) > 1))",
    );
    assert_eq!(counts[0][0], counts[0][1]);
    assert_eq!(counts[0][2], "0");
    let notes: u64 = ["train", "validation"]
        .iter()
        .map(|s| m["splits"][s]["notes"].as_u64().unwrap())
        .sum();
    assert_eq!(notes.to_string(), counts[0][0]);
    let tok = rows(&conn, "SELECT sha256, vocab_size FROM tokenizers");
    assert_eq!(tok[0][0], m["tokenizer"]["sha256"].as_str().unwrap());
    let tj = std::fs::read(d.join("out/tokenizer/tokenizer.json")).unwrap();
    assert_eq!(ehrprep::fsutil::hex(&sha2_digest(&tj)), tok[0][0]);
    for f in ["tokenizer_config.json", "special_tokens_map.json"] {
        assert!(d.join(&format!("out/tokenizer/{f}")).exists(), "{f}");
    }
    // Everything the build wrote, folders included, is the owner's only.
    let mut folders = vec![d.join("out")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path.clone());
            }
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
        }
    }
}

fn sha2_digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

#[test]
fn identical_builds_give_identical_shards() {
    let d = Dir::new();
    build(&d, "a");
    build(&d, "b");
    for entry in std::fs::read_dir(d.join("a/shards")).unwrap() {
        let name = entry.unwrap().file_name();
        let a = std::fs::read(d.join("a/shards").join(&name)).unwrap();
        let b = std::fs::read(d.join("b/shards").join(&name)).unwrap();
        assert!(a == b, "{name:?} differs");
    }
    assert_eq!(
        std::fs::read(d.join("a/tokenizer/tokenizer.json")).unwrap(),
        std::fs::read(d.join("b/tokenizer/tokenizer.json")).unwrap()
    );
}

#[test]
fn an_existing_tokenizer_is_used_as_is() {
    let d = Dir::new();
    let a = build(&d, "a");
    d.build_fixtures(
        "b",
        &[
            "--tokenizer",
            "a/tokenizer",
            "--input-length",
            "64",
            "--validation-fraction",
            "0.2",
            "--rows-per-shard",
            "100",
        ],
    )
    .ok();
    let b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("b/shards/manifest.json")).unwrap()).unwrap();
    assert_eq!(a["tokenizer"]["sha256"], b["tokenizer"]["sha256"]);
    assert_eq!(b["tokenizer"]["origin"], "a/tokenizer");
    assert_eq!(
        a["shards"], b["shards"],
        "same tokenizer and seed, same shards"
    );
}

#[test]
fn unusable_tokenizers_are_refused() {
    let d = Dir::new();
    let no_eos = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"a":0,"<unk>":1},"unk_token":"<unk>"}}"#;
    d.write("bad/tokenizer.json", no_eos);
    d.write("junk.json", "{\"not\": \"a tokenizer\"}");
    for (path, want) in [("bad", "</s>"), ("junk.json", "not a tokenizer.json")] {
        let err = d.build_fixtures("out", &["--tokenizer", path]).fails();
        assert!(err.contains(want), "{err}");
        assert!(!d.join("out/catalog.duckdb").exists());
        assert!(!d.join("out/shards").exists() && !d.join("out/tokenizer").exists());
    }
}

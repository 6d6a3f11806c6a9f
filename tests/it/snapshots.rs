//! Reviewed snapshots (in the top-level `snapshots/` folder): the normalization of every
//! fixture note, and the decisions of a build of the shipped fixtures.

use crate::util::*;
use ehrprep::Source;
use ehrprep::corpus::normalize::{Deid, normalize};

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(root().join("snapshots"));
    s.set_prepend_module_to_snapshot(false);
    s
}

/// Every fixture note under `fixtures/notes`, by name, normalized as its source says
/// (`iv_` files are MIMIC-IV).
fn normalized_fixture_notes_by_name() -> Vec<(String, String)> {
    let dir = root().join("fixtures/notes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 6);
    files
        .into_iter()
        .map(|file| {
            let name = file.file_stem().unwrap().to_str().unwrap().to_string();
            let source = if name.starts_with("iv_") {
                Source::MimicIv
            } else {
                Source::MimicIii
            };
            let raw = std::fs::read_to_string(&file).unwrap();
            (name, normalize(&raw, source, Deid::Tags))
        })
        .collect()
}

#[test]
fn normalized_fixture_notes() {
    for (name, normalized) in normalized_fixture_notes_by_name() {
        settings().bind(|| insta::assert_snapshot!(format!("normalize__{name}"), normalized));
    }
}

#[test]
fn fixture_build_decisions() {
    let d = Dir::new();
    let root = root();
    let mimic = root.join("fixtures/mimic");
    let tasks = root.join("fixtures/mimic/tasks");
    d.ehrprep(&[
        "build",
        "--mimic-dir",
        mimic.to_str().unwrap(),
        "--task-data",
        tasks.to_str().unwrap(),
        "--out",
        "out",
    ])
    .ok();
    let conn = catalog(&d.join("out"));
    let table = rows(
        &conn,
        "SELECT source, category, reason, count(*) FROM note_decisions GROUP BY ALL ORDER BY ALL",
    );
    let text: String = table
        .iter()
        .map(|r| format!("{}\n", r.join(" | ")))
        .collect();
    settings().bind(|| insta::assert_snapshot!("fixture_build_decisions", text));
    // Every drop reason of the recipe shows up in the shipped fixtures.
    for reason in ehrprep::corpus::select::Reason::ALL {
        use ehrprep::corpus::select::Reason;
        if matches!(reason, Reason::ExcludedSubject | Reason::NearDuplicate) {
            continue; // need --exclude-subjects or --recipe strict, tested elsewhere
        }
        assert!(
            text.contains(&format!("| {} |", reason.as_str())),
            "no `{}` in\n{text}",
            reason.as_str()
        );
    }
}

/// The tokenizer trained on the shipped fixtures, as a build trains it.
fn fixture_tokenizer(d: &Dir) -> tokenizers::Tokenizer {
    d.build_fixtures("out", &["--vocab-size", "1000", "--quiet"])
        .ok();
    ehrprep::pack::tokenizer::load(&d.join("out/tokenizer")).unwrap()
}

#[test]
fn tokenized_fixture_notes() {
    let d = Dir::new();
    let tok = fixture_tokenizer(&d);
    for (name, text) in normalized_fixture_notes_by_name() {
        let enc = tok.encode(text.as_str(), true).unwrap();
        let lines: String = enc
            .get_tokens()
            .iter()
            .zip(enc.get_ids())
            .map(|(t, id)| format!("{id:>5} {t}\n"))
            .collect();
        settings().bind(|| insta::assert_snapshot!(format!("tokens__{name}"), lines));
    }
}

#[test]
fn span_corrupted_example() {
    use ehrprep_data::objective::{SpanCorruption, example_rng};
    let d = Dir::new();
    let tok = fixture_tokenizer(&d);
    let file = root().join("fixtures/notes/iv_radiology.txt");
    let text = normalize(
        &std::fs::read_to_string(file).unwrap(),
        Source::MimicIv,
        Deid::Tags,
    );
    let ids = tok.encode(text.as_str(), true).unwrap().get_ids().to_vec();
    let sc = SpanCorruption::default();
    let (raw, _) = sc.raw_length_for(48);
    let chunk = &ids[..raw];
    let s0 = ehrprep::pack::tokenizer::sentinel0(&tok).unwrap();
    let (inputs, targets) = sc.apply(chunk, s0, 1, &mut example_rng(42, 0, 0));
    let show = |ids: &[u32]| tok.decode(ids, false).unwrap();
    let doc = format!(
        "raw ({}): {}\ninputs ({}): {}\ntargets ({}): {}\n",
        chunk.len(),
        show(chunk),
        inputs.len(),
        show(&inputs),
        targets.len(),
        show(&targets)
    );
    settings().bind(|| insta::assert_snapshot!("span_corruption_example", doc));
}

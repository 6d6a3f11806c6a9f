//! The host's metrics against outside oracles on prepared predictions: SQuAD v2 exact match
//! and F1 against the official script's definitions, CLIP micro / macro F1 against
//! scikit-learn. Runs in the Python given by `EHRPREP_PYTHON` (default `~/.cache/ehrprep-venv`).

use crate::util::{oracle, python_path};
use ehrprep::eval::metrics::{CLIP_LABELS, clip_f1, squad_v2};
use ehrprep_data::rng::Rng;

const WORDS: &[&str] = &[
    "the",
    "a",
    "an",
    "Effusion",
    "effusion.",
    "left",
    "LEFT",
    "small",
    "pleural",
    "no",
    "pneumothorax",
    "(right)",
    "lower-lobe",
    "opacity,",
    "the-end",
    "Theater",
    "café",
    "  ",
];

fn phrase(rng: &mut Rng) -> String {
    let n = rng.below(5);
    (0..n)
        .map(|_| rng.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

fn labels(rng: &mut Rng) -> String {
    let mut out: Vec<&str> = CLIP_LABELS
        .iter()
        .copied()
        .filter(|_| rng.chance(0.2))
        .collect();
    if rng.chance(0.1) {
        out.push("Not a label");
    }
    out.join(", ")
}

#[test]
fn metrics_match_the_official_squad_definitions_and_scikit_learn() {
    let mut rng = Rng::new(2023);
    let squad: Vec<(String, Vec<String>)> = (0..400)
        .map(|_| {
            let golds = (0..rng.below(3))
                .map(|_| phrase(&mut rng))
                .collect::<Vec<_>>();
            let prediction = if !golds.is_empty() && rng.chance(0.3) {
                golds[0].to_uppercase()
            } else {
                phrase(&mut rng)
            };
            (prediction, golds)
        })
        .collect();
    let clip: Vec<(String, String)> = (0..300)
        .map(|_| (labels(&mut rng), labels(&mut rng)))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        serde_json::json!({"squad": squad, "clip": clip}).to_string(),
    )
    .unwrap();
    let oracle = oracle(&python_path(), "metrics_oracle.py", [&cases]);

    let (em, f1) = squad_v2(&squad);
    let (micro, macro_) = clip_f1(&clip);
    for (name, ours) in [
        ("squad_em", em),
        ("squad_f1", f1),
        ("clip_micro", micro),
        ("clip_macro", macro_),
    ] {
        let theirs = oracle[name].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() < 1e-12,
            "{name}: ehrprep {ours}, oracle {theirs}"
        );
    }
    // The cases are not degenerate: scores are strictly between 0 and 1.
    for v in [em, f1, micro, macro_] {
        assert!(v > 0.05 && v < 0.95, "{v}");
    }
}

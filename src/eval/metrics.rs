//! Scoring of generated answers, in the host (no torch): accuracy for MedNLI, SQuAD v2
//! exact match and F1 for RadQA with the official answer normalization, and micro / macro
//! F1 over CLIP's seven labels with scikit-learn's conventions.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

/// CLIP's seven labels, as targets spell them.
pub const CLIP_LABELS: [&str; 7] = [
    "Appointment-related followup",
    "Case-specific instructions for patient",
    "Imaging-related followup",
    "Lab-related followup",
    "Medication-related followups",
    "Other helpful contextual information",
    "Procedure-related followup",
];

/// Fraction of predictions equal to their reference (after trimming whitespace).
pub fn accuracy(pairs: &[(String, String)]) -> f64 {
    if pairs.is_empty() {
        return 0.0;
    }
    let right = pairs.iter().filter(|(p, r)| p.trim() == r.trim()).count();
    right as f64 / pairs.len() as f64
}

static ARTICLES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").expect("valid regex"));

/// The official SQuAD normalization: lower case, drop ASCII punctuation, drop the articles
/// a / an / the, collapse whitespace.
pub fn squad_normalize(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let no_articles = ARTICLES.replace_all(&no_punct, " ");
    no_articles.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn token_f1(prediction: &str, gold: &str) -> f64 {
    let p = squad_normalize(prediction);
    let g = squad_normalize(gold);
    let p: Vec<&str> = p.split_whitespace().collect();
    let g: Vec<&str> = g.split_whitespace().collect();
    if p.is_empty() || g.is_empty() {
        return (p == g) as u8 as f64;
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0;
    for t in &p {
        if let Some(c) = counts.get_mut(t)
            && *c > 0
        {
            *c -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// (exact match, F1) of one prediction against its gold answers, the best over the golds;
/// no gold answers means the question is unanswerable and only the empty answer is right.
pub fn squad_scores(prediction: &str, golds: &[String]) -> (f64, f64) {
    // As the official script: golds that normalize to nothing are dropped, and a question
    // left with none is unanswerable.
    let mut golds: Vec<&str> = golds
        .iter()
        .map(String::as_str)
        .filter(|g| !squad_normalize(g).is_empty())
        .collect();
    if golds.is_empty() {
        golds.push("");
    }
    let em = golds
        .iter()
        .map(|g| (squad_normalize(prediction) == squad_normalize(g)) as u8 as f64)
        .fold(0.0, f64::max);
    let f1 = golds
        .iter()
        .map(|g| token_f1(prediction, g))
        .fold(0.0, f64::max);
    (em, f1)
}

/// Mean (exact match, F1) over questions, as fractions.
pub fn squad_v2(items: &[(String, Vec<String>)]) -> (f64, f64) {
    if items.is_empty() {
        return (0.0, 0.0);
    }
    let (em, f1) = items.iter().fold((0.0, 0.0), |(em, f1), (p, golds)| {
        let (e, f) = squad_scores(p, golds);
        (em + e, f1 + f)
    });
    (em / items.len() as f64, f1 / items.len() as f64)
}

/// The CLIP labels a target or prediction names (comma-separated; unknown names ignored).
pub fn clip_labels(text: &str) -> [bool; 7] {
    let mut out = [false; 7];
    for part in text.split(',') {
        if let Some(i) = CLIP_LABELS.iter().position(|l| *l == part.trim()) {
            out[i] = true;
        }
    }
    out
}

/// (micro F1, macro F1) over the seven labels; a label with no true and no predicted
/// instance scores 0 in the macro mean, as scikit-learn's `f1_score` does by default.
pub fn clip_f1(pairs: &[(String, String)]) -> (f64, f64) {
    let mut tp = [0u64; 7];
    let mut fp = [0u64; 7];
    let mut fn_ = [0u64; 7];
    for (prediction, reference) in pairs {
        let p = clip_labels(prediction);
        let r = clip_labels(reference);
        for i in 0..7 {
            match (p[i], r[i]) {
                (true, true) => tp[i] += 1,
                (true, false) => fp[i] += 1,
                (false, true) => fn_[i] += 1,
                (false, false) => {}
            }
        }
    }
    let f1 = |tp: u64, fp: u64, fn_: u64| {
        let denominator = 2 * tp + fp + fn_;
        if denominator == 0 {
            0.0
        } else {
            2.0 * tp as f64 / denominator as f64
        }
    };
    let micro = f1(tp.iter().sum(), fp.iter().sum(), fn_.iter().sum());
    let macro_ = (0..7).map(|i| f1(tp[i], fp[i], fn_[i])).sum::<f64>() / 7.0;
    (micro, macro_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_normalization_is_the_official_one() {
        assert_eq!(
            squad_normalize("The  Left-sided EFFUSION."),
            "leftsided effusion"
        );
        assert_eq!(squad_normalize("an apple, a pear"), "apple pear");
        assert_eq!(squad_normalize("theater"), "theater");
    }

    #[test]
    fn squad_scores_take_the_best_gold_and_treat_no_answer_as_empty() {
        let golds = vec!["small left effusion".to_string(), "effusion".to_string()];
        assert_eq!(squad_scores("Effusion", &golds), (1.0, 1.0));
        let (em, f1) = squad_scores("left effusion", &golds);
        assert_eq!(em, 0.0);
        assert!((f1 - 0.8).abs() < 1e-12);
        assert_eq!(squad_scores("", &[]), (1.0, 1.0));
        assert_eq!(squad_scores("effusion", &[]), (0.0, 0.0));
    }

    #[test]
    fn clip_f1_counts_per_label() {
        let pairs = vec![
            (
                "Lab-related followup".to_string(),
                "Lab-related followup".to_string(),
            ),
            (
                "Lab-related followup, Imaging-related followup".to_string(),
                "Imaging-related followup".to_string(),
            ),
            (String::new(), "Procedure-related followup".to_string()),
        ];
        let (micro, macro_) = clip_f1(&pairs);
        // tp 2, fp 1, fn 1 -> 4 / 6.
        assert!((micro - 4.0 / 6.0).abs() < 1e-12);
        // lab 2/3, imaging 1, procedure 0, four absent labels 0.
        assert!((macro_ - (2.0 / 3.0 + 1.0) / 7.0).abs() < 1e-12);
    }
}

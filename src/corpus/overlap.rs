//! The task-text guard: finds corpus notes that contain a downstream task document's text.
//!
//! Task patients are removed by ROW_ID ([`super::task_rows`]), but MIMIC-IV-Note holds the
//! same people's MetaVision-era reports and summaries again, re-de-identified, under other
//! ids, and no public table maps one release's patients to the other's. So every note still
//! in is compared with the task documents by content: the share of a document's word
//! shingles found in the note (its containment), estimated from a bottom-k MinHash sample
//! of the document's shingles. Containment, not Jaccard similarity, because a RadQA context
//! is only part of its report: the note around it must not hide it.
//!
//! De-identification is invisible to the comparison: placeholders (`[**...**]`, `___`) and
//! the tags they become are dropped before hashing, so a MIMIC-IV copy with other
//! placeholders, other whitespace or a sentence added still matches.

use std::borrow::Cow;
use std::sync::LazyLock;

use foldhash::{HashMap, HashMapExt};
use rayon::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::Source;
use crate::corpus::dedup::{full_shingles, shingles};
use crate::corpus::normalize::{Deid, TAGS, normalize};
use crate::corpus::task_rows::TaskDoc;

/// The guard's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OverlapConfig {
    /// A note goes when it contains at least this share of a task document's shingles.
    pub threshold: f64,
    /// Words per shingle.
    pub shingle_words: usize,
    /// Shingle hashes kept per task document: its `sample` smallest (all, if it has fewer).
    pub sample: usize,
}

impl Default for OverlapConfig {
    /// 5-word shingles, as near-duplicate detection; 256 hashes give a containment estimate
    /// within about ±0.03 of the truth (one standard deviation) near the threshold. A copy
    /// holds nearly all of a document (placeholders, whitespace and text around it do not
    /// count); 0.7 leaves room for edits.
    fn default() -> Self {
        OverlapConfig {
            threshold: 0.7,
            shingle_words: 5,
            sample: 256,
        }
    }
}

/// Fewest shingles of its own (shared with no other task document) a task document needs
/// to be looked for: with fewer, a note sharing a phrase or two would match it.
pub const MIN_SHINGLES: usize = 8;

/// The hash seed: fixed, so that the same texts always give the same matches.
const SEED: u64 = 0x7a5c_0b1e_55ed_0001;

/// De-identification placeholders, MIMIC-III's and MIMIC-IV's, the tags they become, and
/// the shifted dates that MIMIC-III's placeholders leave as text (`2151-7-16`, `7/16/2151`,
/// `7-16`) where MIMIC-IV has `___`. ASCII word boundaries keep the regex on its fast
/// engine for any text.
static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    let tags: Vec<String> = TAGS.iter().map(|t| regex::escape(t)).collect();
    Regex::new(&format!(
        r"\[\*\*.{{0,120}}?\*\*\]|_{{3,}}|(?-u:\b)(?:[0-9]{{4}}-[0-9]{{1,2}}-[0-9]{{1,2}}|[0-9]{{1,2}}[-/][0-9]{{1,2}}(?:[-/][0-9]{{2,4}})?)(?-u:\b)|{}",
        tags.join("|")
    ))
    .expect("valid regex")
});

/// `text` without de-identification placeholders or tags, each replaced by a space.
fn blind(text: &str) -> Cow<'_, str> {
    PLACEHOLDER.replace_all(text, " ")
}

/// One task document the guard looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    pub task: &'static str,
    pub doc_id: String,
    /// Hashes in its sample.
    pub sampled: u32,
}

/// What the guard made of one task document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocSummary {
    pub task: &'static str,
    pub doc_id: String,
    /// Its distinct shingles that no other task document has.
    pub own_shingles: u64,
    /// Whether notes are checked for it (it has at least [`MIN_SHINGLES`] of its own).
    pub guarded: bool,
}

/// A note's match: the task document (an index into [`TaskIndex::docs`]) and the estimated
/// share of its shingles that the note contains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Match {
    pub doc: u32,
    pub containment: f64,
}

/// The task documents' samples, looked up by hash.
#[derive(Debug)]
pub struct TaskIndex {
    config: OverlapConfig,
    docs: Vec<Guarded>,
    /// `hash -> postings[start..start + len]`: the documents whose sample holds it.
    by_hash: HashMap<u64, (u32, u32)>,
    postings: Vec<u32>,
}

impl TaskIndex {
    /// Indexes `docs`, normalized as MIMIC-III notes are under `deid`. Returns the index and
    /// what became of each document: those with fewer than [`MIN_SHINGLES`] shingles of
    /// their own are not looked for.
    pub fn build(
        docs: &[TaskDoc],
        deid: Deid,
        config: OverlapConfig,
    ) -> (TaskIndex, Vec<DocSummary>) {
        // A document is shingled whole. The few shingles across two RadQA contexts (four
        // at each boundary) may be missing from a note that has a header between them;
        // shingled apart, short templated reports kept too few distinctive shingles and
        // matched unrelated notes (measured on synth's).
        let sets: Vec<Vec<u64>> = docs
            .par_iter()
            .map(|doc| {
                let text = normalize(&doc.text, Source::MimicIii, deid);
                let mut set = full_shingles(&blind(&text), config.shingle_words, SEED);
                set.sort_unstable();
                set.dedup();
                set
            })
            .collect();
        // Shingles that several task documents share are boilerplate (templated sentences
        // such as "no pleural effusion or pneumothorax"): a note holding them need not hold
        // any one document, so they are not counted. Documents with the same shingles (the
        // same text twice) count once, so they are still looked for.
        let mut frequency: HashMap<u64, u32> = HashMap::new();
        let mut distinct: foldhash::HashSet<&[u64]> = Default::default();
        for set in &sets {
            if distinct.insert(set) {
                for &h in set {
                    *frequency.entry(h).or_default() += 1;
                }
            }
        }
        let mut guarded = Vec::new();
        let mut summaries = Vec::with_capacity(docs.len());
        let mut pairs: Vec<(u64, u32)> = Vec::new();
        for (doc, mut set) in docs.iter().zip(sets) {
            set.retain(|h| frequency[h] == 1);
            summaries.push(DocSummary {
                task: doc.task,
                doc_id: doc.doc_id.clone(),
                own_shingles: set.len() as u64,
                guarded: set.len() >= MIN_SHINGLES,
            });
            if set.len() < MIN_SHINGLES {
                continue;
            }
            set.truncate(config.sample.max(1));
            let index = guarded.len() as u32;
            pairs.extend(set.iter().map(|&h| (h, index)));
            guarded.push(Guarded {
                task: doc.task,
                doc_id: doc.doc_id.clone(),
                sampled: set.len() as u32,
            });
        }
        pairs.sort_unstable();
        let mut by_hash = HashMap::with_capacity(pairs.len());
        let mut start = 0;
        while start < pairs.len() {
            let hash = pairs[start].0;
            let len = pairs[start..].iter().take_while(|p| p.0 == hash).count();
            by_hash.insert(hash, (start as u32, len as u32));
            start += len;
        }
        let postings = pairs.into_iter().map(|(_, doc)| doc).collect();
        let index = TaskIndex {
            config,
            docs: guarded,
            by_hash,
            postings,
        };
        (index, summaries)
    }

    /// The documents looked for, in task and id order.
    pub fn docs(&self) -> &[Guarded] {
        &self.docs
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// The task documents whose containment in the normalized note `text` reaches the
    /// threshold, in document order.
    pub fn matches(&self, text: &str) -> Vec<Match> {
        if self.docs.is_empty() {
            return Vec::new();
        }
        // Sampled hashes the note has, each once; almost always none.
        let mut found: Vec<u64> = shingles(&blind(text), self.config.shingle_words, SEED)
            .into_iter()
            .filter(|h| self.by_hash.contains_key(h))
            .collect();
        if found.is_empty() {
            return Vec::new();
        }
        found.sort_unstable();
        found.dedup();
        let mut hits: Vec<u32> = Vec::new();
        for h in found {
            let (start, len) = self.by_hash[&h];
            hits.extend_from_slice(&self.postings[start as usize..(start + len) as usize]);
        }
        hits.sort_unstable();
        let mut out = Vec::new();
        for run in hits.chunk_by(|a, b| a == b) {
            let doc = run[0];
            let containment = run.len() as f64 / f64::from(self.docs[doc as usize].sampled);
            if containment >= self.config.threshold {
                out.push(Match { doc, containment });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehrprep_data::rng::Rng;

    /// The distinct shingle hashes of `text` as the guard sees a note, sorted.
    fn shingle_set(text: &str, words: usize) -> Vec<u64> {
        let mut set = shingles(&blind(text), words, SEED);
        set.sort_unstable();
        set.dedup();
        set
    }

    #[test]
    fn a_reports_contexts_are_found_with_a_header_between_them() {
        let mut rng = Rng::new(5);
        // Two contexts of 60 words: 116 shingles in each, 4 across them, which the note,
        // with a header between the two, does not have.
        let (findings, impression) = (words(&mut rng, 60).join(" "), words(&mut rng, 60).join(" "));
        let radqa = doc("radqa", "7", &format!("{findings}\n{impression}"));
        let (index, summary) = TaskIndex::build(&[radqa], Deid::Tags, OverlapConfig::default());
        assert_eq!(summary[0].own_shingles, 116);
        let note = format!("FINDINGS: {findings}\n\nIMPRESSION: {impression}\nDr. ___");
        let found = index.matches(&note);
        assert_eq!(found.len(), 1);
        assert!(found[0].containment > 0.95, "{found:?}");
    }

    #[test]
    fn the_same_text_twice_is_still_looked_for() {
        let mut rng = Rng::new(6);
        let text = words(&mut rng, 40).join(" ");
        let docs = [doc("radqa", "1", &text), doc("clip", "2", &text)];
        let (index, summary) = TaskIndex::build(&docs, Deid::Tags, OverlapConfig::default());
        assert!(summary.iter().all(|s| s.guarded), "{summary:?}");
        assert_eq!(index.matches(&text).len(), 2);
    }

    #[test]
    fn dates_a_placeholder_left_as_text_are_invisible() {
        for date in ["2151-7-16", "7/16/2151", "7/16", "7-16"] {
            assert_eq!(
                blind(&format!("seen on {date} by")),
                "seen on   by",
                "{date}"
            );
        }
    }

    fn doc(task: &'static str, id: &str, text: &str) -> TaskDoc {
        TaskDoc {
            task,
            doc_id: id.to_string(),
            text: text.to_string(),
        }
    }

    /// `n` words drawn from a vocabulary large enough that texts rarely share a shingle.
    fn words(rng: &mut Rng, n: usize) -> Vec<String> {
        (0..n).map(|_| format!("w{}", rng.below(5_000))).collect()
    }

    #[test]
    fn placeholders_and_tags_are_invisible() {
        assert_eq!(
            blind("seen by [**Known lastname 12**] at ___ on [Name] day 2151-7-16, 12:30"),
            "seen by   at   on   day  , 12:30"
        );
        // Lines of underscores are rulers, and go too; two are text.
        assert_eq!(blind("a ____ b __ c"), "a   b __ c");
    }

    #[test]
    fn containment_estimate_tracks_the_exact_share() {
        let mut rng = Rng::new(5);
        let config = OverlapConfig {
            threshold: 0.0,
            ..OverlapConfig::default()
        };
        // A long task document (so the sample is a true sample), and notes holding a
        // varying share of its text among words of their own.
        let task = words(&mut rng, 1_500);
        let (index, summary) =
            TaskIndex::build(&[doc("clip", "1", &task.join(" "))], Deid::Tags, config);
        assert!(summary[0].guarded);
        assert_eq!(index.docs()[0].sampled, 256);
        let exact_set = shingle_set(&task.join(" "), 5);
        for share in [0.2, 0.5, 0.8, 1.0] {
            let keep = (task.len() as f64 * share) as usize;
            let mut note = words(&mut rng, 300);
            note.extend_from_slice(&task[..keep]);
            note.extend(words(&mut rng, 300));
            let note = note.join(" ");
            let exact = {
                let in_note = shingle_set(&note, 5);
                let shared = exact_set
                    .iter()
                    .filter(|h| in_note.binary_search(h).is_ok())
                    .count();
                shared as f64 / exact_set.len() as f64
            };
            let got = index.matches(&note);
            assert_eq!(got.len(), 1, "share {share}");
            let estimate = got[0].containment;
            // Four standard deviations of a 256-hash sample.
            let sd = (exact * (1.0 - exact) / 256.0).sqrt();
            assert!(
                (estimate - exact).abs() <= 4.0 * sd + 1e-9,
                "share {share}: estimate {estimate}, exact {exact}"
            );
        }
    }

    #[test]
    fn a_reidentified_copy_matches_and_an_unrelated_note_does_not() {
        let mut rng = Rng::new(9);
        let report: Vec<String> = words(&mut rng, 120);
        let mut original = report.clone();
        // MIMIC-III placeholders in the task document ...
        original[10] = "[**Known lastname 12**]".into();
        original[40] = "[**Hospital1 18**]".into();
        let docs = [
            doc("radqa", "101", &original.join(" ")),
            doc("radqa", "102", &words(&mut rng, 120).join(" ")),
        ];
        let (index, _) = TaskIndex::build(&docs, Deid::Tags, OverlapConfig::default());
        // ... become `___` in the MIMIC-IV copy, which also has other line breaks, a
        // header and a sentence of its own.
        let mut copy = report.clone();
        copy[10] = "___".into();
        copy[40] = "___,".into();
        let copy = format!(
            "EXAMINATION:  CHEST (PA AND LAT)\n\n{}\n\nThe patient was seen on ___ by Dr. ___.",
            copy.chunks(9)
                .map(|c| c.join("  "))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let copy = normalize(&copy, Source::MimicIv, Deid::Tags);
        let got = index.matches(&copy);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(index.docs()[got[0].doc as usize].doc_id, "101");
        assert!(got[0].containment > 0.9, "{got:?}");
        // A note that shares a few phrases, not the document, stays.
        let mut unrelated = words(&mut rng, 400);
        unrelated.splice(100..100, report[0..12].iter().cloned());
        unrelated.splice(300..300, report[60..72].iter().cloned());
        assert_eq!(index.matches(&unrelated.join(" ")), []);
    }

    #[test]
    fn short_documents_are_set_aside_and_reported() {
        let docs = [
            doc("radqa", "1", "No acute cardiopulmonary process."),
            doc("radqa", "2", ""),
        ];
        let (index, summary) = TaskIndex::build(&docs, Deid::Tags, OverlapConfig::default());
        assert!(index.is_empty());
        let got: Vec<(&str, u64, bool)> = summary
            .iter()
            .map(|s| (s.doc_id.as_str(), s.own_shingles, s.guarded))
            .collect();
        // Four words make no 5-word shingle.
        assert_eq!(got, [("1", 0, false), ("2", 0, false)]);
        assert_eq!(index.matches("No acute cardiopulmonary process."), []);
    }
}

//! The downstream tasks' official files as text-to-text examples, formatted as the paper's
//! code formats them, with the corpus's de-identification normalization so finetuning text
//! looks like pretraining text.
//!
//! - MedNLI (`mli_{train,dev,test}_v1.jsonl`): `mednli premise: {s1} hypothesis: {s2}` ->
//!   the label word.
//! - RadQA (`{train,dev,test}.json`, SQuAD v2): `question: {q} context: {c}` -> the first
//!   answer, or nothing for unanswerable questions.
//! - CLIP (`sentence_level.csv` and headerless `{train,val,test}_ids.csv`): a window of the
//!   discharge summary around the sentence, ` ; `, the sentence -> its labels, sorted and
//!   comma-separated.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::corpus::normalize::{Deid, normalize};
use crate::corpus::task_rows::python_str_list;
use crate::{Error, Result, Source};

/// A downstream task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Mednli,
    Radqa,
    Clip,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Mednli => "mednli",
            Task::Radqa => "radqa",
            Task::Clip => "clip",
        }
    }

    /// Longest input in tokens, `</s>` included (the paper's 256 / 1024 / 256).
    pub fn max_input_tokens(self) -> usize {
        match self {
            Task::Radqa => 1024,
            Task::Mednli | Task::Clip => 256,
        }
    }

    /// The longest target, in tokens with `</s>`, when the paper's code caps it: RadQA's
    /// answers are cut to 30 tokens in training and generated up to 30.
    pub fn max_target_tokens(self) -> Option<usize> {
        match self {
            Task::Radqa => Some(30),
            Task::Mednli | Task::Clip => None,
        }
    }

    /// Tokens generated at most: the target cap where there is one, else 64.
    pub fn max_new_tokens(self) -> usize {
        self.max_target_tokens()
            .unwrap_or(ehrprep_plugin_api::requests::default_new_tokens())
    }

    /// Beams for generation (the paper's 3 / 1 / 5).
    pub fn beams(self) -> usize {
        match self {
            Task::Mednli => 3,
            Task::Radqa => 1,
            Task::Clip => 5,
        }
    }

    /// The paper's finetuning epochs.
    pub fn epochs(self) -> usize {
        match self {
            Task::Radqa => 50,
            Task::Mednli | Task::Clip => 40,
        }
    }

    /// The metric model selection maximizes.
    pub fn selection_metric(self) -> &'static str {
        match self {
            Task::Mednli => "accuracy",
            Task::Radqa => "f1",
            Task::Clip => "macro_f1",
        }
    }
}

/// One example. `answers` holds every gold answer (RadQA); `group` is what limited-data
/// sampling draws (CLIP: the summary; otherwise the example itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub group: String,
    pub input: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<String>,
}

/// A task's three splits.
#[derive(Debug, Clone, Default)]
pub struct Splits {
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
    pub test: Vec<Example>,
}

fn problem(path: &Path, location: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::TaskData {
        path: path.to_path_buf(),
        location: location.into(),
        problem: problem.into(),
    }
}

fn need(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Invalid(format!(
            "`{}` has no `{name}`; expected the task's official files there",
            dir.display()
        )))
    }
}

/// Text from MIMIC-III with `[**...**]` placeholders, cleaned like the corpus.
fn clean(text: &str) -> String {
    normalize(text, Source::MimicIii, Deid::Tags)
}

/// Reads a task's official files from `dir`. `count_tokens` sizes CLIP's context window.
pub fn read(task: Task, dir: &Path, count_tokens: &dyn Fn(&str) -> usize) -> Result<Splits> {
    match task {
        Task::Mednli => Ok(Splits {
            train: mednli(&need(dir, "mli_train_v1.jsonl")?)?,
            validation: mednli(&need(dir, "mli_dev_v1.jsonl")?)?,
            test: mednli(&need(dir, "mli_test_v1.jsonl")?)?,
        }),
        Task::Radqa => Ok(Splits {
            train: radqa(&need(dir, "train.json")?)?,
            validation: radqa(&need(dir, "dev.json")?)?,
            test: radqa(&need(dir, "test.json")?)?,
        }),
        Task::Clip => clip(dir, count_tokens),
    }
}

#[derive(Deserialize)]
struct MednliRecord {
    sentence1: String,
    sentence2: String,
    gold_label: String,
    #[serde(rename = "pairID")]
    pair_id: String,
}

fn with_period(s: &str) -> String {
    let s = s.trim();
    if s.ends_with('.') {
        s.to_string()
    } else {
        format!("{s}.")
    }
}

pub fn mednli(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("line {}", i + 1);
        let record: MednliRecord = serde_json::from_str(line).map_err(|e| {
            // serde's message names the field; it never quotes values of string fields.
            problem(
                path,
                &at,
                format!("not a MedNLI record ({})", first_clause(&e.to_string())),
            )
        })?;
        if !matches!(
            record.gold_label.as_str(),
            "entailment" | "contradiction" | "neutral"
        ) {
            return Err(problem(
                path,
                &at,
                "field `gold_label` is not entailment, contradiction or neutral",
            ));
        }
        out.push(Example {
            id: record.pair_id.clone(),
            group: record.pair_id,
            input: format!(
                "mednli premise: {} hypothesis: {}",
                with_period(&clean(&record.sentence1)),
                with_period(&clean(&record.sentence2))
            ),
            target: record.gold_label,
            answers: Vec::new(),
        });
    }
    Ok(out)
}

/// serde_json messages up to the position, without anything quoted from the input.
fn first_clause(message: &str) -> String {
    let cut = message.find(" at line").unwrap_or(message.len());
    let m = &message[..cut];
    match m.find('`') {
        // "invalid type: string \"...\"" style messages can quote values: keep the kind only.
        _ if m.contains('"') => m.split('"').next().unwrap_or("").trim().to_string(),
        _ => m.to_string(),
    }
}

#[derive(Deserialize)]
struct Squad {
    data: Vec<SquadArticle>,
}

#[derive(Deserialize)]
struct SquadArticle {
    paragraphs: Vec<SquadParagraph>,
}

#[derive(Deserialize)]
struct SquadParagraph {
    context: String,
    qas: Vec<SquadQa>,
}

#[derive(Deserialize)]
struct SquadQa {
    id: String,
    question: String,
    #[serde(default)]
    answers: Vec<SquadAnswer>,
}

#[derive(Deserialize)]
struct SquadAnswer {
    text: String,
}

pub fn radqa(path: &Path) -> Result<Vec<Example>> {
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let squad: Squad = serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
        problem(
            path,
            format!("line {} column {}", e.line(), e.column()),
            format!("not SQuAD v2 json ({})", first_clause(&e.to_string())),
        )
    })?;
    let mut out = Vec::new();
    for (a, article) in squad.data.iter().enumerate() {
        for paragraph in &article.paragraphs {
            let context = clean(&paragraph.context);
            for qa in &paragraph.qas {
                let answers: Vec<String> = qa.answers.iter().map(|x| clean(&x.text)).collect();
                if qa.id.is_empty() {
                    return Err(problem(
                        path,
                        format!("data[{a}]"),
                        "a question has an empty `id`",
                    ));
                }
                out.push(Example {
                    id: qa.id.clone(),
                    group: qa.id.clone(),
                    input: format!("question: {} context: {context}", clean(&qa.question)),
                    target: answers.first().cloned().unwrap_or_default(),
                    answers,
                });
            }
        }
    }
    Ok(out)
}

struct ClipSentence {
    doc: String,
    index: u64,
    text: String,
    labels: Vec<String>,
}

fn clip(dir: &Path, count_tokens: &dyn Fn(&str) -> usize) -> Result<Splits> {
    let path = need(dir, "sentence_level.csv")?;
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    let mut reader = csv_records(&text);
    let header = reader.next().unwrap_or_default();
    if header != ["doc_id", "sent_index", "sentence", "labels"] {
        return Err(Error::Header {
            path: path.clone(),
            problem: format!("found {} columns", header.len()),
            expected: "doc_id,sent_index,sentence,labels".into(),
        });
    }
    let mut sentences = Vec::new();
    for (i, record) in reader.enumerate() {
        let at = format!("record {}", i + 1);
        let [doc, index, sentence, labels] = &record[..] else {
            return Err(problem(
                &path,
                at,
                format!("has {} fields; expected 4", record.len()),
            ));
        };
        let index = index
            .parse()
            .map_err(|_| problem(&path, &at, "field `sent_index` is not an integer"))?;
        let tokens = python_str_list(sentence).ok_or_else(|| {
            problem(
                &path,
                &at,
                "field `sentence` is not a Python list of strings",
            )
        })?;
        let labels = python_str_list(labels)
            .ok_or_else(|| problem(&path, &at, "field `labels` is not a Python list of strings"))?;
        let mut labels: Vec<String> = labels
            .iter()
            .map(|l| {
                l.strip_prefix("I-")
                    .or(l.strip_prefix("B-"))
                    .unwrap_or(l)
                    .to_string()
            })
            .collect();
        for l in &labels {
            if !crate::eval::metrics::CLIP_LABELS.contains(&l.as_str()) {
                return Err(problem(
                    &path,
                    &at,
                    "field `labels` names a label outside CLIP's seven",
                ));
            }
        }
        labels.sort();
        labels.dedup();
        sentences.push(ClipSentence {
            doc: doc.clone(),
            index,
            text: clean(&tokens.join(" ")),
            labels,
        });
    }
    sentences.sort_by(|a, b| (&a.doc, a.index).cmp(&(&b.doc, b.index)));
    let ids = |name: &str| -> Result<Vec<String>> {
        let path = need(dir, name)?;
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    };
    let window = Task::Clip.max_input_tokens();
    let examples_of = |docs: Vec<String>| -> Vec<Example> {
        let mut out = Vec::new();
        for doc in docs {
            let of_doc: Vec<&ClipSentence> = sentences.iter().filter(|s| s.doc == doc).collect();
            let lengths: Vec<usize> = of_doc.iter().map(|s| count_tokens(&s.text)).collect();
            for (i, s) in of_doc.iter().enumerate() {
                let context = clip_window(&of_doc, &lengths, i, window);
                out.push(Example {
                    id: format!("{}_{}", s.doc, s.index),
                    group: s.doc.clone(),
                    input: format!("{context} ; {}", s.text),
                    target: s.labels.join(", "),
                    answers: Vec::new(),
                });
            }
        }
        out
    };
    Ok(Splits {
        train: examples_of(ids("train_ids.csv")?),
        validation: examples_of(ids("val_ids.csv")?),
        test: examples_of(ids("test_ids.csv")?),
    })
}

/// The sentences around sentence `i` (itself included), growing alternately after and
/// before it while the window stays within `budget` tokens, minus room for the sentence
/// repeated after ` ; `.
fn clip_window(doc: &[&ClipSentence], lengths: &[usize], i: usize, budget: usize) -> String {
    // Room for the sentence again, ` ; ` and `</s>`: the input never needs cutting.
    let budget = budget.saturating_sub(lengths[i] + 4);
    let (mut lo, mut hi, mut used) = (i, i + 1, lengths[i]);
    loop {
        let mut grew = false;
        if hi < doc.len() && used + lengths[hi] <= budget {
            used += lengths[hi];
            hi += 1;
            grew = true;
        }
        if lo > 0 && used + lengths[lo - 1] <= budget {
            used += lengths[lo - 1];
            lo -= 1;
            grew = true;
        }
        if !grew {
            break;
        }
    }
    doc[lo..hi]
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// RFC 4180 records (quoted fields with `""` escapes and newlines).
fn csv_records(text: &str) -> impl Iterator<Item = Vec<String>> + '_ {
    let mut chars = text.chars().peekable();
    std::iter::from_fn(move || {
        chars.peek()?;
        let mut record = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = !quoted,
                ',' if !quoted => record.push(std::mem::take(&mut field)),
                '\r' if !quoted => {}
                '\n' if !quoted => break,
                c => field.push(c),
            }
        }
        record.push(field);
        Some(record)
    })
}

/// The examples of a limited-data run: `fraction` of the groups (at least one), drawn by a
/// shuffle seeded with `seed`; all examples when `fraction` is 1.
pub fn sample(examples: &[Example], fraction: f64, seed: u64) -> Vec<Example> {
    if fraction >= 1.0 {
        return examples.to_vec();
    }
    let mut groups: Vec<&str> = Vec::new();
    for e in examples {
        if groups.last() != Some(&e.group.as_str()) && !groups.contains(&e.group.as_str()) {
            groups.push(&e.group);
        }
    }
    let keep = ((groups.len() as f64 * fraction).floor() as usize).max(1);
    let mut rng = ehrprep_data::rng::Rng::new(seed ^ 0x5EED_F1AC_7104_0000);
    for i in (1..groups.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        groups.swap(i, j);
    }
    let chosen: std::collections::HashSet<&str> = groups[..keep].iter().copied().collect();
    examples
        .iter()
        .filter(|e| chosen.contains(e.group.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mimic/tasks")
    }

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn mednli_is_formatted_as_the_papers_code() {
        let splits = read(Task::Mednli, &fixtures().join("mednli"), &words).unwrap();
        assert_eq!(
            (
                splits.train.len(),
                splits.validation.len(),
                splits.test.len()
            ),
            (24, 3, 3)
        );
        let e = &splits.train[0];
        assert_eq!(e.id, "synth-0");
        assert_eq!(
            e.input,
            "mednli premise: The patient with history of cirrhosis. hypothesis: The patient has no history of liver disease."
        );
        assert_eq!(e.target, "contradiction");
    }

    #[test]
    fn radqa_targets_are_the_first_answer_or_nothing() {
        let splits = read(Task::Radqa, &fixtures().join("radqa"), &words).unwrap();
        let all: Vec<&Example> = splits.train.iter().chain(&splits.validation).collect();
        assert!(all.iter().all(|e| e.input.starts_with("question: ")));
        assert!(all.iter().all(|e| e.input.contains("? context: ")));
        // Each question is asked of the findings and of the impression.
        assert_eq!(
            all.iter().filter(|e| e.id.ends_with("_f")).count() * 2,
            all.len()
        );
        assert!(
            all.iter()
                .any(|e| !e.target.is_empty() && e.input.ends_with(&format!("{}.", e.target)))
        );
        assert!(
            all.iter()
                .any(|e| e.target.is_empty() && e.answers.is_empty())
        );
        // Contexts get the corpus's tags instead of `[** **]` placeholders.
        assert!(all.iter().all(|e| !e.input.contains("[**")));
        assert!(
            all.iter()
                .all(|e| e.answers.first().cloned().unwrap_or_default() == e.target)
        );
    }

    #[test]
    fn clip_windows_sentences_and_sorts_labels() {
        let splits = read(Task::Clip, &fixtures().join("clip"), &words).unwrap();
        let targets: Vec<&str> = splits.train.iter().map(|e| e.target.as_str()).collect();
        // B- and I- tags alike give the label.
        assert_eq!(
            targets,
            [
                "",
                "Appointment-related followup",
                "Appointment-related followup",
                "Appointment-related followup",
                "Lab-related followup",
                "",
                ""
            ]
        );
        let e = &splits.train[3];
        assert_eq!(e.id, "46_3");
        assert!(
            e.input.ends_with(
                " ; Please call to schedule a follow up visit with neurology in 2 weeks."
            )
        );
        // The whole (short) summary fits in the window.
        assert!(
            e.input
                .starts_with("It was a pleasure taking care of you. Please")
        );
    }

    #[test]
    fn windows_grow_around_the_sentence_within_the_budget() {
        let doc: Vec<ClipSentence> = (0..6)
            .map(|i| ClipSentence {
                doc: "d".into(),
                index: i,
                text: format!("s{i}"),
                labels: vec![],
            })
            .collect();
        let refs: Vec<&ClipSentence> = doc.iter().collect();
        let lengths = vec![10; 6];
        // Budget 47 - (10 + 4) = 33: the sentence and two neighbours.
        assert_eq!(clip_window(&refs, &lengths, 2, 47), "s1 s2 s3");
        assert_eq!(clip_window(&refs, &lengths, 0, 47), "s0 s1 s2");
    }

    #[test]
    fn bad_records_are_named_by_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mli_train_v1.jsonl");
        std::fs::write(
            &path,
            "{\"sentence1\":\"a\",\"sentence2\":\"b\",\"gold_label\":\"entailment\",\"pairID\":\"1\"}\n{\"sentence1\":\"secret text\",\"gold_label\":\"maybe\",\"pairID\":\"2\",\"sentence2\":\"c\"}\n",
        )
        .unwrap();
        let err = mednli(&path).unwrap_err().to_string();
        assert!(err.contains("mli_train_v1.jsonl` at line 2"), "{err}");
        assert!(err.contains("gold_label"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn malformed_radqa_and_clip_files_are_named_with_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.json");
        std::fs::write(
            &path,
            "{\"data\": [{\"paragraphs\": [{\"context\": \"secret\"}]}]}",
        )
        .unwrap();
        let err = radqa(&path).unwrap_err().to_string();
        assert!(err.contains("train.json` at line 1 column"), "{err}");
        assert!(err.contains("missing field `qas`"), "{err}");
        assert!(!err.contains("secret"), "{err}");

        let clip_dir = dir.path().join("clip");
        std::fs::create_dir(&clip_dir).unwrap();
        std::fs::write(
            clip_dir.join("sentence_level.csv"),
            "doc_id,sent_index,sentence,labels\n1,0,\"['ok']\",[]\n1,x,\"['secret']\",[]\n",
        )
        .unwrap();
        for ids in ["train_ids.csv", "val_ids.csv", "test_ids.csv"] {
            std::fs::write(clip_dir.join(ids), "1\n").unwrap();
        }
        let err = read(Task::Clip, &clip_dir, &words).unwrap_err().to_string();
        assert!(
            err.contains("sentence_level.csv` at record 2: field `sent_index` is not an integer"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
        std::fs::write(
            clip_dir.join("sentence_level.csv"),
            "doc_id,sent_index,sentence,labels\n1,0,\"['ok']\",['I-Made-up label']\n",
        )
        .unwrap();
        let err = read(Task::Clip, &clip_dir, &words).unwrap_err().to_string();
        assert!(err.contains("names a label outside CLIP's seven"), "{err}");
        let err = read(Task::Mednli, dir.path(), &words)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no `mli_train_v1.jsonl`"), "{err}");
    }

    #[test]
    fn sampling_is_by_group_deterministic_and_seeded() {
        let examples: Vec<Example> = (0..100)
            .map(|i| Example {
                id: i.to_string(),
                group: (i / 4).to_string(),
                input: String::new(),
                target: String::new(),
                answers: vec![],
            })
            .collect();
        let a = sample(&examples, 0.1, 1);
        assert_eq!(a.len(), 2 * 4, "2 of 25 groups, whole");
        assert_eq!(a, sample(&examples, 0.1, 1));
        assert_ne!(a, sample(&examples, 0.1, 2));
        assert_eq!(sample(&examples, 1.0, 1).len(), 100);
        assert_eq!(sample(&examples, 0.001, 1).len(), 4, "at least one group");
    }
}

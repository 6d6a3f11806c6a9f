//! What finetuning and evaluation share: where a checkpoint came from, the task examples
//! tokenized for the plugin, generation through the plugin, the task's metrics and chance,
//! and the catalog rows that record them.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use duckdb::{Connection, params};
use ehrprep_plugin_api::HostSink;
use ehrprep_plugin_api::requests::{GenerateRequest, default_device, default_task_batch};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::catalog::sql::EVAL;
use crate::eval::metrics;
use crate::eval::task_data::{Example, Task};
use crate::plugin::{Outcome, Plugin};
use crate::{Error, Result};

/// How a model runs when the plugin finetunes or generates, and which catalog and
/// tokenizer score it; finetuning and evaluation share it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRun {
    pub device: String,
    pub threads: i32,
    /// Examples per plugin batch.
    pub batch_size: usize,
    /// Longest generated answer, in tokens; `None`: the task's ([`Task::max_new_tokens`]).
    pub max_new_tokens: Option<usize>,
    /// The catalog; default: the pretraining build's.
    pub db: Option<PathBuf>,
    /// Default: the pretraining build's tokenizer.
    pub tokenizer: Option<PathBuf>,
}

impl ModelRun {
    /// Tokens generated at most for `task`.
    pub fn max_new_tokens(&self, task: Task) -> usize {
        self.max_new_tokens.unwrap_or(task.max_new_tokens())
    }
}

impl Default for ModelRun {
    fn default() -> Self {
        ModelRun {
            device: default_device(),
            threads: 0,
            batch_size: default_task_batch(),
            max_new_tokens: None,
            db: None,
            tokenizer: None,
        }
    }
}

/// Where a checkpoint came from: its pretraining run and build, when ehrprep made it.
pub(crate) struct Lineage {
    pub(crate) checkpoint: PathBuf,
    pub(crate) run_dir: Option<PathBuf>,
    pub(crate) build_dir: Option<PathBuf>,
}

pub(crate) fn lineage(path: &Path) -> Result<Lineage> {
    let path = crate::fsutil::normal_path(path)?;
    let (checkpoint, run_dir) = if path.join("latest").is_file() {
        let name = std::fs::read_to_string(path.join("latest")).map_err(Error::io(&path))?;
        (path.join(name.trim()), Some(path.clone()))
    } else if path.join("config.json").is_file() {
        let parent = path
            .parent()
            .filter(|p| p.join("run.json").is_file())
            .map(Path::to_path_buf);
        (path.clone(), parent)
    } else {
        return Err(Error::Invalid(format!(
            "`{}` is neither a pretraining run folder nor a checkpoint (config.json, model.safetensors)",
            path.display()
        )));
    };
    let build_dir = run_dir.as_ref().and_then(|r| {
        let text = std::fs::read_to_string(r.join("run.json")).ok()?;
        let req: Value = serde_json::from_str(&text).ok()?;
        Some(
            PathBuf::from(req["shards_dir"].as_str()?)
                .parent()?
                .to_path_buf(),
        )
    });
    Ok(Lineage {
        checkpoint,
        run_dir,
        build_dir,
    })
}

/// The state a (fraction, seed) run keeps in its folder to resume.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RunState {
    pub(crate) epochs_done: usize,
    pub(crate) best_epoch: Option<usize>,
    pub(crate) best_value: Option<f64>,
    /// The best epoch has been scored on the test set.
    #[serde(default)]
    pub(crate) tested: bool,
    /// What the epochs so far were trained with; a rerun must match.
    #[serde(default)]
    pub(crate) settings: Option<Value>,
}

pub(crate) fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut bytes = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut bytes, r).expect("rows serialize");
        bytes.push(b'\n');
    }
    crate::fsutil::write_atomic(path, &bytes)
}

#[derive(Serialize)]
pub(crate) struct Encoded {
    pub(crate) id: String,
    pub(crate) input_ids: Vec<u32>,
    pub(crate) target_ids: Vec<u32>,
}

/// Tokenizes examples for `task`: inputs longer than its limit are cut to one id less plus
/// `</s>`, and so are targets where the task caps them (RadQA, as the paper's code).
/// Returns the rows and how many inputs were cut.
pub(crate) fn encode(
    tok: &Tokenizer,
    examples: &[Example],
    task: Task,
) -> Result<(Vec<Encoded>, usize)> {
    let max = task.max_input_tokens();
    let max_target = task.max_target_tokens().unwrap_or(usize::MAX);
    let eos = tok.token_to_id("</s>").unwrap_or(1);
    let enc = |texts: Vec<&str>| -> Result<Vec<Vec<u32>>> {
        let encodings = tok
            .encode_batch_fast(texts, true)
            .map_err(|e| Error::Invalid(format!("tokenizing task examples: {e}")))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    };
    let inputs = enc(examples.iter().map(|e| e.input.as_str()).collect())?;
    let targets = enc(examples.iter().map(|e| e.target.as_str()).collect())?;
    let mut truncated = 0;
    let rows = examples
        .iter()
        .zip(inputs.into_iter().zip(targets))
        .map(|(e, (mut input, mut target))| {
            if input.len() > max {
                input.truncate(max - 1);
                input.push(eos);
                truncated += 1;
            }
            if target.len() > max_target {
                target.truncate(max_target - 1);
                target.push(eos);
            }
            Encoded {
                id: e.id.clone(),
                input_ids: input,
                target_ids: target,
            }
        })
        .collect();
    Ok((rows, truncated))
}

/// Tokens of the longest target, `</s>` not counted.
pub(crate) fn longest_answer(rows: &[Encoded]) -> Option<usize> {
    rows.iter()
        .map(|r| r.target_ids.len().saturating_sub(1))
        .max()
}

/// The task's metrics for (prediction, example) pairs, and whether each is right.
pub fn score(
    task: Task,
    predictions: &[String],
    examples: &[Example],
) -> (Vec<(String, f64)>, Vec<bool>) {
    let pairs: Vec<(String, String)> = predictions
        .iter()
        .cloned()
        .zip(examples.iter().map(|e| e.target.clone()))
        .collect();
    match task {
        Task::Mednli => {
            let correct = pairs.iter().map(|(p, r)| p.trim() == r.trim()).collect();
            (
                vec![("accuracy".into(), metrics::accuracy(&pairs))],
                correct,
            )
        }
        Task::Radqa => {
            let items: Vec<(String, Vec<String>)> = predictions
                .iter()
                .cloned()
                .zip(examples.iter().map(|e| e.answers.clone()))
                .collect();
            let correct = items
                .iter()
                .map(|(p, g)| metrics::squad_scores(p, g).0 > 0.0)
                .collect();
            let (em, f1) = metrics::squad_v2(&items);
            (vec![("exact_match".into(), em), ("f1".into(), f1)], correct)
        }
        Task::Clip => {
            let correct = pairs
                .iter()
                .map(|(p, r)| metrics::clip_labels(p) == metrics::clip_labels(r))
                .collect();
            let (micro, macro_) = metrics::clip_f1(&pairs);
            (
                vec![("micro_f1".into(), micro), ("macro_f1".into(), macro_)],
                correct,
            )
        }
    }
}

/// Chance, as a constant predictor fitted on the training examples sees it: the test
/// metrics of answering every test example with the most frequent training target (the
/// smallest of equally frequent ones).
pub fn majority(task: Task, train: &[Example], test: &[Example]) -> Vec<(String, f64)> {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for e in train {
        *counts.entry(e.target.as_str()).or_default() += 1;
    }
    let most = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(t, _)| t.to_string())
        .unwrap_or_default();
    score(task, &vec![most; test.len()], test).0
}

/// The catalog, the tokenizer and its sha256: given, or the pretraining build's.
pub(crate) fn catalog_and_tokenizer(
    run: &ModelRun,
    lineage: &Lineage,
) -> Result<(PathBuf, Tokenizer, String)> {
    let missing = || {
        Error::Invalid(
            "this checkpoint has no ehrprep lineage (no pretraining run beside it); pass --db and --tokenizer"
                .into(),
        )
    };
    let db = run
        .db
        .clone()
        .or_else(|| lineage.build_dir.as_ref().map(|b| b.join("catalog.duckdb")))
        .ok_or_else(missing)?;
    let tok_path = run
        .tokenizer
        .clone()
        .or_else(|| lineage.build_dir.as_ref().map(|b| b.join("tokenizer")))
        .ok_or_else(missing)?;
    let tok = crate::pack::tokenizer::load(&tok_path)?;
    let tok_file = if tok_path.is_dir() {
        tok_path.join("tokenizer.json")
    } else {
        tok_path.clone()
    };
    let tok_sha = crate::fsutil::hex(&{
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(&tok_file).map_err(Error::io(&tok_file))?)
    });
    Ok((db, tok, tok_sha))
}

/// One `eval_metrics` row per (metric, value).
pub(crate) fn record_metrics(
    conn: &Connection,
    id: &str,
    split: &str,
    epoch: i64,
    scores: &[(String, f64)],
) -> Result<()> {
    for (metric, value) in scores {
        conn.execute(
            EVAL.get("insert_metric"),
            params![id, split, epoch, metric, value],
        )
        .map_err(Error::catalog("recording a metric"))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn record_test(
    conn: &Connection,
    id: &str,
    best: usize,
    split: &str,
    scores: &[(String, f64)],
    predictions: &[String],
    correct: &[bool],
    examples: &[Example],
    encoded: &[Encoded],
) -> Result<()> {
    use sha2::Digest;
    record_metrics(conn, id, split, best as i64, scores)?;
    conn.execute(EVAL.get("forget_predictions"), [id])
        .map_err(Error::catalog("replacing predictions"))?;
    let mut app = conn
        .appender("eval_predictions")
        .map_err(Error::catalog("recording predictions"))?;
    for (((e, enc), p), ok) in examples.iter().zip(encoded).zip(predictions).zip(correct) {
        let ids: Vec<u8> = enc.input_ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        let sha = crate::fsutil::hex(&sha2::Sha256::digest(&ids));
        app.append_row(params![id, e.id, sha, p, e.target, ok])
            .map_err(Error::catalog("recording predictions"))?;
    }
    app.flush().map_err(Error::catalog("recording predictions"))
}

/// What generation needs besides the checkpoint: the plugin, the task (its beams), the
/// model run's settings and the tokenizer that decodes.
pub(crate) struct Generation<'a> {
    pub(crate) plugin: &'a Plugin,
    pub(crate) task: Task,
    pub(crate) run: &'a ModelRun,
    pub(crate) tok: &'a Tokenizer,
}

/// Generates for `dir/{split}.jsonl` with `checkpoint` and decodes; `None` when cancelled.
pub(crate) fn predict(
    generation: &Generation<'_>,
    checkpoint: &Path,
    dir: &Path,
    split: &str,
    sink: &mut dyn HostSink,
) -> Result<Option<Vec<String>>> {
    let Generation {
        plugin,
        task,
        run,
        tok,
    } = *generation;
    let out = dir.join(format!("{split}-predictions.jsonl"));
    let request = GenerateRequest {
        checkpoint: checkpoint.to_path_buf(),
        examples: dir.join(format!("{split}.jsonl")),
        out: out.clone(),
        beams: task.beams(),
        max_new_tokens: run.max_new_tokens(task),
        batch_size: run.batch_size,
        device: run.device.clone(),
        threads: run.threads,
    };
    let request = serde_json::to_string(&request).expect("the request serializes");
    if let Outcome::Cancelled(_) = plugin.call("generate", &request, sink)? {
        return Ok(None);
    }
    let file = std::fs::File::open(&out).map_err(Error::io(&out))?;
    let mut predictions = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(Error::io(&out))?;
        let row: Value = serde_json::from_str(&line).map_err(|e| {
            Error::Invalid(format!("`{}`: malformed prediction: {e}", out.display()))
        })?;
        let ids: Vec<u32> = row["ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect();
        let text = tok
            .decode(&ids, true)
            .map_err(|e| Error::Invalid(format!("decoding predictions: {e}")))?;
        predictions.push(text.trim().to_string());
    }
    Ok(Some(predictions))
}

/// Forwards only cancellation; finetuning reports per epoch, in the host.
pub(crate) struct Quiet<'a> {
    pub(crate) cancel: &'a AtomicBool,
}

impl HostSink for Quiet<'_> {
    fn log(&mut self, _: u32, _: &str) {}
    fn event(&mut self, _: &str) {}
    fn cancelled(&mut self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radqa_answers_are_cut_and_generated_to_30_tokens_as_the_papers_code() {
        use crate::pack::tokenizer::tests::{corpus, small};
        let tok = crate::pack::tokenizer::train(&corpus(), &small()).unwrap();
        let long = corpus().join(" ");
        let examples = [Example {
            id: "q1".into(),
            group: String::new(),
            input: "question: where? context: here".into(),
            target: long.clone(),
            answers: vec![long],
        }];
        let eos = tok.token_to_id("</s>").unwrap();
        let (radqa, _) = encode(&tok, &examples, Task::Radqa).unwrap();
        assert_eq!(radqa[0].target_ids.len(), 30);
        assert_eq!(radqa[0].target_ids.last(), Some(&eos));
        // Tasks without a cap keep the whole target.
        let (clip, _) = encode(&tok, &examples, Task::Clip).unwrap();
        assert!(
            clip[0].target_ids.len() > 100,
            "{}",
            clip[0].target_ids.len()
        );
        assert_eq!(clip[0].target_ids[..29], radqa[0].target_ids[..29]);

        let run = ModelRun::default();
        assert_eq!(run.max_new_tokens(Task::Radqa), 30);
        assert_eq!(run.max_new_tokens(Task::Mednli), 64);
        let given = ModelRun {
            max_new_tokens: Some(12),
            ..ModelRun::default()
        };
        assert_eq!(given.max_new_tokens(Task::Radqa), 12);
    }

    fn example(target: &str, answers: &[&str]) -> Example {
        Example {
            id: String::new(),
            group: String::new(),
            input: String::new(),
            target: target.into(),
            answers: answers.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn majority_answers_the_most_frequent_training_target() {
        // A tie goes to the smaller target: contradiction (2) over entailment (2).
        let train: Vec<Example> = ["entailment", "contradiction", "neutral", "entailment"]
            .iter()
            .chain(&["contradiction"])
            .map(|t| example(t, &[]))
            .collect();
        let test = [example("contradiction", &[]), example("neutral", &[])];
        assert_eq!(
            majority(Task::Mednli, &train, &test),
            [("accuracy".to_string(), 0.5)]
        );
        // RadQA: mostly unanswerable, so chance answers nothing.
        let train = [
            example("", &[]),
            example("", &[]),
            example("a finding", &["a finding"]),
        ];
        let test = [
            example("", &[]),
            example("a finding", &["a finding"]),
            example("", &[]),
            example("", &[]),
        ];
        assert_eq!(
            majority(Task::Radqa, &train, &test),
            [("exact_match".to_string(), 0.75), ("f1".to_string(), 0.75)]
        );
    }
}

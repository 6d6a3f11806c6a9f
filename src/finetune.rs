//! `ehrprep finetune`: the paper's finetuning protocol on MedNLI, RadQA or CLIP for a grid of
//! training fractions and seeds. The host prepares the examples (format, de-id
//! normalization, tokenization, truncation, limited-data sampling), drives the plugin one
//! epoch at a time, scores each epoch's validation predictions, keeps the best epoch, scores
//! it on the test set, and records everything in the catalog. Each (fraction, seed) run
//! resumes at its last finished epoch.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use duckdb::{Connection, params};
use ehrprep_plugin_api::HostSink;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::metrics;
use crate::plugin::{Outcome, Plugin};
use crate::progress::Reporter;
use crate::sql::EVAL;
use crate::task_data::{Example, Task};
use crate::{Error, Result};

/// What the user asked for.
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneConfig {
    pub task: Task,
    pub data: PathBuf,
    /// A pretraining run folder (its latest checkpoint) or a checkpoint folder.
    pub checkpoint: PathBuf,
    pub fractions: Vec<f64>,
    pub seeds: Vec<u64>,
    /// Default: the paper's (MedNLI 40, RadQA 50, CLIP 40).
    pub epochs: Option<usize>,
    pub batch_size: usize,
    /// Examples per optimizer step (the paper: 64); reached by accumulation.
    pub effective_batch: usize,
    pub lr: f64,
    pub device: String,
    pub threads: i32,
    pub max_new_tokens: usize,
    /// Default: CHECKPOINT_RUN/finetune.
    pub out: Option<PathBuf>,
    /// The catalog; default: the pretraining build's.
    pub db: Option<PathBuf>,
    /// Default: the pretraining build's tokenizer.
    pub tokenizer: Option<PathBuf>,
}

impl FinetuneConfig {
    pub fn new(task: Task, data: PathBuf, checkpoint: PathBuf) -> FinetuneConfig {
        FinetuneConfig {
            task,
            data,
            checkpoint,
            fractions: vec![1.0],
            seeds: vec![1],
            epochs: None,
            batch_size: 8,
            effective_batch: 64,
            lr: 1e-4,
            device: "auto".into(),
            threads: 0,
            max_new_tokens: 64,
            out: None,
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
    best_value: Option<f64>,
    /// The best epoch has been scored on the test set.
    #[serde(default)]
    tested: bool,
    /// What the epochs so far were trained with; a rerun must match.
    #[serde(default)]
    settings: Option<Value>,
}

/// Marks a run `failed` in the catalog if its body returns early with an error.
struct FailOnDrop<'a> {
    conn: &'a Connection,
    id: String,
    armed: bool,
}

impl Drop for FailOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.conn.execute(
                EVAL.get("finish_run"),
                params!["failed", None::<i64>, self.id],
            );
        }
    }
}

/// A summary line per finished run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub eval_run_id: String,
    pub fraction: f64,
    pub seed: u64,
    pub status: &'static str,
    pub best_epoch: Option<usize>,
    pub test: Vec<(String, f64)>,
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
pub(crate) struct Encoded<'a> {
    id: &'a str,
    input_ids: Vec<u32>,
    target_ids: Vec<u32>,
}

/// Tokenizes examples; inputs longer than `max` are cut to `max - 1` ids plus `</s>`.
/// Returns the rows and how many were cut.
pub(crate) fn encode<'a>(
    tok: &Tokenizer,
    examples: &'a [Example],
    max: usize,
) -> Result<(Vec<Encoded<'a>>, usize)> {
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
        .map(|(e, (mut input, target))| {
            if input.len() > max {
                input.truncate(max - 1);
                input.push(eos);
                truncated += 1;
            }
            Encoded {
                id: &e.id,
                input_ids: input,
                target_ids: target,
            }
        })
        .collect();
    Ok((rows, truncated))
}

/// Tokens of the longest target, `</s>` not counted.
fn longest_answer(rows: &[Encoded]) -> Option<usize> {
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
    config: &FinetuneConfig,
    lineage: &Lineage,
) -> Result<(PathBuf, Tokenizer, String)> {
    let missing = || {
        Error::Invalid(
            "this checkpoint has no ehrprep lineage (no pretraining run beside it); pass --db and --tokenizer"
                .into(),
        )
    };
    let db = config
        .db
        .clone()
        .or_else(|| lineage.build_dir.as_ref().map(|b| b.join("catalog.duckdb")))
        .ok_or_else(missing)?;
    let tok_path = config
        .tokenizer
        .clone()
        .or_else(|| lineage.build_dir.as_ref().map(|b| b.join("tokenizer")))
        .ok_or_else(missing)?;
    let tok = crate::tokenizer::load(&tok_path)?;
    let tok_file = if tok_path.is_dir() {
        tok_path.join("tokenizer.json")
    } else {
        tok_path.clone()
    };
    let tok_sha = crate::tokenizer::hex(&{
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(&tok_file).map_err(Error::io(&tok_file))?)
    });
    Ok((db, tok, tok_sha))
}

/// Runs the grid. `cancel` stops at the next epoch or batch; finished runs are skipped.
pub fn run(
    config: &FinetuneConfig,
    plugin: &Plugin,
    cancel: &AtomicBool,
    reporter: &dyn Reporter,
) -> Result<Vec<RunSummary>> {
    let lineage = lineage(&config.checkpoint)?;
    let (db, tok, tok_sha) = catalog_and_tokenizer(config, &lineage)?;
    let count = |s: &str| tok.encode_fast(s, false).map(|e| e.len()).unwrap_or(0);
    let splits = crate::task_data::read(config.task, &config.data, &count)?;
    if splits.train.is_empty() || splits.validation.is_empty() || splits.test.is_empty() {
        return Err(Error::Invalid(format!(
            "`{}`: every split needs examples (train {}, validation {}, test {})",
            config.data.display(),
            splits.train.len(),
            splits.validation.len(),
            splits.test.len()
        )));
    }
    let conn = crate::catalog::open(&db)?;
    conn.execute_batch(EVAL.get("schema"))
        .map_err(Error::catalog("creating the evaluation tables"))?;
    conn.execute_batch(EVAL.get("paper_results"))
        .map_err(Error::catalog("loading the paper's results"))?;
    let (train_run_id, model_name): (Option<String>, String) = match &lineage.run_dir {
        Some(r) => {
            let found: Option<(String, String)> = conn
                .query_row(EVAL.get("train_run_of"), [r.display().to_string()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .ok();
            match found {
                Some((id, model)) => (Some(id), model),
                None => (None, r.display().to_string()),
            }
        }
        None => (None, lineage.checkpoint.display().to_string()),
    };
    let build_id: Option<String> = lineage.build_dir.as_ref().and_then(|b| {
        let text = std::fs::read_to_string(b.join("shards/manifest.json")).ok()?;
        Some(
            serde_json::from_str::<Value>(&text).ok()?["build_id"]
                .as_str()?
                .to_string(),
        )
    });
    let out_root = config
        .out
        .clone()
        .or_else(|| lineage.run_dir.as_ref().map(|r| r.join("finetune")))
        .unwrap_or_else(|| lineage.checkpoint.join("finetune"));
    let out_root = crate::fsutil::normal_path(&out_root)?;
    // Everything that shapes the trained weights; epochs may grow on a rerun.
    let settings = json!({
        "checkpoint": lineage.checkpoint, "lr": config.lr, "batch_size": config.batch_size,
        "effective_batch": config.effective_batch, "tokenizer": tok_sha,
    });
    let epochs = config.epochs.unwrap_or(config.task.epochs());
    if epochs == 0 || config.batch_size == 0 || config.effective_batch == 0 {
        return Err(Error::Invalid(
            "epochs, batch size and effective batch must be at least 1".into(),
        ));
    }
    let grad_accum = config
        .effective_batch
        .div_ceil(config.batch_size.max(1))
        .max(1);

    let (validation, _) = encode(&tok, &splits.validation, config.task.max_input_tokens())?;
    let (test, _) = encode(&tok, &splits.test, config.task.max_input_tokens())?;
    let mut summaries = Vec::new();
    let mut warned = false;
    for &fraction in &config.fractions {
        for &seed in &config.seeds {
            if cancel.load(Ordering::Relaxed) {
                return Ok(summaries);
            }
            let name = format!("{}-{fraction}-s{seed}", config.task.as_str());
            let dir = out_root.join(&name);
            crate::fsutil::create_private_dir(&dir)?;
            crate::catalog::restrict_to_owner(&dir)?;
            let train_examples = crate::task_data::sample(&splits.train, fraction, seed);
            let (train, truncated) = encode(&tok, &train_examples, config.task.max_input_tokens())?;
            if !warned
                && let Some(longest) = longest_answer(&train).filter(|&n| n > config.max_new_tokens)
            {
                reporter.note(&format!(
                    "warning: {} training answers run to {longest} tokens, but generation \
                     stops at {} (--max-new-tokens): longer predictions are cut",
                    config.task.as_str(),
                    config.max_new_tokens
                ));
                warned = true;
            }
            write_jsonl(&dir.join("train.jsonl"), &train)?;
            write_jsonl(&dir.join("validation.jsonl"), &validation)?;
            write_jsonl(&dir.join("test.jsonl"), &test)?;
            let out_str = dir.display().to_string();
            let existing: Option<String> = conn
                .query_row(EVAL.get("find_run"), [&out_str], |r| r.get(0))
                .ok();
            let state_path = dir.join("state.json");
            let mut state: RunState = std::fs::read_to_string(&state_path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            if let Some(id) = &existing
                && state.tested
                && state.epochs_done >= epochs
            {
                // Finished earlier with these epochs: nothing to redo but close the row.
                conn.execute(
                    EVAL.get("finish_run"),
                    params!["finished", state.best_epoch.map(|b| b as i64), id],
                )
                .map_err(Error::catalog("closing a run"))?;
                let mut stmt = conn
                    .prepare(EVAL.get("test_metrics"))
                    .map_err(Error::catalog("reading test metrics"))?;
                let test = stmt
                    .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect::<Result<Vec<(String, f64)>, _>>())
                    .map_err(Error::catalog("reading test metrics"))?;
                summaries.push(RunSummary {
                    eval_run_id: id.clone(),
                    fraction,
                    seed,
                    status: "finished",
                    best_epoch: state.best_epoch,
                    test,
                });
                continue;
            }
            if state.epochs_done > 0 && state.settings.as_ref().is_some_and(|s| *s != settings) {
                return Err(Error::Invalid(format!(
                    "`{}` was finetuned with other settings ({}); choose another --out or remove it",
                    dir.display(),
                    state
                        .settings
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                )));
            }
            state.tested = false;
            state.settings = Some(settings.clone());
            let id = match existing {
                Some(id) => {
                    conn.execute(EVAL.get("reopen_run"), [&id])
                        .map_err(Error::catalog("reopening a run"))?;
                    id
                }
                None => {
                    state = RunState::default();
                    let id = crate::catalog::new_run_id(&out_str);
                    let run_config =
                        json!({"config": config, "epochs": epochs, "grad_accum": grad_accum});
                    conn.execute(
                        EVAL.get("insert_run"),
                        params![
                            id,
                            config.task.as_str(),
                            fraction,
                            seed as i64,
                            lineage.checkpoint.display().to_string(),
                            train_run_id,
                            build_id,
                            tok_sha,
                            model_name,
                            out_str,
                            run_config.to_string(),
                            train.len() as i64,
                            truncated as i64,
                        ],
                    )
                    .map_err(Error::catalog("recording a finetuning run"))?;
                    id
                }
            };
            let mut guard = FailOnDrop {
                conn: &conn,
                id: id.clone(),
                armed: true,
            };
            conn.execute(
                EVAL.get("forget_epochs_from"),
                params![id, state.epochs_done as i64 + 1],
            )
            .map_err(Error::catalog("forgetting replayed epochs"))?;
            reporter.start(&name, epochs as u64, "epochs");
            reporter.advance(state.epochs_done as u64);
            let mut sink = Quiet { cancel };
            let epoch_dir = |e: usize| dir.join(format!("epoch-{e:03}"));
            let mut status = "finished";
            while state.epochs_done < epochs {
                let e = state.epochs_done;
                let init = if e == 0 {
                    lineage.checkpoint.clone()
                } else {
                    epoch_dir(e)
                };
                let request = json!({
                    "train": dir.join("train.jsonl"), "init": init, "resume_optimizer": e > 0,
                    "out": epoch_dir(e + 1), "epoch": e, "batch_size": config.batch_size,
                    "grad_accum": grad_accum, "lr": config.lr, "seed": seed,
                    "device": config.device, "threads": config.threads,
                });
                let trained = match plugin.call("finetune", &request.to_string(), &mut sink)? {
                    Outcome::Finished(json) => json,
                    Outcome::Cancelled(_) => {
                        status = "cancelled";
                        break;
                    }
                };
                // The epoch's mean training loss, so a run that does not learn shows it.
                let loss = serde_json::from_str::<serde_json::Value>(&trained)
                    .ok()
                    .and_then(|v| v["mean_loss"].as_f64())
                    .ok_or_else(|| {
                        Error::Invalid("the plugin's finetune answer has no `mean_loss`".into())
                    })?;
                conn.execute(
                    EVAL.get("insert_metric"),
                    params![id, "train", e as i64 + 1, "loss", loss],
                )
                .map_err(Error::catalog("recording the training loss"))?;
                let Some(predictions) = predict(
                    plugin,
                    config,
                    &epoch_dir(e + 1),
                    &dir,
                    "validation",
                    &tok,
                    &mut sink,
                )?
                else {
                    status = "cancelled";
                    break;
                };
                let (scores, _) = score(config.task, &predictions, &splits.validation);
                record_metrics(&conn, &id, "validation", e as i64 + 1, &scores)?;
                let selected = scores
                    .iter()
                    .find(|(m, _)| m == config.task.selection_metric())
                    .map(|(_, v)| *v)
                    .unwrap_or(0.0);
                let previous_best = state.best_epoch;
                if state.best_value.is_none_or(|b| selected > b) {
                    state.best_epoch = Some(e + 1);
                    state.best_value = Some(selected);
                }
                state.epochs_done = e + 1;
                let json = serde_json::to_string_pretty(&state).expect("state serializes");
                crate::fsutil::write_atomic(&state_path, json.as_bytes())?;
                // Keep the best epoch and the latest (the next epoch starts from it).
                for old in [previous_best, Some(e)].into_iter().flatten() {
                    if old >= 1 && Some(old) != state.best_epoch && old != state.epochs_done {
                        let _ = std::fs::remove_dir_all(epoch_dir(old));
                    }
                }
                reporter.advance(1);
                reporter.status(&format!("{} {selected:.3}", config.task.selection_metric()));
            }
            reporter.finish();
            let mut test_scores = Vec::new();
            if status == "finished" {
                let best = state.best_epoch.expect("at least one epoch ran");
                match predict(
                    plugin,
                    config,
                    &epoch_dir(best),
                    &dir,
                    "test",
                    &tok,
                    &mut sink,
                )? {
                    Some(predictions) => {
                        let (scores, correct) = score(config.task, &predictions, &splits.test);
                        record_test(
                            &conn,
                            &id,
                            best,
                            "test",
                            &scores,
                            &predictions,
                            &correct,
                            &splits.test,
                            &test,
                        )?;
                        let chance = majority(config.task, &train_examples, &splits.test);
                        record_metrics(&conn, &id, "majority", 0, &chance)?;
                        test_scores = scores;
                        state.tested = true;
                        let json = serde_json::to_string_pretty(&state).expect("state serializes");
                        crate::fsutil::write_atomic(&state_path, json.as_bytes())?;
                    }
                    None => status = "cancelled",
                }
            }
            conn.execute(
                EVAL.get("finish_run"),
                params![status, state.best_epoch.map(|b| b as i64), id],
            )
            .map_err(Error::catalog("closing a run"))?;
            guard.armed = false;
            summaries.push(RunSummary {
                eval_run_id: id,
                fraction,
                seed,
                status,
                best_epoch: state.best_epoch,
                test: test_scores,
            });
            if status == "cancelled" {
                return Ok(summaries);
            }
        }
    }
    Ok(summaries)
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
    encoded: &[Encoded<'_>],
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
        let sha = crate::tokenizer::hex(&sha2::Sha256::digest(&ids));
        app.append_row(params![id, e.id, sha, p, e.target, ok])
            .map_err(Error::catalog("recording predictions"))?;
    }
    app.flush().map_err(Error::catalog("recording predictions"))
}

/// Generates for `split` with `checkpoint` and decodes; `None` when cancelled.
pub(crate) fn predict(
    plugin: &Plugin,
    config: &FinetuneConfig,
    checkpoint: &Path,
    dir: &Path,
    split: &str,
    tok: &Tokenizer,
    sink: &mut dyn HostSink,
) -> Result<Option<Vec<String>>> {
    let out = dir.join(format!("{split}-predictions.jsonl"));
    let request = json!({
        "checkpoint": checkpoint, "examples": dir.join(format!("{split}.jsonl")), "out": out,
        "beams": config.task.beams(), "max_new_tokens": config.max_new_tokens,
        "batch_size": config.batch_size, "device": config.device, "threads": config.threads,
    });
    if let Outcome::Cancelled(_) = plugin.call("generate", &request.to_string(), sink)? {
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

//! `ehrprep evaluate`: scores a checkpoint on a task's split without training — the best
//! epoch of a finetuning run folder, or any checkpoint folder — and records it as its own
//! evaluation run, joined to the same lineage.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use duckdb::params;
use serde_json::json;

use crate::catalog::sql::EVAL;
use crate::eval::scoring::{
    Generation, ModelRun, Quiet, RunState, catalog_and_tokenizer, encode, lineage, majority,
    predict, record_metrics, record_test, score, write_jsonl,
};
use crate::eval::task_data::Task;
use crate::plugin::Plugin;
use crate::{Error, Result};

/// Which split to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Validation,
    Test,
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct EvaluateConfig {
    pub task: Task,
    /// The task's data folder.
    pub data: PathBuf,
    /// A finetuning run folder (its best epoch) or a checkpoint folder.
    pub checkpoint: PathBuf,
    pub split: Split,
    pub run: ModelRun,
}

/// An evaluation's result.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub eval_run_id: String,
    pub checkpoint: PathBuf,
    pub examples: usize,
    pub metrics: Vec<(String, f64)>,
}

/// What a finetuning run lends an evaluation of its checkpoint: fraction, seed, training
/// run, build and model name.
type Origin = (f64, i64, Option<String>, Option<String>, String);

/// The checkpoint to score and the finetuning run folder it belongs to, if any.
fn resolve(path: &Path) -> Result<(PathBuf, Option<PathBuf>, Option<usize>)> {
    let path = crate::fsutil::normal_path(path)?;
    let state_of = |dir: &Path| -> Option<RunState> {
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).ok()?).ok()
    };
    if let Some(state) = state_of(&path) {
        let best = state.best_epoch.ok_or_else(|| {
            Error::Invalid(format!(
                "`{}` has not finished an epoch yet",
                path.display()
            ))
        })?;
        return Ok((
            path.join(format!("epoch-{best:03}")),
            Some(path),
            Some(best),
        ));
    }
    if path.join("config.json").is_file() {
        let run = path
            .parent()
            .filter(|p| state_of(p).is_some())
            .map(Path::to_path_buf);
        let epoch = path
            .file_name()
            .and_then(|n| n.to_str()?.strip_prefix("epoch-")?.parse().ok());
        return Ok((path, run, epoch));
    }
    Err(Error::Invalid(format!(
        "`{}` is neither a finetuning run folder (state.json) nor a checkpoint (config.json)",
        path.display()
    )))
}

/// Scores `config.checkpoint` on `split` of `config.task` (from `config.data`).
pub fn run(config: &EvaluateConfig, plugin: &Plugin, cancel: &AtomicBool) -> Result<Evaluation> {
    let (checkpoint, finetune_dir, epoch) = resolve(&config.checkpoint)?;
    // RUN/finetune/TASK-F-sS -> RUN, the pretraining run that knows the build.
    let pretraining = finetune_dir
        .as_ref()
        .and_then(|d| d.parent()?.parent())
        .filter(|r| r.join("run.json").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| checkpoint.clone());
    let lineage = lineage(&pretraining).or_else(|_| lineage(&checkpoint))?;
    let (db, tok, tok_sha) = catalog_and_tokenizer(&config.run, &lineage)?;
    let count = |s: &str| tok.encode_fast(s, false).map(|e| e.len()).unwrap_or(0);
    let splits = crate::eval::task_data::read(config.task, &config.data, &count)?;
    let (name, examples) = match config.split {
        Split::Validation => ("validation", splits.validation),
        Split::Test => ("test", splits.test),
    };
    if examples.is_empty() {
        return Err(Error::Invalid(format!(
            "`{}` has no {name} examples",
            config.data.display()
        )));
    }
    let work = checkpoint
        .parent()
        .unwrap_or(&checkpoint)
        .join(format!("evaluate-{name}"));
    crate::fsutil::create_private_dir(&work)?;
    crate::catalog::restrict_to_owner(&work)?;
    let (encoded, truncated) = encode(&tok, &examples, config.task)?;
    write_jsonl(&work.join(format!("{name}.jsonl")), &encoded)?;
    let mut sink = Quiet { cancel };
    let generation = Generation {
        plugin,
        task: config.task,
        run: &config.run,
        tok: &tok,
    };
    let predictions = predict(&generation, &checkpoint, &work, name, &mut sink)?
        .ok_or_else(|| Error::Invalid("evaluation stopped by the user".into()))?;
    let (metrics, correct) = score(config.task, &predictions, &examples);

    let conn = crate::catalog::open(&db)?;
    conn.execute_batch(EVAL.get("schema"))
        .map_err(Error::catalog("creating the evaluation tables"))?;
    // The finetuning run this checkpoint came from lends its fraction, seed and lineage.
    let origin: Option<Origin> = finetune_dir.as_ref().and_then(|d| {
        conn.query_row(EVAL.get("origin_of"), [d.display().to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .ok()
    });
    let (fraction, seed, train_run_id, build_id, model) =
        origin.unwrap_or((1.0, 0, None, None, checkpoint.display().to_string()));
    let id = crate::catalog::new_run_id(&format!("{}\n{name}", checkpoint.display()));
    let run_config = json!({"evaluate": name, "task": config.task.as_str(), "data": config.data});
    conn.execute(
        EVAL.get("insert_run"),
        params![
            id,
            config.task.as_str(),
            fraction,
            seed,
            checkpoint.display().to_string(),
            train_run_id,
            build_id,
            tok_sha,
            model,
            work.display().to_string(),
            run_config.to_string(),
            0i64,
            truncated as i64,
        ],
    )
    .map_err(Error::catalog("recording the evaluation"))?;
    let epoch = epoch.unwrap_or(0);
    record_test(
        &conn,
        &id,
        epoch,
        name,
        &metrics,
        &predictions,
        &correct,
        &examples,
        &encoded,
    )?;
    // Chance on the same examples, from the training examples the finetuning run drew.
    let train = crate::eval::task_data::sample(&splits.train, fraction, seed as u64);
    record_metrics(
        &conn,
        &id,
        "majority",
        0,
        &majority(config.task, &train, &examples),
    )?;
    conn.execute(
        EVAL.get("finish_run"),
        params!["finished", epoch as i64, id],
    )
    .map_err(Error::catalog("closing the evaluation"))?;
    Ok(Evaluation {
        eval_run_id: id,
        checkpoint,
        examples: examples.len(),
        metrics,
    })
}

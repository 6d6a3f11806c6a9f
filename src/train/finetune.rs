//! `ehrprep finetune`: the paper's finetuning protocol on MedNLI, RadQA or CLIP for a grid of
//! training fractions and seeds. The host prepares the examples (format, de-id
//! normalization, tokenization, truncation, limited-data sampling), drives the plugin one
//! epoch at a time, scores each epoch's validation predictions, keeps the best epoch, scores
//! it on the test set, and records everything in the catalog. Each (fraction, seed) run
//! resumes at its last finished epoch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use duckdb::{Connection, params};
use ehrprep_plugin_api::requests::{FinetuneRequest, FinetuneResult, World};
use serde::Serialize;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::catalog::sql::EVAL;
use crate::eval::scoring::{
    Encoded, Generation, Lineage, ModelRun, Quiet, RunState, catalog_and_tokenizer, encode,
    lineage, longest_answer, majority, predict, record_metrics, record_test, score, write_jsonl,
};
use crate::eval::task_data::{Example, Splits, Task};
use crate::plugin::{Outcome, Plugin};
use crate::progress::Reporter;
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
    /// Examples per optimizer step (the paper: 64); reached by accumulation.
    pub effective_batch: usize,
    pub lr: f64,
    /// Default: CHECKPOINT_RUN/finetune.
    pub out: Option<PathBuf>,
    #[serde(flatten)]
    pub run: ModelRun,
    /// Train each epoch data-parallel; none: in this process. The results do not depend
    /// on it, so it is not part of the settings a resumed run must match.
    #[serde(skip)]
    pub ranks: Option<Ranks>,
}

/// Data-parallel epochs.
#[derive(Debug, Clone)]
pub enum Ranks {
    /// `count` processes of `program finetune-rank` per epoch, started through
    /// [`super::world::launch`].
    Local {
        /// The `ehrprep` binary.
        program: PathBuf,
        count: usize,
        timeout_s: u64,
        /// `auto`, `nccl` or `gloo`.
        backend: String,
    },
    /// This process is rank 0 of a world a launcher started (torchrun, srun), in a plugin
    /// session (`session-join`): each epoch's request goes to the plugin with this world,
    /// and the plugin hands it on to the other ranks.
    Session(World),
}

impl Ranks {
    fn count(&self) -> usize {
        match self {
            Ranks::Local { count, .. } => *count,
            Ranks::Session(world) => world.size,
        }
    }
}

impl FinetuneConfig {
    pub fn new(task: Task, data: PathBuf, checkpoint: PathBuf) -> FinetuneConfig {
        FinetuneConfig {
            task,
            data,
            checkpoint,
            fractions: vec![1.0],
            // The paper's three seeds per setting.
            seeds: vec![1, 2, 3],
            epochs: None,
            effective_batch: 64,
            lr: ehrprep_plugin_api::requests::default_finetune_lr(),
            out: None,
            run: ModelRun::default(),
            ranks: None,
        }
    }
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

/// Everything the runs of one grid share: the catalog, the tokenizer, the task's examples
/// and where the checkpoint came from.
struct Grid<'a> {
    config: &'a FinetuneConfig,
    plugin: &'a Plugin,
    cancel: &'a AtomicBool,
    reporter: &'a dyn Reporter,
    conn: Connection,
    tok: Tokenizer,
    tok_sha: String,
    lineage: Lineage,
    splits: Splits,
    validation: Vec<Encoded>,
    test: Vec<Encoded>,
    train_run_id: Option<String>,
    model_name: String,
    build_id: Option<String>,
    /// Everything that shapes the trained weights; epochs may grow on a rerun.
    settings: Value,
    epochs: usize,
    grad_accum: usize,
}

/// Runs the grid. `cancel` stops at the next epoch or batch; finished runs are skipped.
pub fn run(
    config: &FinetuneConfig,
    plugin: &Plugin,
    cancel: &AtomicBool,
    reporter: &dyn Reporter,
) -> Result<Vec<RunSummary>> {
    let lineage = lineage(&config.checkpoint)?;
    let (db, tok, tok_sha) = catalog_and_tokenizer(&config.run, &lineage)?;
    let count = |s: &str| tok.encode_fast(s, false).map(|e| e.len()).unwrap_or(0);
    let splits = crate::eval::task_data::read(config.task, &config.data, &count)?;
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
    let (train_run_id, model_name) = pretraining_run(&conn, &lineage);
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
    let batch_size = config.run.batch_size;
    let settings = json!({
        "checkpoint": lineage.checkpoint, "lr": config.lr, "batch_size": batch_size,
        "effective_batch": config.effective_batch, "tokenizer": tok_sha,
    });
    let epochs = config.epochs.unwrap_or(config.task.epochs());
    if epochs == 0 || batch_size == 0 || config.effective_batch == 0 {
        return Err(Error::Invalid(
            "epochs, batch size and effective batch must be at least 1".into(),
        ));
    }
    let grad_accum = config.effective_batch.div_ceil(batch_size.max(1)).max(1);
    if let Some(ranks) = config.ranks.as_ref().filter(|r| r.count() > grad_accum) {
        reporter.note(&format!(
            "warning: a step has {grad_accum} micro-batches of {batch_size} for {} ranks, so some ranks idle; a smaller --batch-size gives each rank work",
            ranks.count()
        ));
    }

    let (validation, _) = encode(&tok, &splits.validation, config.task)?;
    let (test, _) = encode(&tok, &splits.test, config.task)?;
    let grid = Grid {
        config,
        plugin,
        cancel,
        reporter,
        conn,
        tok,
        tok_sha,
        lineage,
        splits,
        validation,
        test,
        train_run_id,
        model_name,
        build_id,
        settings,
        epochs,
        grad_accum,
    };
    let mut summaries = Vec::new();
    let mut warned = false;
    for &fraction in &config.fractions {
        for &seed in &config.seeds {
            if cancel.load(Ordering::Relaxed) {
                return Ok(summaries);
            }
            let summary = grid.run_one(&out_root, fraction, seed, &mut warned)?;
            let cancelled = summary.status == "cancelled";
            summaries.push(summary);
            if cancelled {
                return Ok(summaries);
            }
        }
    }
    Ok(summaries)
}

/// The pretraining run a checkpoint belongs to, and the model name its rows carry.
fn pretraining_run(conn: &Connection, lineage: &Lineage) -> (Option<String>, String) {
    match &lineage.run_dir {
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
    }
}

impl Grid<'_> {
    fn generation(&self) -> Generation<'_> {
        Generation {
            plugin: self.plugin,
            task: self.config.task,
            run: &self.config.run,
            tok: &self.tok,
        }
    }

    /// One (fraction, seed) run: trains the epochs not done yet, then scores the best epoch
    /// on the test set.
    fn run_one(
        &self,
        out_root: &Path,
        fraction: f64,
        seed: u64,
        warned: &mut bool,
    ) -> Result<RunSummary> {
        let config = self.config;
        let task = config.task;
        let name = format!("{}-{fraction}-s{seed}", task.as_str());
        let dir = out_root.join(&name);
        crate::fsutil::create_private_dir(&dir)?;
        crate::catalog::restrict_to_owner(&dir)?;
        let train_examples = crate::eval::task_data::sample(&self.splits.train, fraction, seed);
        let (train, truncated) = encode(&self.tok, &train_examples, task)?;
        let max_new_tokens = config.run.max_new_tokens(task);
        if !*warned && let Some(longest) = longest_answer(&train).filter(|&n| n > max_new_tokens) {
            self.reporter.note(&format!(
                "warning: {} training answers run to {longest} tokens, but generation \
                 stops at {} (--max-new-tokens): longer predictions are cut",
                task.as_str(),
                max_new_tokens
            ));
            *warned = true;
        }
        write_jsonl(&dir.join("train.jsonl"), &train)?;
        write_jsonl(&dir.join("validation.jsonl"), &self.validation)?;
        write_jsonl(&dir.join("test.jsonl"), &self.test)?;
        let out_str = dir.display().to_string();
        let existing: Option<String> = self
            .conn
            .query_row(EVAL.get("find_run"), [&out_str], |r| r.get(0))
            .ok();
        let state_path = dir.join("state.json");
        let mut state: RunState = std::fs::read_to_string(&state_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        if let Some(id) = &existing
            && state.tested
            && state.epochs_done >= self.epochs
        {
            return self.already_finished(id, fraction, seed, &state);
        }
        if state.epochs_done > 0 && state.settings.as_ref().is_some_and(|s| *s != self.settings) {
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
        state.settings = Some(self.settings.clone());
        let id = match existing {
            Some(id) => {
                self.conn
                    .execute(EVAL.get("reopen_run"), [&id])
                    .map_err(Error::catalog("reopening a run"))?;
                id
            }
            None => {
                state = RunState::default();
                let id = crate::catalog::new_run_id(&out_str);
                let run_config =
                    json!({"config": config, "epochs": self.epochs, "grad_accum": self.grad_accum});
                self.conn
                    .execute(
                        EVAL.get("insert_run"),
                        params![
                            id,
                            task.as_str(),
                            fraction,
                            seed as i64,
                            self.lineage.checkpoint.display().to_string(),
                            self.train_run_id,
                            self.build_id,
                            self.tok_sha,
                            self.model_name,
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
            conn: &self.conn,
            id: id.clone(),
            armed: true,
        };
        self.conn
            .execute(
                EVAL.get("forget_epochs_from"),
                params![id, state.epochs_done as i64 + 1],
            )
            .map_err(Error::catalog("forgetting replayed epochs"))?;
        let run = Run {
            id: &id,
            dir: &dir,
            state_path: &state_path,
            seed,
        };
        let mut status = self.train_epochs(&run, &name, &mut state)?;
        let mut test_scores = Vec::new();
        if status == "finished" {
            match self.score_best(&run, &mut state, &train_examples)? {
                Some(scores) => test_scores = scores,
                None => status = "cancelled",
            }
        }
        self.conn
            .execute(
                EVAL.get("finish_run"),
                params![status, state.best_epoch.map(|b| b as i64), id],
            )
            .map_err(Error::catalog("closing a run"))?;
        guard.armed = false;
        Ok(RunSummary {
            eval_run_id: id,
            fraction,
            seed,
            status,
            best_epoch: state.best_epoch,
            test: test_scores,
        })
    }

    /// A run finished earlier with these epochs: nothing to redo but close its row.
    fn already_finished(
        &self,
        id: &str,
        fraction: f64,
        seed: u64,
        state: &RunState,
    ) -> Result<RunSummary> {
        self.conn
            .execute(
                EVAL.get("finish_run"),
                params!["finished", state.best_epoch.map(|b| b as i64), id],
            )
            .map_err(Error::catalog("closing a run"))?;
        let mut stmt = self
            .conn
            .prepare(EVAL.get("test_metrics"))
            .map_err(Error::catalog("reading test metrics"))?;
        let test = stmt
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<(String, f64)>, _>>())
            .map_err(Error::catalog("reading test metrics"))?;
        Ok(RunSummary {
            eval_run_id: id.to_string(),
            fraction,
            seed,
            status: "finished",
            best_epoch: state.best_epoch,
            test,
        })
    }

    /// One epoch on `ranks` local processes: the request goes to them through a file, rank
    /// 0's answer comes back through another. Ctrl-C here reaches each rank once.
    fn train_on_ranks(
        &self,
        program: &Path,
        count: usize,
        timeout_s: u64,
        backend: &str,
        run: &Run<'_>,
        request: &str,
    ) -> Result<Outcome> {
        let (request_path, result_path) = (
            run.dir.join("epoch-request.json"),
            run.dir.join("epoch-result.json"),
        );
        crate::fsutil::write_atomic(&request_path, request.as_bytes())?;
        if result_path.exists() {
            std::fs::remove_file(&result_path).map_err(Error::io(&result_path))?;
        }
        let args: Vec<std::ffi::OsString> = vec![
            "finetune-rank".into(),
            "--request".into(),
            request_path.clone().into(),
            "--result".into(),
            result_path.clone().into(),
            "--plugin".into(),
            self.plugin.path.clone().into(),
            "--dist-timeout".into(),
            timeout_s.to_string().into(),
            "--dist-backend".into(),
            backend.into(),
        ];
        let cancel = self.cancel;
        let interrupts = || usize::from(cancel.load(std::sync::atomic::Ordering::SeqCst));
        super::world::launch(program, &args, count, &interrupts)?;
        let answer = std::fs::read_to_string(&result_path);
        let _ = std::fs::remove_file(&request_path);
        let _ = std::fs::remove_file(&result_path);
        match answer {
            Ok(json) => Ok(Outcome::Finished(json)),
            // The ranks stopped at a step without an answer: they were interrupted.
            Err(_) if cancel.load(std::sync::atomic::Ordering::SeqCst) => {
                Ok(Outcome::Cancelled("{}".into()))
            }
            Err(e) => Err(Error::Invalid(format!(
                "the ranks ended without rank 0's answer in `{}`: {e}",
                result_path.display()
            ))),
        }
    }

    /// Trains the epochs not done yet, one plugin call each, scoring each on validation and
    /// keeping the best and the latest; returns `finished` or `cancelled`.
    fn train_epochs(
        &self,
        run: &Run<'_>,
        name: &str,
        state: &mut RunState,
    ) -> Result<&'static str> {
        let config = self.config;
        let task = config.task;
        self.reporter.start(name, self.epochs as u64, "epochs");
        self.reporter.advance(state.epochs_done as u64);
        let mut sink = Quiet {
            cancel: self.cancel,
        };
        let mut status = "finished";
        while state.epochs_done < self.epochs {
            let e = state.epochs_done;
            let init = if e == 0 {
                self.lineage.checkpoint.clone()
            } else {
                run.epoch_dir(e)
            };
            let request = FinetuneRequest {
                train: run.dir.join("train.jsonl"),
                init,
                resume_optimizer: e > 0,
                out: run.epoch_dir(e + 1),
                epoch: e as u64,
                batch_size: config.run.batch_size,
                grad_accum: self.grad_accum,
                lr: config.lr,
                dropout: FinetuneRequest::DROPOUT,
                seed: run.seed,
                device: config.run.device.clone(),
                threads: config.run.threads,
                world: match &config.ranks {
                    Some(Ranks::Session(world)) => Some(world.clone()),
                    _ => None,
                },
            };
            let request = serde_json::to_string(&request).expect("the request serializes");
            let outcome = match &config.ranks {
                _ if self.cancel.load(std::sync::atomic::Ordering::SeqCst) => {
                    Outcome::Cancelled("{}".into())
                }
                Some(Ranks::Local {
                    program,
                    count,
                    timeout_s,
                    backend,
                }) => self.train_on_ranks(program, *count, *timeout_s, backend, run, &request)?,
                Some(Ranks::Session(_)) | None => {
                    self.plugin.call("finetune", &request, &mut sink)?
                }
            };
            let trained = match outcome {
                Outcome::Finished(json) => json,
                Outcome::Cancelled(_) => {
                    status = "cancelled";
                    break;
                }
            };
            // The epoch's mean training loss, so a run that does not learn shows it.
            let loss = serde_json::from_str::<FinetuneResult>(&trained)
                .map_err(|e| {
                    Error::Invalid(format!("the plugin's finetune answer is malformed: {e}"))
                })?
                .mean_loss;
            self.conn
                .execute(
                    EVAL.get("insert_metric"),
                    params![run.id, "train", e as i64 + 1, "loss", loss],
                )
                .map_err(Error::catalog("recording the training loss"))?;
            let Some(predictions) = predict(
                &self.generation(),
                &run.epoch_dir(e + 1),
                run.dir,
                "validation",
                &mut sink,
            )?
            else {
                status = "cancelled";
                break;
            };
            let (scores, _) = score(task, &predictions, &self.splits.validation);
            record_metrics(&self.conn, run.id, "validation", e as i64 + 1, &scores)?;
            let selected = scores
                .iter()
                .find(|(m, _)| m == task.selection_metric())
                .map(|(_, v)| *v)
                .unwrap_or(0.0);
            let previous_best = state.best_epoch;
            if state.best_value.is_none_or(|b| selected > b) {
                state.best_epoch = Some(e + 1);
                state.best_value = Some(selected);
            }
            state.epochs_done = e + 1;
            run.save(state)?;
            // Keep the best epoch and the latest (the next epoch starts from it).
            for old in [previous_best, Some(e)].into_iter().flatten() {
                if old >= 1 && Some(old) != state.best_epoch && old != state.epochs_done {
                    let _ = std::fs::remove_dir_all(run.epoch_dir(old));
                }
            }
            self.reporter.advance(1);
            self.reporter
                .status(&format!("{} {selected:.3}", task.selection_metric()));
        }
        self.reporter.finish();
        Ok(status)
    }

    /// Scores the best epoch on the test set and records it with chance beside it; `None`
    /// when cancelled.
    fn score_best(
        &self,
        run: &Run<'_>,
        state: &mut RunState,
        train_examples: &[Example],
    ) -> Result<Option<Vec<(String, f64)>>> {
        let task = self.config.task;
        let best = state.best_epoch.expect("at least one epoch ran");
        let mut sink = Quiet {
            cancel: self.cancel,
        };
        let Some(predictions) = predict(
            &self.generation(),
            &run.epoch_dir(best),
            run.dir,
            "test",
            &mut sink,
        )?
        else {
            return Ok(None);
        };
        let (scores, correct) = score(task, &predictions, &self.splits.test);
        record_test(
            &self.conn,
            run.id,
            best,
            "test",
            &scores,
            &predictions,
            &correct,
            &self.splits.test,
            &self.test,
        )?;
        let chance = majority(task, train_examples, &self.splits.test);
        record_metrics(&self.conn, run.id, "majority", 0, &chance)?;
        state.tested = true;
        run.save(state)?;
        Ok(Some(scores))
    }
}

/// One (fraction, seed) run's folder and catalog row.
struct Run<'a> {
    id: &'a str,
    dir: &'a Path,
    state_path: &'a Path,
    seed: u64,
}

impl Run<'_> {
    fn epoch_dir(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("epoch-{epoch:03}"))
    }

    fn save(&self, state: &RunState) -> Result<()> {
        let json = serde_json::to_string_pretty(state).expect("state serializes");
        crate::fsutil::write_atomic(self.state_path, json.as_bytes())
    }
}

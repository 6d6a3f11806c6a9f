//! `ehrprep pretrain`: hands a build's shards to the trainer plugin and records the run,
//! its steps and its checkpoints in the build's catalog as the plugin reports them.
//!
//! The host decides what to train and where; the plugin owns the model and the loop. A
//! resumed run continues the same `train_runs` row, and the steps between its checkpoint
//! and the crash are recorded again, once.
//!
//! In a data-parallel run every rank runs this; rank 0 alone opens the catalog and
//! records the run, the others only train.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use duckdb::{Connection, params};
use ehrprep_plugin_api::requests::{PretrainRequest, TrainEvent, World};
use ehrprep_plugin_api::{HostSink, LOG_WARN};
use serde::Deserialize;
use serde_json::Value;

use crate::catalog::sql::TRAIN;
use crate::plugin::{Outcome, Plugin};
use crate::progress::Reporter;
use crate::{Error, Result};

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct PretrainConfig {
    /// The build folder (with `catalog.duckdb` and `shards/`); from `run.json` on resume.
    pub build: Option<PathBuf>,
    /// The run folder.
    pub out: PathBuf,
    pub resume: bool,
    /// The training settings. The host fills in where the shards and the run folder are;
    /// on resume only `steps` is taken, the rest comes from the run's `run.json`.
    pub request: PretrainRequest,
    /// This process's rank in a data-parallel run ([`super::world::from_env`]).
    pub world: Option<World>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct PretrainSummary {
    pub run_id: String,
    pub status: &'static str,
    pub result: Value,
}

#[derive(Deserialize)]
struct ManifestIds {
    build_id: String,
    tokenizer: TokenizerSha,
}

#[derive(Deserialize)]
struct TokenizerSha {
    sha256: String,
}

/// The request for the plugin: the saved one on resume (with the new step count), else
/// `config.request` with the build's shards and the run folder.
fn request(config: &PretrainConfig) -> Result<(PathBuf, PretrainRequest)> {
    let out = &config.out;
    if config.resume {
        let path = out.join("run.json");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            Error::Invalid(format!(
                "`{}` is not a pretraining run folder (no run.json); nothing to resume",
                out.display()
            ))
        })?;
        let mut req: PretrainRequest = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("`{}` is malformed: {e}", path.display())))?;
        req.resume = true;
        req.steps = config.request.steps;
        keep_global_batch(&mut req, config.world.clone())?;
        // The folder may have moved since: train where it is now.
        req.out = absolute(out)?;
        if req.shards_dir.as_os_str().is_empty() {
            return Err(Error::Invalid(format!(
                "`{}` names no shards_dir",
                path.display()
            )));
        }
        let build = req
            .shards_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        return Ok((build, req));
    }
    let build = config.build.clone().ok_or_else(|| {
        Error::Invalid(
            "pretrain needs --build OUT (a finished `ehrprep build`) or --resume RUN".into(),
        )
    })?;
    let mut req = config.request.clone();
    req.shards_dir = absolute(&build.join("shards"))?;
    req.out = absolute(out)?;
    req.resume = false;
    req.run_id = None;
    req.init = req.init.as_deref().map(absolute).transpose()?;
    req.world = config.world.clone();
    Ok((build, req))
}

/// Sequences per optimizer step over all ranks.
pub fn global_batch(req: &PretrainRequest) -> usize {
    req.batch_size * req.grad_accum * req.world.as_ref().map_or(1, |w| w.size)
}

/// A run resumed on another number of ranks keeps its global batch (and so its data
/// position and schedule): the micro-batch stays, the accumulation takes up the change.
fn keep_global_batch(req: &mut PretrainRequest, world: Option<World>) -> Result<()> {
    let global = global_batch(req);
    let ranks = world.as_ref().map_or(1, |w| w.size);
    let per_step = req.batch_size * ranks;
    if !global.is_multiple_of(per_step) {
        return Err(Error::Invalid(format!(
            "the run trains on {global} sequences a step; {ranks} ranks of {} cannot make that up (resume on a number of ranks that divides {})",
            req.batch_size,
            global / req.batch_size
        )));
    }
    req.grad_accum = global / per_step;
    req.world = world;
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    crate::fsutil::normal_path(p)
}

/// Runs (or resumes) a pretraining run with `plugin`. `cancel` is polled at every step.
pub fn run(
    config: &PretrainConfig,
    plugin: &Plugin,
    cancel: &AtomicBool,
    reporter: &dyn Reporter,
) -> Result<PretrainSummary> {
    let (build, req) = request(config)?;
    if let Some(world) = req.world.as_ref().filter(|w| w.rank != 0) {
        return follow(world, &req, plugin, cancel);
    }
    let shards = build.join("shards");
    let manifest_path = shards.join("manifest.json");
    let manifest: ManifestIds = std::fs::read_to_string(&manifest_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "`{}` has no readable shard manifest; run `ehrprep build` with shards first",
                build.display()
            ))
        })?;
    let catalog_path = build.join("catalog.duckdb");
    if !catalog_path.exists() {
        return Err(Error::Invalid(format!(
            "`{}` has no catalog.duckdb; is it a finished build folder?",
            build.display()
        )));
    }
    let conn = crate::catalog::open(&catalog_path)?;
    let doing = |what: &str| Error::catalog(format!("{what} in `{}`", catalog_path.display()));
    conn.execute_batch(TRAIN.get("schema"))
        .map_err(doing("creating the training tables"))?;
    let builds: i64 = conn
        .query_row(TRAIN.get("build_exists"), [&manifest.build_id], |r| {
            r.get(0)
        })
        .map_err(doing("checking the build"))?;
    if builds == 0 {
        return Err(Error::Invalid(format!(
            "the shards in `{}` belong to build {}, which the catalog does not list as finished",
            shards.display(),
            manifest.build_id
        )));
    }

    let out = absolute(&config.out)?;
    let out_str = out.display().to_string();
    let mut req = req;
    // The run's id travels in run.json, so a moved run folder still finds its row.
    let saved_id = req.run_id.clone();
    let existing: Option<String> = match saved_id {
        Some(id) => conn
            .query_row(TRAIN.get("run_exists"), [&id], |r| r.get::<_, i64>(0))
            .ok()
            .filter(|&n| n > 0)
            .map(|_| id),
        None => None,
    }
    .or_else(|| {
        conn.query_row(TRAIN.get("run_of_folder"), [&out_str], |r| r.get(0))
            .ok()
    });
    if !config.resume && (existing.is_some() || out.join("latest").exists()) {
        return Err(Error::Invalid(format!(
            "`{}` already holds a run; pass --resume to continue it or choose another --out",
            out.display()
        )));
    }
    let run_id = match existing {
        Some(id) => {
            req.run_id = Some(id.clone());
            let request_json = serde_json::to_string(&req).expect("request serializes");
            conn.execute(TRAIN.get("reopen_run"), params![request_json, out_str, id])
                .map_err(doing("reopening the run"))?;
            id
        }
        None => {
            let id = crate::catalog::new_run_id(&out_str);
            req.run_id = Some(id.clone());
            let request_json = serde_json::to_string(&req).expect("request serializes");
            let model = req.model_name();
            conn.execute(
                TRAIN.get("insert_run"),
                params![
                    id,
                    manifest.build_id,
                    manifest.tokenizer.sha256,
                    out_str,
                    model,
                    request_json,
                    plugin.info.name,
                    plugin.info.version,
                    env!("CARGO_PKG_VERSION"),
                ],
            )
            .map_err(doing("recording the run"))?;
            id
        }
    };
    let request_json = serde_json::to_string(&req).expect("request serializes");
    conn.execute(
        TRAIN.get("set_world"),
        params![
            req.world.as_ref().map_or(1, |w| w.size) as i64,
            req.batch_size as i64,
            global_batch(&req) as i64,
            run_id
        ],
    )
    .map_err(doing("recording the ranks"))?;

    let mut sink = Sink {
        conn: &conn,
        run_id: &run_id,
        cancel,
        reporter,
        failure: None,
        started: false,
        warned_malformed: false,
    };
    let outcome = plugin.call("pretrain", &request_json, &mut sink);
    let failure = sink.failure.take();
    reporter.finish();
    let (status, result) = match &outcome {
        Ok(Outcome::Finished(json)) => ("finished", json.clone()),
        Ok(Outcome::Cancelled(json)) => ("cancelled", json.clone()),
        Err(_) => ("failed", "{}".to_string()),
    };
    conn.execute(TRAIN.get("finish_run"), params![status, run_id, run_id])
        .map_err(doing("closing the run"))?;
    outcome?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(PretrainSummary {
        run_id,
        status,
        result: serde_json::from_str(&result).unwrap_or(Value::Null),
    })
}

/// A rank other than 0: trains, reports warnings under its rank, records nothing.
fn follow(
    world: &World,
    req: &PretrainRequest,
    plugin: &Plugin,
    cancel: &AtomicBool,
) -> Result<PretrainSummary> {
    let request_json = serde_json::to_string(req).expect("request serializes");
    let outcome = call_as_rank(plugin, "pretrain", &request_json, world.rank, cancel)?;
    let (status, result) = match outcome {
        Outcome::Finished(json) => ("finished", json),
        Outcome::Cancelled(json) => ("cancelled", json),
    };
    Ok(PretrainSummary {
        run_id: String::new(),
        status,
        result: serde_json::from_str(&result).unwrap_or(Value::Null),
    })
}

/// Calls `method` as rank `rank` of a data-parallel run: warnings are printed under the
/// rank, events dropped (rank 0's orchestrator records the run).
pub fn call_as_rank(
    plugin: &Plugin,
    method: &str,
    request: &str,
    rank: usize,
    cancel: &AtomicBool,
) -> Result<Outcome> {
    plugin.call(method, request, &mut Follower { rank, cancel })
}

struct Follower<'a> {
    rank: usize,
    cancel: &'a AtomicBool,
}

impl HostSink for Follower<'_> {
    fn log(&mut self, level: u32, text: &str) {
        if level == LOG_WARN {
            eprintln!("rank {}: warning: {text}", self.rank);
        }
    }

    fn event(&mut self, _: &str) {}

    fn cancelled(&mut self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Receives the plugin's events and writes them to the catalog.
struct Sink<'a> {
    conn: &'a Connection,
    run_id: &'a str,
    cancel: &'a AtomicBool,
    reporter: &'a dyn Reporter,
    /// The first catalog error; reported when the call returns.
    failure: Option<Error>,
    started: bool,
    /// A malformed event has been reported (once per run).
    warned_malformed: bool,
}

impl Sink<'_> {
    fn record(&mut self, event: TrainEvent) -> Result<()> {
        let conn = self.conn;
        let id = self.run_id;
        match event {
            TrainEvent::Start {
                start_step,
                steps,
                device,
                parameters,
                model_config,
                dropout,
                backend,
            } => {
                conn.execute(
                    TRAIN.get("forget_steps_after"),
                    params![id, start_step as i64],
                )
                .map_err(Error::catalog("forgetting replayed steps"))?;
                conn.execute(
                    TRAIN.get("started"),
                    params![
                        device,
                        parameters,
                        model_config.to_string(),
                        dropout,
                        backend,
                        id
                    ],
                )
                .map_err(Error::catalog("recording the device"))?;
                self.reporter.start("pretrain", steps, "steps");
                self.reporter.advance(start_step);
                self.started = true;
            }
            TrainEvent::TrainStep {
                step,
                loss,
                lr,
                grad_norm,
                tokens,
                tokens_per_s,
                elapsed_s,
            } => {
                conn.execute(
                    TRAIN.get("insert_step"),
                    params![
                        id,
                        step as i64,
                        loss,
                        lr,
                        grad_norm,
                        tokens as i64,
                        tokens_per_s,
                        elapsed_s
                    ],
                )
                .map_err(Error::catalog("recording a step"))?;
                self.reporter.advance(1);
                self.reporter
                    .status(&format!("loss {loss:.3} · {tokens_per_s:.0} tok/s"));
            }
            TrainEvent::Validation { step, loss } => {
                conn.execute(TRAIN.get("set_validation"), params![loss, id, step as i64])
                    .map_err(Error::catalog("recording validation loss"))?;
            }
            TrainEvent::Checkpoint {
                step,
                path,
                validation_loss,
                sha256,
            } => {
                let path = path.display().to_string();
                conn.execute(
                    TRAIN.get("insert_checkpoint"),
                    params![id, step as i64, path, validation_loss, sha256],
                )
                .map_err(Error::catalog("recording a checkpoint"))?;
                self.reporter
                    .note(&format!("checkpoint at step {step}: {path}"));
            }
            TrainEvent::FinetuneEpoch { .. } => {}
        }
        Ok(())
    }
}

impl HostSink for Sink<'_> {
    fn log(&mut self, level: u32, text: &str) {
        let prefix = if level == LOG_WARN { "warning: " } else { "" };
        self.reporter.note(&format!("{prefix}{text}"));
    }

    fn event(&mut self, json: &str) {
        let event = match serde_json::from_str::<TrainEvent>(json) {
            Ok(event) => event,
            Err(e) => {
                if !self.warned_malformed {
                    self.reporter
                        .note(&format!("warning: the plugin sent an event ehrprep cannot read ({e}); such events are skipped"));
                    self.warned_malformed = true;
                }
                return;
            }
        };
        if let Err(e) = self.record(event)
            && self.failure.is_none()
        {
            self.failure = Some(e);
        }
    }

    fn cancelled(&mut self) -> bool {
        // A catalog that cannot be written is a reason to stop at the next step.
        self.failure.is_some() || self.cancel.load(Ordering::Relaxed)
    }
}

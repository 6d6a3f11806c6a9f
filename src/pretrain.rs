//! `ehrprep pretrain`: hands a build's shards to the trainer plugin and records the run,
//! its steps and its checkpoints in the build's catalog as the plugin reports them.
//!
//! The host decides what to train and where; the plugin owns the model and the loop. A
//! resumed run continues the same `train_runs` row, and the steps between its checkpoint
//! and the crash are recorded again, once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use duckdb::{Connection, params};
use ehrprep_plugin_api::{HostSink, LOG_WARN};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::plugin::{Outcome, Plugin};
use crate::progress::Reporter;
use crate::sql::TRAIN;
use crate::{Error, Result};

/// What the user asked for. `None` leaves the plugin's default.
#[derive(Debug, Clone, Default)]
pub struct PretrainConfig {
    /// The build folder (with `catalog.duckdb` and `shards/`); from `run.json` on resume.
    pub build: Option<PathBuf>,
    /// The run folder.
    pub out: PathBuf,
    pub resume: bool,
    pub model: Option<String>,
    pub init: Option<PathBuf>,
    pub steps: u64,
    pub batch_size: Option<usize>,
    pub grad_accum: Option<usize>,
    pub optimizer: Option<String>,
    pub lr: Option<f64>,
    pub warmup: Option<u64>,
    pub clip: Option<f64>,
    pub device: Option<String>,
    pub seed: Option<u64>,
    pub eval_every: Option<u64>,
    pub eval_batches: Option<usize>,
    pub save_every: Option<u64>,
    pub keep_last: Option<usize>,
    pub threads: Option<i32>,
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
/// one made from `config`.
fn request(config: &PretrainConfig) -> Result<(PathBuf, Value)> {
    let out = &config.out;
    if config.resume {
        let path = out.join("run.json");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            Error::Invalid(format!(
                "`{}` is not a pretraining run folder (no run.json); nothing to resume",
                out.display()
            ))
        })?;
        let mut req: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("`{}` is malformed: {e}", path.display())))?;
        req["resume"] = json!(true);
        req["steps"] = json!(config.steps);
        // The folder may have moved since: train where it is now.
        req["out"] = json!(absolute(out)?);
        let shards = req["shards_dir"]
            .as_str()
            .map(PathBuf::from)
            .ok_or_else(|| Error::Invalid(format!("`{}` names no shards_dir", path.display())))?;
        let build = shards.parent().map(Path::to_path_buf).unwrap_or_default();
        return Ok((build, req));
    }
    let build = config.build.clone().ok_or_else(|| {
        Error::Invalid(
            "pretrain needs --build OUT (a finished `ehrprep build`) or --resume RUN".into(),
        )
    })?;
    let mut req = json!({
        "shards_dir": absolute(&build.join("shards"))?,
        "out": absolute(out)?,
        "steps": config.steps,
        "resume": false,
    });
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            req[key] = v;
        }
    };
    set("model", config.model.clone().map(Value::from));
    set(
        "init",
        config
            .init
            .as_deref()
            .map(absolute)
            .transpose()?
            .map(|p| json!(p)),
    );
    set("batch_size", config.batch_size.map(Value::from));
    set("grad_accum", config.grad_accum.map(Value::from));
    set("optimizer", config.optimizer.clone().map(Value::from));
    set("lr", config.lr.map(Value::from));
    set("warmup", config.warmup.map(Value::from));
    set("clip", config.clip.map(Value::from));
    set("device", config.device.clone().map(Value::from));
    set("seed", config.seed.map(Value::from));
    set("eval_every", config.eval_every.map(Value::from));
    set("eval_batches", config.eval_batches.map(Value::from));
    set("save_every", config.save_every.map(Value::from));
    set("keep_last", config.keep_last.map(Value::from));
    set("threads", config.threads.map(Value::from));
    Ok((build, req))
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
    let saved_id = req
        .get("run_id")
        .and_then(Value::as_str)
        .map(str::to_string);
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
            req["run_id"] = json!(id);
            let request_json = serde_json::to_string(&req).expect("request serializes");
            conn.execute(TRAIN.get("reopen_run"), params![request_json, out_str, id])
                .map_err(doing("reopening the run"))?;
            id
        }
        None => {
            let id = crate::catalog::new_run_id(&out_str);
            req["run_id"] = json!(id);
            let request_json = serde_json::to_string(&req).expect("request serializes");
            let model = req
                .get("init")
                .and_then(Value::as_str)
                .or_else(|| req.get("model").and_then(Value::as_str))
                .unwrap_or("t5-base")
                .to_string();
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

    let mut sink = Sink {
        conn: &conn,
        run_id: &run_id,
        cancel,
        reporter,
        failure: None,
        started: false,
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

/// Receives the plugin's events and writes them to the catalog.
struct Sink<'a> {
    conn: &'a Connection,
    run_id: &'a str,
    cancel: &'a AtomicBool,
    reporter: &'a dyn Reporter,
    /// The first catalog error; reported when the call returns.
    failure: Option<Error>,
    started: bool,
}

impl Sink<'_> {
    fn record(&mut self, event: &Value) -> Result<()> {
        let f = |k: &str| event.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        let u = |k: &str| event.get(k).and_then(Value::as_u64).unwrap_or(0) as i64;
        let conn = self.conn;
        let id = self.run_id;
        match event.get("kind").and_then(Value::as_str) {
            Some("start") => {
                let start = u("start_step");
                conn.execute(TRAIN.get("forget_steps_after"), params![id, start])
                    .map_err(Error::catalog("forgetting replayed steps"))?;
                conn.execute(
                    TRAIN.get("started"),
                    params![
                        event["device"].as_str().unwrap_or("?"),
                        u("parameters"),
                        event["model_config"].to_string(),
                        id
                    ],
                )
                .map_err(Error::catalog("recording the device"))?;
                self.reporter.start("pretrain", u("steps") as u64, "steps");
                self.reporter.advance(start as u64);
                self.started = true;
            }
            Some("train_step") => {
                conn.execute(
                    TRAIN.get("insert_step"),
                    params![
                        id,
                        u("step"),
                        f("loss"),
                        f("lr"),
                        f("grad_norm"),
                        u("tokens"),
                        f("tokens_per_s"),
                        f("elapsed_s")
                    ],
                )
                .map_err(Error::catalog("recording a step"))?;
                self.reporter.advance(1);
                self.reporter.status(&format!(
                    "loss {:.3} · {:.0} tok/s",
                    f("loss"),
                    f("tokens_per_s")
                ));
            }
            Some("validation") => {
                conn.execute(
                    TRAIN.get("set_validation"),
                    params![f("loss"), id, u("step")],
                )
                .map_err(Error::catalog("recording validation loss"))?;
            }
            Some("checkpoint") => {
                let vloss = event.get("validation_loss").and_then(Value::as_f64);
                conn.execute(
                    TRAIN.get("insert_checkpoint"),
                    params![
                        id,
                        u("step"),
                        event["path"].as_str().unwrap_or_default(),
                        vloss,
                        event["sha256"].as_str().unwrap_or_default()
                    ],
                )
                .map_err(Error::catalog("recording a checkpoint"))?;
                self.reporter.note(&format!(
                    "checkpoint at step {}: {}",
                    u("step"),
                    event["path"].as_str().unwrap_or_default()
                ));
            }
            _ => {}
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
        let Ok(event) = serde_json::from_str::<Value>(json) else {
            return;
        };
        if let Err(e) = self.record(&event)
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

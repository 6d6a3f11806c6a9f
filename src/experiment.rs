//! `ehrprep experiment run FILE --out DIR`: the whole protocol from one TOML file —
//! (synthetic data) -> build -> pretrain -> finetune grid per task -> report — running only
//! what is missing, so a failed or stopped experiment continues where it ended.
//!
//! Relative paths in the file are relative to the file's folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::Deserialize;

use crate::build::BuildConfig;
use crate::eval::task_data::Task;
use crate::pack::PackSettings;
use crate::plugin::Plugin;
use crate::progress::Reporter;
use crate::train::finetune::FinetuneConfig;
use crate::train::pretrain::PretrainConfig;
use crate::{Error, Result};
use ehrprep_plugin_api::requests::PretrainRequest;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Generate MIMIC-shaped data (and task files) into OUT/synth first.
    pub synth: Option<SynthStage>,
    pub build: BuildStage,
    /// The trainer's own request; the run folder and the shards are filled in.
    pub pretrain: PretrainRequest,
    #[serde(default)]
    pub finetune: Vec<FinetuneStage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthStage {
    pub notes: u64,
    #[serde(default = "synth_seed")]
    pub seed: u64,
}

fn synth_seed() -> u64 {
    crate::synth::SynthConfig::default().seed
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildStage {
    /// Default: OUT/synth when `[synth]` is given.
    pub mimic_dir: Option<PathBuf>,
    /// Task files whose patients leave the corpus. Default: OUT/synth/tasks with `[synth]`.
    pub task_data: Option<PathBuf>,
    pub vocab_size: Option<u32>,
    /// Lowercase before the trained tokenizer (the paper's Clinical-T5-Base was).
    #[serde(default)]
    pub lowercase: bool,
    pub input_length: Option<usize>,
    pub validation_fraction: Option<f64>,
    pub seed: Option<u64>,
    /// An existing tokenizer instead of training one.
    pub tokenizer: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneStage {
    pub task: Task,
    /// The task's official files. Default: OUT/synth/tasks/TASK with `[synth]`.
    pub data: Option<PathBuf>,
    #[serde(default = "paper_fractions")]
    pub fractions: Vec<f64>,
    #[serde(default = "paper_seeds")]
    pub seeds: Vec<u64>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub effective_batch: Option<usize>,
    pub lr: Option<f64>,
    pub device: Option<String>,
    pub threads: Option<i32>,
    pub max_new_tokens: Option<usize>,
}

fn paper_fractions() -> Vec<f64> {
    FinetuneConfig::new(Task::Mednli, PathBuf::new(), PathBuf::new()).fractions
}

fn paper_seeds() -> Vec<u64> {
    FinetuneConfig::new(Task::Mednli, PathBuf::new(), PathBuf::new()).seeds
}

impl Experiment {
    pub fn read(path: &Path) -> Result<Experiment> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let mut e: Experiment = toml::from_str(&text).map_err(|e| {
            Error::Invalid(format!(
                "`{}` is not an experiment: {}",
                path.display(),
                e.message()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.as_mut()
                && path.is_relative()
            {
                *path = base.join(&*path);
            }
        };
        fix(&mut e.build.mimic_dir);
        fix(&mut e.build.task_data);
        fix(&mut e.build.tokenizer);
        fix(&mut e.pretrain.init);
        let p = &e.pretrain;
        if p.steps == 0 {
            return Err(Error::Invalid(format!(
                "`{}`: [pretrain] needs `steps` (at least 1)",
                path.display()
            )));
        }
        if !p.shards_dir.as_os_str().is_empty()
            || !p.out.as_os_str().is_empty()
            || p.resume
            || p.run_id.is_some()
        {
            return Err(Error::Invalid(format!(
                "`{}`: [pretrain] cannot set `shards_dir`, `out`, `resume` or `run_id`; the experiment decides them",
                path.display()
            )));
        }
        for f in &mut e.finetune {
            fix(&mut f.data);
        }
        if e.synth.is_none() && e.build.mimic_dir.is_none() {
            return Err(Error::Invalid(format!(
                "`{}`: [build] needs mimic_dir, or add a [synth] section",
                path.display()
            )));
        }
        Ok(e)
    }
}

/// What each stage did: ran, resumed or was already done.
#[derive(Debug, Clone)]
pub struct StageLog(pub Vec<(String, String)>);

/// Runs the experiment into `out`.
pub fn run(
    experiment: &Experiment,
    out: &Path,
    plugin: &Plugin,
    cancel: &AtomicBool,
    reporter: &dyn Reporter,
) -> Result<StageLog> {
    crate::fsutil::create_private_dir(out)?;
    crate::catalog::restrict_to_owner(out)?;
    let mut log = Vec::new();
    let mut note = |stage: &str, what: String| {
        reporter.note(&format!("{stage}: {what}"));
        log.push((stage.to_string(), what));
    };

    let synth_dir = out.join("synth");
    if let Some(s) = &experiment.synth {
        // synth_truth.csv is written last: its presence means the data is complete.
        if synth_dir.join("synth_truth.csv").exists() {
            note("synth", "done".into());
        } else {
            let config = crate::synth::SynthConfig {
                notes: s.notes,
                seed: s.seed,
                gzip: false,
                long_notes: false,
            };
            crate::synth::write(&synth_dir, &config)?;
            note("synth", format!("{} notes", s.notes));
        }
    }
    let from_synth = |p: &Option<PathBuf>, rel: &str| -> Option<PathBuf> {
        p.clone()
            .or_else(|| experiment.synth.as_ref().map(|_| synth_dir.join(rel)))
    };

    let build_dir = out.join("build");
    if build_dir.join("catalog.duckdb").exists() {
        note("build", "done".into());
    } else {
        let b = &experiment.build;
        let mimic = from_synth(&b.mimic_dir, "").expect("checked when read");
        let mut config = BuildConfig::new(mimic, build_dir.clone());
        config.task_data = from_synth(&b.task_data, "tasks");
        let mut pack = PackSettings::default();
        if let Some(v) = b.vocab_size {
            pack.tokenizer_config.vocab_size = v;
        }
        pack.tokenizer_config.lowercase = b.lowercase;
        if let Some(v) = b.input_length {
            pack.inputs_length = v;
        }
        if let Some(v) = b.validation_fraction {
            pack.validation_fraction = v;
        }
        if let Some(v) = b.seed {
            pack.seed = v;
        }
        pack.tokenizer = b.tokenizer.clone();
        config.pack = Some(pack);
        let summary = crate::build::run_build(&config, reporter)?;
        note(
            "build",
            format!("{} of {} notes kept", summary.kept(), summary.notes_in()),
        );
    }

    let p = &experiment.pretrain;
    let run_dir = out.join("pretrain");
    let resume = run_dir.join("latest").exists();
    let config = PretrainConfig {
        build: Some(build_dir.clone()),
        out: run_dir.clone(),
        resume,
        request: p.clone(),
        world: None,
    };
    let summary = crate::train::pretrain::run(&config, plugin, cancel, reporter)?;
    note(
        "pretrain",
        format!("{} at step {}", summary.status, summary.result["step"]),
    );
    if summary.status != "finished" {
        return Ok(StageLog(log));
    }

    for f in &experiment.finetune {
        let data = from_synth(&f.data, &format!("tasks/{}", f.task.as_str())).ok_or_else(|| {
            Error::Invalid(format!(
                "[[finetune]] {} needs data, or add a [synth] section",
                f.task.as_str()
            ))
        })?;
        let mut config = FinetuneConfig::new(f.task, data, run_dir.clone());
        config.fractions = f.fractions.clone();
        config.seeds = f.seeds.clone();
        config.epochs = f.epochs;
        if let Some(v) = f.batch_size {
            config.run.batch_size = v;
        }
        if let Some(v) = f.effective_batch {
            config.effective_batch = v;
        }
        if let Some(v) = f.lr {
            config.lr = v;
        }
        if let Some(v) = &f.device {
            config.run.device = v.clone();
        }
        if let Some(v) = f.threads {
            config.run.threads = v;
        }
        config.run.max_new_tokens = f.max_new_tokens;
        let runs = crate::train::finetune::run(&config, plugin, cancel, reporter)?;
        let finished = runs.iter().filter(|r| r.status == "finished").count();
        note(
            f.task.as_str(),
            format!("{finished} of {} runs finished", runs.len()),
        );
        if finished < runs.len() {
            return Ok(StageLog(log));
        }
    }

    let report =
        crate::eval::report::write(&build_dir.join("catalog.duckdb"), &out.join("report"))?;
    note("report", report.markdown.display().to_string());
    Ok(StageLog(log))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> Experiment {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/experiments")
            .join(name);
        Experiment::read(&path).unwrap()
    }

    /// Sequences of 512 tokens per optimizer step.
    fn sequences_per_step(p: &PretrainRequest) -> usize {
        p.batch_size * p.grad_accum
    }

    #[test]
    fn the_paper_files_pretrain_as_the_paper_did() {
        // Clinical-T5-Base: 310K steps of 256 x 512 (about 40B tokens), T5's schedule.
        let base = shipped("paper.toml");
        let p = &base.pretrain;
        assert_eq!((p.model.as_str(), p.init.as_ref()), ("t5-base", None));
        assert_eq!(
            (p.steps, sequences_per_step(p), p.warmup),
            (310_000, 256, 40_000)
        );
        assert_eq!(p.lr, None, "the inverse-sqrt schedule's own peak");
        assert_eq!(p.dropout, Some(0.1));
        assert_eq!(base.build.input_length, Some(512));
        let tokens = p.steps as f64 * sequences_per_step(p) as f64 * 512.0;
        assert!((tokens / 40e9 - 1.0).abs() < 0.02, "{tokens}");

        // Clinical-T5-Large: 780K steps of 49,152 tokens.
        let large = shipped("paper-large.toml");
        let p = &large.pretrain;
        assert_eq!(p.model, "t5-large");
        assert_eq!((p.steps, sequences_per_step(p) * 512), (780_000, 49_152));

        // Continued pretraining: T5-Base's weights and tokenizer, 100K steps of 256 x 512.
        let continued = shipped("paper-continued.toml");
        let p = &continued.pretrain;
        assert!(p.init.as_ref().is_some_and(|i| i.ends_with("t5-base")));
        assert_eq!((p.steps, sequences_per_step(p)), (100_000, 256));
        assert!(
            continued
                .build
                .tokenizer
                .as_ref()
                .is_some_and(|t| t.ends_with("t5-base/tokenizer.json"))
        );

        // All three finetune on the paper's fractions with three seeds.
        for e in [&base, &large, &continued] {
            assert_eq!(e.finetune.len(), 3);
            for f in &e.finetune {
                assert_eq!(f.fractions, [0.01, 0.05, 0.1, 0.25, 1.0]);
                assert_eq!(f.seeds, [1, 2, 3]);
            }
        }
    }

    #[test]
    fn a_pretrain_section_without_steps_or_with_host_fields_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |pretrain: &str| {
            let path = dir.path().join("e.toml");
            let text = format!("[build]\nmimic_dir = \"m\"\n\n[pretrain]\n{pretrain}\n");
            std::fs::write(&path, text).unwrap();
            Experiment::read(&path).map(|_| ()).unwrap_err().to_string()
        };
        assert!(write("model = \"tiny\"").contains("needs `steps`"));
        assert!(write("steps = 3\nout = \"x\"").contains("cannot set"));
        assert!(write("steps = 3\nbatch_szie = 4").contains("batch_szie"));
    }
}

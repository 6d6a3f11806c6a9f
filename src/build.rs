//! `ehrprep build`, composed from the stages: discover -> ingest -> set rules -> normalize
//! and de-duplicate -> catalog, then the pack stage (tokenizer, shards).
//!
//! The catalog is written under a temporary name and renamed when the build has succeeded,
//! so a killed build never leaves a catalog that looks complete; a leftover temporary file is
//! discarded by the next run, which starts over.

use std::path::{Path, PathBuf};
use std::time::Instant;

use duckdb::Connection;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::catalog::sql::CATALOG;
use crate::catalog::{self, CATALOG_FILE};
use crate::corpus::decide::{self, Decided, normalize_and_decide};
use crate::corpus::discover::{self, Inputs};
use crate::corpus::ingest::{self, FileStats, SCRATCH_DIR};
use crate::corpus::normalize::Deid;
use crate::corpus::overlap::{self, DocSummary, OverlapConfig, TaskIndex};
use crate::corpus::select::{self, Reason, SetRules};
use crate::corpus::stats::BuildStats;
use crate::corpus::task_rows;
use crate::pack::{self, Manifest, PackSettings};
use crate::progress::Reporter;
use crate::{Error, Result, Source};

/// Which corpus recipe to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Recipe {
    /// The paper's recipe (Lehman et al., 2023): near duplicates are recorded, not dropped.
    #[default]
    Paper,
    /// The paper's recipe, and near duplicates are dropped too.
    Strict,
}

/// Everything a build needs to know; the CLI fills it from flags.
#[derive(Debug, Clone, Serialize)]
pub struct BuildConfig {
    #[serde(skip)]
    pub mimic_dir: PathBuf,
    #[serde(skip)]
    pub out: PathBuf,
    pub recipe: Recipe,
    pub deid: Deid,
    pub task_data: Option<PathBuf>,
    pub exclude_subjects: Option<PathBuf>,
    /// Replace a finished build in `out`.
    #[serde(skip)]
    pub force: bool,
    /// Notes normalized per batch; bounds memory (up to three batches are held at once:
    /// one being read, one decided, one appended).
    #[serde(skip)]
    pub batch_notes: usize,
    /// Tokenizer and shards after the corpus; `None` stops at the corpus.
    pub pack: Option<PackSettings>,
    /// Find near duplicates (MinHash) into `dedup_clusters`; `Recipe::Strict` needs it.
    pub near_duplicates: bool,
    pub minhash: crate::corpus::dedup::MinHashConfig,
    /// With task data: drop notes holding a task document's text; `None` skips the check.
    pub task_overlap: Option<OverlapConfig>,
}

impl BuildConfig {
    pub fn new(mimic_dir: PathBuf, out: PathBuf) -> BuildConfig {
        BuildConfig {
            mimic_dir,
            out,
            recipe: Recipe::Paper,
            deid: Deid::Tags,
            task_data: None,
            exclude_subjects: None,
            force: false,
            batch_notes: 8192,
            pack: Some(PackSettings::default()),
            near_duplicates: true,
            minhash: crate::corpus::dedup::MinHashConfig::default(),
            task_overlap: Some(OverlapConfig::default()),
        }
    }
}

/// The result of a successful build.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    pub build_id: String,
    pub catalog: PathBuf,
    pub inputs: Inputs,
    pub files: Vec<FileStats>,
    pub stats: BuildStats,
    pub manifest: Option<Manifest>,
    pub warnings: Vec<String>,
}

impl BuildSummary {
    pub fn kept(&self) -> u64 {
        self.stats.kept()
    }

    pub fn notes_in(&self) -> u64 {
        self.stats.notes_in()
    }
}

/// Runs a whole corpus build into `config.out`.
pub fn run_build(config: &BuildConfig, reporter: &dyn Reporter) -> Result<BuildSummary> {
    let started = Instant::now();
    crate::memory::arena_per_core();
    if config.recipe == Recipe::Strict && !config.near_duplicates {
        return Err(Error::Invalid(
            "--recipe strict drops near duplicates, so it cannot run with --no-near-duplicates"
                .into(),
        ));
    }
    let inputs = discover::discover(&config.mimic_dir)?;
    for line in inputs.describe() {
        reporter.note(&format!("found {line}"));
    }
    let (final_path, partial) = prepare_out(config, reporter)?;
    match build_into(config, &inputs, &partial, started, reporter) {
        Ok((build_id, files, stats, manifest, warnings)) => {
            std::fs::rename(&partial, &final_path).map_err(Error::io(&final_path))?;
            catalog::restrict_to_owner(&final_path)?;
            for w in &warnings {
                reporter.note(&format!("warning: {w}"));
            }
            Ok(BuildSummary {
                build_id,
                catalog: final_path,
                inputs,
                files,
                stats,
                manifest,
                warnings,
            })
        }
        Err(e) => {
            // A failed build leaves nothing behind that could be mistaken for a result.
            let _ = remove_db(&partial);
            let _ = remove_outputs(&config.out);
            Err(e)
        }
    }
}

type Built = (
    String,
    Vec<FileStats>,
    BuildStats,
    Option<Manifest>,
    Vec<String>,
);

/// The build proper, into the temporary catalog at `partial`.
fn build_into(
    config: &BuildConfig,
    inputs: &Inputs,
    partial: &Path,
    started: Instant,
    reporter: &dyn Reporter,
) -> Result<Built> {
    let conn = catalog::open(partial)?;
    catalog::restrict_to_owner(partial)?;
    conn.execute_batch(CATALOG.get("stage"))
        .map_err(Error::catalog("creating staging tables"))?;

    let config_json = serde_json::to_string(config).expect("config serializes");
    let inputs_json = inputs_json(inputs)?;
    let build_id = build_id(&config_json, &inputs_json);
    conn.execute(
        CATALOG.get("insert_build_run"),
        duckdb::params![
            build_id,
            env!("CARGO_PKG_VERSION"),
            config_json,
            inputs_json
        ],
    )
    .map_err(Error::catalog("recording the build"))?;

    let mut stages = Vec::new();
    let mut lap = Instant::now();
    let mut stage_done = |name: &'static str| {
        stages.push((name, lap.elapsed().as_secs_f64()));
        lap = Instant::now();
    };
    let scratch = config.out.join(SCRATCH_DIR);
    let (files, texts) = ingest::ingest(&conn, inputs, &scratch, reporter)?;
    crate::memory::release_free();
    stage_done("ingest");
    let mut warnings = Vec::new();
    let (rules, guard) = set_rules(config, &conn, inputs, &build_id, &mut warnings)?;
    select::apply_set_rules(&conn, rules)?;
    crate::memory::release_free();
    stage_done("select");

    let Decided {
        mut stats,
        roots,
        kept_chars,
    } = normalize_and_decide(
        &conn,
        &texts,
        &decide::Settings {
            deid: config.deid,
            batch_notes: config.batch_notes,
            near_duplicates: config.near_duplicates,
            minhash: config.minhash,
        },
        guard.as_ref(),
        &build_id,
        &scratch,
        reporter,
    )?;
    drop(texts);
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(Error::io(&scratch))?;
    }
    stage_done("normalize");
    // Without near-duplicate detection there are no sketches: no clusters, an empty table.
    let remove = config.recipe == Recipe::Strict;
    let (near, near_chars) =
        crate::corpus::dedup::run(&conn, &build_id, &roots, &kept_chars, remove)?;
    if remove {
        stats.move_notes(Reason::Kept, Reason::NearDuplicate, near, near_chars);
    }
    stats.near_duplicates = near;
    stage_done("dedup");
    let manifest = match &config.pack {
        Some(settings) => Some(pack::run(
            &conn,
            &config.out,
            &build_id,
            settings,
            reporter,
        )?),
        None => None,
    };
    stage_done("pack");
    stats.stage_seconds = stages
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    stats.seconds = started.elapsed().as_secs_f64();

    let stats_json = serde_json::to_string(&stats).expect("stats serialize");
    conn.execute(
        CATALOG.get("finish_build_run"),
        duckdb::params![stats_json, build_id],
    )
    .map_err(Error::catalog("recording the build"))?;
    conn.execute_batch(CATALOG.get("drop_stage"))
        .map_err(Error::catalog("dropping staging tables"))?;
    conn.execute_batch("CHECKPOINT")
        .map_err(Error::catalog("checkpointing"))?;
    drop(conn);
    Ok((build_id, files, stats, manifest, warnings))
}

/// Creates `out` (owner-only) and returns the final and temporary catalog paths, refusing a
/// finished build unless `force` and clearing the leftovers of a killed one.
fn prepare_out(config: &BuildConfig, reporter: &dyn Reporter) -> Result<(PathBuf, PathBuf)> {
    let out = &config.out;
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    catalog::restrict_to_owner(out)?;
    let final_path = out.join(CATALOG_FILE);
    let partial = out.join(format!("{CATALOG_FILE}.partial"));
    if final_path.exists() {
        if !config.force {
            return Err(Error::OutputExists { path: final_path });
        }
        remove_db(&final_path)?;
    }
    if partial.exists() {
        reporter.note("an unfinished build was found in the output folder; starting over");
        remove_db(&partial)?;
    }
    // Tokenizer and shards of the build being replaced, or of a killed one.
    remove_outputs(out)?;
    Ok((final_path, partial))
}

/// Removes `OUT/tokenizer`, `OUT/shards` and the scratch folder.
fn remove_outputs(out: &Path) -> Result<()> {
    for dir in ["tokenizer", "shards", SCRATCH_DIR] {
        let dir = out.join(dir);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
        }
    }
    Ok(())
}

/// Removes a DuckDB file, its write-ahead log and its spill folder (DuckDB's default
/// `temp_directory`, which a killed build leaves behind).
fn remove_db(path: &Path) -> Result<()> {
    let wal = PathBuf::from(format!("{}.wal", path.display()));
    for p in [path, wal.as_path()] {
        if p.exists() {
            std::fs::remove_file(p).map_err(Error::io(p))?;
        }
    }
    let spill = PathBuf::from(format!("{}.tmp", path.display()));
    if spill.is_dir() {
        std::fs::remove_dir_all(&spill).map_err(Error::io(&spill))?;
    }
    Ok(())
}

fn set_rules(
    config: &BuildConfig,
    conn: &Connection,
    inputs: &Inputs,
    build_id: &str,
    warnings: &mut Vec<String>,
) -> Result<(SetRules, Option<TaskIndex>)> {
    let both = inputs.mimic3.is_some() && inputs.mimic4.is_some();
    let has_icu = inputs.mimic3.as_ref().is_some_and(|m| m.icustays.is_some());
    if both && !has_icu {
        warnings.push(
            "ICUSTAYS was not found, so the era_overlap rule is skipped: MIMIC-III radiology and \
             discharge notes that MIMIC-IV-Note also holds stay in the corpus"
                .to_string(),
        );
    }
    let mut guard = None;
    if let Some(dir) = &config.task_data {
        let rows = task_rows::read(conn, dir)?;
        task_rows::stage(conn, &rows)?;
        if let Some(overlap) = config.task_overlap {
            let (index, summaries) = TaskIndex::build(&rows.docs, config.deid, overlap);
            write_task_documents(conn, build_id, &summaries)?;
            let short: Vec<&DocSummary> = summaries.iter().filter(|s| !s.guarded).collect();
            if !short.is_empty() {
                let ids: Vec<String> = short
                    .iter()
                    .take(5)
                    .map(|d| format!("{} {}", d.task, d.doc_id))
                    .collect();
                let more = if short.len() > ids.len() { ", ..." } else { "" };
                warnings.push(format!(
                    "{} task documents have under {} {}-word shingles that no other task \
                     document has, too few for the task-text guard to tell their copies from \
                     notes sharing a phrase, so copies of them are not looked for (see \
                     task_documents): {}{more}",
                    short.len(),
                    overlap::MIN_SHINGLES,
                    overlap.shingle_words,
                    ids.join(", ")
                ));
            }
            guard = (!index.is_empty()).then_some(index);
        }
        if inputs.mimic3.is_none() {
            warnings.push(
                "task data names NOTEEVENTS ROW_IDs, but no MIMIC-III notes are being built, so \
                 no task patient can be found"
                    .to_string(),
            );
        }
        let unmatched = select::unmatched_task_rows(conn)?;
        if unmatched > 0 && inputs.mimic3.is_some() {
            warnings.push(format!(
                "{unmatched} task ROW_IDs are not in NOTEEVENTS; their patients cannot be removed"
            ));
        }
    }
    if let Some(file) = &config.exclude_subjects {
        stage_excluded(conn, file)?;
    }
    let rules = SetRules {
        era_overlap: both && has_icu,
    };
    Ok((rules, guard))
}

/// Records which task documents the task-text guard looks for.
fn write_task_documents(conn: &Connection, build_id: &str, docs: &[DocSummary]) -> Result<()> {
    let doing = || Error::catalog("recording task documents");
    let mut app = conn.appender("task_documents").map_err(doing())?;
    for d in docs {
        app.append_row(duckdb::params![
            build_id,
            d.task,
            d.doc_id,
            d.own_shingles as i64,
            d.guarded
        ])
        .map_err(doing())?;
    }
    app.flush().map_err(doing())
}

/// Reads `--exclude-subjects`: one subject id a line, bare (both releases) or qualified by
/// its release (`mimic-iii:123`, `mimic-iv:10000032`: MIMIC-IV's subject ids are not
/// MIMIC-III's); blank lines and `#` comments skipped.
fn stage_excluded(conn: &Connection, file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file).map_err(Error::io(file))?;
    let mut app = conn
        .appender("stage_excluded")
        .map_err(Error::catalog("staging excluded subjects"))?;
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let bad = || {
            Error::TaskData {
            path: file.to_path_buf(),
            location: format!("line {}", i + 1),
            problem: "expected one subject id per line: an integer, or `mimic-iii:` or `mimic-iv:` and an integer".to_string(),
        }
        };
        let (source, id) = match line.split_once(':') {
            Some((source, id)) => (
                Some(Source::parse(source.trim()).ok_or_else(bad)?),
                id.trim(),
            ),
            None => (None, line),
        };
        let id: i64 = id.parse().map_err(|_| bad())?;
        app.append_row(duckdb::params![source.map(Source::as_str), id])
            .map_err(Error::catalog("staging excluded subjects"))?;
    }
    app.flush()
        .map_err(Error::catalog("staging excluded subjects"))
}

fn inputs_json(inputs: &Inputs) -> Result<String> {
    #[derive(Serialize)]
    struct File<'a> {
        path: &'a Path,
        bytes: u64,
    }
    let mut files = Vec::new();
    let m3 = inputs
        .mimic3
        .iter()
        .flat_map(|m| std::iter::once(&m.noteevents).chain(&m.icustays));
    let m4 = inputs
        .mimic4
        .iter()
        .flat_map(|m| m.discharge.iter().chain(&m.radiology));
    for path in m3.chain(m4) {
        let bytes = std::fs::metadata(path).map_err(Error::io(path))?.len();
        files.push(File { path, bytes });
    }
    Ok(serde_json::to_string(&files).expect("inputs serialize"))
}

/// A build id that depends only on what was built and how, so two identical builds agree.
fn build_id(config_json: &str, inputs_json: &str) -> String {
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION"));
    h.update([0]);
    h.update(config_json);
    h.update([0]);
    h.update(inputs_json);
    let digest = h.finalize();
    crate::fsutil::hex(&digest[..8])
}

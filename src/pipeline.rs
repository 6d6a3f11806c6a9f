//! One corpus build, composed from the stages: discover -> ingest -> set rules -> normalize
//! and de-duplicate -> catalog.
//!
//! The catalog is written under a temporary name and renamed when the build has succeeded,
//! so a killed build never leaves a catalog that looks complete; a leftover temporary file is
//! discarded by the next run, which starts over.

use foldhash::{HashSet, HashSetExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take;

use duckdb::Connection;
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::catalog::{self, CATALOG_FILE};
use crate::dedup::{Sketch, SketchSpill};
use crate::discover::{self, Inputs};
use crate::ingest::{self, FileStats, NoteText};
use crate::normalize::{Deid, normalize};
use crate::pack::{self, Manifest, PackSettings};
use crate::progress::Reporter;
use crate::reread::Reread;
use crate::select::{self, Reason, SetRules};
use crate::sql::{CATALOG, SELECT_PAPER};
use crate::stats::BuildStats;
use crate::{Error, Result, Source, tasks};

/// Ranges of notes (`--batch-notes`, 8,192 by default) appended between appender flushes.
/// DuckDB's appender otherwise buffers 204,800 rows (about 90 MB of synthetic notes'
/// text); flushing after every range saved a little more memory for about 10% more time.
const FLUSH_RANGES: usize = 4;

/// Decompressed copies of the inputs live here while they are read; never left behind.
const SCRATCH_DIR: &str = "ingest.partial";

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
    pub minhash: crate::dedup::MinHashConfig,
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
            minhash: crate::dedup::MinHashConfig::default(),
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
    let rules = set_rules(config, &conn, inputs, &mut warnings)?;
    select::apply_set_rules(&conn, rules)?;
    crate::memory::release_free();
    stage_done("select");

    let Decided {
        mut stats,
        roots,
        kept_chars,
    } = normalize_and_decide(&conn, &texts, config, &build_id, &scratch, reporter)?;
    drop(texts);
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(Error::io(&scratch))?;
    }
    stage_done("normalize");
    // Without near-duplicate detection there are no sketches: no clusters, an empty table.
    let remove = config.recipe == Recipe::Strict;
    let (near, near_chars) = crate::dedup::run(&conn, &build_id, &roots, &kept_chars, remove)?;
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
    warnings: &mut Vec<String>,
) -> Result<SetRules> {
    let both = inputs.mimic3.is_some() && inputs.mimic4.is_some();
    let has_icu = inputs.mimic3.as_ref().is_some_and(|m| m.icustays.is_some());
    if both && !has_icu {
        warnings.push(
            "ICUSTAYS was not found, so the era_overlap rule is skipped: MIMIC-III radiology and \
             discharge notes that MIMIC-IV-Note also holds stay in the corpus"
                .to_string(),
        );
    }
    if let Some(dir) = &config.task_data {
        let rows = tasks::task_rows(conn, dir)?;
        tasks::stage(conn, &rows)?;
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
    Ok(SetRules {
        era_overlap: both && has_icu,
    })
}

/// Reads `--exclude-subjects`: one subject id a line; blank lines and `#` comments skipped.
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
        let id: i64 = line.parse().map_err(|_| Error::TaskData {
            path: file.to_path_buf(),
            location: format!("line {}", i + 1),
            problem: "expected one subject id (an integer) per line".to_string(),
        })?;
        app.append_row([id])
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
    crate::tokenizer::hex(&digest[..8])
}

/// A note after normalization: its text, a digest of it and its characters.
struct Normalized {
    text: String,
    digest: u128,
    chars: u64,
}

/// What normalization hands on: the statistics, and per kept note (by `seq`) its
/// near-duplicate cluster root and its characters (both empty without near-duplicate
/// detection).
struct Decided {
    stats: BuildStats,
    roots: Vec<usize>,
    kept_chars: Vec<u64>,
}

/// Normalizes the notes still in after the set rules, batch by batch in build order, and
/// decides each note's reason. The notes' metadata and reasons stream once from the staging
/// tables and their text from a second, streamed read of each file (`texts`), so the raw
/// notes are never held in DuckDB; each range's kept notes are appended to `corpus` as
/// Arrow batches straight away, so the text is copied into the catalog once.
/// `note_decisions` is written at the end by SQL from the staged metadata, with the
/// reasons decided here for the few notes normalization drops.
fn normalize_and_decide(
    conn: &Connection,
    texts: &[NoteText],
    config: &BuildConfig,
    build_id: &str,
    scratch: &Path,
    reporter: &dyn Reporter,
) -> Result<Decided> {
    let total: u64 = texts.iter().map(|t| t.records).sum();
    reporter.start("normalizing", total, "notes");
    let mut stats = BuildStats::default();
    // Near-duplicate detection writes the kept notes' sketches to the scratch folder.
    let mut sketches = if config.near_duplicates {
        crate::fsutil::create_private_dir(scratch)?;
        Some(SketchSpill::create(
            &config.minhash,
            &scratch.join("sketches"),
        )?)
    } else {
        None
    };
    let mut kept_chars = Vec::new();
    let mut seen: HashSet<u128> = HashSet::new();
    let mut late = Vec::new();
    let batch = config.batch_notes.max(1) as i64;
    // Two connections, as a connection runs one query at a time: this one streams the
    // staged metadata (temporary tables are its own), and `writer` appends the corpus. The
    // text comes from a second read of each file (`reread`).
    let writer = conn
        .try_clone()
        .map_err(Error::catalog("writing the corpus"))?;
    writer
        .execute_batch(CATALOG.get("settings"))
        .map_err(Error::catalog("writing the corpus"))?;
    let mut text = TextReader::new(texts);
    let mut rows_stmt = conn
        .prepare(SELECT_PAPER.get("note_rows"))
        .map_err(Error::catalog("reading notes"))?;
    let mut rows = Runs::new(Box::new(
        rows_stmt
            .stream_arrow([])
            .map_err(Error::catalog("reading notes"))?
            .map(|b| b.map_err(Error::catalog("reading notes"))),
    ));
    // Ranges of at most `batch` notes that never cross the end of a file.
    let ranges: Vec<(i64, i64)> = texts
        .iter()
        .flat_map(|t| {
            let end = t.first + t.records as i64;
            (t.first..end)
                .step_by(batch as usize)
                .map(move |lo| (lo, (lo + batch).min(end)))
        })
        .collect();
    // One transaction for the corpus: the appender flushes every FLUSH_RANGES ranges into
    // it (bounding what it buffers) and DuckDB writes the full row groups straight to the
    // file; nothing is committed until every note is decided.
    writer
        .execute_batch(SELECT_PAPER.get("begin_writing"))
        .map_err(Error::catalog("writing the corpus"))?;
    // A pipeline of three: a writer thread appends decided ranges, a thread normalizes and
    // decides one range (in parallel), and this thread reads the next.
    let mut state = DecideState {
        config,
        stats: &mut stats,
        sketches: &mut sketches,
        kept_chars: &mut kept_chars,
        seen: &mut seen,
        late: &mut late,
        seq: 0,
    };
    // Decided ranges, then `Commit` once every note is decided and both reads ended
    // together; at most three ranges wait.
    let (to_writer, decided_ranges) = std::sync::mpsc::sync_channel(3);
    let threshold = config.minhash.threshold;
    let (written, finished) = std::thread::scope(|s| {
        let writer = s.spawn(move || write_corpus(writer, decided_ranges));
        // The clusters, or `None` if the writer stopped taking ranges (its error is the
        // one reported).
        let finished = (|| -> Result<Option<Vec<usize>>> {
            let mut read = |(lo, hi): (i64, i64)| -> Result<Vec<RecordBatch>> {
                let notes = rows.take((hi - lo) as usize)?;
                let mut expected = lo..;
                let in_order = notes.iter().all(|b| {
                    let ords = b.column(0).as_any().downcast_ref::<Int64Array>();
                    ords.is_some_and(|o| o.values().iter().all(|&v| Some(v) == expected.next()))
                });
                if !in_order || expected.next() != Some(hi) {
                    return Err(Error::Catalog {
                        doing: "reading notes".into(),
                        message: format!(
                            "staged notes {lo}..{hi} did not come back in build order"
                        ),
                    });
                }
                let text = text.take((hi - lo) as usize, &notes)?;
                with_text(notes, &text)
            };
            let mut current = match ranges.first() {
                Some(&range) => read(range)?,
                None => Vec::new(),
            };
            let followers = ranges.iter().skip(1).copied().map(Some);
            for following in followers.chain([None]) {
                // One scoped thread per range: ranges are thousands of notes.
                let (decided, next) = std::thread::scope(|s| {
                    let worker = s.spawn(|| {
                        current
                            .iter()
                            .map(|notes| state.decide(notes))
                            .collect::<Result<Vec<KeptBatch>>>()
                    });
                    let next = following.map(&mut read);
                    (crate::join(worker), next)
                });
                // Errors in the sequential order: decide this range, read the next.
                let decided = decided?;
                let notes: u64 = decided.iter().map(|d| d.note_count).sum();
                if to_writer.send(ToWriter::Range(decided)).is_err() {
                    return Ok(None);
                }
                reporter.advance(notes);
                current = next.transpose()?.unwrap_or_default();
            }
            // Nothing is committed unless both reads ended together.
            text.finish()?;
            if !rows.take(1)?.is_empty() {
                return Err(Error::Catalog {
                    doing: "reading notes".into(),
                    message: "more staged notes than the files hold".into(),
                });
            }
            drop(rows);
            if to_writer.send(ToWriter::Commit).is_err() {
                return Ok(None);
            }
            // From here three things run side by side: the writer's last flush and commit
            // (DuckDB compresses the corpus's last row groups), the clusters, found from
            // the sketches alone, and `note_decisions`, written here from the staged
            // metadata and the reasons decided above.
            let clusters = state
                .sketches
                .take()
                .map(|sketches| s.spawn(move || sketches.clusters(threshold)));
            let late = std::mem::take(state.late);
            // DuckDB's threads are back for note_decisions, whose row groups it compresses
            // in parallel.
            let decisions = conn
                .execute_batch(SELECT_PAPER.get("done_writing"))
                .map_err(Error::catalog("writing decisions"))
                .and_then(|()| write_decisions(conn, build_id, &late));
            let roots = clusters.map(crate::join).transpose();
            decisions?;
            Ok(Some(roots?.unwrap_or_default()))
        })();
        drop(to_writer);
        (crate::join(writer), finished)
    });
    written?;
    let roots = finished?.ok_or_else(|| Error::Catalog {
        doing: "writing the corpus".into(),
        message: "the corpus writer stopped early".into(),
    })?;
    reporter.finish();
    Ok(Decided {
        stats,
        roots,
        kept_chars,
    })
}

/// What the writer thread is sent.
enum ToWriter {
    /// A decided range's kept notes.
    Range(Vec<KeptBatch>),
    /// Every note is decided and both reads ended together: flush and commit.
    Commit,
}

/// The writer thread: appends each decided range to `corpus`, and flushes and commits on
/// `Commit`. If the ranges stop without it, the transaction rolls back with `writer`.
fn write_corpus(writer: Connection, ranges: std::sync::mpsc::Receiver<ToWriter>) -> Result<()> {
    let mut kept = writer
        .appender("corpus")
        .map_err(Error::catalog("writing the corpus"))?;
    let mut unflushed = 0;
    while let Ok(message) = ranges.recv() {
        let range = match message {
            ToWriter::Range(range) => range,
            ToWriter::Commit => {
                kept.flush().map_err(Error::catalog("writing the corpus"))?;
                drop(kept);
                return writer
                    .execute_batch(SELECT_PAPER.get("finish_writing"))
                    .map_err(Error::catalog("writing the corpus"));
            }
        };
        for batch in range {
            kept.append_record_batch(batch.kept)
                .map_err(Error::catalog("writing the corpus"))?;
        }
        unflushed += 1;
        if unflushed == FLUSH_RANGES {
            unflushed = 0;
            kept.flush().map_err(Error::catalog("writing the corpus"))?;
        }
    }
    Ok(())
}

/// Writes `note_decisions` in build order: the set rules' reasons from the staged metadata,
/// then `late`, the reasons decided on normalized text (every other note was kept).
fn write_decisions(conn: &Connection, build_id: &str, late: &[(i64, Reason)]) -> Result<()> {
    let doing = || Error::catalog("writing decisions");
    conn.execute_batch(SELECT_PAPER.get("late_reasons"))
        .map_err(doing())?;
    {
        let ords: Int64Array = late.iter().map(|&(ord, _)| ord).collect();
        let reasons: StringArray = late.iter().map(|&(_, r)| Some(r.as_str())).collect();
        let batch = RecordBatch::try_from_iter([
            ("ord", Arc::new(ords) as ArrayRef),
            ("reason", Arc::new(reasons) as ArrayRef),
        ])
        .expect("columns of one length");
        let mut appender = conn.appender("stage_late").map_err(doing())?;
        appender.append_record_batch(batch).map_err(doing())?;
    }
    conn.execute_batch(SELECT_PAPER.get("apply_late_reasons"))
        .map_err(doing())?;
    conn.execute(SELECT_PAPER.get("insert_decisions"), [build_id])
        .map_err(doing())?;
    Ok(())
}

/// What deciding needs across ranges of notes; lent to the decision thread.
struct DecideState<'a> {
    config: &'a BuildConfig,
    stats: &'a mut BuildStats,
    /// The kept notes' MinHash sketches, with near-duplicate detection.
    sketches: &'a mut Option<SketchSpill>,
    /// Characters of each sketched note, for the near duplicates' count.
    kept_chars: &'a mut Vec<u64>,
    seen: &'a mut HashSet<u128>,
    /// The notes dropped here (empty, exact duplicates), by `ord`, in build order.
    late: &'a mut Vec<(i64, Reason)>,
    /// The next kept note's `seq`.
    seq: i64,
}

/// One Arrow batch's outcome, ready to append: `corpus` rows for the kept notes.
struct KeptBatch {
    note_count: u64,
    kept: RecordBatch,
}

impl DecideState<'_> {
    /// Normalizes one batch of notes in parallel, then decides each note's reason in build
    /// order and sketches the kept notes.
    fn decide(&mut self, notes: &RecordBatch) -> Result<KeptBatch> {
        let config = self.config;
        let notes = NoteBatch::new(notes)?;
        // Each note's raw characters (for the statistics), and its normalized form if no
        // set rule dropped it.
        let normalized: Vec<(u64, Option<Normalized>)> = (0..notes.len())
            .into_par_iter()
            .map(|i| {
                let raw = notes.text(i);
                let norm = notes.still_in(i).then(|| {
                    let text = normalize(raw, notes.source(i), config.deid);
                    Normalized {
                        digest: digest128(&text),
                        chars: text.chars().count() as u64,
                        text,
                    }
                });
                (raw.chars().count() as u64, norm)
            })
            .collect();

        let (mut kept_seq, mut kept_rows, mut kept_text) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (raw_chars, norm)) in normalized.into_iter().enumerate() {
            let reason = match (notes.reason(i), &norm) {
                (Some(r), _) => r,
                (None, Some(n)) if n.text.is_empty() => Reason::Empty,
                (None, Some(n)) if !self.seen.insert(n.digest) => Reason::ExactDuplicate,
                (None, Some(_)) => Reason::Kept,
                (None, None) => Reason::Empty,
            };
            self.stats.chars_in += raw_chars;
            match norm {
                Some(n) if reason == Reason::Kept => {
                    self.stats.add(reason, n.chars);
                    if config.near_duplicates {
                        self.kept_chars.push(n.chars);
                    }
                    kept_seq.push(self.seq);
                    kept_rows.push(i as u32);
                    kept_text.push(n.text);
                    self.seq += 1;
                }
                _ => self.stats.add(reason, raw_chars),
            }
            if matches!(reason, Reason::Empty | Reason::ExactDuplicate) {
                self.late.push((notes.ord(i), reason));
            }
        }
        // MinHash sketches of the kept notes, in parallel while their text is in memory,
        // so de-duplication never reads the corpus back.
        if let Some(spill) = self.sketches.as_mut() {
            let kept_sketches: Vec<Sketch> = kept_text
                .par_iter()
                .map(|text| config.minhash.sketch(text))
                .collect();
            kept_sketches.iter().try_for_each(|s| spill.push(s))?;
        }
        let [source, note_id, subject_id, hadm_id, category] = notes.metadata();
        let kept_rows = UInt32Array::from(kept_rows);
        let kept_meta = |a: &ArrayRef| take(a, &kept_rows, None).expect("rows of this batch");
        // Column order as in sql/catalog.sql.
        Ok(KeptBatch {
            note_count: notes.len() as u64,
            kept: RecordBatch::try_from_iter([
                ("seq", Arc::new(Int64Array::from(kept_seq)) as ArrayRef),
                ("note_id", kept_meta(note_id)),
                ("source", kept_meta(source)),
                ("subject_id", kept_meta(subject_id)),
                ("hadm_id", kept_meta(hadm_id)),
                ("category", kept_meta(category)),
                ("text", Arc::new(StringArray::from(kept_text)) as ArrayRef),
            ])
            .expect("columns of one length"),
        })
    }
}

/// Regroups a stream of record batches into runs of a given number of rows, without copying.
struct Runs<'a> {
    batches: Box<dyn Iterator<Item = Result<RecordBatch>> + 'a>,
    /// What the last batch had beyond the last run.
    pending: Option<RecordBatch>,
}

impl<'a> Runs<'a> {
    fn new(batches: Box<dyn Iterator<Item = Result<RecordBatch>> + 'a>) -> Self {
        Runs {
            batches,
            pending: None,
        }
    }

    /// The next `n` rows, as slices of the stream's batches; fewer only where it ends.
    fn take(&mut self, n: usize) -> Result<Vec<RecordBatch>> {
        let mut run = Vec::new();
        let mut got = 0;
        while got < n {
            let batch = match self.pending.take() {
                Some(batch) => batch,
                None => match self.batches.next() {
                    Some(batch) => batch?,
                    None => break,
                },
            };
            let want = n - got;
            if batch.num_rows() > want {
                self.pending = Some(batch.slice(want, batch.num_rows() - want));
                run.push(batch.slice(0, want));
                got = n;
            } else if batch.num_rows() > 0 {
                got += batch.num_rows();
                run.push(batch);
            }
        }
        Ok(run)
    }
}

/// Streams the text of the staged files, in order, from their second read.
struct TextReader<'a> {
    files: std::slice::Iter<'a, NoteText>,
    /// The file being read.
    current: Option<(&'a NoteText, Reread)>,
    /// One record's raw id and text.
    id: Vec<u8>,
    text: Vec<u8>,
}

impl<'a> TextReader<'a> {
    fn new(texts: &'a [NoteText]) -> Self {
        TextReader {
            files: texts.iter(),
            current: None,
            id: Vec::new(),
            text: Vec::new(),
        }
    }

    /// The next `n` notes' text, checked to be the same notes as the staged rows `notes`
    /// (the same note ids, in the same order); ranges never cross a file's end.
    fn take(&mut self, n: usize, notes: &[RecordBatch]) -> Result<StringArray> {
        if self
            .current
            .as_ref()
            .is_none_or(|(file, r)| r.records() == file.records)
        {
            self.finish()?;
            let file = self.files.next().ok_or_else(|| changed(None))?;
            self.current = Some((file, file.reread()?));
        }
        let (file, reread) = self.current.as_mut().expect("a file is being read");
        // note_rows column 3 is the staged note id.
        let staged = notes
            .iter()
            .map(|b| b.column(3).as_any().downcast_ref::<StringArray>())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| changed(Some(file)))?;
        // Room for notes of 512 bytes; longer ones grow it.
        let mut out = arrow::array::StringBuilder::with_capacity(n, n * 512);
        let mut ids = staged.iter().flat_map(|c| c.iter());
        for _ in 0..n {
            let staged_id = ids.next().flatten();
            if reread.records() == file.records
                || !reread.next_record(&mut self.id, &mut self.text)?
                || !staged_id.is_some_and(|s| file.same_id(&self.id, s))
            {
                return Err(changed(Some(file)));
            }
            let text =
                std::str::from_utf8(&self.text).map_err(|_| file.not_utf8(reread.records()))?;
            out.append_value(text);
        }
        if ids.next().is_some() {
            return Err(changed(Some(file)));
        }
        Ok(out.finish())
    }

    /// Checks that the file being read has no more notes than were staged, and that it
    /// was not rewritten since the first read began (same size and modification time).
    fn finish(&mut self) -> Result<()> {
        if let Some((file, mut reread)) = self.current.take()
            && (reread.records() != file.records
                || reread.next_record(&mut self.id, &mut self.text)?
                || !file.unchanged()?)
        {
            return Err(changed(Some(file)));
        }
        Ok(())
    }
}

/// A second read of an input that disagrees with the first.
fn changed(file: Option<&NoteText>) -> Error {
    Error::Invalid(match file {
        Some(f) => format!(
            "`{}` changed while it was being read: its notes no longer match the first read",
            f.path().display()
        ),
        None => "an input file changed while it was being read".to_string(),
    })
}

/// Adds the text of the same range, in order, as the last column of `note_rows` batches.
fn with_text(notes: Vec<RecordBatch>, text: &StringArray) -> Result<Vec<RecordBatch>> {
    let staged: usize = notes.iter().map(RecordBatch::num_rows).sum();
    if staged != text.len() {
        return Err(Error::Catalog {
            doing: "reading notes".into(),
            message: format!("{staged} staged notes for {} texts", text.len()),
        });
    }
    let mut at = 0;
    let mut out = Vec::with_capacity(notes.len());
    for batch in notes {
        let n = batch.num_rows();
        let part = text.slice(at, n);
        at += n;
        let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            "text",
            arrow::datatypes::DataType::Utf8,
            false,
        )));
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(part));
        out.push(
            RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
                .map_err(|e| Error::Catalog {
                    doing: "reading notes".into(),
                    message: e.to_string(),
                })?,
        );
    }
    Ok(out)
}

/// The columns of `note_rows` batches, with the text last.
struct NoteBatch<'a> {
    ord: &'a Int64Array,
    source: &'a StringArray,
    reason: &'a StringArray,
    text: &'a StringArray,
    /// source, note_id, subject_id, hadm_id, category: repeated in the catalog's tables.
    metadata: [&'a ArrayRef; 5],
}

impl<'a> NoteBatch<'a> {
    fn new(batch: &'a RecordBatch) -> Result<NoteBatch<'a>> {
        fn column<T: 'static>(batch: &RecordBatch, i: usize) -> Result<&T> {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<T>()
                .ok_or_else(|| Error::Catalog {
                    doing: "reading notes".into(),
                    message: format!(
                        "column {i} of a note batch has type {}",
                        batch.column(i).data_type()
                    ),
                })
        }
        Ok(NoteBatch {
            ord: column(batch, 0)?,
            source: column(batch, 1)?,
            reason: column(batch, 2)?,
            metadata: {
                column::<StringArray>(batch, 3)?;
                column::<Int64Array>(batch, 4)?;
                column::<Int64Array>(batch, 5)?;
                column::<StringArray>(batch, 6)?;
                [1, 3, 4, 5, 6].map(|i| batch.column(i))
            },
            text: column(batch, 7)?,
        })
    }

    fn len(&self) -> usize {
        self.text.len()
    }

    fn metadata(&self) -> [&'a ArrayRef; 5] {
        self.metadata
    }

    /// A note's place in the build.
    fn ord(&self, i: usize) -> i64 {
        self.ord.value(i)
    }

    fn source(&self, i: usize) -> Source {
        Source::parse(self.source.value(i)).unwrap_or(Source::MimicIii)
    }

    /// The reason a set rule gave, if any.
    fn reason(&self, i: usize) -> Option<Reason> {
        (!self.reason.is_null(i))
            .then(|| Reason::parse(self.reason.value(i)))
            .flatten()
    }

    /// Whether no set rule dropped the note.
    fn still_in(&self, i: usize) -> bool {
        self.reason.is_null(i)
    }

    /// The raw text of a note.
    fn text(&self, i: usize) -> &str {
        self.text.value(i)
    }
}

/// The exact-duplicate key: a 128-bit xxh3 of the normalized text. It never leaves the
/// build, so it need not be cryptographic, only wide enough that millions of notes do not
/// collide (about 10^-25 for MIMIC's 4.7 million); SHA-256 took three times as long.
fn digest128(text: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::Mimic3Files;
    use crate::progress::Silent;

    /// A NOTEEVENTS file of (ROW_ID, TEXT) records.
    fn noteevents(notes: &[(u32, &str)]) -> String {
        let mut csv = crate::ingest::MIMIC3_COLUMNS.join(",");
        for (id, text) in notes {
            csv.push_str(&format!(
                "\n{id},{id},,2150-01-01,,,\"Nursing\",\"Report\",,,\"{text}\""
            ));
        }
        csv + "\n"
    }

    /// How the file is rewritten between the two reads.
    enum Rewrite {
        /// Not at all.
        No,
        /// Written again, as an editor would.
        Edit,
        /// Written again with its old modification time, as `cp -p` would.
        KeepTime,
        /// These bytes, with the old modification time.
        KeepTimeBytes(Vec<u8>),
    }

    /// Stages `notes` as a NOTEEVENTS file (written an hour ago), rewrites it as `then`, and
    /// normalizes.
    fn read_twice(
        notes: &[(u32, &str)],
        then: &[(u32, &str)],
        rewrite: Rewrite,
    ) -> Result<Decided> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("NOTEEVENTS.csv");
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let write = |bytes: &[u8]| {
            std::fs::write(&file, bytes).unwrap();
            std::fs::File::options().write(true).open(&file).unwrap()
        };
        write(noteevents(notes).as_bytes())
            .set_modified(hour_ago)
            .unwrap();
        let conn = catalog::open_in_memory().unwrap();
        conn.execute_batch(CATALOG.get("stage")).unwrap();
        let inputs = Inputs {
            mimic3: Some(Mimic3Files {
                noteevents: file.clone(),
                icustays: None,
            }),
            mimic4: None,
        };
        let scratch = dir.path().join(SCRATCH_DIR);
        let (_, texts) = ingest::ingest(&conn, &inputs, &scratch, &Silent).unwrap();
        select::apply_set_rules(&conn, SetRules { era_overlap: false }).unwrap();
        match rewrite {
            Rewrite::No => {}
            Rewrite::Edit => drop(write(noteevents(then).as_bytes())),
            Rewrite::KeepTime => write(noteevents(then).as_bytes())
                .set_modified(hour_ago)
                .unwrap(),
            Rewrite::KeepTimeBytes(bytes) => write(&bytes).set_modified(hour_ago).unwrap(),
        }
        let mut config = BuildConfig::new(dir.path().to_path_buf(), dir.path().join("out"));
        config.batch_notes = 2;
        let decided = normalize_and_decide(&conn, &texts, &config, "build", &scratch, &Silent);
        let rows = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        // A failed stage commits nothing, whatever the writer had appended or flushed.
        if decided.is_err() {
            assert_eq!((rows("note_decisions"), rows("corpus")), (0, 0));
        }
        decided
    }

    #[test]
    fn runs_regroup_a_stream_into_runs_of_the_asked_size() {
        let mut next = 0i64;
        let batches: Vec<Result<RecordBatch>> = [3, 0, 5, 2]
            .into_iter()
            .map(|n| {
                let values: Vec<i64> = (next..next + n).collect();
                next += n;
                let column = Arc::new(Int64Array::from(values)) as ArrayRef;
                Ok(RecordBatch::try_from_iter([("v", column)]).unwrap())
            })
            .collect();
        let mut runs = Runs::new(Box::new(batches.into_iter()));
        let values = |run: Vec<RecordBatch>| -> Vec<i64> {
            run.iter()
                .flat_map(|b| {
                    let c = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                    c.values().to_vec()
                })
                .collect()
        };
        assert_eq!(values(runs.take(4).unwrap()), [0, 1, 2, 3]);
        assert_eq!(values(runs.take(4).unwrap()), [4, 5, 6, 7]);
        assert_eq!(values(runs.take(4).unwrap()), [8, 9]);
        assert!(runs.take(1).unwrap().is_empty());
        let failing: Vec<Result<RecordBatch>> = vec![Err(Error::Invalid("broken".into()))];
        assert!(Runs::new(Box::new(failing.into_iter())).take(1).is_err());
    }

    #[test]
    fn the_second_read_of_a_file_must_match_the_first() {
        let third = "third: naïve, 98.6°F, e\u{301}";
        let notes = [(1, "first note"), (2, "second"), (3, third)];
        let decided = read_twice(&notes, &notes, Rewrite::No).unwrap();
        assert_eq!(decided.stats.kept(), 3);
        // Characters, not bytes, combining marks included.
        let chars: u64 = notes.iter().map(|n| n.1.chars().count() as u64).sum();
        assert_eq!(decided.stats.chars_in, chars);
        let cases = [
            (
                Rewrite::Edit,
                vec![(1, "first note"), (2, "second, EDITED"), (3, third)],
            ),
            // The same size: the modification time tells.
            (
                Rewrite::Edit,
                vec![(1, "first note"), (2, "SECOND"), (3, third)],
            ),
            (Rewrite::Edit, notes.to_vec()),
            // With the old time kept, the notes themselves tell: another note id in the
            // second place, a record fewer, a record more.
            (
                Rewrite::KeepTime,
                vec![(1, "first note"), (5, "second"), (3, third)],
            ),
            (Rewrite::KeepTime, vec![(1, "first note"), (2, "second")]),
            (
                Rewrite::KeepTime,
                vec![(1, "first note"), (2, "second"), (3, third), (4, "fourth")],
            ),
        ];
        for (rewrite, then) in cases {
            let err = read_twice(&notes, &then, rewrite)
                .err()
                .expect("a changed file")
                .to_string();
            assert!(err.contains("NOTEEVENTS.csv"), "{err}");
            assert!(err.contains("changed while it was being read"), "{err}");
            assert!(!err.contains("EDITED") && !err.contains("fourth"), "{err}");
        }
        // Bytes the first read would have refused, with the old time kept: the second read
        // names the file and the record instead of passing them on.
        let same = noteevents(&notes).into_bytes();
        let at = same.windows(6).position(|w| w == b"second").unwrap();
        let mut latin1 = same.clone();
        latin1[at + 3] = 0xE9;
        let mut quote = same.clone();
        quote[at + 3] = b'"';
        for (bytes, says) in [(latin1, "UTF-8"), (quote, "second read")] {
            let err = read_twice(&notes, &[], Rewrite::KeepTimeBytes(bytes))
                .err()
                .expect("a changed file")
                .to_string();
            assert!(err.contains("NOTEEVENTS.csv"), "{err}");
            assert!(err.contains("record 2") && err.contains(says), "{err}");
        }
    }
}

//! Deciding each note on its normalized text, and writing the corpus.
//!
//! Notes still in after the set rules stream through in ranges of `--batch-notes`: the
//! metadata from the staging tables, the text from [`reread`](super::reread). Each range is
//! normalized (and, with task data, looked up in the task-text index) in parallel, then
//! decided in build order (empty, task text overlap, exact duplicate by a 128-bit digest,
//! kept), sketched for near-duplicate detection, and appended to `corpus` by a writer
//! thread; `note_decisions` and `task_overlap` are written by SQL at the end.

use std::path::Path;
use std::sync::Arc;

use foldhash::{HashSet, HashSetExt};

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take;

use duckdb::Connection;
use rayon::prelude::*;

use crate::catalog::sql::{CATALOG, SELECT_PAPER};
use crate::corpus::dedup::{MinHashConfig, Sketch, SketchSpill};
use crate::corpus::ingest::NoteText;
use crate::corpus::normalize::{Deid, normalize};
use crate::corpus::overlap::{Match, TaskIndex};
use crate::corpus::reread::{NoteBatch, Runs, TextReader, with_text};
use crate::corpus::select::Reason;
use crate::corpus::stats::BuildStats;
use crate::progress::Reporter;
use crate::{Error, Result};

/// Ranges of notes (`--batch-notes`, 8,192 by default) appended between appender flushes.
/// DuckDB's appender otherwise buffers 204,800 rows (about 90 MB of synthetic notes'
/// text); flushing after every range saved a little more memory for about 10% more time.
const FLUSH_RANGES: usize = 4;

/// How notes are decided: the build's settings that this step reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) deid: Deid,
    /// Notes normalized per range.
    pub(crate) batch_notes: usize,
    pub(crate) near_duplicates: bool,
    pub(crate) minhash: MinHashConfig,
}

/// A note after normalization: its text, a digest of it, its characters and the task
/// documents it holds.
struct Normalized {
    text: String,
    digest: u128,
    chars: u64,
    overlaps: Vec<Match>,
}

/// What normalization hands on: the statistics, and per kept note (by `seq`) its
/// near-duplicate cluster root and its characters (both empty without near-duplicate
/// detection).
pub(crate) struct Decided {
    pub(crate) stats: BuildStats,
    pub(crate) roots: Vec<usize>,
    pub(crate) kept_chars: Vec<u64>,
}

/// Normalizes the notes still in after the set rules, batch by batch in build order, and
/// decides each note's reason. The notes' metadata and reasons stream once from the staging
/// tables and their text from a second, streamed read of each file (`texts`), so the raw
/// notes are never held in DuckDB; each range's kept notes are appended to `corpus` as
/// Arrow batches straight away, so the text is copied into the catalog once.
/// `note_decisions` is written at the end by SQL from the staged metadata, with the
/// reasons decided here for the few notes normalization drops; `task_overlap` from the
/// matches `guard` found.
#[allow(clippy::too_many_arguments)]
pub(crate) fn normalize_and_decide(
    conn: &Connection,
    texts: &[NoteText],
    config: &Settings,
    guard: Option<&TaskIndex>,
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
    let mut overlaps = Vec::new();
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
        guard,
        overlaps: &mut overlaps,
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
            let overlaps = std::mem::take(state.overlaps);
            // DuckDB's threads are back for note_decisions, whose row groups it compresses
            // in parallel.
            let decisions = conn
                .execute_batch(SELECT_PAPER.get("done_writing"))
                .map_err(Error::catalog("writing decisions"))
                .and_then(|()| write_decisions(conn, build_id, &late))
                .and_then(|()| write_overlaps(conn, build_id, guard, &overlaps));
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

/// Writes `task_overlap`: each removed note's matches, by `ord`, in build order.
fn write_overlaps(
    conn: &Connection,
    build_id: &str,
    guard: Option<&TaskIndex>,
    overlaps: &[(i64, Match)],
) -> Result<()> {
    let Some(guard) = guard else {
        return Ok(());
    };
    let doing = || Error::catalog("writing task overlaps");
    conn.execute_batch(SELECT_PAPER.get("stage_overlaps"))
        .map_err(doing())?;
    {
        let docs = guard.docs();
        let ords: Int64Array = overlaps.iter().map(|&(ord, _)| ord).collect();
        let tasks: StringArray = overlaps
            .iter()
            .map(|(_, m)| Some(docs[m.doc as usize].task))
            .collect();
        let ids: StringArray = overlaps
            .iter()
            .map(|(_, m)| Some(docs[m.doc as usize].doc_id.as_str()))
            .collect();
        let containment: arrow::array::Float64Array =
            overlaps.iter().map(|(_, m)| m.containment).collect();
        let batch = RecordBatch::try_from_iter([
            ("ord", Arc::new(ords) as ArrayRef),
            ("task", Arc::new(tasks) as ArrayRef),
            ("task_doc_id", Arc::new(ids) as ArrayRef),
            ("containment", Arc::new(containment) as ArrayRef),
        ])
        .expect("columns of one length");
        let mut appender = conn.appender("stage_overlaps").map_err(doing())?;
        appender.append_record_batch(batch).map_err(doing())?;
    }
    conn.execute(SELECT_PAPER.get("insert_overlaps"), [build_id])
        .map_err(doing())?;
    Ok(())
}

/// What deciding needs across ranges of notes; lent to the decision thread.
struct DecideState<'a> {
    config: &'a Settings,
    /// The task documents to look for, given task data.
    guard: Option<&'a TaskIndex>,
    /// Each note removed for holding task text, by `ord`, with what it holds.
    overlaps: &'a mut Vec<(i64, Match)>,
    stats: &'a mut BuildStats,
    /// The kept notes' MinHash sketches, with near-duplicate detection.
    sketches: &'a mut Option<SketchSpill>,
    /// Characters of each sketched note, for the near duplicates' count.
    kept_chars: &'a mut Vec<u64>,
    seen: &'a mut HashSet<u128>,
    /// The notes dropped here (empty, task text, exact duplicates), by `ord`, in build
    /// order.
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
        let (config, guard) = (self.config, self.guard);
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
                        overlaps: guard.map(|g| g.matches(&text)).unwrap_or_default(),
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
                (None, Some(n)) if !n.overlaps.is_empty() => Reason::TaskTextOverlap,
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
                Some(n) if reason == Reason::TaskTextOverlap => {
                    self.stats.add(reason, raw_chars);
                    let ord = notes.ord(i);
                    self.overlaps
                        .extend(n.overlaps.into_iter().map(|m| (ord, m)));
                }
                _ => self.stats.add(reason, raw_chars),
            }
            if matches!(
                reason,
                Reason::Empty | Reason::TaskTextOverlap | Reason::ExactDuplicate
            ) {
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

/// The exact-duplicate key: a 128-bit xxh3 of the normalized text. It never leaves the
/// build, so it need not be cryptographic, only wide enough that millions of notes do not
/// collide (about 10^-25 for MIMIC's 4.7 million); SHA-256 took three times as long.
fn digest128(text: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog;
    use crate::corpus::discover::{Inputs, Mimic3Files};
    use crate::corpus::ingest::SCRATCH_DIR;
    use crate::corpus::select::SetRules;
    use crate::corpus::{ingest, select};
    use crate::progress::Silent;

    /// A NOTEEVENTS file of (ROW_ID, TEXT) records.
    fn noteevents(notes: &[(u32, &str)]) -> String {
        let mut csv = crate::corpus::ingest::MIMIC3_COLUMNS.join(",");
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
        let settings = Settings {
            deid: Deid::Tags,
            batch_notes: 2,
            near_duplicates: true,
            minhash: MinHashConfig::default(),
        };
        let decided =
            normalize_and_decide(&conn, &texts, &settings, None, "build", &scratch, &Silent);
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

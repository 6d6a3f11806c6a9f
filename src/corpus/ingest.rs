//! Loading the MIMIC note files into the catalog's staging tables with DuckDB.
//!
//! Headers are checked here, before DuckDB reads a byte of data, so a renamed column is
//! reported as such. Data is read as text and then checked field by field in SQL, so a bad
//! value is reported by record and field. DuckDB's own CSV errors quote the offending record
//! (note text), so they are translated into a short description and a line number and never
//! passed on.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};

use duckdb::Connection;
use regex::Regex;
use serde::Serialize;

use crate::catalog::sql::INGEST;
use crate::corpus::discover::Inputs;
use crate::corpus::reread::Reread;
use crate::progress::Reporter;
use crate::{Error, Result, Source};

pub const MIMIC3_COLUMNS: [&str; 11] = [
    "ROW_ID",
    "SUBJECT_ID",
    "HADM_ID",
    "CHARTDATE",
    "CHARTTIME",
    "STORETIME",
    "CATEGORY",
    "DESCRIPTION",
    "CGID",
    "ISERROR",
    "TEXT",
];

pub const MIMIC4_COLUMNS: [&str; 8] = [
    "note_id",
    "subject_id",
    "hadm_id",
    "note_type",
    "note_seq",
    "charttime",
    "storetime",
    "text",
];

const ICUSTAYS_NEEDED: [&str; 2] = ["SUBJECT_ID", "DBSOURCE"];

/// Under the output folder: decompressed copies of the inputs live here while they are
/// read, and the MinHash sketches; never left behind.
pub const SCRATCH_DIR: &str = "ingest.partial";

/// What one input file contributed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileStats {
    pub path: PathBuf,
    pub source: Source,
    pub records: u64,
    pub bytes: u64,
}

/// A staged note file, for the second read of its text: the file DuckDB reads (a `.csv.gz`
/// file's plain copy, removed when this is dropped), and the rowids its notes took.
pub struct NoteText {
    path: PathBuf,
    data: Plain,
    kind: NoteFile,
    /// The rowid of the file's first note in `stage_notes`.
    pub first: i64,
    pub records: u64,
    /// The data file's size and modification time before the first read.
    stamp: Stamp,
}

/// A file's size and modification time: a file rewritten between the two reads differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: std::time::SystemTime,
}

impl Stamp {
    fn of(path: &Path) -> Result<Stamp> {
        let meta = std::fs::metadata(path).map_err(Error::io(path))?;
        Ok(Stamp {
            len: meta.len(),
            modified: meta.modified().map_err(Error::io(path))?,
        })
    }
}

impl NoteText {
    /// The input file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the second read of the file DuckDB staged: the input, or its plain copy.
    pub fn reread(&self) -> Result<Reread> {
        Reread::open(
            &self.path,
            self.data.path(&self.path),
            self.kind.columns().len(),
        )
    }

    /// Whether a note id as the second read found it (`raw`, the field's text) is the one
    /// the first read staged: MIMIC-III's ROW_ID as DuckDB cast it to an integer,
    /// MIMIC-IV's note_id trimmed of spaces.
    pub fn same_id(&self, raw: &[u8], staged: &str) -> bool {
        match self.kind {
            NoteFile::Mimic3 => std::str::from_utf8(raw.trim_ascii())
                .ok()
                .and_then(|r| r.parse::<i64>().ok())
                .is_some_and(|r| staged.parse::<i64>() == Ok(r)),
            NoteFile::Mimic4(_) => {
                let trimmed = std::str::from_utf8(raw).map(|r| r.trim_matches(' '));
                trimmed == Ok(staged)
            }
        }
    }

    /// The error for a record whose text is not UTF-8.
    pub fn not_utf8(&self, record: u64) -> Error {
        let columns = self.kind.columns();
        Error::Field {
            path: self.path.clone(),
            record,
            field: columns[columns.len() - 1].to_string(),
            expected: "text in UTF-8".to_string(),
        }
    }

    /// Whether the file read again is as it was before the first read.
    pub fn unchanged(&self) -> Result<bool> {
        Ok(Stamp::of(self.data.path(&self.path))? == self.stamp)
    }
}

/// Creates, on `conn`, the macros that read each kind of note file (`sql/ingest.sql`); the
/// second read ([`Reread`]) parses the same dialect.
pub fn create_readers(conn: &Connection) -> Result<()> {
    conn.execute_batch(INGEST.get("readers"))
        .map_err(Error::catalog("preparing the CSV readers"))
}

/// Loads every note file of `inputs` into `stage_notes` (and ICUSTAYS into `stage_icustays`),
/// in file order, so a note's rowid there is its place in the build; the text is not kept,
/// but read again from what [`NoteText`] names. `scratch` holds the
/// decompressed copy of a `.csv.gz` note file until then.
pub fn ingest(
    conn: &Connection,
    inputs: &Inputs,
    scratch: &Path,
    reporter: &dyn Reporter,
) -> Result<(Vec<FileStats>, Vec<NoteText>)> {
    let mut files: Vec<(&Path, NoteFile)> = Vec::new();
    let mut icustays = None;
    if let Some(m3) = &inputs.mimic3 {
        files.push((&m3.noteevents, NoteFile::Mimic3));
        icustays = m3.icustays.as_deref();
    }
    if let Some(m4) = &inputs.mimic4 {
        if let Some(p) = &m4.discharge {
            files.push((p, NoteFile::Mimic4("Discharge summary")));
        }
        if let Some(p) = &m4.radiology {
            files.push((p, NoteFile::Mimic4("Radiology")));
        }
    }
    for (path, kind) in &files {
        check_header(path, kind.columns(), true)?;
    }
    // DuckDB decompresses gzip on one thread, several times slower than flate2 (see the
    // README's measurements), so the files are decompressed here, ahead of DuckDB: the
    // first on a thread of its own (with the bar) while ICUSTAYS loads, the others one
    // after another on a second thread, which runs while DuckDB parses the earlier ones.
    // Every copy is kept until normalization reads it again, so decompressing ahead costs
    // no more disk.
    let stop = &AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut head = files
            .first()
            .map(|&(path, _)| s.spawn(move || Plain::of(path, scratch, Some(reporter), stop)));
        let (inflated, rest) = std::sync::mpsc::channel();
        let files = &files;
        let later = s.spawn(move || {
            for &(path, _) in files.iter().skip(1) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let plain = Plain::of(path, scratch, None, stop);
                let failed = plain.is_err();
                if inflated.send(plain).is_err() || failed {
                    break;
                }
            }
        });
        let loaded = (|| {
            if let Some(icu) = icustays {
                load_icustays(conn, icu)?;
            }
            create_readers(conn)?;
            let (mut stats, mut texts) = (Vec::new(), Vec::new());
            for &(path, kind) in files {
                let plain = match head.take() {
                    Some(handle) => crate::join(handle)?,
                    // The thread sends each file's outcome, and stops only after an error.
                    None => rest.recv().expect("each later file is sent")?,
                };
                let stamp = Stamp::of(plain.path(path))?;
                let (file, first) = load_notes(conn, path, plain.path(path), kind, reporter)?;
                texts.push(NoteText {
                    path: path.to_path_buf(),
                    data: plain,
                    kind,
                    first,
                    records: file.records,
                    stamp,
                });
                stats.push(file);
            }
            Ok((stats, texts))
        })();
        // After an error, decompression stops where it is.
        stop.store(true, Ordering::Relaxed);
        drop(rest);
        crate::join(later);
        loaded
    })
}

/// The plain-text copy of a `.csv.gz` file (none for a plain `.csv`), removed when dropped.
struct Plain(Option<PathBuf>);

impl Plain {
    /// Decompresses `path` into `scratch`, showing progress on `reporter` if given.
    /// `stop` ends the decompression early (with an error nobody reports).
    fn of(
        path: &Path,
        scratch: &Path,
        reporter: Option<&dyn Reporter>,
        stop: &AtomicBool,
    ) -> Result<Plain> {
        if !is_gzip(path) {
            return Ok(Plain(None));
        }
        crate::fsutil::create_private_dir(scratch)?;
        let copy = scratch.join(path.file_stem().unwrap_or_default());
        // Owns the copy from here on, so a failure below removes what was written.
        let plain = Plain(Some(copy.clone()));
        if let Some(r) = reporter {
            let bytes = std::fs::metadata(path).map_err(Error::io(path))?.len();
            r.start(
                &format!("decompressing {}", display_name(path)),
                bytes,
                "bytes",
            );
        }
        let inflated = inflate(path, &copy, reporter, stop);
        if let Some(r) = reporter {
            r.finish();
        }
        inflated.map(|()| plain)
    }

    /// What DuckDB reads in place of `original`.
    fn path<'a>(&'a self, original: &'a Path) -> &'a Path {
        self.0.as_deref().unwrap_or(original)
    }
}

/// Writes the decompressed `path` to `copy`, owner-only.
fn inflate(
    path: &Path,
    copy: &Path,
    reporter: Option<&dyn Reporter>,
    stop: &AtomicBool,
) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(copy)
        .map_err(Error::io(copy))?;
    let source = Counted {
        inner: File::open(path).map_err(Error::io(path))?,
        reporter,
    };
    let mut gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, source));
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Invalid(format!(
                "decompressing `{}` stopped after an earlier error",
                path.display()
            )));
        }
        let n = match gz.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(gzip_error(path, e)),
        };
        out.write_all(&buf[..n]).map_err(Error::io(copy))?;
    }
    out.flush().map_err(Error::io(copy))
}

/// A reader that reports the bytes read through it.
struct Counted<'a, R> {
    inner: R,
    reporter: Option<&'a dyn Reporter>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(r) = self.reporter {
            r.advance(n as u64);
        }
        Ok(n)
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A decompression failure: a cut-short or corrupt stream is the file's fault, anything
/// else (a read error) is reported as it is.
fn gzip_error(path: &Path, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::InvalidInput
        | std::io::ErrorKind::InvalidData => Error::Malformed {
            path: path.to_path_buf(),
            line: None,
            problem: "the gzip stream is truncated or corrupt".to_string(),
        },
        _ => Error::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

#[derive(Clone, Copy)]
enum NoteFile {
    Mimic3,
    /// A MIMIC-IV-Note file, with the category its notes get.
    Mimic4(&'static str),
}

impl NoteFile {
    fn columns(self) -> &'static [&'static str] {
        match self {
            NoteFile::Mimic3 => &MIMIC3_COLUMNS,
            NoteFile::Mimic4(_) => &MIMIC4_COLUMNS,
        }
    }
}

/// Loads one note file; DuckDB reads `data`, `path` or its plain copy. Returns what the file
/// contributed and the rowid of its first note.
fn load_notes(
    conn: &Connection,
    path: &Path,
    data: &Path,
    kind: NoteFile,
    reporter: &dyn Reporter,
) -> Result<(FileStats, i64)> {
    let bytes = std::fs::metadata(path).map_err(Error::io(path))?.len();
    let (source, duplicate) = match kind {
        NoteFile::Mimic3 => (Source::MimicIii, "duplicate_mimic3"),
        NoteFile::Mimic4(_) => (Source::MimicIv, "duplicate_mimic4"),
    };
    reporter.start(&format!("reading {}", display_name(path)), bytes, "bytes");
    let first: i64 = conn
        .query_row(INGEST.get("staged_count"), [], |r| r.get(0))
        .map_err(Error::catalog("numbering notes"))?;
    let data = path_str(data)?;
    let records = match kind {
        NoteFile::Mimic3 => conn.execute(INGEST.get("insert_mimic3"), [data]),
        NoteFile::Mimic4(category) => conn.execute(INGEST.get("insert_mimic4"), [category, data]),
    }
    .map_err(|e| csv_error(path, &e))? as u64;
    reporter.advance(bytes);
    reporter.finish();
    if records == 0 {
        return Err(Error::NoRecords {
            path: path.to_path_buf(),
        });
    }
    let bad: Option<(u64, String)> = conn
        .query_row(INGEST.get("validate_notes"), [first], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map(Some)
        .or_else(|e| match e {
            duckdb::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(Error::catalog("checking field types"))?;
    if let Some((record, field)) = bad {
        return Err(Error::Field {
            path: path.to_path_buf(),
            record,
            expected: expected_for(&field).to_string(),
            field,
        });
    }
    let repeated: Option<u64> = conn
        .query_row(INGEST.get(duplicate), [first], |r| r.get(0))
        .map_err(Error::catalog("checking note ids"))?;
    if let Some(record) = repeated {
        return Err(Error::Field {
            path: path.to_path_buf(),
            record,
            field: kind.columns()[0].to_string(),
            expected: "a note id unique across the inputs".to_string(),
        });
    }
    let file = FileStats {
        path: path.to_path_buf(),
        source,
        records,
        bytes,
    };
    Ok((file, first))
}

fn load_icustays(conn: &Connection, path: &Path) -> Result<()> {
    check_header(path, &ICUSTAYS_NEEDED, false)?;
    conn.execute(INGEST.get("read_icustays"), [path_str(path)?])
        .map_err(|e| csv_error(path, &e))?;
    let bad: Option<u64> = conn
        .query_row(INGEST.get("validate_icustays"), [], |r| r.get(0))
        .map_err(Error::catalog("checking ICU stays"))?;
    if let Some(record) = bad {
        return Err(Error::Field {
            path: path.to_path_buf(),
            record,
            field: "SUBJECT_ID".to_string(),
            expected: "an integer".to_string(),
        });
    }
    conn.execute(INGEST.get("insert_icustays"), [])
        .map_err(Error::catalog("staging ICU stays"))?;
    Ok(())
}

fn expected_for(field: &str) -> &'static str {
    match field {
        "CHARTDATE" => "a date (YYYY-MM-DD)",
        "CHARTTIME" | "STORETIME" | "charttime" | "storetime" => {
            "a timestamp (YYYY-MM-DD HH:MM:SS) or empty"
        }
        "ISERROR" => "1 or empty",
        "CATEGORY" | "note_id" | "note_type" => "a non-empty value",
        "HADM_ID" | "CGID" | "hadm_id" | "note_seq" => "an integer or empty",
        _ => "an integer",
    }
}

/// DuckDB takes paths as SQL text, so they must be UTF-8.
pub(crate) fn path_str(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| {
        Error::Invalid(format!(
            "`{}`: file paths must be valid UTF-8",
            path.display()
        ))
    })
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_gzip(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// Opens a file, decompressing `.gz`.
pub fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).map_err(Error::io(path))?;
    Ok(if is_gzip(path) {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

/// Reads the header line and checks it names `columns` (in order when `exact`, else at
/// least those). Quoted (MIMIC-III) and unquoted (MIMIC-IV) headers both pass.
pub fn check_header(path: &Path, columns: &[&str], exact: bool) -> Result<()> {
    let expected = columns.join(",");
    let fail = |problem: String| Error::Header {
        path: path.to_path_buf(),
        problem,
        expected: expected.clone(),
    };
    let mut line = Vec::new();
    let reader = open_maybe_gz(path)?;
    BufReader::new(reader.take(64 * 1024))
        .read_until(b'\n', &mut line)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                Error::Malformed {
                    path: path.to_path_buf(),
                    line: None,
                    problem: "not a valid gzip file".to_string(),
                }
            }
            _ => Error::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
    if line.is_empty() {
        return Err(fail("the file is empty".to_string()));
    }
    let text =
        std::str::from_utf8(&line).map_err(|_| fail("the header is not UTF-8".to_string()))?;
    let found: Vec<String> = text
        .trim_end_matches(['\n', '\r'])
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .collect();
    let missing: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| !found.iter().any(|f| f == c))
        .collect();
    if !missing.is_empty() {
        let shown: Vec<String> = found.iter().take(16).map(|f| format!("`{f}`")).collect();
        return Err(fail(format!(
            "missing {} (found {})",
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            shown.join(", ")
        )));
    }
    if exact && found != columns {
        return Err(fail(format!(
            "columns are out of order or extra ({} found)",
            found.len()
        )));
    }
    Ok(())
}

static LINE_NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)CSV Error on Line:\s*(\d+)").expect("valid regex"));

/// Translates a DuckDB error from reading `path` into a message without any record text.
/// DuckDB's messages quote the record and list the reader's options; only the kind of
/// problem and the line number are kept.
fn csv_error(path: &Path, e: &duckdb::Error) -> Error {
    let message = e.to_string();
    let lower = message.to_lowercase();
    let problem = if lower.contains("out of memory") {
        "DuckDB ran out of memory reading it (its memory limit is set in sql/catalog.sql)"
    } else if lower.contains("invalid unicode") {
        "invalid UTF-8; the file must be UTF-8 encoded"
    } else if lower.contains("gzip") {
        "the gzip stream is truncated or corrupt"
    } else if lower.contains("unterminated quote") {
        "a quoted field is never closed (the file may be cut short)"
    } else if lower.contains("expected number of columns") {
        "a record has the wrong number of fields"
    } else if lower.contains("error when sniffing") && lower.contains("found by the sniffer: 0") {
        "a quoted field is never closed, or the file is not CSV"
    } else if lower.contains("error when sniffing") {
        // Checked before the line-size case: the sniffer's advice mentions line sizes.
        "records have the wrong number of fields"
    } else if lower.contains("maximum line size") {
        "a record never ends: a quoted field is never closed, or a record exceeds 16 MiB"
    } else {
        "not a well-formed CSV file"
    };
    let line = LINE_NUMBER
        .captures(&message)
        .and_then(|c| c[1].parse().ok());
    Error::Malformed {
        path: path.to_path_buf(),
        line,
        problem: problem.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what a stage reports.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Reporter for Recorder {
        fn start(&self, stage: &str, total: u64, unit: &str) {
            self.0
                .lock()
                .unwrap()
                .push(format!("start {stage} {total} {unit}"));
        }
        fn advance(&self, done: u64) {
            self.0.lock().unwrap().push(format!("advance {done}"));
        }
        fn finish(&self) {
            self.0.lock().unwrap().push("finish".to_string());
        }
        fn note(&self, _: &str) {}
    }

    #[test]
    fn gzip_inputs_are_inflated_to_an_owner_only_copy_with_progress() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let body = "ROW_ID,TEXT\n1,\"note\"\n".repeat(20_000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let path = dir.path().join("NOTEEVENTS.csv.gz");
        std::fs::write(&path, &gz).unwrap();
        let scratch = dir.path().join("scratch");

        let recorder = Recorder::default();
        let plain = Plain::of(&path, &scratch, Some(&recorder), &AtomicBool::new(false)).unwrap();
        let copy = scratch.join("NOTEEVENTS.csv");
        assert_eq!(plain.path(&path), copy);
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), body);
        assert_eq!(
            std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&scratch).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let events = recorder.0.lock().unwrap().clone();
        assert_eq!(
            events.first().unwrap(),
            &format!("start decompressing NOTEEVENTS.csv.gz {} bytes", gz.len())
        );
        assert_eq!(events.last().unwrap(), "finish");
        let advanced: u64 = events
            .iter()
            .filter_map(|e| e.strip_prefix("advance "))
            .map(|n| n.parse::<u64>().unwrap())
            .sum();
        assert_eq!(advanced, gz.len() as u64);
        drop(plain);
        assert!(!copy.exists(), "the copy goes with its Plain");

        // Cut short: an error naming the file, the bar finished, no copy left.
        std::fs::write(&path, &gz[..gz.len() / 2]).unwrap();
        let recorder = Recorder::default();
        let err = Plain::of(&path, &scratch, Some(&recorder), &AtomicBool::new(false))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("NOTEEVENTS.csv.gz") && err.contains("truncated"),
            "{err}"
        );
        assert_eq!(recorder.0.lock().unwrap().last().unwrap(), "finish");
        assert!(!copy.exists());

        // Stopped (another file failed): an error, no copy left.
        std::fs::write(&path, &gz).unwrap();
        assert!(Plain::of(&path, &scratch, None, &AtomicBool::new(true)).is_err());
        assert!(!copy.exists());

        // A plain file is read where it is.
        let csv = dir.path().join("radiology.csv");
        std::fs::write(&csv, "x").unwrap();
        let go = AtomicBool::new(false);
        assert_eq!(
            Plain::of(&csv, &scratch, None, &go).unwrap().path(&csv),
            csv
        );
    }

    #[test]
    fn header_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("NOTEEVENTS.csv");
        let quoted = MIMIC3_COLUMNS.map(|c| format!("\"{c}\"")).join(",");
        std::fs::write(&p, format!("{quoted}\n")).unwrap();
        check_header(&p, &MIMIC3_COLUMNS, true).unwrap();

        std::fs::write(&p, format!("{}\r\n", MIMIC3_COLUMNS.join(","))).unwrap();
        check_header(&p, &MIMIC3_COLUMNS, true).unwrap();

        let renamed = quoted.replace("SUBJECT_ID", "SUBJ_ID");
        std::fs::write(&p, format!("{renamed}\n")).unwrap();
        let err = check_header(&p, &MIMIC3_COLUMNS, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing `SUBJECT_ID`"), "{err}");
        assert!(err.contains("`SUBJ_ID`"), "{err}");
        assert!(err.contains("NOTEEVENTS.csv"), "{err}");

        std::fs::write(&p, "").unwrap();
        let err = check_header(&p, &MIMIC3_COLUMNS, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn duckdb_messages_lose_their_record_text() {
        let path = Path::new("NOTEEVENTS.csv");
        let e = duckdb::Error::DuckDBFailure(
            duckdb::ffi::Error::new(1),
            Some(
                "Invalid Input Error: CSV Error on Line: 7\nOriginal Line: 1,2,secret patient text\nInvalid unicode (byte sequence mismatch) detected."
                    .to_string(),
            ),
        );
        let msg = csv_error(path, &e).to_string();
        assert!(msg.contains("near line 7"), "{msg}");
        assert!(msg.contains("UTF-8"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");

        // The sniffer lists its options (`Encoding: utf-8`) and the SQL (`LINE 2:`).
        let e = duckdb::Error::DuckDBFailure(
            duckdb::ffi::Error::new(1),
            Some(
                "Invalid Input Error: Error when sniffing file \"x\".\nEncoding: utf-8\nIt does not match the number of columns found by the sniffer: 12.\n\nLINE 2: SELECT * FROM read_csv(?,"
                    .to_string(),
            ),
        );
        let msg = csv_error(path, &e).to_string();
        assert!(msg.contains("wrong number of fields"), "{msg}");
        assert!(!msg.contains("line"), "{msg}");
    }
}

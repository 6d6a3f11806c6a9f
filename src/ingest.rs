//! Loading the MIMIC note files into the catalog's staging tables with DuckDB.
//!
//! Headers are checked here, before DuckDB reads a byte of data, so a renamed column is
//! reported as such. Data is read as text and then checked field by field in SQL, so a bad
//! value is reported by record and field. DuckDB's own CSV errors quote the offending record
//! (note text), so they are translated into a short description and a line number and never
//! passed on.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use duckdb::Connection;
use regex::Regex;
use serde::Serialize;

use crate::discover::Inputs;
use crate::progress::Reporter;
use crate::sql::INGEST;
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

/// What one input file contributed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileStats {
    pub path: PathBuf,
    pub source: Source,
    pub records: u64,
    pub bytes: u64,
}

/// Loads every note file of `inputs` into `stage_notes` (and ICUSTAYS into `stage_icustays`),
/// in file order; `ord` numbers the notes across files.
pub fn ingest(
    conn: &Connection,
    inputs: &Inputs,
    reporter: &dyn Reporter,
) -> Result<Vec<FileStats>> {
    let mut stats = Vec::new();
    if let Some(m3) = &inputs.mimic3 {
        stats.push(load_notes(
            conn,
            &m3.noteevents,
            NoteFile::Mimic3,
            reporter,
        )?);
        if let Some(icu) = &m3.icustays {
            load_icustays(conn, icu)?;
        }
    }
    if let Some(m4) = &inputs.mimic4 {
        if let Some(p) = &m4.discharge {
            stats.push(load_notes(
                conn,
                p,
                NoteFile::Mimic4("Discharge summary"),
                reporter,
            )?);
        }
        if let Some(p) = &m4.radiology {
            stats.push(load_notes(
                conn,
                p,
                NoteFile::Mimic4("Radiology"),
                reporter,
            )?);
        }
    }
    Ok(stats)
}

#[derive(Clone, Copy)]
enum NoteFile {
    Mimic3,
    /// A MIMIC-IV-Note file, with the category its notes get.
    Mimic4(&'static str),
}

fn load_notes(
    conn: &Connection,
    path: &Path,
    kind: NoteFile,
    reporter: &dyn Reporter,
) -> Result<FileStats> {
    let bytes = std::fs::metadata(path).map_err(Error::io(path))?.len();
    let (columns, source, read, validate, duplicate): (&[&str], _, _, _, _) = match kind {
        NoteFile::Mimic3 => (
            &MIMIC3_COLUMNS,
            Source::MimicIii,
            "read_mimic3",
            "validate_mimic3",
            "duplicate_mimic3",
        ),
        NoteFile::Mimic4(_) => (
            &MIMIC4_COLUMNS,
            Source::MimicIv,
            "read_mimic4",
            "validate_mimic4",
            "duplicate_mimic4",
        ),
    };
    check_header(path, columns, true)?;
    reporter.start(&format!("reading {}", display_name(path)), bytes, "bytes");
    let path_text = path_str(path)?;
    conn.execute(INGEST.get(read), [path_text])
        .map_err(|e| csv_error(path, &e))?;
    reporter.advance(bytes);
    reporter.finish();

    let records: u64 = conn
        .query_row(INGEST.get("count_raw"), [], |r| r.get(0))
        .map_err(Error::catalog("counting records"))?;
    if records == 0 {
        return Err(Error::NoRecords {
            path: path.to_path_buf(),
        });
    }
    let bad: Option<(u64, String)> = conn
        .query_row(INGEST.get(validate), [], |r| Ok((r.get(0)?, r.get(1)?)))
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
        .query_row(INGEST.get(duplicate), [], |r| r.get(0))
        .map_err(Error::catalog("checking note ids"))?;
    if let Some(record) = repeated {
        return Err(Error::Field {
            path: path.to_path_buf(),
            record,
            field: columns[0].to_string(),
            expected: "a note id unique across the inputs".to_string(),
        });
    }

    let next: i64 = conn
        .query_row(INGEST.get("next_ord"), [], |r| r.get(0))
        .map_err(Error::catalog("numbering notes"))?;
    match kind {
        NoteFile::Mimic3 => conn.execute(INGEST.get("insert_mimic3"), [next]),
        NoteFile::Mimic4(category) => {
            conn.execute(INGEST.get("insert_mimic4"), duckdb::params![next, category])
        }
    }
    .map_err(Error::catalog("staging notes"))?;
    Ok(FileStats {
        path: path.to_path_buf(),
        source,
        records,
        bytes,
    })
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

/// Opens a file, decompressing `.gz`.
pub fn open_maybe_gz(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).map_err(Error::io(path))?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    Ok(if gz {
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

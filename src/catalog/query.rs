//! `ehrprep sql`: a query's result as a polars frame, printed as a table, CSV or JSON.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};

use duckdb::Connection;
use polars::prelude::*;

use crate::{Error, Result};

/// Set while a panic is caught on purpose, so the panic hook stays quiet.
pub static PANIC_IS_HANDLED: AtomicBool = AtomicBool::new(false);

/// Runs `query` and collects the whole result into one frame.
pub fn run(conn: &Connection, query: &str) -> Result<DataFrame> {
    let mut stmt = conn
        .prepare(query)
        .map_err(Error::catalog("preparing the query"))?;
    let batches = stmt
        .query_polars([])
        .map_err(Error::catalog("running the query"))?;
    // duckdb-rs panics when a result chunk cannot become a polars frame (an unsupported
    // type); that is a user-facing error, not a crash.
    PANIC_IS_HANDLED.store(true, Ordering::Relaxed);
    let frames = std::panic::catch_unwind(AssertUnwindSafe(|| batches.collect::<Vec<_>>()));
    PANIC_IS_HANDLED.store(false, Ordering::Relaxed);
    let frames = frames.map_err(|_| {
        Error::Invalid(
            "the result has a column type that cannot be shown; cast it, e.g. `col::VARCHAR`"
                .to_string(),
        )
    })?;
    let mut frames = frames.into_iter();
    let Some(mut all) = frames.next() else {
        return Ok(empty_frame(&stmt));
    };
    for frame in frames {
        all.vstack_mut(&frame)
            .map_err(|e| Error::Invalid(format!("combining result chunks: {e}")))?;
    }
    Ok(all)
}

/// An empty result still has its columns.
fn empty_frame(stmt: &duckdb::Statement<'_>) -> DataFrame {
    let columns: Vec<Column> = stmt
        .column_names()
        .into_iter()
        .map(|name| Column::new_empty(name.into(), &DataType::String))
        .collect();
    DataFrame::new(columns).unwrap_or_default()
}

pub fn write_csv(frame: &mut DataFrame, out: &mut dyn Write) -> Result<()> {
    CsvWriter::new(out)
        .include_header(true)
        .finish(frame)
        .map_err(|e| Error::Invalid(format!("writing CSV: {e}")))
}

/// JSON: an array with one object per row.
pub fn write_json(frame: &mut DataFrame, out: &mut dyn Write) -> Result<()> {
    JsonWriter::new(out)
        .with_json_format(JsonFormat::Json)
        .finish(frame)
        .map_err(|e| Error::Invalid(format!("writing JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let conn = crate::catalog::open_in_memory().unwrap();
        conn.execute_batch(
            "INSERT INTO note_decisions VALUES
             ('b', 'mimic-iii', '1', 10, NULL, 'Nursing', 'kept'),
             ('b', 'mimic-iii', '2', 10, 5, 'Nursing', 'draft_superseded'),
             ('b', 'mimic-iv', '10-DS-1', 11, 7, 'Discharge summary', 'kept');",
        )
        .unwrap();
        conn
    }

    #[test]
    fn csv_and_json_round_trip_the_rows() {
        let conn = conn();
        let mut frame = run(
            &conn,
            "SELECT reason, count(*) AS n FROM note_decisions GROUP BY 1 ORDER BY 1",
        )
        .unwrap();
        assert_eq!(frame.shape(), (2, 2));
        let mut csv = Vec::new();
        write_csv(&mut frame, &mut csv).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "reason,n\ndraft_superseded,1\nkept,2\n"
        );
        let mut json = Vec::new();
        write_json(&mut frame, &mut json).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(parsed[1]["reason"], "kept");
        assert_eq!(parsed[1]["n"], 2);
    }

    #[test]
    fn empty_result_keeps_its_columns() {
        let frame = run(
            &conn(),
            "SELECT note_id, reason FROM note_decisions WHERE false",
        )
        .unwrap();
        assert_eq!(frame.height(), 0);
        assert_eq!(frame.get_column_names(), ["note_id", "reason"]);
    }

    #[test]
    fn bad_sql_is_an_error() {
        assert!(run(&conn(), "SELEKT 1").is_err());
    }
}

//! The DuckDB catalog: one database file per output folder, holding every decision a build
//! made and the corpus itself. Opened with extension auto-install and auto-load off, so the
//! tool never reaches for the network.
//!
//! [`sql`] holds the statements the tool runs (loaded from `sql/*.sql`); [`query`] is
//! `ehrprep sql`, an analyst's query printed as a table, CSV or JSON.

pub mod query;
pub mod sql;

use std::path::Path;

use duckdb::Connection;

use crate::catalog::sql::CATALOG;
use crate::{Error, Result};

/// File name of the catalog inside an output folder.
pub const CATALOG_FILE: &str = "catalog.duckdb";

/// Opens (or creates) a catalog database and applies the no-network settings.
pub fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, offline_config()?)
        .map_err(Error::catalog(format!("opening `{}`", path.display())))?;
    prepare(&conn)?;
    Ok(conn)
}

/// Opens an existing catalog read-only, for queries.
pub fn open_read_only(path: &Path) -> Result<Connection> {
    if !path.is_file() {
        return Err(Error::Invalid(format!(
            "`{}` is not a catalog file; pass the `{CATALOG_FILE}` inside a build's output folder",
            path.display()
        )));
    }
    let config = offline_config()?
        .access_mode(duckdb::AccessMode::ReadOnly)
        .map_err(Error::catalog("configuring DuckDB"))?;
    Connection::open_with_flags(path, config)
        .map_err(Error::catalog(format!("opening `{}`", path.display())))
}

/// An in-memory catalog with the same settings and schema, for tests and dry runs.
pub fn open_in_memory() -> Result<Connection> {
    let conn = Connection::open_in_memory_with_flags(offline_config()?)
        .map_err(Error::catalog("opening DuckDB"))?;
    prepare(&conn)?;
    Ok(conn)
}

/// DuckDB settings that keep it off the network from the first statement on.
fn offline_config() -> Result<duckdb::Config> {
    duckdb::Config::default()
        .enable_autoload_extension(false)
        .and_then(|c| c.with("autoinstall_known_extensions", "false"))
        .map_err(Error::catalog("configuring DuckDB"))
}

fn prepare(conn: &Connection) -> Result<()> {
    conn.execute_batch(CATALOG.get("settings"))
        .map_err(Error::catalog("applying settings"))?;
    conn.execute_batch(CATALOG.get("schema"))
        .map_err(Error::catalog("creating the catalog schema"))
}

/// Makes a file or folder readable by its owner only: notes are sensitive even when synthetic.
pub fn restrict_to_owner(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if path.is_dir() { 0o700 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(Error::io(path))
}

/// A fresh id for a training or evaluation run: 16 hex digits from `key` (what the run
/// writes to), the clock and the process. Run ids name runs, never outputs, so the clock
/// costs no determinism.
pub fn new_run_id(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let digest = Sha256::digest(format!("{key}\n{now}\n{}", std::process::id()));
    crate::fsutil::hex(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_has_the_documented_tables() {
        let conn = open_in_memory().unwrap();
        let mut stmt = conn
            .prepare("SELECT table_name FROM information_schema.tables ORDER BY 1")
            .unwrap();
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(
            names,
            [
                "build_runs",
                "corpus",
                "note_decisions",
                "task_documents",
                "task_overlap"
            ]
        );
    }

    #[test]
    fn extensions_never_autoload() {
        let conn = open_in_memory().unwrap();
        let on: bool = conn
            .query_row(
                "SELECT current_setting('autoload_known_extensions')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!on);
        // Reading parquet needs an extension that is neither compiled in nor fetched.
        let err = conn.execute_batch("SELECT * FROM read_parquet('x.parquet')");
        assert!(err.is_err());
    }
}

//! The SQL the tool runs, loaded from the `sql/` folder at compile time.
//!
//! Each file holds named statements, each starting with a `-- name: <name>` line, so the SQL
//! stays readable as SQL and the Rust code asks for statements by name.

/// A file of named statements.
pub struct SqlFile {
    file: &'static str,
    text: &'static str,
}

pub const CATALOG: SqlFile = SqlFile::new("catalog.sql", include_str!("../../sql/catalog.sql"));
pub const INGEST: SqlFile = SqlFile::new("ingest.sql", include_str!("../../sql/ingest.sql"));
pub const DEDUP: SqlFile = SqlFile::new("dedup.sql", include_str!("../../sql/dedup.sql"));
pub const PACK: SqlFile = SqlFile::new("pack.sql", include_str!("../../sql/pack.sql"));
pub const TASKS: SqlFile = SqlFile::new("tasks.sql", include_str!("../../sql/tasks.sql"));
pub const EVAL: SqlFile = SqlFile::new("eval.sql", include_str!("../../sql/eval.sql"));
pub const REPORT: SqlFile = SqlFile::new("report.sql", include_str!("../../sql/report.sql"));
pub const TRAIN: SqlFile = SqlFile::new("train.sql", include_str!("../../sql/train.sql"));
pub const SELECT_PAPER: SqlFile = SqlFile::new(
    "select_paper.sql",
    include_str!("../../sql/select_paper.sql"),
);

impl SqlFile {
    const fn new(file: &'static str, text: &'static str) -> SqlFile {
        SqlFile { file, text }
    }

    /// The statement named `name`. Panics on an unknown name: that is a bug in the binary,
    /// caught by the unit test that loads every name the code uses.
    pub fn get(&self, name: &str) -> &'static str {
        let mut rest = self.text;
        while let Some(pos) = rest.find("-- name: ") {
            let after = &rest[pos + "-- name: ".len()..];
            let (this, body) = after.split_once('\n').unwrap_or((after, ""));
            let end = body.find("-- name: ").unwrap_or(body.len());
            if this.trim() == name {
                return body[..end].trim();
            }
            rest = &body[end..];
        }
        panic!("sql/{} has no statement named `{name}`", self.file)
    }

    /// Every statement in the file, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("-- name: "))
            .map(str::trim)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_is_found_and_nonempty() {
        for file in [
            &CATALOG,
            &INGEST,
            &SELECT_PAPER,
            &TASKS,
            &PACK,
            &DEDUP,
            &TRAIN,
        ] {
            let names = file.names();
            assert!(!names.is_empty(), "{}", file.file);
            for name in names {
                assert!(!file.get(name).is_empty(), "{}: {name}", file.file);
                assert!(
                    !file.get(name).contains("-- name:"),
                    "{}: {name}",
                    file.file
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "no statement named")]
    fn unknown_name_panics() {
        CATALOG.get("no_such_statement");
    }
}

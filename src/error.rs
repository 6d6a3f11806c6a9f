//! The library's error type. Messages name the file, the record and the field, and never
//! carry note text: DuckDB errors are reduced to what they mean before they get here.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to access `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("no MIMIC notes found under `{}`; looked for {wanted} in: {}", root.display(), list_paths(searched))]
    NothingFound {
        root: PathBuf,
        wanted: &'static str,
        searched: Vec<PathBuf>,
    },

    #[error("`{}` is ambiguous: {} and {} both look like {what}", root.display(), fmt_path(first), fmt_path(second))]
    Ambiguous {
        root: PathBuf,
        what: &'static str,
        first: PathBuf,
        second: PathBuf,
    },

    #[error("`{}` has an unexpected header: {problem}; expected columns {expected}", path.display())]
    Header {
        path: PathBuf,
        problem: String,
        expected: String,
    },

    #[error("`{}` at record {record}: field `{field}` is not {expected}", path.display())]
    Field {
        path: PathBuf,
        /// 1-based data record number, the header not counted.
        record: u64,
        field: String,
        expected: String,
    },

    #[error("`{}`{}: {problem}", path.display(), line.map(|l| format!(" near line {l}")).unwrap_or_default())]
    Malformed {
        path: PathBuf,
        line: Option<u64>,
        problem: String,
    },

    #[error("`{}` has a header but no notes (the MIMIC-III demo ships such a file); a corpus needs real notes", path.display())]
    NoRecords { path: PathBuf },

    #[error("`{}` at {location}: {problem}", path.display())]
    TaskData {
        path: PathBuf,
        location: String,
        problem: String,
    },

    #[error("`{}` already holds a finished build; pass --force to replace it", path.display())]
    OutputExists { path: PathBuf },

    #[error("catalog error while {doing}: {message}")]
    Catalog { doing: String, message: String },

    #[error("plugin `{}` {problem}", path.display())]
    Plugin { path: PathBuf, problem: String },

    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |source| Error::Io { path, source }
    }

    /// A DuckDB error from catalog work. Only the first line is kept: DuckDB appends the
    /// offending record to some messages, and that can be note text.
    pub(crate) fn catalog(doing: impl Into<String>) -> impl FnOnce(duckdb::Error) -> Error {
        let doing = doing.into();
        move |e| Error::Catalog {
            doing,
            message: first_line(&e.to_string()),
        }
    }
}

fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default();
    let mut end = line.len().min(200);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

fn fmt_path(p: &Path) -> String {
    format!("`{}`", p.display())
}

fn list_paths(paths: &[PathBuf]) -> String {
    const SHOWN: usize = 12;
    let mut out: Vec<String> = paths.iter().take(SHOWN).map(|p| fmt_path(p)).collect();
    if paths.len() > SHOWN {
        out.push(format!("and {} more", paths.len() - SHOWN));
    }
    out.join(", ")
}

//! The training-data contract between the ehrprep host and its trainer plugins.
//!
//! The host writes shards and their manifest; a trainer reads them back, orders examples
//! and applies span corruption with [`rng::Rng`] seeded per (seed, epoch, example). Both
//! sides use this crate, so the bytes the host packs and the examples a trainer sees
//! cannot drift apart, and a trainer plugin links none of the host's heavy dependencies
//! (DuckDB, polars, tokenizers).

pub mod examples;
pub mod objective;
pub mod rng;
pub mod shards;

use std::path::{Path, PathBuf};

/// What can go wrong reading shards; messages name the file.
#[derive(Debug)]
pub enum Error {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |source| Error::Io { path, source }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io { path, .. } => write!(f, "failed to access `{}`", path.display()),
            Error::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Invalid(_) => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Test helpers: a temporary folder and a command runner over the real `ehrprep` binary that
//! prints the command, its output and the folder's files when an expectation fails.
//!
//! Shared by the host's tests (`tests/it`) and the T5 plugin's end-to-end tests
//! (`plugins/t5/tests/host`), which include this file by path.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// Writes `contents` to `rel`, creating folders.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// `ehrprep build` on the shipped fixtures into `out`, with `extra` flags.
    pub fn build_fixtures(&self, out: &str, extra: &[&str]) -> Run {
        let mimic = fixtures_mimic();
        let mut args = vec!["build", "--mimic-dir", mimic.as_str(), "--out", out];
        args.extend_from_slice(extra);
        self.ehrprep(&args)
    }

    /// `ehrprep build --no-shards` of `mimic` into `out`, with `extra` flags: the corpus
    /// stage alone.
    pub fn build_corpus(&self, extra: &[&str]) -> Run {
        let mut args = vec![
            "build",
            "--no-shards",
            "--mimic-dir",
            "mimic",
            "--out",
            "out",
        ];
        args.extend_from_slice(extra);
        self.ehrprep(&args)
    }

    /// The fixtures built for training tests: a small vocabulary, 128-token inputs and a
    /// validation split large enough to have rows.
    pub fn build_fixtures_for_training(&self, out: &str) -> Run {
        self.build_fixtures(
            out,
            &[
                "--vocab-size",
                "1000",
                "--input-length",
                "128",
                "--validation-fraction",
                "0.2",
            ],
        )
    }

    pub fn ehrprep(&self, args: &[&str]) -> Run {
        self.ehrprep_env(args, &[])
    }

    /// `ehrprep` with extra environment variables.
    pub fn ehrprep_env(&self, args: &[&str], env: &[(&str, &Path)]) -> Run {
        let mut cmd = Command::new(ehrprep_bin());
        cmd.args(args).current_dir(self.path());
        for (key, value) in env {
            cmd.env(key, value);
        }
        let output = cmd.output().expect("ehrprep runs");
        Run {
            cmd: format!("ehrprep {}", args.join(" ")),
            output,
            dir: self.path().to_path_buf(),
        }
    }
}

pub struct Run {
    pub cmd: String,
    pub output: Output,
    pub dir: PathBuf,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn dump(&self) -> String {
        let mut files = Vec::new();
        list(&self.dir, &mut files);
        format!(
            "command: {}\nstatus: {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- files\n{}",
            self.cmd,
            self.output.status.code(),
            self.stdout(),
            self.stderr(),
            files.join("\n")
        )
    }

    /// Asserts success and returns stdout.
    pub fn ok(&self) -> String {
        assert!(
            self.output.status.success(),
            "expected success\n{}",
            self.dump()
        );
        self.stdout()
    }

    /// Asserts exit code 2 and returns stderr.
    pub fn fails(&self) -> String {
        assert_eq!(
            self.output.status.code(),
            Some(2),
            "expected exit code 2\n{}",
            self.dump()
        );
        self.stderr()
    }
}

fn list(dir: &Path, out: &mut Vec<String>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                list(&p, out);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
}

/// The repository's root: the folder with `fixtures/`, whichever crate's tests run.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("fixtures/mimic").is_dir())
        .expect("the repository root, above this crate")
        .to_path_buf()
}

/// The `ehrprep` binary: cargo names it for the host's tests; the plugin's tests find it in
/// the target folder, where `cargo test --workspace` builds it.
pub fn ehrprep_bin() -> PathBuf {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_ehrprep") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join(format!("ehrprep{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        bin.display()
    );
    bin
}

/// The shipped synthetic MIMIC fixtures.
pub fn fixtures_mimic() -> String {
    root().join("fixtures/mimic").to_string_lossy().into_owned()
}

/// Opens a finished catalog read-only.
pub fn catalog(out: &Path) -> duckdb::Connection {
    let config = duckdb::Config::default()
        .access_mode(duckdb::AccessMode::ReadOnly)
        .unwrap();
    duckdb::Connection::open_with_flags(out.join("catalog.duckdb"), config).unwrap()
}

/// Rows of a query, each column as text (`NULL` for null, integers and booleans plain).
pub fn rows(conn: &duckdb::Connection, sql: &str) -> Vec<Vec<String>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        let n = row.as_ref().column_count();
        let mut cols = Vec::new();
        for i in 0..n {
            let v: duckdb::types::Value = row.get(i).unwrap();
            cols.push(match v {
                duckdb::types::Value::Null => "NULL".to_string(),
                duckdb::types::Value::Text(s) => s,
                duckdb::types::Value::BigInt(i) => i.to_string(),
                duckdb::types::Value::Int(i) => i.to_string(),
                duckdb::types::Value::Boolean(b) => b.to_string(),
                other => format!("{other:?}"),
            });
        }
        out.push(cols);
    }
    out
}

/// The MIMIC-III header as the real file has it.
pub fn mimic3_header() -> String {
    [
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
    ]
    .map(|c| format!("\"{c}\""))
    .join(",")
}

pub const MIMIC4_HEADER: &str =
    "note_id,subject_id,hadm_id,note_type,note_seq,charttime,storetime,text";

/// One MIMIC-III record; `text` gets quoted and escaped.
#[allow(clippy::too_many_arguments)]
pub fn m3_row(
    row_id: u64,
    subject: u64,
    hadm: &str,
    charttime: &str,
    storetime: &str,
    category: &str,
    cgid: &str,
    iserror: &str,
    text: &str,
) -> String {
    format!(
        "{row_id},{subject},{hadm},2150-01-01,{charttime},{storetime},\"{category}\",\"Report\",{cgid},{iserror},\"{}\"",
        text.replace('"', "\"\"")
    )
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A plugin library built by `cargo test --workspace`, which puts workspace cdylibs beside
/// the test binaries.
pub fn plugin_lib(crate_name: &str) -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        crate_name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let path = deps.join(&file);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so the plugins are built",
        path.display()
    );
    path
}

/// The T5 plugin's path, as a command-line argument.
pub fn t5_plugin() -> String {
    plugin_lib("ehrprep-t5").to_string_lossy().into_owned()
}

/// The Python with the oracles: `EHRPREP_PYTHON`, or the virtual environment `.ci/run` makes.
/// Runs an oracle script from `scripts/` and returns the JSON of its last output line.
pub fn oracle<A: AsRef<std::ffi::OsStr>>(
    python: &Path,
    script: &str,
    args: impl IntoIterator<Item = A>,
) -> serde_json::Value {
    let script = root().join("scripts").join(script);
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "oracle failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

pub fn python_path() -> PathBuf {
    std::env::var_os("EHRPREP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/ehrprep-venv/bin/python")
        })
}

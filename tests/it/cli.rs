//! Snapshots of what a user reads on the terminal: `ehrprep build`'s summary on stdout, and
//! the error format (one `error:` line, indented causes, exit code 2, no note text). Paths,
//! build ids, hashes and times are filtered out; the rest is reviewed like code.

use std::path::Path;

use crate::util::*;

fn settings(dir: &Dir) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(root().join("snapshots"));
    s.set_prepend_module_to_snapshot(false);
    let tmp = dir.path().canonicalize().unwrap();
    for path in [tmp.as_path(), dir.path(), root().as_path()] {
        s.add_filter(&regex::escape(path.to_str().unwrap()), "[DIR]");
    }
    s.add_filter(r"\b[0-9a-f]{64}\b", "[SHA256]");
    s.add_filter(r"build [0-9a-f]{16}\b", "build [BUILD_ID]");
    s.add_filter(r"; \d+\.\d s\n", "; [SECONDS] s\n");
    s
}

#[test]
fn build_prints_a_summary_of_every_decision() {
    let dir = Dir::new();
    let run = dir.build_fixtures("out", &["--quiet"]);
    run.ok();
    assert!(run.stderr().is_empty(), "{}", run.stderr());
    settings(&dir).bind(|| insta::assert_snapshot!("cli_build_stdout", run.stdout()));
}

#[test]
fn errors_print_once_with_their_causes_and_exit_2() {
    let dir = Dir::new();
    // A field that is not an integer, deep in a note file that is otherwise fine.
    let row = |id: u64, hadm: &str, text: &str| {
        m3_row(id, 10, hadm, "", "", "Nursing", "", "", text) + "\n"
    };
    let csv = mimic3_header()
        + "\n"
        + &row(1, "100", "secret first note")
        + &row(2, "1O0", "secret second");
    dir.write("mimic/NOTEEVENTS.csv", csv);
    dir.write("empty/README", "no notes here");
    let mut report = String::new();
    for args in [
        &["build", "--mimic-dir", "empty", "--out", "out"][..],
        &["build", "--mimic-dir", "mimic", "--out", "out", "--quiet"],
        &["build", "--mimic-dir", "missing", "--out", "out"],
        &["sql", "--db", "nowhere.duckdb", "SELECT 1"],
    ] {
        let run = dir.ehrprep(args);
        let stderr = run.fails();
        assert!(!stderr.contains("secret"), "{stderr}");
        report.push_str(&format!("$ {}\n{stderr}\n", run.cmd));
    }
    settings(&dir).bind(|| insta::assert_snapshot!("cli_errors", report));
}

#[test]
fn commands_that_do_not_train_refuse_to_run_as_one_rank_of_many() {
    let dir = Dir::new();
    let rank = [
        ("RANK", Path::new("1")),
        ("WORLD_SIZE", Path::new("2")),
        ("MASTER_ADDR", Path::new("127.0.0.1")),
    ];
    let run = dir.ehrprep_env(&["build", "--mimic-dir", "missing", "--out", "out"], &rank);
    let stderr = run.fails();
    assert!(stderr.contains("rank 1 of 2"), "{stderr}");
    assert!(
        stderr.contains("only `ehrprep pretrain` and `ehrprep finetune`"),
        "{stderr}"
    );
    // Nothing was started: no output folder.
    assert!(!dir.join("out").exists());
    // Reading the catalog is harmless anywhere.
    let run = dir.ehrprep_env(&["plugins", "list"], &rank);
    assert!(!run.stderr().contains("rank 1 of 2"));
    // A finetuning rank does not start ranks of its own.
    let args = [
        "finetune",
        "--task",
        "mednli",
        "--data",
        "d",
        "--checkpoint",
        "c",
        "--nproc-per-node",
        "2",
    ];
    let stderr = dir.ehrprep_env(&args, &rank).fails();
    assert!(
        stderr.contains("--nproc-per-node starts the ranks itself"),
        "{stderr}"
    );
    assert!(stderr.contains("rank 1 of 2"), "{stderr}");
}

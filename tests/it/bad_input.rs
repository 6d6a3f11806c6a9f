//! Bad input gets a clear error naming the file, the record and the field, exit code 2, no
//! catalog that looks complete, and never a word of note text.

use crate::util::*;

/// Text that must never appear in any message.
const SECRET: &str = "SECRET-NOTE-TEXT";

fn good_rows() -> String {
    format!(
        "{}\n{}\n",
        m3_row(
            1,
            1,
            "10",
            "2150-01-01 08:00:00",
            "2150-01-01 09:00:00",
            "Nursing",
            "7",
            "",
            &format!("{SECRET} one")
        ),
        m3_row(2, 2, "", "", "", "Echo", "", "", &format!("{SECRET} two"))
    )
}

/// Runs a build that must fail; checks the shared promises and returns stderr.
fn build_fails(d: &Dir) -> String {
    let err = d
        .ehrprep(&["build", "--mimic-dir", "mimic", "--out", "out"])
        .fails();
    assert!(!err.contains(SECRET), "note text leaked: {err}");
    assert!(
        !d.join("out/catalog.duckdb").exists(),
        "a failed build left a catalog"
    );
    assert!(
        !d.join("out/ingest.partial").exists(),
        "a failed build left decompressed input"
    );
    err
}

#[test]
fn truncated_gzip() {
    let d = Dir::new();
    let body = format!("{}\n{}", mimic3_header(), good_rows().repeat(200));
    let gz = gzip(body.as_bytes());
    d.write("mimic/NOTEEVENTS.csv.gz", &gz[..gz.len() * 2 / 3]);
    let err = build_fails(&d);
    assert!(err.contains("NOTEEVENTS.csv.gz"), "{err}");
    assert!(err.contains("gzip stream is truncated"), "{err}");
    assert!(
        !err.contains("line"),
        "no line number for a gzip error: {err}"
    );
}

/// A MIMIC-IV discharge-style record whose text is the secret.
fn m4_row(id: &str, subject: &str) -> String {
    format!("{id},{subject},,DS,1,2180-01-01 00:00:00,,\"{SECRET}\"\n")
}

#[test]
fn truncated_gzip_after_the_first_file() {
    // Files are decompressed ahead of DuckDB; errors still come in file order. Two hundred
    // records a file, the last with subject `last_subject`; radiology's gzip cut short.
    let fails_with = |last_subject: &str| {
        let rows = |kind: &str, last: &str| {
            let mut body = format!("{MIMIC4_HEADER}\n");
            for i in 1..200 {
                body += &m4_row(&format!("1-{kind}-{i}"), "1");
            }
            body + &m4_row(&format!("1-{kind}-200"), last)
        };
        let radiology = gzip(rows("RR", "1").as_bytes());
        let d = Dir::new();
        d.write(
            "mimic/note/discharge.csv.gz",
            gzip(rows("DS", last_subject).as_bytes()),
        );
        d.write(
            "mimic/note/radiology.csv.gz",
            &radiology[..radiology.len() * 2 / 3],
        );
        build_fails(&d)
    };

    let err = fails_with("1");
    assert!(
        err.contains("radiology.csv.gz") && err.contains("gzip stream is truncated"),
        "{err}"
    );
    // A bad field in the first file is reported, not the later file's broken stream.
    let err = fails_with("one");
    assert!(
        err.contains("discharge.csv.gz") && err.contains("record 200"),
        "{err}"
    );
}

#[test]
fn renamed_column() {
    let d = Dir::new();
    let header = mimic3_header().replace("SUBJECT_ID", "SUBJ_ID");
    d.write("mimic/NOTEEVENTS.csv", format!("{header}\n{}", good_rows()));
    let err = build_fails(&d);
    assert!(err.contains("NOTEEVENTS.csv"), "{err}");
    assert!(err.contains("missing `SUBJECT_ID`"), "{err}");
}

#[test]
fn missing_column_in_mimic4() {
    let d = Dir::new();
    let header = MIMIC4_HEADER.replace(",storetime", "");
    d.write(
        "mimic/note/radiology.csv",
        format!("{header}\n1-RR-1,1,,RR,1,2180-01-01 00:00:00,\"x\"\n"),
    );
    let err = build_fails(&d);
    assert!(err.contains("radiology.csv"), "{err}");
    assert!(err.contains("missing `storetime`"), "{err}");
}

#[test]
fn non_numeric_id_names_record_and_field() {
    let d = Dir::new();
    let bad = m3_row(
        3,
        3,
        "x7",
        "",
        "",
        "Echo",
        "",
        "",
        &format!("{SECRET} three"),
    );
    d.write(
        "mimic/NOTEEVENTS.csv",
        format!("{}\n{}{bad}\n", mimic3_header(), good_rows()),
    );
    let err = build_fails(&d);
    assert!(err.contains("NOTEEVENTS.csv"), "{err}");
    assert!(err.contains("record 3"), "{err}");
    assert!(err.contains("`HADM_ID`"), "{err}");
    assert!(err.contains("integer"), "{err}");
}

#[test]
fn bad_timestamp_and_repeated_row_id() {
    let d = Dir::new();
    let bad = m3_row(3, 3, "", "yesterday", "", "Nursing", "", "", "x");
    d.write(
        "mimic/NOTEEVENTS.csv",
        format!("{}\n{}{bad}\n", mimic3_header(), good_rows()),
    );
    let err = build_fails(&d);
    assert!(
        err.contains("record 3") && err.contains("`CHARTTIME`"),
        "{err}"
    );

    let d = Dir::new();
    let again = m3_row(1, 3, "", "", "", "Echo", "", "", "x");
    d.write(
        "mimic/NOTEEVENTS.csv",
        format!("{}\n{}{again}\n", mimic3_header(), good_rows()),
    );
    let err = build_fails(&d);
    assert!(err.contains("record 3") && err.contains("unique"), "{err}");
}

#[test]
fn records_are_counted_within_their_own_file() {
    // The bad record is the third of the second MIMIC-IV file, after a gzipped first.
    let d = Dir::new();
    let discharge = format!(
        "{MIMIC4_HEADER}\n{}{}",
        m4_row("1-DS-1", "1"),
        m4_row("1-DS-2", "1")
    );
    d.write("mimic/note/discharge.csv.gz", gzip(discharge.as_bytes()));
    let radiology = format!(
        "{MIMIC4_HEADER}\n{}{}{}",
        m4_row("1-RR-1", "1"),
        m4_row("1-RR-2", "1"),
        m4_row("1-RR-3", "one")
    );
    d.write("mimic/note/radiology.csv.gz", gzip(radiology.as_bytes()));
    let err = build_fails(&d);
    assert!(err.contains("radiology.csv.gz"), "{err}");
    assert!(
        err.contains("record 3") && err.contains("`subject_id`"),
        "{err}"
    );
}

#[test]
fn invalid_utf8() {
    let d = Dir::new();
    let mut bytes = format!("{}\n{}", mimic3_header(), good_rows()).into_bytes();
    let bad = m3_row(3, 3, "", "", "", "Echo", "", "", "caf\u{e9}");
    let mut bad = bad.into_bytes();
    // Turn the two-byte UTF-8 `é` into a lone Latin-1 byte.
    let pos = bad.windows(2).position(|w| w == [0xC3, 0xA9]).unwrap();
    bad.splice(pos..pos + 2, [0xE9]);
    bytes.extend(bad);
    bytes.push(b'\n');
    d.write("mimic/NOTEEVENTS.csv", bytes);
    let err = build_fails(&d);
    assert!(err.contains("NOTEEVENTS.csv"), "{err}");
    assert!(err.contains("UTF-8"), "{err}");
}

#[test]
fn header_only_noteevents_like_the_demo() {
    let d = Dir::new();
    d.write("mimic/NOTEEVENTS.csv", format!("{}\n", mimic3_header()));
    let err = build_fails(&d);
    assert!(err.contains("NOTEEVENTS.csv"), "{err}");
    assert!(err.contains("header but no notes"), "{err}");
}

#[test]
fn unterminated_quote_and_extra_fields() {
    // Early in the file (found while DuckDB sniffs the dialect) and late (while reading).
    for good in [1, 30_000] {
        let many: String = (10..10 + good)
            .map(|i| format!("{}\n", m3_row(i, 1, "", "", "", "Echo", "", "", "fine")))
            .collect();
        let d = Dir::new();
        let cut = m3_row(good + 10, 3, "", "", "", "Echo", "", "", SECRET);
        let cut = &cut[..cut.len() - 1];
        d.write(
            "mimic/NOTEEVENTS.csv",
            format!("{}\n{many}{cut}\n", mimic3_header()),
        );
        let err = build_fails(&d);
        assert!(
            err.contains("NOTEEVENTS.csv") && err.contains("never closed"),
            "{err}"
        );

        let d = Dir::new();
        let extra = format!(
            "{},\"{SECRET}\"",
            m3_row(good + 10, 3, "", "", "", "Echo", "", "", "x")
        );
        d.write(
            "mimic/NOTEEVENTS.csv",
            format!("{}\n{many}{extra}\n", mimic3_header()),
        );
        let err = build_fails(&d);
        assert!(
            err.contains("NOTEEVENTS.csv") && err.contains("wrong number of fields"),
            "{err}"
        );
        if good > 1 {
            assert!(err.contains(&format!("near line {}", good + 2)), "{err}");
        }
    }
}

#[test]
fn nothing_found_and_missing_directory() {
    let d = Dir::new();
    d.write("mimic/readme.txt", "hello");
    let err = build_fails(&d);
    assert!(err.contains("no MIMIC notes found"), "{err}");
    assert!(err.contains("mimic"), "{err}");

    let err = d
        .ehrprep(&["build", "--mimic-dir", "absent", "--out", "out"])
        .fails();
    assert!(err.contains("`absent`"), "{err}");
}

#[test]
fn unreadable_directory() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new();
    d.write(
        "mimic/locked/NOTEEVENTS.csv",
        format!("{}\n{}", mimic3_header(), good_rows()),
    );
    let locked = d.join("mimic/locked");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read_dir(&locked).is_ok() {
        // Privileged users read it anyway; nothing to test then.
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        eprintln!("skipped: running with privileges that bypass directory permissions");
        return;
    }
    let err = build_fails(&d);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(err.contains("locked"), "{err}");
}

#[test]
fn bad_exclude_file_and_task_file() {
    let d = Dir::new();
    d.write(
        "mimic/NOTEEVENTS.csv",
        format!("{}\n{}", mimic3_header(), good_rows()),
    );
    d.write("exclude.txt", "12\nabc\n");
    let err = d
        .ehrprep(&[
            "build",
            "--mimic-dir",
            "mimic",
            "--out",
            "out",
            "--exclude-subjects",
            "exclude.txt",
        ])
        .fails();
    assert!(
        err.contains("exclude.txt") && err.contains("line 2"),
        "{err}"
    );

    d.write("tasks/test.json", "{\"data\": [");
    let err = d
        .ehrprep(&[
            "build",
            "--mimic-dir",
            "mimic",
            "--out",
            "out",
            "--task-data",
            "tasks",
        ])
        .fails();
    assert!(err.contains("test.json") && err.contains("SQuAD"), "{err}");
    assert!(!d.join("out/catalog.duckdb").exists());
}

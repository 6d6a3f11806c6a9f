//! The corpus recipe end to end on small hand-written inputs whose every decision is known.

use std::collections::BTreeMap;

use crate::util::*;

/// A MIMIC-III + MIMIC-IV layout exercising every drop reason. Returns the expected reason
/// per (source, note_id).
fn recipe_inputs(d: &Dir) -> BTreeMap<(String, String), &'static str> {
    let t = "2150-01-01 08:00:00";
    let t2 = "2150-01-02 08:00:00";
    let rows = [
        // Subject 1 is CareVue-only: its radiology stays.
        (
            m3_row(
                1,
                1,
                "11",
                t,
                "",
                "Radiology",
                "",
                "",
                " CHEST X-RAY: no acute process.",
            ),
            "kept",
        ),
        (
            m3_row(
                2,
                1,
                "11",
                t,
                "2150-01-01 09:00:00",
                "Nursing",
                "100",
                "1",
                "flagged as error",
            ),
            "error_flag",
        ),
        // Subject 2 is MetaVision: radiology and discharge summaries overlap MIMIC-IV.
        (
            m3_row(
                3,
                2,
                "12",
                "",
                "",
                "Discharge summary",
                "",
                "",
                "Admission Date: [**2150-1-1**]",
            ),
            "era_overlap",
        ),
        (
            m3_row(4, 2, "12", t, "", "Radiology", "", "", "CT HEAD: normal."),
            "era_overlap",
        ),
        (
            m3_row(
                5,
                2,
                "12",
                t,
                "2150-01-01 10:00:00",
                "Nursing/other",
                "100",
                "",
                "Neuro: first draft",
            ),
            "draft_superseded",
        ),
        (
            m3_row(
                6,
                2,
                "12",
                t,
                "2150-01-01 11:00:00",
                "Nursing/other",
                "100",
                "",
                "Neuro: final version",
            ),
            "kept",
        ),
        (
            m3_row(
                7,
                2,
                "12",
                t,
                "2150-01-01 10:30:00",
                "Nursing/other",
                "101",
                "",
                "Resp: another nurse",
            ),
            "kept",
        ),
        (
            m3_row(
                8,
                2,
                "12",
                t,
                "2150-01-01 10:30:00",
                "Physician ",
                "102",
                "",
                "Assessment: stable",
            ),
            "kept",
        ),
        // Subject 3 is in the task data (RadQA title 9).
        (
            m3_row(
                9,
                3,
                "13",
                t,
                "",
                "Radiology",
                "",
                "",
                "CHEST: small effusion.",
            ),
            "task_patient",
        ),
        (
            m3_row(
                10,
                3,
                "13",
                t,
                "2150-01-01 09:00:00",
                "Nursing",
                "103",
                "",
                "Neuro: intact",
            ),
            "task_patient",
        ),
        // Subject 4 is excluded by file.
        (
            m3_row(
                11,
                4,
                "14",
                t,
                "2150-01-01 09:00:00",
                "Nursing",
                "104",
                "",
                "GI: tolerating diet",
            ),
            "excluded_subject",
        ),
        // Subject 5: empty after cleanup, an exact copy, placeholders, an ISERROR latest save.
        (
            m3_row(
                12,
                5,
                "15",
                t,
                "2150-01-01 09:00:00",
                "Nursing",
                "105",
                "",
                "JavaScript:parent.POPUP('x')\n\x13\n  ",
            ),
            "empty",
        ),
        (
            m3_row(
                13,
                5,
                "15",
                t2,
                "2150-01-02 09:00:00",
                "Nursing",
                "106",
                "",
                "Resp: another nurse  \n\n",
            ),
            "exact_duplicate",
        ),
        (
            m3_row(
                14,
                5,
                "",
                t2,
                "2150-01-02 09:00:00",
                "General",
                "107",
                "",
                "Seen by [**Known lastname 12**] at [**Hospital1 18**]\non [**2150-1-2**].",
            ),
            "kept",
        ),
        (
            m3_row(
                15,
                5,
                "15",
                "2150-01-03 08:00:00",
                "2150-01-03 12:00:00",
                "Nursing",
                "200",
                "1",
                "latest save, flagged",
            ),
            "error_flag",
        ),
        (
            m3_row(
                16,
                5,
                "15",
                "2150-01-03 08:00:00",
                "2150-01-03 11:00:00",
                "Nursing",
                "200",
                "",
                "earlier save, kept",
            ),
            "kept",
        ),
    ];
    let mut expected = BTreeMap::new();
    let mut csv = format!("{}\n", mimic3_header());
    for (row, reason) in &rows {
        let id = row.split(',').next().unwrap().to_string();
        expected.insert(("mimic-iii".to_string(), id), *reason);
        csv.push_str(row);
        csv.push('\n');
    }
    d.write("mimic/mimiciii/NOTEEVENTS.csv", csv);
    d.write(
        "mimic/mimiciii/ICUSTAYS.csv.gz",
        gzip(
            b"\"ROW_ID\",\"SUBJECT_ID\",\"HADM_ID\",\"ICUSTAY_ID\",\"DBSOURCE\"\n1,1,11,1,\"carevue\"\n2,2,12,2,\"metavision\"\n3,3,13,3,\"carevue\"\n4,4,14,4,\"carevue\"\n5,5,15,5,\"carevue\"\n6,5,15,6,\"carevue\"\n",
        ),
    );
    let iv_text =
        "Name:  ___                 Unit No:   ___\n \nHistory: ___ year old man, seen by Dr. ___.";
    let discharge = format!(
        "{MIMIC4_HEADER}\n10000001-DS-1,10000001,2001,DS,1,2180-01-01 00:00:00,2180-01-01 10:00:00,\"{iv_text}\"\n10000001-DS-2,10000001,2002,DS,2,2180-02-01 00:00:00,,\"{iv_text}\"\n"
    );
    d.write(
        "mimic/mimic-iv-note/2.2/note/discharge.csv.gz",
        gzip(discharge.as_bytes()),
    );
    d.write(
        "mimic/mimic-iv-note/2.2/note/radiology.csv",
        format!("{MIMIC4_HEADER}\n10000002-RR-1,10000002,,RR,1,2180-01-01 00:00:00,,\"EXAMINATION:  CHEST\"\n"),
    );
    expected.insert(("mimic-iv".into(), "10000001-DS-1".into()), "kept");
    expected.insert(
        ("mimic-iv".into(), "10000001-DS-2".into()),
        "exact_duplicate",
    );
    expected.insert(("mimic-iv".into(), "10000002-RR-1".into()), "kept");

    d.write(
        "tasks/radqa/train.json",
        r#"{"version":"v2.0","data":[{"title":"9","paragraphs":[]},{"title":"999","paragraphs":[]}]}"#,
    );
    d.write("exclude.txt", "# subjects who withdrew\n4\n\n");
    expected
}

fn decisions(out: &std::path::Path) -> BTreeMap<(String, String), String> {
    let conn = catalog(out);
    rows(&conn, "SELECT source, note_id, reason FROM note_decisions")
        .into_iter()
        .map(|r| ((r[0].clone(), r[1].clone()), r[2].clone()))
        .collect()
}

#[test]
fn every_note_gets_exactly_the_expected_reason() {
    let d = Dir::new();
    let expected = recipe_inputs(&d);
    let stdout = d
        .build_corpus(&[
            "--task-data",
            "tasks",
            "--exclude-subjects",
            "exclude.txt",
            "--quiet",
        ])
        .ok();
    assert!(
        stdout.contains("19 notes in, 8 kept, 11 dropped"),
        "{stdout}"
    );

    let got = decisions(&d.join("out"));
    let got: BTreeMap<_, &str> = got.iter().map(|(k, v)| (k.clone(), v.as_str())).collect();
    assert_eq!(got, expected);

    let conn = catalog(&d.join("out"));
    // One decision row per input note, and the corpus holds exactly the kept ones.
    let counts = rows(
        &conn,
        "SELECT (SELECT count(*) FROM note_decisions), (SELECT count(*) FROM corpus),
                (SELECT count(*) FROM note_decisions WHERE reason = 'kept')",
    );
    assert_eq!(counts, [["19", "8", "8"].map(String::from)]);
    // Categories are trimmed; MIMIC-IV gets the file's category; empty HADM_ID is NULL.
    let meta = rows(
        &conn,
        "SELECT note_id, category, coalesce(hadm_id::VARCHAR, 'NULL') FROM note_decisions
         WHERE note_id IN ('8', '14', '10000001-DS-1', '10000002-RR-1') ORDER BY note_id",
    );
    assert_eq!(
        meta,
        [
            ["10000001-DS-1", "Discharge summary", "2001"],
            ["10000002-RR-1", "Radiology", "NULL"],
            ["14", "General", "NULL"],
            ["8", "Physician", "12"],
        ]
        .map(|r| r.map(String::from))
    );
    // Kept notes are normalized.
    let text = rows(
        &conn,
        "SELECT note_id, text FROM corpus WHERE note_id IN ('14', '10000001-DS-1') ORDER BY note_id",
    );
    assert_eq!(
        text[0][1],
        "Name:  [Name]                 Unit No:   [Reg#]\n\nHistory: [Age] year old man, seen by Dr. [Name]."
    );
    assert_eq!(text[1][1], "Seen by [Name] at [Company]\non 2150-1-2.");
    // The run is recorded as succeeded, with its stats.
    let run = rows(
        &conn,
        "SELECT status, finished_at IS NOT NULL, stats LIKE '%\"kept\"%' FROM build_runs",
    );
    assert_eq!(run, [["succeeded", "true", "true"].map(String::from)]);
    // The staging tables are gone.
    let tables = rows(
        &conn,
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'stage%'",
    );
    assert_eq!(tables, [["0".to_string()]]);
}

#[test]
fn unmatched_task_rows_are_reported() {
    let d = Dir::new();
    recipe_inputs(&d);
    let run = d.build_corpus(&["--task-data", "tasks"]);
    run.ok();
    assert!(
        run.stderr()
            .contains("1 task ROW_IDs are not in NOTEEVENTS"),
        "{}",
        run.stderr()
    );
}

#[test]
fn era_rule_is_skipped_without_icustays_or_without_mimic4() {
    let d = Dir::new();
    recipe_inputs(&d);
    std::fs::remove_file(d.join("mimic/mimiciii/ICUSTAYS.csv.gz")).unwrap();
    let run = d.build_corpus(&[]);
    run.ok();
    assert!(
        run.stderr().contains("ICUSTAYS was not found"),
        "{}",
        run.stderr()
    );
    let got = decisions(&d.join("out"));
    assert_eq!(got[&("mimic-iii".to_string(), "3".to_string())], "kept");
    assert!(!got.values().any(|r| r == "era_overlap"));

    // MIMIC-III alone: nothing overlaps, so no era rule even with ICUSTAYS.
    let d = Dir::new();
    recipe_inputs(&d);
    std::fs::remove_dir_all(d.join("mimic/mimic-iv-note")).unwrap();
    let run = d.build_corpus(&[]);
    run.ok();
    assert!(
        !run.stderr().contains("ICUSTAYS was not found"),
        "{}",
        run.stderr()
    );
    let got = decisions(&d.join("out"));
    assert_eq!(got[&("mimic-iii".to_string(), "4".to_string())], "kept");
}

#[test]
fn deid_keep_leaves_placeholders() {
    let d = Dir::new();
    recipe_inputs(&d);
    d.build_corpus(&["--deid", "keep"]).ok();
    let conn = catalog(&d.join("out"));
    let text = rows(&conn, "SELECT text FROM corpus WHERE note_id = '14'");
    assert_eq!(
        text[0][0],
        "Seen by [**Known lastname 12**] at [**Hospital1 18**]\non [**2150-1-2**]."
    );
}

#[test]
fn two_builds_agree_exactly() {
    let d = Dir::new();
    recipe_inputs(&d);
    let args = |out: &'static str, batch: &'static str| {
        vec![
            "build",
            "--no-shards",
            "--mimic-dir",
            "mimic",
            "--out",
            out,
            "--task-data",
            "tasks",
            "--batch-notes",
            batch,
        ]
    };
    d.ehrprep(&args("a", "3")).ok();
    d.ehrprep(&args("b", "3")).ok();
    d.ehrprep(&args("c", "100000")).ok();
    // What a build decided and kept, apart from which build it was.
    let results = |conn: &duckdb::Connection| {
        (
            rows(
                conn,
                "SELECT * EXCLUDE (build_id) FROM note_decisions ORDER BY source, note_id",
            ),
            rows(conn, "SELECT * FROM corpus ORDER BY seq"),
        )
    };
    let dump = |out: &str| {
        let conn = catalog(&d.join(out));
        (
            results(&conn),
            rows(&conn, "SELECT DISTINCT build_id FROM note_decisions"),
            rows(
                &conn,
                "SELECT build_id, config, inputs, status FROM build_runs",
            ),
        )
    };
    assert_eq!(dump("a"), dump("b"));

    // Batches are a unit of work only: one batch for everything decides the same.
    let results_of = |out: &str| results(&catalog(&d.join(out)));
    assert_eq!(results_of("a"), results_of("c"));
}

#[test]
fn outputs_are_owner_only_and_reruns_refuse_without_force() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new();
    recipe_inputs(&d);
    d.build_corpus(&[]).ok();
    let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("out"), 0o700);
    assert_eq!(mode("out/catalog.duckdb"), 0o600);

    let err = d.build_corpus(&[]).fails();
    assert!(err.contains("already holds a finished build"), "{err}");
    assert!(err.contains("--force"), "{err}");
    d.build_corpus(&["--force"]).ok();
}

#[test]
fn a_killed_build_leaves_no_catalog_and_the_next_run_starts_over() {
    let d = Dir::new();
    recipe_inputs(&d);
    // What a build killed mid-way leaves: the temporary catalog, perhaps the
    // decompressed copy of an input being read and what DuckDB spilled to disk.
    d.write("out/catalog.duckdb.partial", b"not a finished database");
    d.write("out/ingest.partial/NOTEEVENTS.csv", b"decompressed notes");
    d.write(
        "out/catalog.duckdb.partial.tmp/duckdb_temp_storage_S32K-0.tmp",
        b"spilled rows",
    );
    assert!(!d.join("out/catalog.duckdb").exists());
    let run = d.build_corpus(&[]);
    run.ok();
    assert!(
        run.stderr().contains("unfinished build"),
        "{}",
        run.stderr()
    );
    assert!(d.join("out/catalog.duckdb").exists());
    assert!(!d.join("out/catalog.duckdb.partial").exists());
    assert!(!d.join("out/ingest.partial").exists());
    assert!(!d.join("out/catalog.duckdb.partial.tmp").exists());
}

#[test]
fn notes_longer_than_duckdbs_default_line_limit_are_read() {
    let d = Dir::new();
    let long = "Plan: continue current management. ".repeat(80_000); // ~2.8 MB
    let csv = format!(
        "{}\n{}\n{}\n",
        mimic3_header(),
        m3_row(1, 1, "", "", "", "Discharge summary", "", "", &long),
        m3_row(
            2,
            1,
            "",
            "",
            "",
            "Echo",
            "",
            "",
            "short \"quoted\" note,\nover two lines"
        )
    );
    d.write("mimic/NOTEEVENTS.csv.gz", gzip(csv.as_bytes()));
    d.build_corpus(&[]).ok();
    let conn = catalog(&d.join("out"));
    let got = rows(
        &conn,
        "SELECT note_id, length(text) FROM corpus ORDER BY seq",
    );
    assert_eq!(got[0][1], long.trim_end().len().to_string());
    let text = rows(&conn, "SELECT text FROM corpus WHERE note_id = '2'");
    assert_eq!(text[0][0], "short \"quoted\" note,\nover two lines");
}

#[test]
fn notes_keep_file_order_across_plain_and_gzip_files() {
    let d = Dir::new();
    let m3: String = [5, 3, 9, 1]
        .map(|id| m3_row(id, id, "", "", "", "Nursing", "", "", &format!("note {id}")) + "\n")
        .concat();
    d.write(
        "mimic/mimiciii/NOTEEVENTS.csv.gz",
        gzip(format!("{}\n{m3}", mimic3_header()).as_bytes()),
    );
    let m4 = |ids: [&str; 2]| {
        let rows: String = ids
            .map(|id| format!("{id},7,,DS,1,2180-01-01 00:00:00,,\"note {id}\"\n"))
            .concat();
        format!("{MIMIC4_HEADER}\n{rows}")
    };
    d.write(
        "mimic/note/discharge.csv.gz",
        gzip(m4(["7-DS-2", "7-DS-1"]).as_bytes()),
    );
    d.write("mimic/note/radiology.csv", m4(["7-RR-9", "7-RR-1"]));
    d.build_corpus(&[]).ok();
    let conn = catalog(&d.join("out"));
    let order: Vec<String> = rows(&conn, "SELECT note_id FROM note_decisions")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let expected = ["5", "3", "9", "1", "7-DS-2", "7-DS-1", "7-RR-9", "7-RR-1"];
    assert_eq!(order, expected);
    let corpus: Vec<Vec<String>> = rows(&conn, "SELECT note_id, text FROM corpus ORDER BY seq");
    let by_seq: Vec<&str> = corpus.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(by_seq, expected);
    assert!(corpus.iter().all(|r| r[1] == format!("note {}", r[0])));
    // The decompressed copies DuckDB read are gone.
    let left: Vec<_> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["catalog.duckdb"]);
}

#[test]
fn sql_prints_table_csv_and_json() {
    let d = Dir::new();
    recipe_inputs(&d);
    d.build_corpus(&[]).ok();
    let q = "SELECT reason, count(*) AS notes FROM note_decisions GROUP BY 1 ORDER BY 1";
    let csv = d
        .ehrprep(&["sql", "--db", "out/catalog.duckdb", "--format", "csv", q])
        .ok();
    assert!(csv.starts_with("reason,notes\n"), "{csv}");
    assert!(csv.contains("kept,"), "{csv}");
    let json = d
        .ehrprep(&["sql", "--db", "out/catalog.duckdb", "--format", "json", q])
        .ok();
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        parsed
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"] == "draft_superseded")
    );
    let table = d.ehrprep(&["sql", "--db", "out/catalog.duckdb", q]).ok();
    assert!(table.contains("draft_superseded"), "{table}");
    // Read-only: writes are refused.
    let err = d
        .ehrprep(&["sql", "--db", "out/catalog.duckdb", "DELETE FROM corpus"])
        .fails();
    assert!(err.contains("error:"), "{err}");
}

#[test]
fn near_duplicates_are_recorded_and_dropped_only_under_strict() {
    let words: Vec<String> = (0..150)
        .map(|i| format!("finding{}", i * 7 % 101))
        .collect();
    let a = words.join(" ");
    let mut edited = words.clone();
    edited[75] = "changed".to_string();
    let b = edited.join(" ");
    let c: String = (0..150).map(|i| format!("other{i} ")).collect();
    let csv = format!(
        "{}\n{}\n{}\n{}\n",
        mimic3_header(),
        m3_row(1, 1, "", "", "", "Echo", "", "", &a),
        m3_row(2, 2, "", "", "", "Echo", "", "", &b),
        m3_row(3, 3, "", "", "", "Echo", "", "", &c)
    );
    let d = Dir::new();
    d.write("mimic/NOTEEVENTS.csv", &csv);
    let build = |out: &str, extra: &[&str]| {
        let mut args = vec!["build", "--no-shards", "--mimic-dir", "mimic", "--out", out];
        args.extend_from_slice(extra);
        d.ehrprep(&args)
    };
    let pair = [["1", "1", "true"], ["1", "2", "false"]].map(|r| r.map(String::from));
    // Without near-duplicate detection: the paper recipe's decisions, no clusters.
    let cases = [
        (
            "paper",
            vec!["--recipe", "paper"],
            "kept",
            "3",
            pair.to_vec(),
        ),
        (
            "strict",
            vec!["--recipe", "strict"],
            "near_duplicate",
            "2",
            pair.to_vec(),
        ),
        ("no-near", vec!["--no-near-duplicates"], "kept", "3", vec![]),
    ];
    let mut corpora = Vec::new();
    for (out, extra, reason_of_2, corpus, clusters) in cases {
        build(out, &extra).ok();
        let got = decisions(&d.join(out));
        assert_eq!(got[&("mimic-iii".to_string(), "1".to_string())], "kept");
        assert_eq!(
            got[&("mimic-iii".to_string(), "2".to_string())],
            reason_of_2,
            "{out}"
        );
        assert_eq!(got[&("mimic-iii".to_string(), "3".to_string())], "kept");
        let conn = catalog(&d.join(out));
        let found = rows(
            &conn,
            "SELECT cluster_id, note_id, first FROM dedup_clusters ORDER BY note_id",
        );
        assert_eq!(found, clusters, "{out}");
        assert_eq!(
            rows(&conn, "SELECT count(*) FROM corpus"),
            [[corpus.to_string()]],
            "{out}"
        );
        // The statistics move the near duplicate's characters with it.
        let stats: serde_json::Value =
            serde_json::from_str(&rows(&conn, "SELECT stats FROM build_runs")[0][0]).unwrap();
        let chars = |reason: &str| stats["by_reason"][reason]["chars"].as_u64();
        if out == "strict" {
            assert_eq!(chars("near_duplicate"), Some(b.len() as u64));
            assert_eq!(chars("kept"), Some((a.len() + c.trim_end().len()) as u64));
        } else {
            assert_eq!(chars("near_duplicate"), None, "{out}");
        }
        corpora.push(rows(
            &conn,
            "SELECT seq, note_id, text FROM corpus ORDER BY seq",
        ));
    }
    assert_eq!(
        corpora[0], corpora[2],
        "the paper recipe without near duplicates"
    );

    // Strict needs near-duplicate detection: refused before OUT is touched.
    let err = build("refused", &["--recipe", "strict", "--no-near-duplicates"]).fails();
    assert!(err.contains("--no-near-duplicates"), "{err}");
    assert!(!d.join("refused/catalog.duckdb").exists());
}

#[test]
fn drafts_collapse_only_when_every_storetime_is_known_and_ties_keep_the_first() {
    let d = Dir::new();
    let t = "2150-01-01 08:00:00";
    let note = |id: u64, cgid: &str, storetime: &str| {
        m3_row(
            id,
            1,
            "11",
            t,
            storetime,
            "Nursing",
            cgid,
            "",
            &format!("note {id}"),
        ) + "\n"
    };
    let csv = [
        mimic3_header() + "\n",
        // Every STORETIME known: the latest stays.
        note(1, "100", "2150-01-01 09:00:00"),
        note(2, "100", "2150-01-01 10:00:00"),
        // One STORETIME missing: the released code keeps the whole group.
        note(3, "101", "2150-01-01 09:00:00"),
        note(4, "101", ""),
        // Saved at the same time: the first row stays.
        note(5, "102", "2150-01-01 09:00:00"),
        note(6, "102", "2150-01-01 09:00:00"),
    ]
    .concat();
    d.write("mimic/NOTEEVENTS.csv", csv);
    d.build_corpus(&["--quiet"]).ok();
    let got = decisions(&d.join("out"));
    let reason = |id: &str| got[&("mimic-iii".to_string(), id.to_string())].as_str();
    let expected = [
        ("1", "draft_superseded"),
        ("2", "kept"),
        ("3", "kept"),
        ("4", "kept"),
        ("5", "kept"),
        ("6", "draft_superseded"),
    ];
    for (id, want) in expected {
        assert_eq!(reason(id), want, "note {id}");
    }
}

#[test]
fn excluded_subjects_may_name_their_release() {
    let d = Dir::new();
    // Subject 7 in both releases: MIMIC-IV's ids are not MIMIC-III's, so a bare id means
    // both and a qualified one only its release.
    let iii = mimic3_header()
        + "\n"
        + &m3_row(1, 7, "", "", "", "Nursing", "", "", "mimic-iii note")
        + "\n"
        + &m3_row(2, 8, "", "", "", "Nursing", "", "", "another patient")
        + "\n";
    d.write("mimic/mimiciii/NOTEEVENTS.csv", iii);
    d.write(
        "mimic/mimic-iv-note/2.2/note/discharge.csv",
        format!(
            "{MIMIC4_HEADER}\n7-DS-1,7,,DS,1,2180-01-01 00:00:00,,\"mimic-iv note\"\n8-DS-1,8,,DS,1,2180-01-01 00:00:00,,\"other\"\n"
        ),
    );
    let reasons = |exclude: &str| {
        d.write("exclude.txt", exclude);
        d.build_corpus(&["--exclude-subjects", "exclude.txt", "--force", "--quiet"])
            .ok();
        let got = decisions(&d.join("out"));
        ["1", "2", "7-DS-1", "8-DS-1"]
            .map(|id| {
                let source = if id.contains('-') {
                    "mimic-iv"
                } else {
                    "mimic-iii"
                };
                got[&(source.to_string(), id.to_string())].clone()
            })
            .to_vec()
    };
    let (out, kept) = ("excluded_subject", "kept");
    assert_eq!(reasons("mimic-iv:7\n"), [kept, kept, out, kept]);
    assert_eq!(reasons("mimic-iii: 7\n"), [out, kept, kept, kept]);
    assert_eq!(reasons("7 # both\nmimic-iv:8\n"), [out, kept, out, out]);

    d.write("exclude.txt", "mimic-v:7\n");
    let err = d
        .build_corpus(&["--exclude-subjects", "exclude.txt", "--force"])
        .fails();
    assert!(
        err.contains("exclude.txt") && err.contains("line 1"),
        "{err}"
    );
}

/// A MIMIC-III radiology report (a RadQA document) and discharge summary (a CLIP document),
/// and MIMIC-IV notes: re-de-identified copies of both, a report sharing two sentences with
/// the first, and a summary holding a third of the second.
fn task_copy_inputs(d: &Dir) {
    let findings = "There is a new patchy consolidation in the right lower lobe, concerning \
        for pneumonia. Small right pleural effusion is present. The left lung is clear. Heart \
        size is mildly enlarged, unchanged from [**2149-12-2**]. A right internal jugular \
        catheter terminates in the mid superior vena cava.";
    let impression = "Right lower lobe consolidation compatible with pneumonia in the \
        appropriate clinical setting, with small right effusion. Followup radiographs after \
        treatment recommended, per Dr. [**Last Name (STitle) 1234**].";
    let report = format!(
        "[**2150-1-1**] 8:14 AM\n CHEST (PA & LAT)   Clip # [**Clip Number (Radiology) 39734**]\n \
         FINAL REPORT\nHISTORY: Fever and productive cough.\nFINDINGS: {findings}\n\
         IMPRESSION: {impression}"
    );
    let summary_sentences = [
        "Mr. [**Known lastname 4421**] is a 71 year old man admitted with acute on chronic \
         systolic heart failure after running out of furosemide .",
        "He was diuresed with intravenous furosemide with net negative four liters and his \
         dyspnea resolved .",
        "His metoprolol was increased to 50 mg twice daily and lisinopril was held for acute \
         kidney injury , creatinine peak 2.1 .",
        "Please weigh yourself every morning and call your cardiologist if your weight goes \
         up more than three pounds .",
        "Follow up with Dr. [**Last Name (STitle) 988**] in cardiology clinic on \
         [**2151-8-20**] and have your chemistry panel checked within one week .",
        "Restart lisinopril only if your kidney function has recovered at that visit .",
    ];
    let summary = summary_sentences
        .join("\n")
        .replace(" .", ".")
        .replace(" ,", ",");
    let mut m3 = format!("{}\n", mimic3_header());
    for (row, subject, category, text) in [
        (21, 7, "Radiology", report.as_str()),
        (22, 8, "Discharge summary", summary.as_str()),
        (
            23,
            9,
            "Nursing",
            "Unrelated nursing note: patient resting comfortably.",
        ),
    ] {
        m3.push_str(&m3_row(row, subject, "", "", "", category, "", "", text));
        m3.push('\n');
    }
    d.write("mimic/mimiciii/NOTEEVENTS.csv", m3);

    // MIMIC-IV: other placeholders, other line breaks and spacing, lines of its own.
    let iv = |s: &str| {
        let mut out = String::new();
        let mut rest = s;
        while let Some(at) = rest.find("[**") {
            out.push_str(&rest[..at]);
            out.push_str("___");
            rest = &rest[at + rest[at..].find("**]").unwrap() + 3..];
        }
        out + rest
    };
    let rewrap = |s: &str| s.replace(". ", ".\n").replace(", ", ",  ");
    let report_copy = format!(
        "EXAMINATION:  CHEST (PA AND LAT)\n\nINDICATION:  ___ year old man with fever.\n\n\
         FINDINGS:\n\n{}\n\nIMPRESSION:\n\n{}\n\nThe study was reviewed with the covering \
         resident at ___.",
        rewrap(&iv(findings)),
        rewrap(&iv(impression))
    );
    let neighbour = "EXAMINATION:  CHEST (PA AND LAT)\n\nFINDINGS:\n\nSmall right pleural \
        effusion is present. The left lung is clear. No focal consolidation. Cardiomediastinal \
        silhouette is normal. No pneumothorax.\n\nIMPRESSION:\n\nSmall right effusion.";
    let summary_copy = format!(
        "Name:  ___                 Unit No:   ___\n \nAdmission Date:  ___\n\n{}\n\nDischarge \
         Condition: stable.",
        rewrap(&iv(&summary))
    );
    let third = summary_sentences[..2].join(" ").replace(" .", ".");
    let part = format!("Brief Hospital Course:\n{}\nDischarged home.", iv(&third));
    let quote = |s: &str| s.replace('"', "\"\"");
    d.write(
        "mimic/mimic-iv-note/2.2/note/radiology.csv",
        format!(
            "{MIMIC4_HEADER}\n10000010-RR-1,10000010,,RR,1,2180-01-01 00:00:00,,\"{}\"\n\
             10000012-RR-1,10000012,,RR,1,2180-01-01 00:00:00,,\"{}\"\n",
            quote(&report_copy),
            quote(neighbour)
        ),
    );
    d.write(
        "mimic/mimic-iv-note/2.2/note/discharge.csv",
        format!(
            "{MIMIC4_HEADER}\n10000011-DS-1,10000011,3001,DS,1,2180-01-01 00:00:00,,\"{}\"\n\
             10000013-DS-1,10000013,3002,DS,1,2180-01-01 00:00:00,,\"{}\"\n",
            quote(&summary_copy),
            quote(&part)
        ),
    );

    // RadQA: the report's findings and impression as two contexts; CLIP: the summary's
    // sentences, tokenized.
    let radqa = serde_json::json!({
        "version": "v2.0",
        "data": [{"title": "21", "paragraphs": [
            {"context": findings, "qas": []},
            {"context": impression, "qas": []},
        ]}],
    });
    d.write("tasks/radqa/test.json", radqa.to_string());
    let mut clip = String::from("doc_id,sent_index,sentence,labels\n");
    for (i, s) in summary_sentences.iter().enumerate() {
        let tokens: Vec<String> = s
            .split_whitespace()
            .map(|t| format!("'{}'", t.replace('\'', "\\'")))
            .collect();
        clip.push_str(&format!("22,{i},\"[{}]\",[]\n", tokens.join(", ")));
    }
    d.write("tasks/clip/sentence_level.csv", clip);
}

#[test]
fn mimic4_copies_of_task_documents_are_dropped_by_their_text() {
    let d = Dir::new();
    task_copy_inputs(&d);
    d.build_corpus(&["--task-data", "tasks", "--quiet"]).ok();
    let got = decisions(&d.join("out"));
    let reason = |source: &str, id: &str| got[&(source.to_string(), id.to_string())].clone();
    // The task notes themselves go by patient, their MIMIC-IV copies by content.
    assert_eq!(reason("mimic-iii", "21"), "task_patient");
    assert_eq!(reason("mimic-iii", "22"), "task_patient");
    assert_eq!(reason("mimic-iii", "23"), "kept");
    assert_eq!(reason("mimic-iv", "10000010-RR-1"), "task_text_overlap");
    assert_eq!(reason("mimic-iv", "10000011-DS-1"), "task_text_overlap");
    // Two shared sentences, or a third of a document, are not a copy.
    assert_eq!(reason("mimic-iv", "10000012-RR-1"), "kept");
    assert_eq!(reason("mimic-iv", "10000013-DS-1"), "kept");
    let conn = catalog(&d.join("out"));
    let overlap = rows(
        &conn,
        "SELECT source, note_id, task, task_doc_id, containment >= 0.9 FROM task_overlap",
    );
    assert_eq!(
        overlap,
        [
            ["mimic-iv", "10000011-DS-1", "clip", "22", "true"],
            ["mimic-iv", "10000010-RR-1", "radqa", "21", "true"],
        ]
        .map(|r| r.map(String::from))
    );
    // The summary's third, looked for with a lower threshold, goes too; without the guard
    // both copies stay.
    d.build_corpus(&[
        "--task-data",
        "tasks",
        "--task-overlap-threshold",
        "0.2",
        "--force",
        "--quiet",
    ])
    .ok();
    let got = decisions(&d.join("out"));
    let part = &got[&("mimic-iv".to_string(), "10000013-DS-1".to_string())];
    assert_eq!(part, "task_text_overlap");
    d.build_corpus(&[
        "--task-data",
        "tasks",
        "--no-task-overlap",
        "--force",
        "--quiet",
    ])
    .ok();
    let got = decisions(&d.join("out"));
    assert!(
        got.iter()
            .all(|(k, r)| k.0 == "mimic-iii" || r.as_str() == "kept"),
        "{got:?}"
    );
    let conn = catalog(&d.join("out"));
    assert_eq!(rows(&conn, "SELECT count(*) FROM task_overlap"), [["0"]]);
}

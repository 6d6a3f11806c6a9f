//! `ehrprep report` and the paper's published numbers in the catalog: Table 3 and the
//! limited-data Tables 11-15, each number with its table, drawn as the paper's Fig. 4 draws
//! them beside the runs a catalog holds.

use crate::util::*;

/// A corpus-only build of the fixtures, with the evaluation tables and one finished MedNLI
/// run at two fractions written into its catalog.
fn catalog_with_runs(dir: &Dir) {
    dir.build_fixtures("out", &["--no-shards", "--quiet"]).ok();
    let conn = duckdb::Connection::open(dir.join("out/catalog.duckdb")).unwrap();
    conn.execute_batch(ehrprep::catalog::sql::EVAL.get("schema"))
        .unwrap();
    for (id, fraction, accuracy) in [("r1", 0.01, 0.41), ("r2", 1.0, 0.62)] {
        conn.execute(
            "INSERT INTO eval_runs VALUES (?, 'mednli', ?, 1, 'ckpt', NULL, NULL, 'sha', \
             'tiny-base', 'out', '{}', 10, 0, 1, now(), now(), 'finished')",
            duckdb::params![id, fraction],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO eval_metrics VALUES (?, 'test', 1, 'accuracy', ?)",
            duckdb::params![id, accuracy],
        )
        .unwrap();
    }
}

#[test]
fn the_papers_results_cover_every_fraction_with_their_tables() {
    let dir = Dir::new();
    catalog_with_runs(&dir);
    let report = dir.ehrprep(&["report", "--db", "out/catalog.duckdb", "--out", "rep"]);
    report.ok();
    let sql = |query: &str| {
        dir.ehrprep(&[
            "sql",
            "--db",
            "out/catalog.duckdb",
            "--format",
            "csv",
            query,
        ])
        .ok()
    };
    let fractions = sql("SELECT DISTINCT fraction FROM paper_results ORDER BY 1");
    assert_eq!(
        fractions.lines().skip(1).collect::<Vec<_>>(),
        ["0.01", "0.05", "0.1", "0.25", "1.0"]
    );
    // Five limited-data models x five fractions x five metrics, each from its table.
    let tables = sql(
        "SELECT source, count(*) FROM paper_results WHERE source <> 'Table 3' GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        tables.lines().skip(1).collect::<Vec<_>>(),
        [
            "Table 11,25",
            "Table 12,25",
            "Table 13,25",
            "Table 14,25",
            "Table 15,25"
        ]
    );
    // The two inconsistencies stay as printed, beside Table 3's values.
    let pubmedgpt = sql(
        "SELECT source, value FROM paper_results WHERE model = 'PubMedGPT' AND task = 'radqa' \
         AND metric = 'f1' AND fraction = 1 ORDER BY source",
    );
    assert_eq!(
        pubmedgpt.lines().skip(1).collect::<Vec<_>>(),
        ["Table 12,0.729", "Table 3,0.698"]
    );
    let swapped = sql(
        "SELECT model, source, value FROM paper_results WHERE task = 'clip' AND fraction = 1 \
         AND metric = 'micro_f1' AND model IN ('GatorTron', 'RoBERTa') ORDER BY model, source",
    );
    assert_eq!(
        swapped.lines().skip(1).collect::<Vec<_>>(),
        [
            "GatorTron,Table 14,0.793",
            "GatorTron,Table 3,0.791",
            "RoBERTa,Table 14,0.791",
            "RoBERTa,Table 3,0.793"
        ]
    );
    // Table 3's rows that the limited-data tables lack.
    let table3 = sql(
        "SELECT model, value FROM paper_results WHERE source = 'Table 3' AND task = 'mednli' \
         AND model IN ('RoBERTa', 'PubMedGPT', 'Flan-T5-XXL in-context') ORDER BY model",
    );
    assert_eq!(
        table3.lines().skip(1).collect::<Vec<_>>(),
        [
            "Flan-T5-XXL in-context,0.808",
            "PubMedGPT,0.87",
            "RoBERTa,0.852"
        ]
    );
    // Our runs meet the paper's base-size numbers at 1.0 (Table 3 only) and at 0.01 none.
    let beside = sql("SELECT fraction, paper_model, paper_source FROM eval_vs_paper ORDER BY 1, 2");
    assert_eq!(
        beside.lines().skip(1).collect::<Vec<_>>(),
        [
            "1.0,Clinical-T5-Base,Table 3",
            "1.0,Clinical-T5-Base-Ckpt,Table 3",
            "1.0,T5-Base,Table 3"
        ]
    );

    // The plot draws a curve per limited-data model, the in-context models flat, and
    // Table 3's base models as points.
    let md = std::fs::read_to_string(dir.join("rep/report.md")).unwrap();
    for line in [
        "line: paper, Clinical-T5-Large",
        "line: paper, PubMedGPT",
        "flat line: paper, GPT-3 in-context",
        "flat line: paper, Flan-T5-XXL in-context",
        "square: paper, Clinical-T5-Base",
    ] {
        assert!(md.contains(line), "{line} not in:\n{md}");
    }
    assert!(dir.join("rep/mednli_accuracy.png").is_file());
}

#[test]
fn a_catalog_from_before_the_sources_and_dropout_still_reports() {
    let dir = Dir::new();
    dir.build_fixtures("out", &["--no-shards", "--quiet"]).ok();
    {
        // The tables as an older ehrprep made them.
        let conn = duckdb::Connection::open(dir.join("out/catalog.duckdb")).unwrap();
        conn.execute_batch(
            "CREATE TABLE paper_results (model VARCHAR NOT NULL, size VARCHAR NOT NULL, \
             params VARCHAR NOT NULL, task VARCHAR NOT NULL, fraction DOUBLE NOT NULL, \
             metric VARCHAR NOT NULL, value DOUBLE NOT NULL); \
             INSERT INTO paper_results VALUES ('T5-Base', 'base', '220M', 'mednli', 1.0, 'accuracy', .818); \
             CREATE TABLE train_runs (run_id VARCHAR NOT NULL, build_id VARCHAR NOT NULL, \
             tokenizer_sha256 VARCHAR NOT NULL, out VARCHAR NOT NULL, model VARCHAR NOT NULL, \
             config VARCHAR NOT NULL, model_config VARCHAR, device VARCHAR, parameters BIGINT, \
             plugin VARCHAR NOT NULL, plugin_version VARCHAR NOT NULL, \
             ehrprep_version VARCHAR NOT NULL, started_at TIMESTAMP NOT NULL, \
             finished_at TIMESTAMP, status VARCHAR NOT NULL, steps_done BIGINT NOT NULL);",
        )
        .unwrap();
    }
    dir.ehrprep(&["report", "--db", "out/catalog.duckdb", "--out", "rep"])
        .ok();
    let conn = catalog(&dir.join("out"));
    let sources = rows(&conn, "SELECT count(*), count(source) FROM paper_results");
    assert_eq!(sources[0][0], sources[0][1]);
    let dropout = rows(
        &conn,
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'train_runs' \
         AND column_name = 'dropout'",
    );
    assert_eq!(dropout, [["1".to_string()]]);
}

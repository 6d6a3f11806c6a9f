//! `ehrprep experiment run fixtures/experiments/smoke.toml` end to end on the CPU: synthetic
//! MIMIC and tasks -> build -> tiny pretraining -> finetuning on all three tasks -> metrics
//! in SQL -> report with plots; then a second run finds everything done.

use std::path::PathBuf;

use crate::util::*;

#[test]
fn the_smoke_experiment_runs_end_to_end_and_then_resumes_to_nothing() {
    let dir = Dir::new();
    let toml = root().join("fixtures/experiments/smoke.toml");
    let toml = toml.to_str().unwrap();
    let plugin = t5_plugin();
    let args = [
        "experiment",
        "run",
        toml,
        "--out",
        "smoke",
        "--plugin",
        &plugin,
        "--quiet",
    ];
    let stdout = dir.ehrprep(&args).ok();
    for line in [
        "synth: 20000 notes",
        "pretrain: finished at step 300",
        "mednli: 2 of 2 runs finished",
        "radqa: 1 of 1 runs finished",
        "clip: 1 of 1 runs finished",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }

    let db = catalog(&dir.join("smoke/build"));
    let metrics = rows(
        &db,
        "SELECT r.task, count(DISTINCT r.fraction), count(*) FROM eval_metrics m \
         JOIN eval_runs r USING (eval_run_id) WHERE m.split = 'test' GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        metrics,
        [
            vec!["clip", "1", "2"],
            vec!["mednli", "2", "2"],
            vec!["radqa", "1", "2"]
        ]
    );
    // On every task the tiny model is clearly above chance (the most frequent training
    // answer: about 0.33 for MedNLI's three balanced labels, the share of unanswerable
    // questions for RadQA, 0 for CLIP, where most sentences have no label).
    let summary = rows(
        &db,
        "SELECT task, fraction::VARCHAR, metric, mean::VARCHAR, majority::VARCHAR \
         FROM eval_summary WHERE metric IN ('accuracy', 'exact_match', 'macro_f1') \
         ORDER BY ALL",
    );
    let tasks: Vec<(&str, &str)> = summary
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    assert_eq!(
        tasks,
        [
            ("clip", "1.0"),
            ("mednli", "0.1"),
            ("mednli", "0.25"),
            ("radqa", "1.0")
        ]
    );
    for row in &summary {
        let (score, chance): (f64, f64) = (row[3].parse().unwrap(), row[4].parse().unwrap());
        assert!(
            score >= chance + 0.15,
            "{} {} at {}: {score}, chance {chance}",
            row[0],
            row[2],
            row[1]
        );
    }
    // Every finished run has chance beside its test metrics.
    let without = rows(
        &db,
        "SELECT count(*) FROM eval_summary WHERE majority IS NULL",
    );
    assert_eq!(without, [vec!["0"]]);
    let beside = rows(&db, "SELECT count(*) > 0 FROM eval_summary");
    assert_eq!(beside, [vec!["true"]]);
    drop(db);

    // The report: markdown naming its plots, and PNGs that Pillow reads.
    let report = dir.join("smoke/report");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    let plots = [
        "pretrain_loss.png",
        "mednli_accuracy.png",
        "radqa_f1.png",
        "clip_macro_f1.png",
    ];
    let paths: Vec<PathBuf> = plots.iter().map(|p| report.join(p)).collect();
    for p in &plots {
        assert!(md.contains(&format!("]({p})")), "{p} not linked\n{md}");
    }
    assert!(md.contains("| tiny | 0.25 | accuracy |"), "{md}");
    assert!(md.contains("| seeds | majority |"), "{md}");
    let seen = oracle(&python_path(), "png_oracle.py", &paths);
    for p in &paths {
        let info = &seen[p.to_str().unwrap()];
        assert_eq!(info["size"], serde_json::json!([640, 360]), "{info}");
        assert_eq!(info["mode"], "RGB");
        // Background, grid, axes, text and at least one data color.
        assert!(info["colors"].as_u64().unwrap() >= 4, "{info}");
    }

    // Everything is done: a second run only checks.
    let again = dir.ehrprep(&args).ok();
    for line in [
        "synth: done",
        "build: done",
        "pretrain: finished at step 300",
    ] {
        assert!(again.contains(line), "{line}\n{again}");
    }
}

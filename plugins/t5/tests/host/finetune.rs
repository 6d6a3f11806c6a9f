//! `ehrprep finetune` end to end on the CPU: synthetic MIMIC -> build -> tiny pretraining ->
//! finetuning on synthetic tasks -> metrics, predictions and lineage in the catalog.

use std::path::{Path, PathBuf};

use crate::util::*;

/// A build of the fixtures and a short tiny pretraining run, in `dir`.
fn pretrained(dir: &Dir) {
    dir.build_fixtures_for_training("out").ok();
    let plugin = t5_plugin();
    dir.ehrprep(&[
        "pretrain",
        "--build",
        "out",
        "--out",
        "runs/p",
        "--model",
        "tiny",
        "--steps",
        "30",
        "--batch-size",
        "4",
        "--warmup",
        "10",
        // 30 steps of a tiny model: without the paper's dropout it learns enough in them
        // for finetuning to beat chance clearly, which is what these tests are about.
        "--dropout",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--plugin",
        &plugin,
        "--quiet",
    ])
    .ok();
}

/// A finished `ehrprep finetune` run.
fn finetune(dir: &Dir, task: &str, data: &Path, extra: &[&str]) -> Run {
    let plugin = t5_plugin();
    let data = data.to_str().unwrap();
    let mut args = vec![
        "finetune",
        "--task",
        task,
        "--data",
        data,
        "--checkpoint",
        "runs/p",
        "--seeds",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--batch-size",
        "16",
        "--effective-batch",
        "16",
        "--lr",
        "5e-3",
        "--max-new-tokens",
        "12",
        "--plugin",
        &plugin,
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let run = dir.ehrprep(&args);
    run.ok();
    run
}

fn query(dir: &Dir, sql: &str) -> Vec<Vec<String>> {
    rows(&catalog(&dir.join("out")), sql)
}

#[test]
fn a_finetuned_tiny_model_beats_chance_on_synthetic_mednli_and_resumes() {
    let dir = Dir::new();
    // 500 training pairs: with 200 the tiny model stays at the label prior in these budgets.
    dir.ehrprep(&["synth", "--out", "synth", "--notes", "5000", "--seed", "3"])
        .ok();
    pretrained(&dir);
    let mednli = dir.join("synth/tasks/mednli");
    // Six epochs, then six more: the second call resumes at epoch 7.
    finetune(&dir, "mednli", &mednli, &["--epochs", "6"]);
    let stdout = finetune(&dir, "mednli", &mednli, &["--epochs", "12"]).stdout();
    assert!(stdout.contains("fraction 1 seed 1: finished"), "{stdout}");

    let runs = query(
        &dir,
        "SELECT count(*), max(status), max(train_examples) FROM eval_runs",
    );
    assert_eq!(runs, [vec!["1", "finished", "500"]]);
    let epochs = query(
        &dir,
        "SELECT count(*), count(DISTINCT epoch) FROM eval_metrics WHERE split = 'validation'",
    );
    assert_eq!(epochs, [vec!["12", "12"]]);
    // Each epoch's mean training loss is recorded, across the resume, and it falls.
    let losses: Vec<f64> = query(
        &dir,
        "SELECT value::VARCHAR FROM eval_metrics WHERE split = 'train' AND metric = 'loss' \
         ORDER BY epoch",
    )
    .iter()
    .map(|r| r[0].parse().unwrap())
    .collect();
    assert_eq!(losses.len(), 12, "{losses:?}");
    assert!(losses[11] < 0.8 * losses[0], "{losses:?}");
    // Chance is recorded beside the test metric: the most frequent training label's share
    // of the test set, counted here from the files.
    let test = query(
        &dir,
        "SELECT t.value::VARCHAR, c.value::VARCHAR, c.epoch FROM eval_metrics t \
         JOIN eval_metrics c USING (eval_run_id, metric) \
         WHERE t.split = 'test' AND c.split = 'majority' AND metric = 'accuracy'",
    );
    let accuracy: f64 = test[0][0].parse().unwrap();
    let chance: f64 = test[0][1].parse().unwrap();
    assert_eq!(test[0][2], "0");
    let labels = |name: &str| -> Vec<String> {
        std::fs::read_to_string(mednli.join(name))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["gold_label"].to_string()
            })
            .collect()
    };
    let train = labels("mli_train_v1.jsonl");
    let most = train
        .iter()
        .max_by_key(|l| {
            (
                train.iter().filter(|m| m == l).count(),
                std::cmp::Reverse(*l),
            )
        })
        .unwrap();
    let gold = labels("mli_test_v1.jsonl");
    let share = gold.iter().filter(|l| *l == most).count() as f64 / gold.len() as f64;
    assert!((chance - share).abs() < 1e-12, "{chance} vs {share}");
    assert!(
        accuracy >= chance + 0.15,
        "test accuracy {accuracy} is not clearly above chance ({chance})"
    );
    // Predictions are stored, and `correct` agrees with the metric.
    let preds = query(
        &dir,
        "SELECT count(*), avg(correct::INT)::VARCHAR FROM eval_predictions",
    );
    assert_eq!(preds[0][0], "63");
    assert!((preds[0][1].parse::<f64>().unwrap() - accuracy).abs() < 1e-9);
    // Lineage: the metric joins back to the training run and the build.
    let lineage = query(
        &dir,
        "SELECT t.model, b.status FROM eval_metrics m JOIN eval_runs r USING (eval_run_id) \
         JOIN train_runs t ON t.run_id = r.train_run_id JOIN build_runs b ON b.build_id = r.build_id \
         WHERE m.split = 'test'",
    );
    assert_eq!(lineage, [vec!["tiny", "succeeded"]]);
    // The paper's MedNLI numbers: Table 3's twelve models and Table 11's five at five
    // fractions.
    let paper = query(
        &dir,
        "SELECT source, count(*) FROM paper_results WHERE task = 'mednli' GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(paper, [vec!["Table 11", "25"], vec!["Table 3", "12"]]);

    // `evaluate` rescores the best epoch on test: the same accuracy, as its own run with the
    // finetuning run's lineage.
    let plugin = t5_plugin();
    let stdout = dir
        .ehrprep(&[
            "evaluate",
            "--task",
            "mednli",
            "--data",
            mednli.to_str().unwrap(),
            "--checkpoint",
            "runs/p/finetune/mednli-1-s1",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--max-new-tokens",
            "12",
            "--plugin",
            &plugin,
        ])
        .ok();
    assert!(
        stdout.contains(&format!("on 63 examples: accuracy {accuracy:.4}")),
        "{stdout}"
    );
    let runs = query(
        &dir,
        "SELECT count(*), count(DISTINCT train_run_id), count(DISTINCT fraction) FROM eval_runs",
    );
    assert_eq!(runs, [vec!["2", "1", "1"]]);
    // It records chance too, the same as the finetuning run's on the same test set.
    let chances = query(
        &dir,
        "SELECT count(*), count(DISTINCT value) FROM eval_metrics WHERE split = 'majority'",
    );
    assert_eq!(chances, [vec!["2", "1"]]);

    // Continuing the same run with another learning rate is refused.
    let stderr = dir
        .ehrprep(&[
            "finetune",
            "--task",
            "mednli",
            "--data",
            mednli.to_str().unwrap(),
            "--checkpoint",
            "runs/p",
            "--seeds",
            "1",
            "--epochs",
            "13",
            "--lr",
            "5e-3",
            "--device",
            "cpu",
            "--plugin",
            &plugin,
        ])
        .fails();
    assert!(
        stderr.contains("was finetuned with other settings"),
        "{stderr}"
    );
}

fn write(path: PathBuf, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn radqa_and_clip_run_through_with_their_metrics() {
    let dir = Dir::new();
    dir.ehrprep(&["synth", "--out", "synth", "--notes", "2000", "--seed", "3"])
        .ok();
    pretrained(&dir);
    // RadQA: the synth train and dev files, dev doubling as test.
    let radqa = dir.join("radqa");
    std::fs::create_dir_all(&radqa).unwrap();
    std::fs::copy(
        dir.join("synth/tasks/radqa/train.json"),
        radqa.join("train.json"),
    )
    .unwrap();
    std::fs::copy(
        dir.join("synth/tasks/radqa/dev.json"),
        radqa.join("dev.json"),
    )
    .unwrap();
    std::fs::copy(
        dir.join("synth/tasks/radqa/dev.json"),
        radqa.join("test.json"),
    )
    .unwrap();
    finetune(&dir, "radqa", &radqa, &["--epochs", "1"]);
    // CLIP: six small summaries.
    let clip = dir.join("clip");
    let mut csv = String::from("doc_id,sent_index,sentence,labels\n");
    for doc in 1..=6 {
        csv.push_str(&format!(
            "{doc},0,\"['Please', 'call', 'the', 'clinic.']\",['I-Appointment-related followup']\n\
             {doc},1,\"['Take', 'your', 'pills.']\",\"['I-Medication-related followups', 'I-Case-specific instructions for patient']\"\n\
             {doc},2,\"['You', 'did', 'well.']\",[]\n"
        ));
    }
    write(clip.join("sentence_level.csv"), &csv);
    write(clip.join("train_ids.csv"), "1\n2\n3\n4\n");
    write(clip.join("val_ids.csv"), "5\n");
    write(clip.join("test_ids.csv"), "6\n");
    let run = finetune(&dir, "clip", &clip, &["--epochs", "1"]);
    // Two labels spelled out are far longer than 12 tokens: the cut is announced.
    let stderr = run.stderr();
    assert!(
        stderr.contains("warning: clip training answers run to")
            && stderr.contains("generation stops at 12"),
        "{stderr}"
    );

    let metrics = query(
        &dir,
        "SELECT r.task, m.metric, bool_and(m.value BETWEEN 0 AND 1) FROM eval_metrics m \
         JOIN eval_runs r USING (eval_run_id) WHERE m.split = 'test' GROUP BY ALL ORDER BY ALL",
    );
    assert_eq!(
        metrics,
        [
            vec!["clip", "macro_f1", "true"],
            vec!["clip", "micro_f1", "true"],
            vec!["radqa", "exact_match", "true"],
            vec!["radqa", "f1", "true"],
        ]
    );
    let clip_refs = query(
        &dir,
        "SELECT reference FROM eval_predictions p JOIN eval_runs r USING (eval_run_id) \
         WHERE r.task = 'clip' ORDER BY example_id",
    );
    assert_eq!(
        clip_refs,
        [
            vec!["Appointment-related followup"],
            vec!["Case-specific instructions for patient, Medication-related followups"],
            vec![""],
        ]
    );
}

//! `ehrprep synth`: deterministic, in the real layouts, and rich enough to exercise the
//! whole recipe.

use std::path::Path;

use crate::util::*;

fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let d = Dir::new();
    d.ehrprep(&["synth", "--out", "a", "--notes", "500", "--seed", "3"])
        .ok();
    d.ehrprep(&["synth", "--out", "b", "--notes", "500", "--seed", "3"])
        .ok();
    d.ehrprep(&["synth", "--out", "c", "--notes", "500", "--seed", "4"])
        .ok();
    let a = files(&d.join("a"));
    assert_eq!(a, files(&d.join("b")));
    assert_ne!(a, files(&d.join("c")));
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "mimiciii/1.4/NOTEEVENTS.csv.gz",
        "mimiciii/1.4/ICUSTAYS.csv.gz",
        "mimic-iv-note/2.2/note/discharge.csv.gz",
        "mimic-iv-note/2.2/note/radiology.csv.gz",
        "mimic-iv-note/2.2/note/radiology_detail.csv.gz",
        "tasks/mednli/mli_train_v1.jsonl",
        "tasks/radqa/train.json",
        "tasks/clip/sentence_level.csv",
        "tasks/clip/test_ids.csv",
        "synth_truth.csv",
    ] {
        assert!(names.contains(&want), "missing {want} in {names:?}");
    }
}

#[test]
fn synth_corpus_builds_and_exercises_every_rule() {
    let d = Dir::new();
    d.ehrprep(&[
        "synth",
        "--out",
        "s",
        "--notes",
        "6000",
        "--seed",
        "11",
        "--long-notes",
    ])
    .ok();
    // The first MIMIC-IV patients: never task patients, so the exclusion rule decides.
    let ids: String = (10_000_001..=10_000_060)
        .map(|i| format!("{i}\n"))
        .collect();
    d.write("exclude.txt", format!("# first MIMIC-IV patients\n{ids}"));
    let stdout = d
        .ehrprep(&[
            "build",
            "--mimic-dir",
            "s",
            "--out",
            "out",
            "--task-data",
            "s/tasks",
            "--exclude-subjects",
            "exclude.txt",
            "--recipe",
            "strict",
            "--no-shards",
        ])
        .ok();
    assert!(stdout.contains("6000 notes in"), "{stdout}");
    let conn = catalog(&d.join("out"));
    let by_reason = rows(
        &conn,
        "SELECT reason, count(*) FROM note_decisions GROUP BY 1 ORDER BY 1",
    );
    let reasons: Vec<&str> = by_reason.iter().map(|r| r[0].as_str()).collect();
    for reason in ehrprep::corpus::select::Reason::ALL {
        assert!(
            reasons.contains(&reason.as_str()),
            "no `{}` in {by_reason:?}",
            reason.as_str()
        );
    }
    // Planted exact copies of kept notes are dropped as exact duplicates.
    let truth = d.join("s/synth_truth.csv");
    let copies = rows(
        &conn,
        &format!(
            "SELECT c.reason, count(*) FROM read_csv('{}', all_varchar = true) t
             JOIN note_decisions c ON c.note_id = t.note_id
             JOIN note_decisions o ON o.note_id = t.of_note_id
             WHERE t.kind = 'exact_copy' AND o.reason = 'kept' GROUP BY 1",
            truth.display()
        ),
    );
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0][0], "exact_duplicate");
    // Planted near copies of kept notes are found. Recall and precision are printed, not
    // pinned: synth's templated notes are near duplicates of each other by design, so
    // precision here says more about the data than about the method.
    let found = rows(
        &conn,
        &format!(
            "SELECT count(*) FILTER (WHERE c.reason = 'near_duplicate'), count(*)
             FROM read_csv('{}', all_varchar = true) t
             JOIN note_decisions c ON c.note_id = t.note_id
             JOIN note_decisions o ON o.note_id = t.of_note_id
             WHERE t.kind = 'near_copy' AND o.reason = 'kept'
               AND c.reason IN ('kept', 'near_duplicate')",
            truth.display()
        ),
    );
    let (hit, planted): (f64, f64) = (found[0][0].parse().unwrap(), found[0][1].parse().unwrap());
    assert!(planted >= 20.0, "{found:?}");
    assert!(hit / planted >= 0.6, "near-copy recall {hit}/{planted}");
    let flagged = rows(
        &conn,
        &format!(
            "SELECT count(*) FILTER (WHERE t.note_id IS NOT NULL), count(*)
             FROM note_decisions d LEFT JOIN read_csv('{}', all_varchar = true) t
               ON t.note_id = d.note_id
             WHERE d.reason = 'near_duplicate'",
            truth.display()
        ),
    );
    let all = &flagged[0][1];
    eprintln!(
        "near duplicates: recall {hit}/{planted}, planted among flagged {}/{all}",
        flagged[0][0]
    );
    let clusters = rows(&conn, "SELECT count(*) FROM dedup_clusters WHERE NOT first");
    assert_eq!(
        &clusters[0][0], all,
        "every later cluster member is dropped under strict"
    );

    // MIMIC-IV copies of task documents go by their text: every planted copy of a document
    // the guard looks for is dropped, and the documents it cannot look for are listed in
    // task_documents. What else the guard drops is printed, not pinned (templated notes).
    let copies = rows(
        &conn,
        &format!(
            "SELECT g.guarded, d.reason, count(*)
             FROM read_csv('{}', all_varchar = true) t
             JOIN note_decisions d ON d.note_id = t.note_id
             JOIN task_documents g ON g.doc_id = t.of_note_id
             WHERE t.kind = 'task_copy' GROUP BY ALL ORDER BY ALL",
            truth.display()
        ),
    );
    let caught: Vec<&Vec<String>> = copies.iter().filter(|r| r[0] == "true").collect();
    assert!(
        caught.len() == 1 && caught[0][1] == "task_text_overlap",
        "{copies:?}"
    );
    assert!(caught[0][2].parse::<u32>().unwrap() >= 3, "{copies:?}");
    let dropped = rows(
        &conn,
        &format!(
            "SELECT count(*) FILTER (WHERE t.note_id IS NOT NULL), count(*)
             FROM note_decisions d LEFT JOIN read_csv('{}', all_varchar = true) t
               ON t.note_id = d.note_id AND t.kind = 'task_copy'
             WHERE d.reason = 'task_text_overlap'",
            truth.display()
        ),
    );
    eprintln!(
        "task copies: {copies:?}; planted among dropped {}/{}",
        dropped[0][0], dropped[0][1]
    );

    // The long note was read whole: decided, and in the corpus at full length if kept.
    let long = rows(
        &conn,
        &format!(
            "SELECT d.reason, coalesce(length(c.text), 0) > 2000000
             FROM read_csv('{}', all_varchar = true) t
             JOIN note_decisions d ON d.note_id = t.note_id AND d.source = 'mimic-iii'
             LEFT JOIN corpus c ON c.note_id = t.note_id AND c.source = 'mimic-iii'
             WHERE t.kind = 'long_note'",
            truth.display()
        ),
    );
    assert_eq!(long.len(), 1, "{long:?}");
    assert_eq!(long[0][1], (long[0][0] == "kept").to_string(), "{long:?}");
    // Task patients have no note left in the corpus.
    let leaked = rows(
        &conn,
        "SELECT count(*) FROM corpus WHERE subject_id IN
           (SELECT subject_id FROM note_decisions WHERE reason = 'task_patient')",
    );
    assert_eq!(leaked, [["0".to_string()]]);
}

#[test]
fn shipped_fixtures_are_what_synth_makes() {
    let d = Dir::new();
    d.ehrprep(&[
        "synth", "--out", "fx", "--notes", "240", "--seed", "9", "--plain",
    ])
    .ok();
    let shipped = root().join("fixtures/mimic");
    assert!(
        files(&d.join("fx")) == files(&shipped),
        "fixtures/mimic differs from `ehrprep synth --notes 240 --seed 9 --plain`; regenerate and review it"
    );
}

#[test]
fn synthetic_tasks_have_the_shapes_of_the_real_ones() {
    let d = Dir::new();
    d.ehrprep(&["synth", "--out", "s", "--notes", "4000", "--seed", "5"])
        .ok();
    // RadQA: each report's findings and impression are two contexts, asked the same
    // questions; answers are spans of their context; questions come from the referral,
    // sharing no word with the report's wording; about half are unanswerable.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("s/tasks/radqa/train.json")).unwrap())
            .unwrap();
    let (mut questions, mut impossible) = (0, 0);
    for article in json["data"].as_array().unwrap() {
        let paragraphs = article["paragraphs"].as_array().unwrap();
        assert_eq!(paragraphs.len(), 2, "{article}");
        assert_eq!(
            paragraphs[0]["qas"].as_array().unwrap().len(),
            paragraphs[1]["qas"].as_array().unwrap().len()
        );
        for p in paragraphs {
            let context = p["context"].as_str().unwrap();
            let words: Vec<String> = context
                .split(|c: char| !c.is_alphanumeric())
                .map(str::to_lowercase)
                .collect();
            for qa in p["qas"].as_array().unwrap() {
                questions += 1;
                let question = qa["question"].as_str().unwrap();
                for w in question.split(|c: char| !c.is_alphanumeric()) {
                    let w = w.to_lowercase();
                    if w.len() > 3 && w != "there" && w != "does" {
                        assert!(
                            !words.contains(&w),
                            "`{w}` of `{question}` is in its context"
                        );
                    }
                }
                let answers = qa["answers"].as_array().unwrap();
                if qa["is_impossible"].as_bool().unwrap() {
                    impossible += 1;
                    assert!(answers.is_empty());
                    continue;
                }
                let text = answers[0]["text"].as_str().unwrap();
                let start = answers[0]["answer_start"].as_u64().unwrap() as usize;
                let span: String = context
                    .chars()
                    .skip(start)
                    .take(text.chars().count())
                    .collect();
                assert_eq!(span, text);
            }
        }
    }
    assert!(questions > 40, "{questions}");
    let share = impossible as f64 / questions as f64;
    assert!((0.3..0.7).contains(&share), "{share}");

    // CLIP: follow-up items of one to three consecutive sentences, B- first, then I- of
    // the same label; unlabeled sentences between items.
    let conn = duckdb::Connection::open_in_memory().unwrap();
    let labels = rows(
        &conn,
        &format!(
            "SELECT labels FROM read_csv('{}', all_varchar = true) \
             ORDER BY doc_id::INT, sent_index::INT",
            d.join("s/tasks/clip/sentence_level.csv").display()
        ),
    );
    let (mut previous, mut run, mut items) = (String::new(), 0, 0);
    for row in &labels {
        let tags = ehrprep::corpus::task_rows::python_str_list(&row[0]).unwrap();
        assert!(tags.len() <= 1, "{tags:?}");
        let tag = tags.first().cloned().unwrap_or_default();
        if let Some(label) = tag.strip_prefix("I-") {
            assert_eq!(previous, label, "an I- tag continues the item before it");
            run += 1;
            assert!(run <= 3);
        } else if let Some(label) = tag.strip_prefix("B-") {
            items += 1;
            (previous, run) = (label.to_string(), 1);
        } else {
            assert!(tag.is_empty(), "{tag}");
            (previous, run) = (String::new(), 0);
        }
    }
    assert!(items > 20, "{items}");
}

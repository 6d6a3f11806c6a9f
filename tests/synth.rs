//! `ehrprep synth`: deterministic, in the real layouts, and rich enough to exercise the
//! whole recipe.

mod util;

use std::path::Path;

use util::*;

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
    for reason in ehrprep::select::Reason::ALL {
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
        "synth", "--out", "fx", "--notes", "240", "--seed", "7", "--plain",
    ])
    .ok();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mimic");
    assert!(
        files(&d.join("fx")) == files(&shipped),
        "fixtures/mimic differs from `ehrprep synth --notes 240 --seed 7 --plain`; regenerate and review it"
    );
}

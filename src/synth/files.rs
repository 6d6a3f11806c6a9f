//! Writing what was generated: the MIMIC files in their real layouts (quoting, gzip), the
//! task files in their official formats, and `synth_truth.csv`.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::vocab::*;
use super::*;
use crate::{Error, Result};

/// MIMIC-III CSV: strings quoted, numbers and dates not, empty means NULL.
pub(super) fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// pandas-style CSV (MIMIC-IV): quoted only when needed.
pub(super) fn q4(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        q(s)
    } else {
        s.to_string()
    }
}

pub(super) fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// Python's `repr` of a list of strings, as CLIP stores sentences and labels.
pub(super) fn py_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| {
            if s.contains('\'') && !s.contains('"') {
                format!("\"{s}\"")
            } else {
                format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
            }
        })
        .collect();
    format!("[{}]", quoted.join(", "))
}

pub(super) struct Out {
    root: PathBuf,
    gzip: bool,
    written: Vec<(PathBuf, u64)>,
}

impl Out {
    /// Writes `lines` to `rel` (plus `.gz` for CSV when compressing) under a temporary name,
    /// then renames it, so an interrupted run leaves no file that looks complete.
    pub(super) fn write(
        &mut self,
        rel: &str,
        compressible: bool,
        records: u64,
        body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        let rel = if compressible && self.gzip {
            format!("{rel}.gz")
        } else {
            rel.to_string()
        };
        let path = self.root.join(&rel);
        let dir = path.parent().expect("relative paths have a parent");
        crate::fsutil::create_private_dir(dir)?;
        let (tmp, file) = crate::fsutil::create_partial(&path)?;
        let result = if compressible && self.gzip {
            let mut enc = flate2::GzBuilder::new().write(
                BufWriter::with_capacity(1 << 20, file),
                flate2::Compression::fast(),
            );
            body(&mut enc).and_then(|()| enc.finish()?.flush())
        } else {
            let mut w = BufWriter::with_capacity(1 << 20, file);
            body(&mut w).and_then(|()| w.flush())
        };
        result.map_err(Error::io(&tmp))?;
        crate::fsutil::commit(&tmp, &path)?;
        self.written.push((path, records));
        Ok(())
    }
}

impl Generator<'_> {
    pub(super) fn write_files(&mut self, root: &Path) -> Result<Vec<(PathBuf, u64)>> {
        crate::fsutil::create_private_dir(root)?;
        crate::catalog::restrict_to_owner(root)?;
        let mut out = Out {
            root: root.to_path_buf(),
            gzip: self.config.gzip,
            written: Vec::new(),
        };

        let m3 = std::mem::take(&mut self.m3);
        out.write("mimiciii/1.4/NOTEEVENTS.csv", true, m3.len() as u64, |w| {
            let header = crate::corpus::ingest::MIMIC3_COLUMNS.map(q).join(",");
            writeln!(w, "{header}")?;
            for n in &m3 {
                writeln!(
                    w,
                    "{},{},{},{},{},{},{},{},{},{},{}",
                    n.row_id,
                    n.subject_id,
                    opt(&n.hadm_id),
                    n.chartdate,
                    opt(&n.charttime),
                    opt(&n.storetime),
                    q(n.category),
                    q(&n.description),
                    opt(&n.cgid),
                    if n.iserror { "1" } else { "" },
                    q(&n.text)
                )?;
            }
            Ok(())
        })?;
        let icu = std::mem::take(&mut self.icustays);
        out.write("mimiciii/1.4/ICUSTAYS.csv", true, icu.len() as u64, |w| {
            writeln!(w, "\"ROW_ID\",\"SUBJECT_ID\",\"HADM_ID\",\"ICUSTAY_ID\",\"DBSOURCE\",\"FIRST_CAREUNIT\",\"LAST_CAREUNIT\",\"FIRST_WARDID\",\"LAST_WARDID\",\"INTIME\",\"OUTTIME\",\"LOS\"")?;
            for (i, (subject, stay, db)) in icu.iter().enumerate() {
                writeln!(w, "{},{subject},,{stay},{},\"MICU\",\"MICU\",52,52,2150-01-01 10:00:00,2150-01-03 10:00:00,2.0", i + 1, q(db))?;
            }
            Ok(())
        })?;

        let m4 = std::mem::take(&mut self.m4);
        for (file, types) in [("discharge", ["DS", "AD"]), ("radiology", ["RR", "AR"])] {
            let notes: Vec<&Mimic4Note> =
                m4.iter().filter(|n| types.contains(&n.note_type)).collect();
            out.write(
                &format!("mimic-iv-note/2.2/note/{file}.csv"),
                true,
                notes.len() as u64,
                |w| {
                    writeln!(w, "{}", crate::corpus::ingest::MIMIC4_COLUMNS.join(","))?;
                    for n in &notes {
                        writeln!(
                            w,
                            "{},{},{},{},{},{},{},{}",
                            n.note_id,
                            n.subject_id,
                            opt(&n.hadm_id),
                            n.note_type,
                            n.note_seq,
                            n.charttime,
                            opt(&n.storetime),
                            q4(&n.text)
                        )?;
                    }
                    Ok(())
                },
            )?;
            out.write(
                &format!("mimic-iv-note/2.2/note/{file}_detail.csv"),
                true,
                notes.len() as u64,
                |w| {
                    writeln!(w, "note_id,subject_id,field_name,field_value,field_ordinal")?;
                    for n in &notes {
                        match n.exam {
                            Some(exam) => writeln!(
                                w,
                                "{},{},exam_name,{},1",
                                n.note_id,
                                n.subject_id,
                                q4(exam)
                            )?,
                            None => writeln!(w, "{},{},author,___,1", n.note_id, n.subject_id)?,
                        }
                    }
                    Ok(())
                },
            )?;
        }

        self.write_tasks(&mut out)?;
        let truth = std::mem::take(&mut self.truth);
        out.write("synth_truth.csv", false, truth.len() as u64, |w| {
            writeln!(w, "note_id,kind,of_note_id")?;
            for (id, kind, of) in &truth {
                writeln!(w, "{id},{kind},{of}")?;
            }
            Ok(())
        })?;
        Ok(out.written)
    }

    pub(super) fn write_tasks(&mut self, out: &mut Out) -> Result<()> {
        // MedNLI: premise about a condition; the label follows from the hypothesis pattern.
        let pairs = (self.config.notes / 8).clamp(30, 12_000);
        let mut rows = Vec::new();
        for i in 0..pairs {
            let (cond, class) =
                CONDITION_CLASS[self.rng.below(CONDITION_CLASS.len() as u64) as usize];
            let premise = format!(
                "{} with history of {cond}",
                self.rng.pick(&["Patient", "The patient", "Pt"])
            );
            let (label, hypothesis) = match self.rng.below(3) {
                0 => ("entailment", format!("The patient has {class}.")),
                1 => (
                    "contradiction",
                    format!("The patient has no history of {class}."),
                ),
                _ => (
                    "neutral",
                    format!(
                        "The patient's {class} was diagnosed {} ago.",
                        self.rng.pick(&["two years", "a decade", "recently"])
                    ),
                ),
            };
            rows.push(serde_json::json!({
                "sentence1": premise,
                "sentence2": hypothesis,
                "gold_label": label,
                "pairID": format!("synth-{i}"),
                "sentence1_parse": "",
                "sentence2_parse": "",
            }));
        }
        let (train, rest) = rows.split_at(rows.len() * 8 / 10);
        let (dev, test) = rest.split_at(rest.len() / 2);
        for (name, part) in [
            ("mli_train_v1", train),
            ("mli_dev_v1", dev),
            ("mli_test_v1", test),
        ] {
            out.write(
                &format!("tasks/mednli/{name}.jsonl"),
                false,
                part.len() as u64,
                |w| {
                    for r in part {
                        writeln!(w, "{r}")?;
                    }
                    Ok(())
                },
            )?;
        }

        // RadQA: one question per finding, answerable where the report states it, asked
        // of the findings and of the impression.
        let docs = std::mem::take(&mut self.radqa);
        let n = docs.len();
        let (a, b) = ((n * 8).div_ceil(10), (n * 9).div_ceil(10));
        let parts = [("train", 0..a), ("dev", a..b), ("test", b..n)];
        for (name, range) in parts {
            let mut data = Vec::new();
            for doc in &docs[range] {
                let mut paragraphs = Vec::new();
                for (k, context) in doc.sections.iter().enumerate() {
                    let mut qas = Vec::new();
                    for (i, (question, _)) in FINDINGS.iter().enumerate() {
                        let span = doc.present.iter().find(|(f, _)| *f == i).map(|(_, s)| s[k]);
                        if i % 3 != doc.row_id as usize % 3 && span.is_none() {
                            continue;
                        }
                        let answer = span.map(|(start, end)| {
                            serde_json::json!({
                                "text": &context[start..end],
                                "answer_start": context[..start].chars().count(),
                            })
                        });
                        qas.push(serde_json::json!({
                            "id": format!("{}_{i}_{}", doc.row_id, ["f", "i"][k]),
                            "question": question,
                            "answers": answer.into_iter().collect::<Vec<_>>(),
                            "is_impossible": span.is_none(),
                        }));
                    }
                    paragraphs.push(serde_json::json!({"context": context, "qas": qas}));
                }
                data.push(serde_json::json!({
                    "title": doc.row_id.to_string(),
                    "paragraphs": paragraphs,
                }));
            }
            let json = serde_json::json!({"version": "v2.0", "data": data});
            out.write(
                &format!("tasks/radqa/{name}.json"),
                false,
                data_len(&json),
                |w| {
                    serde_json::to_writer(&mut *w, &json)?;
                    writeln!(w)
                },
            )?;
        }

        // CLIP: follow-up sentences of discharge summaries with their labels.
        let docs = std::mem::take(&mut self.clip);
        let sentences: u64 = docs.iter().map(|d| d.sentences.len() as u64).sum();
        out.write("tasks/clip/sentence_level.csv", false, sentences, |w| {
            writeln!(w, "doc_id,sent_index,sentence,labels")?;
            for doc in &docs {
                for (i, (sentence, labels)) in doc.sentences.iter().enumerate() {
                    let tokens: Vec<String> = sentence.split(' ').map(str::to_string).collect();
                    writeln!(
                        w,
                        "{},{i},{},{}",
                        doc.row_id,
                        q4(&py_list(&tokens)),
                        q4(&py_list(labels))
                    )?;
                }
            }
            Ok(())
        })?;
        let n = docs.len();
        let (a, b) = ((n * 7).div_ceil(10), (n * 85).div_ceil(100));
        for (name, range) in [("train_ids", 0..a), ("val_ids", a..b), ("test_ids", b..n)] {
            out.write(
                &format!("tasks/clip/{name}.csv"),
                false,
                range.len() as u64,
                |w| {
                    for doc in &docs[range] {
                        writeln!(w, "{}", doc.row_id)?;
                    }
                    Ok(())
                },
            )?;
        }
        Ok(())
    }
}

/// Where `phrase` occurs in `text` with any run of whitespace between its words (a report
/// wraps lines inside a finding): the byte range.
pub(super) fn find_words(text: &str, phrase: &str) -> Option<(usize, usize)> {
    let words: Vec<&str> = phrase.split(' ').collect();
    'start: for (start, _) in text.match_indices(words[0]) {
        let mut end = start + words[0].len();
        for word in &words[1..] {
            let rest = &text[end..];
            let gap = rest.len() - rest.trim_start().len();
            if gap == 0 || !rest[gap..].starts_with(word) {
                continue 'start;
            }
            end += gap + word.len();
        }
        return Some((start, end));
    }
    None
}

pub(super) fn data_len(json: &serde_json::Value) -> u64 {
    json["data"].as_array().map_or(0, |a| a.len() as u64)
}

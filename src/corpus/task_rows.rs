//! Downstream task files, as far as the corpus build needs them: the NOTEEVENTS ROW_IDs
//! whose patients must not be in the pretraining corpus, and the documents' text, which
//! the task-text guard ([`super::overlap`]) looks for in every note.
//!
//! RadQA (SQuAD v2 json) keys each report by ROW_ID in `data[].title`; CLIP's
//! `sentence_level.csv` by `doc_id`. MedNLI carries no note ids, so it cannot be mapped,
//! and the paper kept it in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use duckdb::Connection;
use serde::Deserialize;

use crate::catalog::sql::TASKS;
use crate::{Error, Result};

/// ROW_IDs and documents of the task files found under a folder.
#[derive(Debug, Default, Clone)]
pub struct TaskRows {
    /// `(row_id, file)`, sorted.
    pub rows: BTreeSet<(u64, PathBuf)>,
    pub files: Vec<PathBuf>,
    /// One per (task, ROW_ID), sorted; a report that several files name is one document,
    /// its parts in file order.
    pub docs: Vec<TaskDoc>,
}

/// The text of one task document, as the task shows it to a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDoc {
    /// `radqa` or `clip`.
    pub task: &'static str,
    /// The NOTEEVENTS ROW_ID, as text.
    pub doc_id: String,
    /// RadQA: the report's contexts, one a line (sections a note may hold apart); CLIP: its
    /// sentences in order, tokens and sentences joined by spaces (the whole summary, whose
    /// sentences follow one another in the note).
    pub text: String,
}

#[derive(Deserialize)]
struct Squad {
    data: Vec<SquadArticle>,
}

#[derive(Deserialize)]
struct SquadArticle {
    title: serde_json::Value,
    paragraphs: Vec<SquadParagraph>,
}

#[derive(Deserialize)]
struct SquadParagraph {
    context: String,
}

/// Finds RadQA json files and CLIP `sentence_level.csv` under `dir` (three levels deep) and
/// collects their ROW_IDs and documents. Fails when `dir` holds neither.
pub fn read(conn: &Connection, dir: &Path) -> Result<TaskRows> {
    let mut files = Vec::new();
    collect_files(dir, 0, &mut files)?;
    let mut out = TaskRows::default();
    let mut docs: BTreeMap<(&'static str, u64), Vec<String>> = BTreeMap::new();
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == "sentence_level.csv" {
            clip_rows(conn, &file, &mut out, &mut docs)?;
        } else if name.ends_with(".json") {
            radqa_rows(&file, &mut out, &mut docs)?;
        } else {
            continue;
        }
        out.files.push(file);
    }
    out.docs = docs
        .into_iter()
        .map(|((task, id), parts)| TaskDoc {
            task,
            doc_id: id.to_string(),
            text: parts.join(if task == "clip" { " " } else { "\n" }),
        })
        .collect();
    if out.files.is_empty() {
        return Err(Error::Invalid(format!(
            "`{}` holds no task files with note ids (RadQA `*.json`, CLIP `sentence_level.csv`)",
            dir.display()
        )));
    }
    Ok(out)
}

fn collect_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(Error::io(dir))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if depth < 3 {
                collect_files(&path, depth + 1, out)?;
            }
        } else {
            out.push(path);
        }
    }
    Ok(())
}

type Docs = BTreeMap<(&'static str, u64), Vec<String>>;

fn radqa_rows(path: &Path, out: &mut TaskRows, docs: &mut Docs) -> Result<()> {
    let reader = std::io::BufReader::new(std::fs::File::open(path).map_err(Error::io(path))?);
    let squad: Squad = serde_json::from_reader(reader).map_err(|e| Error::TaskData {
        path: path.to_path_buf(),
        location: format!("line {} column {}", e.line(), e.column()),
        problem: "not a SQuAD v2 file (`data[].title`, `data[].paragraphs[].context`)".to_string(),
    })?;
    for (i, article) in squad.data.iter().enumerate() {
        let id = match &article.title {
            serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
            serde_json::Value::Number(n) => n.as_u64(),
            _ => None,
        };
        let id = id.ok_or_else(|| Error::TaskData {
            path: path.to_path_buf(),
            location: format!("data[{i}].title"),
            problem: "expected a NOTEEVENTS ROW_ID (an integer)".to_string(),
        })?;
        out.rows.insert((id, path.to_path_buf()));
        let parts = docs.entry(("radqa", id)).or_default();
        parts.extend(article.paragraphs.iter().map(|p| p.context.clone()));
    }
    Ok(())
}

fn clip_rows(conn: &Connection, path: &Path, out: &mut TaskRows, docs: &mut Docs) -> Result<()> {
    let path_text = crate::corpus::ingest::path_str(path)?;
    let mut stmt = conn
        .prepare(TASKS.get("clip_sentences"))
        .map_err(Error::catalog("reading CLIP"))?;
    type Row = (Option<String>, Option<String>, i64);
    let records: Vec<Row> = stmt
        .query_map([path_text], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .and_then(|rows| rows.collect())
        .map_err(|_| Error::TaskData {
            path: path.to_path_buf(),
            location: "the header or a record".to_string(),
            problem: "not a CLIP sentence_level.csv with `doc_id` and `sentence` columns \
                      and an integer `sent_index`"
                .to_string(),
        })?;
    for (id, sentence, record) in records {
        let parsed = id.as_deref().and_then(|s| s.trim().parse::<u64>().ok());
        let id = parsed.ok_or_else(|| Error::TaskData {
            path: path.to_path_buf(),
            location: format!("record {record}, column `doc_id`"),
            problem: "expected a NOTEEVENTS ROW_ID (an integer)".to_string(),
        })?;
        let tokens = python_str_list(sentence.as_deref().unwrap_or_default()).ok_or_else(|| {
            Error::TaskData {
                path: path.to_path_buf(),
                location: format!("record {record}, column `sentence`"),
                problem: "expected a Python list of strings".to_string(),
            }
        })?;
        out.rows.insert((id, path.to_path_buf()));
        docs.entry(("clip", id)).or_default().push(tokens.join(" "));
    }
    Ok(())
}

/// Parses a Python list literal of strings, as `repr` writes it (CLIP's sentences and
/// labels).
pub fn python_str_list(s: &str) -> Option<Vec<String>> {
    let s = s.trim();
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let Some(quote) = chars.next() else {
            return Some(out);
        };
        if quote != '\'' && quote != '"' {
            return None;
        }
        let mut item = String::new();
        loop {
            match chars.next()? {
                c if c == quote => break,
                '\\' => match chars.next()? {
                    'n' => item.push('\n'),
                    't' => item.push('\t'),
                    'r' => item.push('\r'),
                    'x' => item.push(hex_char(&mut chars, 2)?),
                    'u' => item.push(hex_char(&mut chars, 4)?),
                    'U' => item.push(hex_char(&mut chars, 8)?),
                    other => item.push(other),
                },
                c => item.push(c),
            }
        }
        out.push(item);
    }
}

/// A `\x`, `\u` or `\U` escape; lone surrogates (which CLIP's text has) become U+FFFD.
fn hex_char(chars: &mut impl Iterator<Item = char>, digits: usize) -> Option<char> {
    let hex: String = chars.take(digits).collect();
    let code = u32::from_str_radix(&hex, 16).ok()?;
    Some(char::from_u32(code).unwrap_or('\u{FFFD}'))
}

/// Stages the ROW_IDs for the recipe's `task_patient` rule.
pub fn stage(conn: &Connection, rows: &TaskRows) -> Result<()> {
    let mut app = conn
        .appender("stage_task_rows")
        .map_err(Error::catalog("staging task rows"))?;
    for (id, file) in &rows.rows {
        app.append_row(duckdb::params![*id as i64, file.to_string_lossy()])
            .map_err(Error::catalog("staging task rows"))?;
    }
    app.flush().map_err(Error::catalog("staging task rows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_radqa_titles_and_clip_doc_ids() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("radqa")).unwrap();
        std::fs::create_dir_all(dir.path().join("clip")).unwrap();
        std::fs::write(
            dir.path().join("radqa/train.json"),
            r#"{"version":"v2.0","data":[{"title":"101","paragraphs":[{"context":"Lungs clear.","qas":[]},{"context":"No effusion.","qas":[]}]},{"title":"102","paragraphs":[]}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("clip/sentence_level.csv"),
            "doc_id,sent_index,sentence,labels\n7,1,\"['c', 'd', '.']\",\"['I-Lab-related followup']\"\n7,0,\"['a, b']\",[]\n9,0,['x'],[]\n",
        )
        .unwrap();
        let conn = crate::catalog::open_in_memory().unwrap();
        let rows = read(&conn, dir.path()).unwrap();
        let ids: Vec<u64> = rows.rows.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [7, 9, 101, 102]);
        assert_eq!(rows.files.len(), 2);
        // Documents: CLIP's sentences in `sent_index` order whatever the record order,
        // tokens and sentences joined by spaces; RadQA's contexts one a line.
        let docs: Vec<(&str, &str, &str)> = rows
            .docs
            .iter()
            .map(|d| (d.task, d.doc_id.as_str(), d.text.as_str()))
            .collect();
        assert_eq!(
            docs,
            [
                ("clip", "7", "a, b c d ."),
                ("clip", "9", "x"),
                ("radqa", "101", "Lungs clear.\nNo effusion."),
                ("radqa", "102", ""),
            ]
        );
    }

    #[test]
    fn python_lists_parse_with_escapes_and_surrogates() {
        assert_eq!(
            python_str_list(r#"['it\'s', "a \"b\"", 'x\ud83dy', '\xe9']"#).unwrap(),
            ["it's", "a \"b\"", "x\u{FFFD}y", "é"]
        );
        assert_eq!(python_str_list("[]").unwrap(), Vec::<String>::new());
        assert!(python_str_list("['open").is_none());
        assert!(python_str_list("nope").is_none());
    }

    #[test]
    fn bad_clip_sentence_names_file_and_record() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sentence_level.csv"),
            "doc_id,sent_index,sentence,labels\n7,0,\"['a']\",[]\n7,1,secret words,[]\n",
        )
        .unwrap();
        let conn = crate::catalog::open_in_memory().unwrap();
        let err = read(&conn, dir.path()).unwrap_err().to_string();
        assert!(err.contains("sentence_level.csv"), "{err}");
        assert!(err.contains("record 2, column `sentence`"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn bad_title_names_file_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev.json");
        std::fs::write(
            &p,
            r#"{"data":[{"title":"12","paragraphs":[]},{"title":"abc","paragraphs":[]}]}"#,
        )
        .unwrap();
        let conn = crate::catalog::open_in_memory().unwrap();
        let err = read(&conn, dir.path()).unwrap_err().to_string();
        assert!(err.contains("dev.json"), "{err}");
        assert!(err.contains("data[1].title"), "{err}");
    }

    #[test]
    fn folder_without_task_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let conn = crate::catalog::open_in_memory().unwrap();
        assert!(read(&conn, dir.path()).is_err());
    }
}

//! Downstream task files, as far as the corpus build needs them: the NOTEEVENTS ROW_IDs
//! whose patients must not be in the pretraining corpus.
//!
//! RadQA (SQuAD v2 json) keys each report by ROW_ID in `data[].title`; CLIP's
//! `sentence_level.csv` by `doc_id`. MedNLI carries no note ids, so it cannot be mapped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use duckdb::Connection;
use serde::Deserialize;

use crate::catalog::sql::TASKS;
use crate::{Error, Result};

/// ROW_IDs named by the task files found under a folder.
#[derive(Debug, Default, Clone)]
pub struct TaskRows {
    /// `(row_id, file)`, sorted.
    pub rows: BTreeSet<(u64, PathBuf)>,
    pub files: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct Squad {
    data: Vec<SquadArticle>,
}

#[derive(Deserialize)]
struct SquadArticle {
    title: serde_json::Value,
    #[allow(dead_code)]
    paragraphs: Vec<serde_json::Value>,
}

/// Finds RadQA json files and CLIP `sentence_level.csv` under `dir` (three levels deep) and
/// collects their ROW_IDs. Fails when `dir` holds neither.
pub fn read(conn: &Connection, dir: &Path) -> Result<TaskRows> {
    let mut files = Vec::new();
    collect_files(dir, 0, &mut files)?;
    let mut out = TaskRows::default();
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == "sentence_level.csv" {
            clip_rows(conn, &file, &mut out)?;
        } else if name.ends_with(".json") {
            radqa_rows(&file, &mut out)?;
        } else {
            continue;
        }
        out.files.push(file);
    }
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

fn radqa_rows(path: &Path, out: &mut TaskRows) -> Result<()> {
    let reader = std::io::BufReader::new(std::fs::File::open(path).map_err(Error::io(path))?);
    let squad: Squad = serde_json::from_reader(reader).map_err(|e| Error::TaskData {
        path: path.to_path_buf(),
        location: format!("line {} column {}", e.line(), e.column()),
        problem: "not a SQuAD v2 file (`data[].title`, `data[].paragraphs`)".to_string(),
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
    }
    Ok(())
}

fn clip_rows(conn: &Connection, path: &Path, out: &mut TaskRows) -> Result<()> {
    let path_text = crate::corpus::ingest::path_str(path)?;
    let mut stmt = conn
        .prepare(TASKS.get("clip_doc_ids"))
        .map_err(Error::catalog("reading CLIP"))?;
    let ids: Vec<Option<String>> = stmt
        .query_map([path_text], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|_| Error::TaskData {
            path: path.to_path_buf(),
            location: "the header or a record".to_string(),
            problem: "not a CLIP sentence_level.csv with a `doc_id` column".to_string(),
        })?;
    for id in ids {
        let parsed = id.as_deref().and_then(|s| s.trim().parse::<u64>().ok());
        let id = parsed.ok_or_else(|| Error::TaskData {
            path: path.to_path_buf(),
            location: "column `doc_id`".to_string(),
            problem: "expected NOTEEVENTS ROW_IDs (integers)".to_string(),
        })?;
        out.rows.insert((id, path.to_path_buf()));
    }
    Ok(())
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
            r#"{"version":"v2.0","data":[{"title":"101","paragraphs":[]},{"title":"102","paragraphs":[]}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("clip/sentence_level.csv"),
            "doc_id,sent_index,sentence,labels\n7,0,\"['a, b']\",[]\n7,1,\"['c']\",\"['I-Lab-related followup']\"\n9,0,x,[]\n",
        )
        .unwrap();
        let conn = crate::catalog::open_in_memory().unwrap();
        let rows = read(&conn, dir.path()).unwrap();
        let ids: Vec<u64> = rows.rows.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [7, 9, 101, 102]);
        assert_eq!(rows.files.len(), 2);
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

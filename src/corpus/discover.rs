//! Finding the MIMIC files under `--mimic-dir`.
//!
//! Users point at whatever they downloaded: a MIMIC-III folder, a MIMIC-IV-Note folder (or its
//! `note/` subfolder), or a parent holding both, as PhysioNet lays them out
//! (`mimiciii/1.4/`, `mimic-iv-note/2.2/note/`). A shallow, sorted walk keeps the result
//! deterministic and the search cheap.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{Error, Result};

/// How deep below `--mimic-dir` the search goes (`mimic-iv-note/2.2/note/x.csv.gz` is 3).
const MAX_DEPTH: usize = 4;

/// The input files of one build.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Inputs {
    pub mimic3: Option<Mimic3Files>,
    pub mimic4: Option<Mimic4Files>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mimic3Files {
    pub noteevents: PathBuf,
    /// ICUSTAYS, for the CareVue/MetaVision era rule.
    pub icustays: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Mimic4Files {
    pub discharge: Option<PathBuf>,
    pub radiology: Option<PathBuf>,
    /// `discharge_detail` / `radiology_detail`: reported, not needed by the recipe.
    pub details: Vec<PathBuf>,
}

impl Inputs {
    /// The note files in ingest order: MIMIC-III first, then MIMIC-IV discharge, radiology.
    pub fn note_files(&self) -> Vec<&Path> {
        let mut files = Vec::new();
        if let Some(m3) = &self.mimic3 {
            files.push(m3.noteevents.as_path());
        }
        if let Some(m4) = &self.mimic4 {
            files.extend(m4.discharge.as_deref());
            files.extend(m4.radiology.as_deref());
        }
        files
    }

    /// Human-readable lines describing what was found.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(m3) = &self.mimic3 {
            lines.push(format!("MIMIC-III notes: `{}`", m3.noteevents.display()));
            match &m3.icustays {
                Some(p) => lines.push(format!("MIMIC-III ICU stays: `{}`", p.display())),
                None => lines.push("MIMIC-III ICU stays: not found".to_string()),
            }
        }
        if let Some(m4) = &self.mimic4 {
            for (name, path) in [("discharge", &m4.discharge), ("radiology", &m4.radiology)] {
                match path {
                    Some(p) => lines.push(format!("MIMIC-IV-Note {name}: `{}`", p.display())),
                    None => lines.push(format!("MIMIC-IV-Note {name}: not found")),
                }
            }
            for p in &m4.details {
                lines.push(format!(
                    "MIMIC-IV-Note detail (not used): `{}`",
                    p.display()
                ));
            }
        }
        lines
    }
}

/// The file kinds discovery knows, by lower-cased base name without `.csv[.gz]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NoteEvents,
    IcuStays,
    Discharge,
    Radiology,
    Detail,
}

fn kind_of(path: &Path) -> Option<Kind> {
    let name = path.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".csv.gz")
        .or_else(|| name.strip_suffix(".csv"))?;
    // MIMIC-III names are upper-case, MIMIC-IV lower-case; only those spellings count.
    match stem {
        "NOTEEVENTS" | "noteevents" => Some(Kind::NoteEvents),
        "ICUSTAYS" | "icustays" => Some(Kind::IcuStays),
        "discharge" => Some(Kind::Discharge),
        "radiology" => Some(Kind::Radiology),
        "discharge_detail" | "radiology_detail" => Some(Kind::Detail),
        _ => None,
    }
}

/// Searches `root` for MIMIC files. Fails naming the folders searched when no notes are found.
pub fn discover(root: &Path) -> Result<Inputs> {
    let meta = fs::metadata(root).map_err(Error::io(root))?;
    if !meta.is_dir() {
        return Err(Error::Invalid(format!(
            "`{}` is not a directory; --mimic-dir takes the folder holding the MIMIC files",
            root.display()
        )));
    }
    let mut searched = Vec::new();
    let mut found: Vec<(Kind, PathBuf)> = Vec::new();
    walk(root, 0, &mut searched, &mut found)?;

    let pick = |kind: Kind, what: &'static str| -> Result<Option<PathBuf>> {
        let mut hits: Vec<&PathBuf> = found
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, p)| p)
            .collect();
        // The same table as `.csv` and `.csv.gz` in one folder: prefer the plain file, it
        // reads in parallel.
        hits.dedup_by(|b, a| a.parent() == b.parent() && same_table(a, b));
        match hits.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some((*one).clone())),
            [a, b, ..] => Err(Error::Ambiguous {
                root: root.to_path_buf(),
                what,
                first: (*a).clone(),
                second: (*b).clone(),
            }),
        }
    };

    let noteevents = pick(Kind::NoteEvents, "MIMIC-III NOTEEVENTS")?;
    let icustays = pick(Kind::IcuStays, "MIMIC-III ICUSTAYS")?;
    let discharge = pick(Kind::Discharge, "MIMIC-IV-Note discharge notes")?;
    let radiology = pick(Kind::Radiology, "MIMIC-IV-Note radiology notes")?;
    let details: Vec<PathBuf> = found
        .iter()
        .filter(|(k, _)| *k == Kind::Detail)
        .map(|(_, p)| p.clone())
        .collect();

    let mimic3 = noteevents.map(|noteevents| Mimic3Files {
        noteevents,
        icustays,
    });
    let mimic4 = (discharge.is_some() || radiology.is_some()).then_some(Mimic4Files {
        discharge,
        radiology,
        details,
    });
    if mimic3.is_none() && mimic4.is_none() {
        return Err(Error::NothingFound {
            root: root.to_path_buf(),
            wanted: "NOTEEVENTS.csv[.gz] (MIMIC-III) or note/discharge.csv[.gz], note/radiology.csv[.gz] (MIMIC-IV-Note)",
            searched,
        });
    }
    Ok(Inputs { mimic3, mimic4 })
}

/// `a.csv` and `a.csv.gz` are the same table.
fn same_table(a: &Path, b: &Path) -> bool {
    let stem = |p: &Path| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        name.trim_end_matches(".gz").to_string()
    };
    stem(a) == stem(b)
}

fn walk(
    dir: &Path,
    depth: usize,
    searched: &mut Vec<PathBuf>,
    found: &mut Vec<(Kind, PathBuf)>,
) -> Result<()> {
    searched.push(dir.to_path_buf());
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(Error::io(dir))?;
    // Plain `.csv` sorts before `.csv.gz`, so de-duplication keeps the plain file.
    entries.sort();
    let mut subdirs = Vec::new();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            subdirs.push(path);
        } else if let Some(kind) = kind_of(&path) {
            // MIMIC-IV files count only inside a `note` folder or at the top of the search,
            // so a stray `discharge.csv` elsewhere is not mistaken for MIMIC-IV-Note.
            let is_iv = matches!(kind, Kind::Discharge | Kind::Radiology | Kind::Detail);
            let in_note_dir = dir.file_name().is_some_and(|n| n == "note");
            if !is_iv || in_note_dir || depth == 0 {
                found.push((kind, path));
            }
        }
    }
    if depth < MAX_DEPTH {
        for sub in subdirs {
            walk(&sub, depth + 1, searched, found)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, "x").unwrap();
    }

    #[test]
    fn finds_physionet_parent_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(root, "mimiciii/1.4/NOTEEVENTS.csv.gz");
        touch(root, "mimiciii/1.4/ICUSTAYS.csv.gz");
        touch(root, "mimic-iv-note/2.2/note/discharge.csv.gz");
        touch(root, "mimic-iv-note/2.2/note/radiology.csv.gz");
        touch(root, "mimic-iv-note/2.2/note/radiology_detail.csv.gz");
        let inputs = discover(root).unwrap();
        let m3 = inputs.mimic3.as_ref().unwrap();
        assert!(m3.noteevents.ends_with("mimiciii/1.4/NOTEEVENTS.csv.gz"));
        assert!(m3.icustays.as_ref().unwrap().ends_with("ICUSTAYS.csv.gz"));
        let m4 = inputs.mimic4.as_ref().unwrap();
        assert!(
            m4.discharge
                .as_ref()
                .unwrap()
                .ends_with("note/discharge.csv.gz")
        );
        assert!(
            m4.radiology
                .as_ref()
                .unwrap()
                .ends_with("note/radiology.csv.gz")
        );
        assert_eq!(m4.details.len(), 1);
        assert_eq!(inputs.note_files().len(), 3);
    }

    #[test]
    fn finds_mimic4_note_folder_itself_and_plain_csv() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "discharge.csv");
        let inputs = discover(dir.path()).unwrap();
        assert!(inputs.mimic3.is_none());
        assert!(inputs.mimic4.unwrap().radiology.is_none());
    }

    #[test]
    fn prefers_plain_csv_beside_gz() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "NOTEEVENTS.csv.gz");
        touch(dir.path(), "NOTEEVENTS.csv");
        let inputs = discover(dir.path()).unwrap();
        assert!(
            inputs
                .mimic3
                .unwrap()
                .noteevents
                .ends_with("NOTEEVENTS.csv")
        );
    }

    #[test]
    fn two_copies_in_different_folders_are_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "a/NOTEEVENTS.csv.gz");
        touch(dir.path(), "b/NOTEEVENTS.csv.gz");
        let err = discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ambiguous"), "{err}");
        assert!(err.contains("a/NOTEEVENTS.csv.gz"), "{err}");
    }

    #[test]
    fn nothing_found_names_the_places_searched() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "elsewhere/readme.txt");
        touch(dir.path(), "stray/discharge.csv");
        let err = discover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no MIMIC notes found"), "{err}");
        assert!(err.contains("elsewhere"), "{err}");
        assert!(err.contains("NOTEEVENTS.csv[.gz]"), "{err}");
    }

    #[test]
    fn missing_directory_is_an_io_error() {
        let err = discover(Path::new("/definitely/not/here")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}

//! MIMIC-shaped synthetic data, for everyone without credentialed access (CI, reviewers,
//! new users): NOTEEVENTS and ICUSTAYS in MIMIC-III's layout, discharge and radiology notes
//! in MIMIC-IV-Note's, and task files in the official formats of MedNLI, RadQA and CLIP.
//!
//! The files carry the real quirks at rates high enough to show up in small samples:
//! quoted multi-line text with `""` escapes, trailing-space categories, empty HADM_IDs,
//! placeholders of every kind (some split over a line break by wrapping), drafts re-saved
//! under a later STORETIME, exact and near copies, ISERROR rows, control characters,
//! `JavaScript:parent.POPUP` lines and, on request, notes over DuckDB's default line limit.
//! Every note is invented from templates; nothing comes from real records.
//!
//! One seeded generator drives everything in a fixed order, so a seed gives byte-identical
//! files. `synth_truth.csv` lists the planted copies and drafts for measuring de-duplication.

mod files;
mod text;
mod vocab;

use std::path::{Path, PathBuf};

use ehrprep_data::rng::Rng;

use crate::{Error, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Notes across both releases (drafts and copies included).
    pub notes: u64,
    pub seed: u64,
    pub gzip: bool,
    /// Plant notes over 2 MB (one per 50,000 notes, and at least one).
    pub long_notes: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            notes: 2000,
            seed: 7,
            gzip: true,
            long_notes: false,
        }
    }
}

/// Writes everything under `out`; returns each file with its record count.
pub fn write(out: &Path, config: &SynthConfig) -> Result<Vec<(PathBuf, u64)>> {
    if config.notes == 0 {
        return Err(Error::Invalid("--notes must be at least 1".to_string()));
    }
    let mut g = Generator::new(config);
    g.generate()?;
    g.write_files(out)
}

use text::{NoteText, Style, long_text};
use vocab::*;

struct Mimic3Note {
    row_id: u64,
    subject_id: u64,
    hadm_id: Option<u64>,
    chartdate: String,
    charttime: Option<String>,
    storetime: Option<String>,
    category: &'static str,
    description: String,
    cgid: Option<u64>,
    iserror: bool,
    text: String,
}

struct Mimic4Note {
    note_id: String,
    subject_id: u64,
    hadm_id: Option<u64>,
    note_type: &'static str,
    note_seq: u64,
    charttime: String,
    storetime: Option<String>,
    text: String,
    exam: Option<&'static str>,
}

struct RadqaDoc {
    row_id: u64,
    /// The report's findings and impression: RadQA marks answers in these two sections
    /// and asks each question against each.
    sections: [String; 2],
    /// The findings the report states, each with its byte range in either section.
    present: Vec<(usize, [(usize, usize); 2])>,
}

struct ClipDoc {
    row_id: u64,
    sentences: Vec<(String, Vec<String>)>,
}

/// A planted copy, draft or long note: (note id, kind, note id it copies).
type Truth = (String, &'static str, String);

struct Generator<'c> {
    config: &'c SynthConfig,
    rng: Rng,
    m3: Vec<Mimic3Note>,
    m4: Vec<Mimic4Note>,
    icustays: Vec<(u64, u64, &'static str)>,
    radqa: Vec<RadqaDoc>,
    clip: Vec<ClipDoc>,
    truth: Vec<Truth>,
    /// Quirks planted so far; the first chance of each is always taken, so even a small
    /// sample shows every quirk once.
    planted: Vec<&'static str>,
}

/// MIMIC-III categories with their share of notes (per mille, from the real counts).
const M3_CATEGORIES: &[(&str, u64)] = &[
    ("Nursing/other", 395),
    ("Radiology", 251),
    ("Nursing", 107),
    ("ECG", 100),
    ("Physician ", 68),
    ("Discharge summary", 29),
    ("Echo", 22),
    ("Respiratory ", 15),
    ("Nutrition", 5),
    ("General", 4),
    ("Rehab Services", 2),
    ("Social Work", 1),
    ("Case Management ", 1),
];

impl<'c> Generator<'c> {
    fn new(config: &'c SynthConfig) -> Generator<'c> {
        Generator {
            config,
            rng: Rng::new(config.seed),
            m3: Vec::new(),
            m4: Vec::new(),
            icustays: Vec::new(),
            radqa: Vec::new(),
            clip: Vec::new(),
            truth: Vec::new(),
            planted: Vec::new(),
        }
    }

    fn generate(&mut self) -> Result<()> {
        let total = self.config.notes;
        let n3 = (total * 45).div_ceil(100);
        let n4 = total - n3;
        self.generate_mimic3(n3);
        self.generate_mimic4(n4);
        // MIMIC-IV copies of task documents take the place of the last MIMIC-IV notes, so
        // the notes before them, and the task files drawn after them, stay as they were.
        let copies = self.task_copy_sources(n4 / 10);
        self.drop_last_mimic4(copies.len());
        self.plant_task_copies(&copies);
        Ok(())
    }

    /// The MIMIC-III task documents (RadQA reports, CLIP summaries) that MIMIC-IV-Note holds
    /// again: the first of each task and about a quarter of the rest, at most `most`. Drawn
    /// from a generator of their own, so the other notes do not change.
    fn task_copy_sources(&self, most: u64) -> Vec<u64> {
        let mut rng = Rng::new(ehrprep_data::rng::mix(self.config.seed ^ 0x7a5c_c0de));
        let radqa = self.radqa.iter().map(|d| d.row_id);
        let clip = self.clip.iter().map(|d| d.row_id);
        let mut sources = Vec::new();
        for rows in [radqa.collect::<Vec<_>>(), clip.collect()] {
            for (i, row_id) in rows.into_iter().enumerate() {
                if (i == 0 || rng.chance(0.25)) && (sources.len() as u64) < most {
                    sources.push(row_id);
                }
            }
        }
        sources
    }

    /// Drops the last `n` MIMIC-IV notes, and what the truth file says of them.
    fn drop_last_mimic4(&mut self, n: usize) {
        let gone: Vec<String> = self
            .m4
            .drain(self.m4.len().saturating_sub(n)..)
            .map(|note| note.note_id)
            .collect();
        self.truth
            .retain(|(id, _, of)| !gone.contains(id) && !gone.contains(of));
    }

    /// MIMIC-IV copies of the MIMIC-III notes `sources`, each under a patient of its own, as
    /// MIMIC-IV-Note re-released them: placeholders re-de-identified as `___`, lines
    /// re-wrapped, a header line and a closing sentence of its own.
    fn plant_task_copies(&mut self, sources: &[u64]) {
        let mut subject_id = self.m4.last().map_or(10_000_000, |n| n.subject_id) + 1;
        let mut hadm_id = self
            .m4
            .iter()
            .filter_map(|n| n.hadm_id)
            .max()
            .unwrap_or(20_000_000);
        for &row_id in sources {
            let Some(note) = self.m3.iter().find(|n| n.row_id == row_id) else {
                continue;
            };
            let radiology = note.category == "Radiology";
            let (note_type, header) = if radiology {
                ("RR", format!("EXAMINATION:  {}", note.description))
            } else {
                (
                    "DS",
                    "Name:  ___                 Unit No:   ___".to_string(),
                )
            };
            let text = format!(
                "{header}\n\n{}\nThe patient was seen and examined on ___ by Dr. ___.",
                rewrap(&reidentify(&note.text))
            );
            hadm_id += 1;
            let note_id = format!("{subject_id}-{note_type}-1");
            self.truth
                .push((note_id.clone(), "task_copy", note.row_id.to_string()));
            let time = format!("{} 12:00:00", note.chartdate);
            self.m4.push(Mimic4Note {
                note_id,
                subject_id,
                hadm_id: Some(hadm_id),
                note_type,
                note_seq: 1,
                charttime: time.clone(),
                storetime: Some(time),
                text,
                exam: radiology.then(|| {
                    EXAMS
                        .iter()
                        .copied()
                        .find(|e| *e == note.description)
                        .unwrap_or(EXAMS[0])
                }),
            });
            subject_id += 1;
        }
    }

    /// A quirk at rate `p`, taken for sure the first time it is offered.
    fn quirk(&mut self, name: &'static str, p: f64) -> bool {
        let hit = self.rng.chance(p);
        if self.planted.contains(&name) {
            hit
        } else {
            self.planted.push(name);
            true
        }
    }

    fn date(&mut self) -> (u64, u64, u64) {
        (
            self.rng.range(2100, 2199),
            self.rng.range(1, 12),
            // Notes fall on this day or the next two; every month has a 28th.
            self.rng.range(1, 26),
        )
    }

    fn generate_mimic3(&mut self, n: u64) {
        let mut row_id = 1u64;
        let mut subject_id = 1u64;
        let mut hadm_id = 100_000u64;
        let long_every = 50_000;
        // Notes made from a template (drafts and copies not counted).
        let mut main_notes = 0u64;
        while (self.m3.len() as u64) < n {
            subject_id += self.rng.range(1, 9);
            hadm_id += self.rng.range(1, 30);
            let era = match self.rng.below(100) {
                0..45 => Some("carevue"),
                45..90 => Some("metavision"),
                90..95 => Some("both"),
                _ => None,
            };
            if let Some(era) = era {
                for _ in 0..self.rng.range(1, 2) {
                    let stay = 200_000 + self.icustays.len() as u64;
                    let db = if era == "both" {
                        if self.rng.chance(0.5) {
                            "carevue"
                        } else {
                            "metavision"
                        }
                    } else {
                        era
                    };
                    self.icustays.push((subject_id, stay, db));
                }
            }
            let (y, m, d) = self.date();
            let per_patient = self.rng.range(1, 24);
            let age = self.rng.range(19, 89);
            for _ in 0..per_patient {
                if self.m3.len() as u64 >= n {
                    break;
                }
                let mut category = M3_CATEGORIES[0].0;
                let mut roll = self.rng.below(1000);
                for (c, share) in M3_CATEGORIES {
                    if roll < *share {
                        category = c;
                        break;
                    }
                    roll -= share;
                }
                let day = d + self.rng.below(3);
                let chartdate = format!("{y}-{m:02}-{day:02}");
                let hh = self.rng.below(24);
                let mm = self.rng.below(60);
                let system = matches!(category, "Discharge summary" | "ECG" | "Echo" | "Radiology");
                let charttime = (!matches!(category, "Discharge summary" | "ECG" | "Echo"))
                    .then(|| format!("{chartdate} {hh:02}:{mm:02}:00"));
                let storetime = (!system).then(|| {
                    format!(
                        "{chartdate} {:02}:{:02}:{:02}",
                        (hh + 1).min(23),
                        mm,
                        self.rng.below(60)
                    )
                });
                let cgid = (!system).then(|| self.rng.range(14_000, 21_000));
                let NoteText {
                    text,
                    description,
                    clip,
                } = self.mimic3_text(category, age, (y, m, day));
                // Every templated summary goes to CLIP (the real set has 718 of ~59,000), so
                // that a small synthetic corpus gives enough summaries to learn from. The
                // draw stays, keeping the random stream as it was.
                let clip = clip.filter(|_| self.quirk("clip", 1.0));
                let is_long = self.config.long_notes && main_notes % long_every == 3;
                main_notes += 1;
                let mut note = Mimic3Note {
                    row_id,
                    subject_id,
                    hadm_id: (!self.rng.chance(0.08)).then_some(hadm_id),
                    chartdate,
                    charttime,
                    storetime,
                    category,
                    description,
                    cgid,
                    iserror: !system && self.quirk("iserror", 0.004),
                    text: if is_long { long_text(&text) } else { text },
                };
                self.dirty(&mut note.text);
                row_id += 1;

                // Drafts: earlier saves of nursing and physician notes, a prefix of the text.
                let redraftable = note.charttime.is_some() && note.cgid.is_some();
                if redraftable && (self.m3.len() as u64) + 1 < n && self.quirk("draft", 0.10) {
                    let cut = note.text.len() * 2 / 3;
                    let cut = (0..=cut)
                        .rev()
                        .find(|&i| note.text.is_char_boundary(i))
                        .unwrap_or(0);
                    // The draft was saved first, so it has the smaller ROW_ID.
                    let draft = Mimic3Note {
                        row_id: note.row_id,
                        subject_id,
                        hadm_id: note.hadm_id,
                        chartdate: note.chartdate.clone(),
                        charttime: note.charttime.clone(),
                        storetime: note.charttime.clone(),
                        category,
                        description: note.description.clone(),
                        cgid: note.cgid,
                        iserror: false,
                        text: note.text[..cut].to_string(),
                    };
                    note.row_id = row_id;
                    row_id += 1;
                    self.truth
                        .push((draft.row_id.to_string(), "draft", note.row_id.to_string()));
                    self.m3.push(draft);
                }
                self.plant_copies_m3(&note, &mut row_id, n);
                if category == "Radiology" && self.quirk("radqa", 0.03) {
                    self.radqa_doc(&note);
                }
                if let Some(sentences) = clip {
                    self.clip.push(ClipDoc {
                        row_id: note.row_id,
                        sentences,
                    });
                }
                if is_long {
                    self.truth
                        .push((note.row_id.to_string(), "long_note", String::new()));
                }
                self.m3.push(note);
            }
        }
    }

    /// Exact and near copies of a note under a new ROW_ID, as copy-forward produces.
    fn plant_copies_m3(&mut self, note: &Mimic3Note, row_id: &mut u64, n: u64) {
        if (self.m3.len() as u64) + 2 >= n || note.text.len() < 200 {
            return;
        }
        let kind = if self.quirk("exact_copy", 0.01) {
            "exact_copy"
        } else if self.quirk("near_copy", 0.02) {
            "near_copy"
        } else {
            return;
        };
        let text = if kind == "exact_copy" {
            note.text.clone()
        } else {
            self.near_copy(&note.text)
        };
        let copy = Mimic3Note {
            row_id: *row_id,
            subject_id: note.subject_id,
            hadm_id: note.hadm_id,
            chartdate: note.chartdate.clone(),
            charttime: note.charttime.as_ref().map(|t| t.replace(":00", ":30")),
            storetime: note.storetime.clone(),
            category: note.category,
            description: note.description.clone(),
            cgid: note.cgid.map(|c| c + 1),
            iserror: false,
            text,
        };
        *row_id += 1;
        self.truth
            .push((copy.row_id.to_string(), kind, note.row_id.to_string()));
        self.m3.push(copy);
    }

    /// A copy with a few words changed.
    fn near_copy(&mut self, text: &str) -> String {
        let mut words: Vec<String> = text.split(' ').map(str::to_string).collect();
        let edits = 1 + words.len() / 80;
        for _ in 0..edits {
            let i = self.rng.below(words.len() as u64) as usize;
            words[i] = self
                .rng
                .pick(&["stable", "improved", "unchanged", "noted"])
                .to_string();
        }
        words.join(" ")
    }

    /// Empty notes, control characters and POPUP junk, at rates that show up in samples.
    fn dirty(&mut self, text: &mut String) {
        if self.quirk("empty", 0.002) {
            *text = self
                .rng
                .pick(&[" \n", "JavaScript:parent.POPUP('x')\n", "\x13\x14\n"])
                .to_string();
            return;
        }
        if self.quirk("control", 0.004) {
            let at = self.rng.below(text.len() as u64) as usize;
            if let Some(at) = (0..=at).rev().find(|&i| text.is_char_boundary(i)) {
                let c = self.rng.pick(&["\x13", "\x14", "\x7f"]);
                text.insert_str(at, c);
            }
        }
        if self.quirk("popup", 0.003) {
            text.push_str("\nJavaScript:parent.POPUP('/cgi-bin/lookup?id=12','view')\n");
        }
    }

    fn mimic3_text(&mut self, category: &str, age: u64, (y, m, d): (u64, u64, u64)) -> NoteText {
        let date = format!("[**{y}-{m}-{d}**]");
        let plain = |text: String, description: &str| NoteText {
            text,
            description: description.to_string(),
            clip: None,
        };
        match category.trim_end() {
            "Discharge summary" => {
                let description = if self.rng.chance(0.1) {
                    "Addendum"
                } else {
                    "Report"
                };
                if self.rng.chance(0.5) {
                    let (text, clip) = self.discharge_templated(age, &date, Style::Mimic3);
                    NoteText {
                        text,
                        description: description.to_string(),
                        clip: Some(clip),
                    }
                } else {
                    plain(self.discharge_dictated(age, &date), description)
                }
            }
            "Radiology" => {
                let exam = self.rng.pick(EXAMS);
                plain(self.radiology(age, &date, exam, Style::Mimic3).0, exam)
            }
            "ECG" => plain(self.ecg(&date), "Report"),
            "Echo" => plain(self.echo(age), "Report"),
            "Nursing/other" | "Nursing" => plain(self.nursing(age), "Nursing Progress Note"),
            "Physician" => plain(self.physician(age), "Physician Resident Progress Note"),
            other => plain(self.short_note(other, age), &format!("{other} Note")),
        }
    }
}

/// MIMIC-IV's de-identification of a MIMIC-III text: every `[**...**]` becomes `___`.
fn reidentify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[**") {
        let Some(len) = rest[start..].find("**]") else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str("___");
        rest = &rest[start + len + 3..];
    }
    out.push_str(rest);
    out
}

/// Other line breaks: every third line joined to the one before it, runs of spaces as one.
fn rewrap(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push(if i % 3 == 2 { ' ' } else { '\n' });
        }
        let mut last_space = false;
        for c in line.chars() {
            if !(c == ' ' && last_space) {
                out.push(c);
            }
            last_space = c == ' ';
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::files::{find_words, py_list};
    use super::text::wrap;
    use super::*;

    #[test]
    fn rng_is_stable() {
        let mut r = Rng::new(7);
        let first: Vec<u64> = (0..3).map(|_| r.below(1000)).collect();
        let mut r = Rng::new(7);
        let again: Vec<u64> = (0..3).map(|_| r.below(1000)).collect();
        assert_eq!(first, again);
        let mut r = Rng::new(8);
        let other: Vec<u64> = (0..3).map(|_| r.below(1000)).collect();
        assert_ne!(first, other);
        let hits = (0..10_000).filter(|_| r.chance(0.1)).count();
        assert!((800..1200).contains(&hits), "{hits}");
    }

    #[test]
    fn phrases_are_found_across_wrapped_lines() {
        let text = "There is small left\n pleural effusion. There is small";
        let (start, end) = find_words(text, "small left pleural effusion").unwrap();
        assert_eq!(&text[start..end], "small left\n pleural effusion");
        // Words must be separated, and a later false start does not match.
        assert_eq!(find_words("smallleft pleural", "small left pleural"), None);
        assert_eq!(find_words(text, "small right"), None);
    }

    #[test]
    fn wrap_keeps_words_and_width() {
        let text = "one two three four five six seven eight nine ten";
        let wrapped = wrap(text, 12);
        assert!(wrapped.lines().all(|l| l.len() <= 12), "{wrapped}");
        assert_eq!(wrapped.replace('\n', " "), text);
    }

    #[test]
    fn python_list_repr() {
        assert_eq!(py_list(&["a".into(), "it's".into()]), "['a', \"it's\"]");
        assert_eq!(py_list(&[]), "[]");
    }
}

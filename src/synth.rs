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

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

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

/// SplitMix64: tiny, fast and stable across platforms and versions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5EED_E4B0_0000_0000)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) < p * (1u64 << 53) as f64
    }

    pub fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len() as u64) as usize]
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

// ---------------------------------------------------------------------------------------
// Vocabulary

const CONDITIONS: &[&str] = &[
    "hypertension",
    "type 2 diabetes mellitus",
    "atrial fibrillation",
    "coronary artery disease",
    "congestive heart failure",
    "chronic kidney disease",
    "COPD",
    "asthma",
    "cirrhosis",
    "hyperlipidemia",
    "hypothyroidism",
    "prior stroke",
    "peripheral vascular disease",
    "obstructive sleep apnea",
    "depression",
    "GERD",
];

/// Condition -> a broader class, for entailment pairs.
const CONDITION_CLASS: &[(&str, &str)] = &[
    ("atrial fibrillation", "an arrhythmia"),
    ("coronary artery disease", "heart disease"),
    ("congestive heart failure", "heart disease"),
    ("type 2 diabetes mellitus", "a metabolic disorder"),
    ("hypothyroidism", "an endocrine disorder"),
    ("COPD", "lung disease"),
    ("asthma", "lung disease"),
    ("cirrhosis", "liver disease"),
    ("chronic kidney disease", "renal disease"),
    ("prior stroke", "a neurologic history"),
];

const COMPLAINTS: &[&str] = &[
    "shortness of breath",
    "chest pain",
    "abdominal pain",
    "fever and chills",
    "altered mental status",
    "lower extremity swelling",
    "syncope",
    "hematemesis",
    "productive cough",
    "weakness",
];

const MEDS: &[&str] = &[
    "Metoprolol Tartrate 25 mg PO BID",
    "Lisinopril 10 mg PO DAILY",
    "Atorvastatin 40 mg PO QPM",
    "Furosemide 40 mg PO DAILY",
    "Aspirin 81 mg PO DAILY",
    "Warfarin 5 mg PO DAILY16",
    "Insulin Glargine 20 Units Bedtime",
    "Pantoprazole 40 mg PO Q24H",
    "Levothyroxine Sodium 75 mcg PO DAILY",
    "Albuterol Inhaler 2 PUFF IH Q4H:PRN wheeze",
];

/// Findings a radiology report may state, each with the question a referring clinician
/// asks about it. As in RadQA, questions are written from the referral, not the report:
/// they share no word with the report's wording of the finding.
const FINDINGS: &[(&str, &str)] = &[
    (
        "Is there fluid around the lungs?",
        "small left pleural effusion",
    ),
    (
        "Is there air outside the lung?",
        "tiny right apical pneumothorax",
    ),
    ("Is there an infiltrate?", "right lower lobe consolidation"),
    (
        "Is there fluid overload?",
        "mild pulmonary vascular congestion",
    ),
    (
        "Is the cardiac silhouette enlarged?",
        "moderate cardiomegaly",
    ),
    (
        "Is there volume loss at the bases?",
        "bibasilar atelectasis",
    ),
    (
        "Is there a broken bone?",
        "nondisplaced fracture of the left seventh rib",
    ),
    (
        "Is there intracranial blood?",
        "small subdural hemorrhage along the left convexity",
    ),
    (
        "Where does the catheter end?",
        "right internal jugular line terminating in the mid SVC",
    ),
    ("Is there a mass?", "4 mm nodule in the right upper lobe"),
];

const EXAMS: &[&str] = &[
    "CHEST (PORTABLE AP)",
    "CHEST (PA & LAT)",
    "CT HEAD W/O CONTRAST",
    "CT ABDOMEN W/CONTRAST",
    "MR HEAD W & W/O CONTRAST",
    "LIVER OR GALLBLADDER US (SINGLE ORGAN)",
    "UNILAT LOWER EXT VEINS LEFT",
];

/// The seven CLIP labels, each with sentences that carry it.
const CLIP_SENTENCES: &[(&str, &[&str])] = &[
    (
        "Appointment-related followup",
        &[
            "Please follow up with your primary care physician within one week.",
            "You have an appointment with Dr. [**Last Name (STitle) 1234**] in cardiology clinic on [**2151-8-20**].",
            "Please call to schedule a follow up visit with neurology in 2 weeks.",
        ],
    ),
    (
        "Medication-related followups",
        &[
            "Please continue taking your metoprolol and stop taking amlodipine.",
            "Your warfarin dose was changed to 5 mg daily.",
            "Do not restart your diuretic until your doctor tells you to.",
        ],
    ),
    (
        "Lab-related followup",
        &[
            "Please have your INR checked on Monday.",
            "You will need blood work to check your potassium in 3 days.",
            "Have your creatinine drawn at your next visit.",
        ],
    ),
    (
        "Procedure-related followup",
        &[
            "You are scheduled for a colonoscopy in 6 weeks.",
            "Your drain will be removed at the surgery clinic.",
            "Please return for a repeat paracentesis if your belly gets bigger.",
        ],
    ),
    (
        "Imaging-related followup",
        &[
            "You should have a repeat chest CT in 3 months to follow the nodule.",
            "An outpatient MRI of the spine has been ordered.",
            "Please get a follow up ultrasound of your liver.",
        ],
    ),
    (
        "Case-specific instructions for patient",
        &[
            "Weigh yourself every morning and call if your weight goes up more than 3 lbs.",
            "Do not lift more than 10 pounds for six weeks.",
            "Keep your incision clean and dry.",
        ],
    ),
    (
        "Other helpful contextual information",
        &[
            "Your pathology results were still pending at discharge.",
            "A social work referral was placed for home services.",
            "Your outside records were requested from the rehabilitation facility.",
        ],
    ),
];

const CLIP_FILLER: &[&str] = &[
    "It was a pleasure taking care of you.",
    "You were admitted for shortness of breath.",
    "You were treated with antibiotics for pneumonia.",
    "Your symptoms improved during the hospital stay.",
];

// ---------------------------------------------------------------------------------------
// Records

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
        Ok(())
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

struct NoteText {
    text: String,
    description: String,
    /// Follow-up sentences with their CLIP tags (templated discharge summaries).
    clip: Option<Vec<(String, Vec<String>)>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Mimic3,
    Mimic4,
}

/// Stretches a note past DuckDB's default 2 MB line limit.
fn long_text(text: &str) -> String {
    let mut out = String::with_capacity(2_200_000);
    while out.len() < 2_200_000 {
        out.push_str(text);
        out.push_str("\n\n");
    }
    out
}

/// Greedy word wrap at `width`, as the real notes wrap at 66-70 characters. Placeholders
/// hold spaces, so some end up split over a line break, as in the real files.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / width);
    let mut line_len = 0;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if line_len > 0 && line_len + 1 + word.len() > width {
            out.push('\n');
            line_len = 0;
        } else if line_len > 0 {
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += word.len();
    }
    out
}

/// MIMIC-III placeholder shapes, one or more per tag family.
const PLACEHOLDERS: &[&str] = &[
    "[**Known lastname {n}**]",
    "[**Known firstname {n}**]",
    "[**First Name8 (NamePattern2) {n}**]",
    "[**Last Name (NamePattern1) {n}**]",
    "[**Initials (NamePattern4) {n}**]",
    "[**Doctor Last Name {n}**]",
    "[**Name6 (MD) {n}**]",
    "[**Hospital1 {n}**]",
    "[**Hospital {n}**]",
    "[**Company {n}**]",
    "[**University/College {n}**]",
    "[**Medical Record Number {n}**]",
    "[**MD Number(3) {n}**]",
    "[**Job Number {n}**]",
    "[**Unit Number {n}**]",
    "[**Numeric Identifier {n}**]",
    "[**Location (un) {n}**]",
    "[**Street Address(2) {n}**]",
    "[**Apartment Address(1) {n}**]",
    "[**Hospital Ward Name {n}**]",
    "[**PO BOX {n}**]",
    "[**Telephone/Fax (1) {n}**]",
    "[**Pager number {n}**]",
    "[**Social Security Number {n}**]",
    "[**Serial Number {n}**]",
    "[**Provider Number {n}**]",
    "[**E-mail address {n}**]",
    "[**CC Contact Info {n}**]",
    "[**Attending Info {n}**]",
    "[**Dictator Info {n}**]",
    "[**Date Range {n}**]",
    "[**Date range (1) {n}**]",
    "[**Year (4 digits) {n}**]",
    "[**Month (only) {n}**]",
    "[**Day Month {n}**]",
    "[**Holiday {n}**]",
    "[**Age over 90 **]",
    "[**State {n}**]",
    "[**Country {n}**]",
    "[**URL {n}**]",
    "[** **]",
    "[**9-/3389**]",
    "[**{n}**]",
];

impl Generator<'_> {
    fn ph(&mut self, shape: &str) -> String {
        shape.replace("{n}", &self.rng.range(1, 99_999).to_string())
    }

    /// One random placeholder of any family.
    fn any_ph(&mut self) -> String {
        let shape = self.rng.pick(PLACEHOLDERS);
        self.ph(shape)
    }

    fn sentence_with_ph(&mut self) -> String {
        let p = self.any_ph();
        let frame = self.rng.pick(&[
            "Information was obtained from {p} and the chart.",
            "The patient lives with family near {p}.",
            "Records were faxed from {p} today.",
            "Contact {p} with any questions.",
            "Seen by {p} in clinic.",
        ]);
        frame.replace("{p}", &p)
    }

    fn prose(&mut self, age: u64, sentences: usize) -> String {
        let sex = if self.rng.chance(0.5) { "man" } else { "woman" };
        let c1 = self.rng.pick(CONDITIONS);
        let c2 = self.rng.pick(CONDITIONS);
        let complaint = self.rng.pick(COMPLAINTS);
        let mut out = format!(
            "{age} year old {sex} with history of {c1} and {c2} who presents with {complaint}."
        );
        for _ in 0..sentences {
            out.push(' ');
            let s = match self.rng.below(6) {
                0 => self.sentence_with_ph(),
                1 => format!(
                    "In the ED, vitals were T {}.{} HR {} BP {}/{} RR {} O2 sat {}% on RA.",
                    self.rng.range(97, 102),
                    self.rng.below(10),
                    self.rng.range(55, 130),
                    self.rng.range(90, 180),
                    self.rng.range(50, 100),
                    self.rng.range(12, 28),
                    self.rng.range(86, 100)
                ),
                2 => format!(
                    "Labs notable for creatinine {}.{} and WBC {}.",
                    self.rng.range(0, 4),
                    self.rng.below(10),
                    self.rng.range(3, 22)
                ),
                3 => format!(
                    "She was started on {} with improvement.",
                    self.rng.pick(MEDS)
                ),
                4 => format!(
                    "Patient reports \"{}\" since yesterday.",
                    self.rng.pick(COMPLAINTS)
                ),
                _ => format!("No recent travel; denies {}.", self.rng.pick(COMPLAINTS)),
            };
            out.push_str(&s);
        }
        wrap(&out, self.rng.range(66, 70) as usize)
    }

    /// A templated discharge summary, with its follow-up sentences for CLIP.
    fn discharge_templated(
        &mut self,
        age: u64,
        date: &str,
        style: Style,
    ) -> (String, Vec<(String, Vec<String>)>) {
        let (blank, name_line) = match style {
            Style::Mimic3 => (String::new(), String::new()),
            Style::Mimic4 => (
                " \n".to_string(),
                " \nName:  ___                     Unit No:   ___\n".to_string(),
            ),
        };
        let iv = style == Style::Mimic4;
        let d = |s: &str| if iv { "___".to_string() } else { s.to_string() };
        let attending = if iv {
            "___.".to_string()
        } else {
            self.ph("[**First Name3 (LF) {n}**]")
        };
        let sex = if self.rng.chance(0.5) { "M" } else { "F" };
        let mut t = String::new();
        t.push_str(&name_line);
        t.push_str(&format!(
            "{blank}Admission Date:  {}              Discharge Date:   {}\n{blank}\nDate of Birth:  {}             Sex:   {sex}\n\n",
            d(date),
            d(date),
            d(&format!("[**{}-{}-{}**]", 2100 - age as i64, self.rng.range(1, 12), self.rng.range(1, 28)))
        ));
        t.push_str(&format!(
            "Service: {}\n\nAllergies:\n{}\n\nAttending:{attending}\n",
            self.rng
                .pick(&["MEDICINE", "SURGERY", "CARDIOTHORACIC", "NEUROLOGY"]),
            self.rng.pick(&[
                "Patient recorded as having No Known Allergies to Drugs",
                "Penicillins",
                "Sulfa (Sulfonamide Antibiotics)"
            ])
        ));
        t.push_str(&format!(
            "Chief Complaint:\n{}\n\n",
            self.rng.pick(COMPLAINTS)
        ));
        t.push_str("Major Surgical or Invasive Procedure:\nNone\n\n");
        let hpi = if iv {
            self.prose(age, 4)
                .replace(&format!("{age} year old"), "___ year old")
                .replace("[**", "")
                .replace("**]", "")
        } else {
            self.prose(age, 4)
        };
        t.push_str(&format!("History of Present Illness:\n{hpi}\n\n"));
        t.push_str("Past Medical History:\n");
        for _ in 0..self.rng.range(2, 5) {
            t.push_str(&format!("- {}\n", self.rng.pick(CONDITIONS)));
        }
        t.push_str("\nDischarge Medications:\n");
        for i in 1..=self.rng.range(2, 6) {
            t.push_str(&format!("{i}. {}\n", self.rng.pick(MEDS)));
        }
        t.push_str(&format!(
            "\nDischarge Disposition:\n{}\n\nDischarge Diagnosis:\n{}\n\nDischarge Instructions:\n",
            self.rng
                .pick(&["Home", "Home With Service", "Extended Care"]),
            self.rng.pick(CONDITIONS)
        ));
        // One follow-up item (sometimes two, of different kinds), each one to three
        // sentences tagged B- then I- as CLIP tags multi-sentence items, with unlabeled
        // sentences between and around the items. Drawn from a stream of their own, so a
        // change here leaves the rest of the synthetic data as it was.
        let mut rng = Rng::new(self.rng.next_u64());
        let mut blocks: Vec<Vec<(String, Vec<String>)>> = Vec::new();
        let mut kinds: Vec<usize> = Vec::new();
        for _ in 0..if rng.chance(0.7) { 1 } else { 2 } {
            let kind = loop {
                let k = rng.below(CLIP_SENTENCES.len() as u64) as usize;
                if !kinds.contains(&k) {
                    break k;
                }
            };
            kinds.push(kind);
            let (label, options) = CLIP_SENTENCES[kind];
            let first = rng.below(options.len() as u64) as usize;
            let item = (0..rng.range(1, 3) as usize)
                .map(|j| {
                    let s = options[(first + j) % options.len()];
                    let s = if iv {
                        s.replace("[**Last Name (STitle) 1234**]", "___")
                            .replace("[**2151-8-20**]", "___")
                    } else {
                        s.to_string()
                    };
                    let tag = if j == 0 { "B" } else { "I" };
                    (s, vec![format!("{tag}-{label}")])
                })
                .collect();
            blocks.push(item);
        }
        for _ in 0..rng.range(1, 3) {
            let at = rng.below(blocks.len() as u64 + 1) as usize;
            let s = rng.pick(CLIP_FILLER);
            blocks.insert(at, vec![(s.to_string(), Vec::new())]);
        }
        let sentences: Vec<(String, Vec<String>)> = blocks.into_iter().flatten().collect();
        for (s, _) in &sentences {
            t.push_str(s);
            t.push('\n');
        }
        let provider = if iv {
            "___".to_string()
        } else {
            self.ph("[**First Name11 (Name Pattern1) {n}**]")
        };
        let phone = if iv {
            "___".to_string()
        } else {
            self.ph("[**Telephone/Fax (1) {n}**]")
        };
        t.push_str(&format!(
            "\nFollowup Instructions:\nProvider: {provider} Phone:{phone}\nDate/Time:{} 10:00\n",
            d(date)
        ));
        if !iv {
            t.push_str(&format!(
                "\n                             {} {} MD {}\n\nCompleted by:{date}",
                self.ph("[**First Name11 (Name Pattern1) {n}**]"),
                self.ph("[**Last Name (NamePattern1) {n}**]"),
                self.ph("[**MD Number(2) {n}**]"),
            ));
        }
        (t, sentences)
    }

    fn discharge_dictated(&mut self, age: u64, date: &str) -> String {
        let mut t = format!(
            "Admission Date:  {date}     Discharge Date:  {date}\n\nService:  {}\n\nHISTORY OF PRESENT ILLNESS:  ",
            self.rng.pick(&["MEDICINE", "CSU", "NEUROSURGERY"])
        );
        t.push_str(&self.prose(age, 6).to_uppercase());
        t.push_str(&format!(
            "\n\nPAST MEDICAL HISTORY:  {}.  {}.\n\nHOSPITAL COURSE:  {}\n\nCONDITION ON DISCHARGE:  Stable.\n\n",
            self.rng.pick(CONDITIONS).to_uppercase(),
            self.rng.pick(CONDITIONS).to_uppercase(),
            self.prose(age, 3)
        ));
        t.push_str(&format!(
            "                          {}, M.D.  {}\n\nDictated By:{}\n\nMEDQUIST36\n\nD:  {date}  10:11\nT:  {date}  12:00\nJOB#:  {}",
            self.ph("[**Last Name (NamePattern4) {n}**]"),
            self.ph("[**MD Number(1) {n}**]"),
            self.ph("[**Last Name (NamePattern1) {n}**]"),
            self.ph("[**Job Number {n}**]")
        ));
        t
    }

    /// A radiology report; returns the text and the findings it states.
    fn radiology(
        &mut self,
        age: u64,
        date: &str,
        exam: &str,
        style: Style,
    ) -> (String, Vec<usize>) {
        let mut present = Vec::new();
        for i in 0..FINDINGS.len() {
            if self.rng.chance(0.25) {
                present.push(i);
            }
        }
        let findings: Vec<String> = present
            .iter()
            .map(|&i| format!("There is {}.", FINDINGS[i].1))
            .collect();
        let findings = if findings.is_empty() {
            "No acute cardiopulmonary process.".to_string()
        } else {
            findings.join(" ")
        };
        let reason = self.rng.pick(&[
            "eval for pneumonia",
            "r/o ptx",
            "line placement",
            "s/p fall",
            "eval for bleed",
        ]);
        let sex = if self.rng.chance(0.5) { "man" } else { "woman" };
        let t = match style {
            Style::Mimic3 => {
                let ruler = "_".repeat(78);
                format!(
                    "{date} {}:{:02} AM\n {exam}                                            Clip # {}\n Reason: {reason}\n Admitting Diagnosis: {}\n {ruler}\n {} MEDICAL CONDITION:\n  {age} year old {sex} with {}\n REASON FOR THIS EXAMINATION:\n  {reason}\n {ruler}\n                                 FINAL REPORT\n {}\n {}\n\n IMPRESSION:  {}\n",
                    self.rng.range(1, 12),
                    self.rng.below(60),
                    self.ph("[**Clip Number (Radiology) {n}**]"),
                    self.rng.pick(COMPLAINTS).to_uppercase(),
                    self.ph("[**Hospital {n}**]"),
                    self.rng.pick(CONDITIONS),
                    exam,
                    wrap(&findings, 66).replace('\n', "\n "),
                    findings
                )
            }
            Style::Mimic4 => format!(
                "EXAMINATION:  {exam}\n\nINDICATION:  ___ year old {sex} with {}  // {reason}\n\nTECHNIQUE:  {exam}\n\nCOMPARISON:  ___\n\nFINDINGS: \n\n{}\n\nIMPRESSION: \n\n{}\n",
                self.rng.pick(CONDITIONS),
                wrap(&findings, 68),
                findings
            ),
        };
        (t, present)
    }

    fn ecg(&mut self, date: &str) -> String {
        format!(
            "{}. {}. Compared to the previous tracing of {date} {}.",
            self.rng.pick(&[
                "Sinus rhythm",
                "Sinus tachycardia",
                "Atrial fibrillation with rapid ventricular response"
            ]),
            self.rng.pick(&[
                "Left axis deviation",
                "Normal ECG",
                "Possible inferior myocardial infarction, age undetermined"
            ]),
            self.rng
                .pick(&["there is no significant change", "the rate is faster"])
        )
    }

    fn echo(&mut self, age: u64) -> String {
        // Drawn in this order, which the shipped fixtures depend on.
        let indication = self.rng.pick(CONDITIONS);
        let height = self.rng.range(58, 76);
        let weight = self.rng.range(100, 280);
        let (systolic, diastolic) = (self.rng.range(90, 170), self.rng.range(50, 95));
        let rate = self.rng.range(50, 120);
        let (y, m, d) = (
            self.rng.range(2100, 2199),
            self.rng.range(1, 12),
            self.rng.range(1, 28),
        );
        let lv = self.rng.pick(&[
            "Normal LV wall thickness and cavity size.",
            "Mild symmetric LVH.",
        ]);
        let atrium = self.rng.pick(&["normal in size", "mildly dilated"]);
        let ef = self.rng.range(20, 70);
        format!(
            "PATIENT/TEST INFORMATION:\nIndication: {indication}\nHeight: (in) {height}\nWeight (lb): {weight}\nBP (mm Hg): {systolic}/{diastolic}\nHR (bpm): {rate}\nStatus: Inpatient\nDate/Time: [**{y}-{m}-{d}**] at 10:00\nTest: TTE (Complete)\nDoppler: Full Doppler and color Doppler\n\nINTERPRETATION:\n\nFindings:\nLEFT VENTRICLE: {lv}\n\nConclusions:\nThe left atrium is {atrium}. Age {age}. LVEF {ef}%."
        )
    }

    fn nursing(&mut self, age: u64) -> String {
        format!(
            "Nursing Progress Note 0700-1900\nNeuro: {}\nCV: HR {}s {}, BP stable.\nResp: {}\nGI: {}\nSocial: {}\nPlan: {}",
            self.rng.pick(&[
                "A&Ox3, MAE, follows commands.",
                "Sedated on propofol, arousable to voice."
            ]),
            self.rng.range(6, 11) * 10,
            self.rng.pick(&["SR", "AFib", "ST"]),
            self.rng.pick(&[
                "LS clear, sats 95% on 2L NC.",
                "Coarse BS bilaterally, suctioned for thick secretions."
            ]),
            self.rng
                .pick(&["Abd soft, +BS, tolerating TF at goal.", "NPO, NGT to LIWS."]),
            self.sentence_with_ph(),
            self.prose(age, 1)
        )
    }

    fn physician(&mut self, age: u64) -> String {
        format!(
            "Chief Complaint: {}\n24 Hour Events:\n{}\nAllergies:\nNo Known Drug Allergies\nAssessment and Plan:\n{}\nICU Care\nCode status: Full code\nDisposition: ICU",
            self.rng.pick(COMPLAINTS),
            self.prose(age, 2),
            self.prose(age, 3)
        )
    }

    fn short_note(&mut self, category: &str, age: u64) -> String {
        format!(
            "{} NOTE:\n{}\n{}",
            category.to_uppercase(),
            self.prose(age, 2),
            self.sentence_with_ph()
        )
    }

    fn radqa_doc(&mut self, note: &Mimic3Note) {
        let text = &note.text;
        let (Some(report), Some(impression)) =
            (text.find("FINAL REPORT\n"), text.find("IMPRESSION:"))
        else {
            return;
        };
        let sections = [
            text[report + "FINAL REPORT\n".len()..impression].trim(),
            text[impression + "IMPRESSION:".len()..].trim(),
        ];
        let mut present = Vec::new();
        for (i, (_, phrase)) in FINDINGS.iter().enumerate() {
            match sections.map(|s| find_words(s, phrase)) {
                [Some(f), Some(imp)] => present.push((i, [f, imp])),
                [None, None] => {}
                // A quirk broke the phrase in one section: no clean answer, no document.
                _ => return,
            }
        }
        self.radqa.push(RadqaDoc {
            row_id: note.row_id,
            sections: sections.map(str::to_string),
            present,
        });
    }

    fn generate_mimic4(&mut self, n: u64) {
        let mut subject_id = 10_000_000u64;
        let mut hadm_id = 20_000_000u64;
        while (self.m4.len() as u64) < n {
            subject_id += self.rng.range(1, 40);
            let mut seq_ds = 0;
            let mut seq_rr = 0;
            let (y, m, d) = self.date();
            let age = self.rng.range(19, 89);
            for _ in 0..self.rng.range(1, 16) {
                if self.m4.len() as u64 >= n {
                    break;
                }
                hadm_id += self.rng.range(1, 5);
                let time = format!(
                    "{y}-{m:02}-{:02} {:02}:{:02}:00",
                    d + self.rng.below(3),
                    self.rng.below(24),
                    self.rng.below(60)
                );
                let discharge = self.rng.chance(0.125);
                let mut note = if discharge {
                    seq_ds += 1;
                    let (text, _) = self.discharge_templated(age, "___", Style::Mimic4);
                    Mimic4Note {
                        note_id: format!("{subject_id}-DS-{seq_ds}"),
                        subject_id,
                        hadm_id: Some(hadm_id),
                        note_type: "DS",
                        note_seq: seq_ds,
                        charttime: time.clone(),
                        storetime: Some(time),
                        text,
                        exam: None,
                    }
                } else {
                    seq_rr += 1;
                    let exam = self.rng.pick(EXAMS);
                    let addendum = self.rng.chance(0.03);
                    Mimic4Note {
                        note_id: format!(
                            "{subject_id}-{}-{seq_rr}",
                            if addendum { "AR" } else { "RR" }
                        ),
                        subject_id,
                        hadm_id: (!self.rng.chance(0.2)).then_some(hadm_id),
                        note_type: if addendum { "AR" } else { "RR" },
                        note_seq: seq_rr,
                        charttime: time.clone(),
                        storetime: (!self.rng.chance(0.1)).then_some(time),
                        text: self.radiology(age, "___", exam, Style::Mimic4).0,
                        exam: Some(exam),
                    }
                };
                self.dirty(&mut note.text);
                let copy = match self.rng.below(1000) {
                    0..10 => Some("exact_copy"),
                    10..30 => Some("near_copy"),
                    _ => None,
                };
                let copy =
                    copy.filter(|_| (self.m4.len() as u64) + 2 < n && note.text.len() >= 200);
                let planted = copy.map(|kind| {
                    let (note_type, seq) = if note.note_type == "DS" {
                        seq_ds += 1;
                        ("DS", seq_ds)
                    } else {
                        seq_rr += 1;
                        ("RR", seq_rr)
                    };
                    let text = if kind == "exact_copy" {
                        note.text.clone()
                    } else {
                        self.near_copy(&note.text)
                    };
                    let id = format!("{subject_id}-{note_type}-{seq}");
                    self.truth.push((id.clone(), kind, note.note_id.clone()));
                    Mimic4Note {
                        note_id: id,
                        subject_id,
                        hadm_id: note.hadm_id,
                        note_type,
                        note_seq: seq,
                        charttime: note.charttime.clone(),
                        storetime: note.storetime.clone(),
                        text,
                        exam: note.exam,
                    }
                });
                self.m4.push(note);
                self.m4.extend(planted);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Files

/// MIMIC-III CSV: strings quoted, numbers and dates not, empty means NULL.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// pandas-style CSV (MIMIC-IV): quoted only when needed.
fn q4(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        q(s)
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// Python's `repr` of a list of strings, as CLIP stores sentences and labels.
fn py_list(items: &[String]) -> String {
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

struct Out {
    root: PathBuf,
    gzip: bool,
    written: Vec<(PathBuf, u64)>,
}

impl Out {
    /// Writes `lines` to `rel` (plus `.gz` for CSV when compressing) under a temporary name,
    /// then renames it, so an interrupted run leaves no file that looks complete.
    fn write(
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
    fn write_files(&mut self, root: &Path) -> Result<Vec<(PathBuf, u64)>> {
        crate::fsutil::create_private_dir(root)?;
        crate::catalog::restrict_to_owner(root)?;
        let mut out = Out {
            root: root.to_path_buf(),
            gzip: self.config.gzip,
            written: Vec::new(),
        };

        let m3 = std::mem::take(&mut self.m3);
        out.write("mimiciii/1.4/NOTEEVENTS.csv", true, m3.len() as u64, |w| {
            let header = crate::ingest::MIMIC3_COLUMNS.map(q).join(",");
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
                    writeln!(w, "{}", crate::ingest::MIMIC4_COLUMNS.join(","))?;
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

    fn write_tasks(&mut self, out: &mut Out) -> Result<()> {
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
fn find_words(text: &str, phrase: &str) -> Option<(usize, usize)> {
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

fn data_len(json: &serde_json::Value) -> u64 {
    json["data"].as_array().map_or(0, |a| a.len() as u64)
}

#[cfg(test)]
mod tests {
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

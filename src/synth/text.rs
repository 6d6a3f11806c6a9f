//! Note text: templates filled from the vocabulary, with MIMIC's quirks planted (placeholders,
//! wrapping, control characters, junk lines, long notes).

use ehrprep_data::rng::Rng;

use super::files::find_words;
use super::vocab::*;
use super::*;

pub(super) struct NoteText {
    pub(super) text: String,
    pub(super) description: String,
    /// Follow-up sentences with their CLIP tags (templated discharge summaries).
    pub(super) clip: Option<Vec<(String, Vec<String>)>>,
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Style {
    Mimic3,
    Mimic4,
}

/// Stretches a note past DuckDB's default 2 MB line limit.
pub(super) fn long_text(text: &str) -> String {
    let mut out = String::with_capacity(2_200_000);
    while out.len() < 2_200_000 {
        out.push_str(text);
        out.push_str("\n\n");
    }
    out
}

/// Greedy word wrap at `width`, as the real notes wrap at 66-70 characters. Placeholders
/// hold spaces, so some end up split over a line break, as in the real files.
pub(super) fn wrap(text: &str, width: usize) -> String {
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
pub(super) const PLACEHOLDERS: &[&str] = &[
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
    pub(super) fn ph(&mut self, shape: &str) -> String {
        shape.replace("{n}", &self.rng.range(1, 99_999).to_string())
    }

    /// One random placeholder of any family.
    pub(super) fn any_ph(&mut self) -> String {
        let shape = self.rng.pick(PLACEHOLDERS);
        self.ph(shape)
    }

    pub(super) fn sentence_with_ph(&mut self) -> String {
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

    pub(super) fn prose(&mut self, age: u64, sentences: usize) -> String {
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
    pub(super) fn discharge_templated(
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

    pub(super) fn discharge_dictated(&mut self, age: u64, date: &str) -> String {
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
    pub(super) fn radiology(
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

    pub(super) fn ecg(&mut self, date: &str) -> String {
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

    pub(super) fn echo(&mut self, age: u64) -> String {
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

    pub(super) fn nursing(&mut self, age: u64) -> String {
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

    pub(super) fn physician(&mut self, age: u64) -> String {
        format!(
            "Chief Complaint: {}\n24 Hour Events:\n{}\nAllergies:\nNo Known Drug Allergies\nAssessment and Plan:\n{}\nICU Care\nCode status: Full code\nDisposition: ICU",
            self.rng.pick(COMPLAINTS),
            self.prose(age, 2),
            self.prose(age, 3)
        )
    }

    pub(super) fn short_note(&mut self, category: &str, age: u64) -> String {
        format!(
            "{} NOTE:\n{}\n{}",
            category.to_uppercase(),
            self.prose(age, 2),
            self.sentence_with_ph()
        )
    }

    pub(super) fn radqa_doc(&mut self, note: &Mimic3Note) {
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

    pub(super) fn generate_mimic4(&mut self, n: u64) {
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

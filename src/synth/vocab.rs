//! The words synthetic notes and task files are made of.

pub(super) const CONDITIONS: &[&str] = &[
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
pub(super) const CONDITION_CLASS: &[(&str, &str)] = &[
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

pub(super) const COMPLAINTS: &[&str] = &[
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

pub(super) const MEDS: &[&str] = &[
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
pub(super) const FINDINGS: &[(&str, &str)] = &[
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

pub(super) const EXAMS: &[&str] = &[
    "CHEST (PORTABLE AP)",
    "CHEST (PA & LAT)",
    "CT HEAD W/O CONTRAST",
    "CT ABDOMEN W/CONTRAST",
    "MR HEAD W & W/O CONTRAST",
    "LIVER OR GALLBLADDER US (SINGLE ORGAN)",
    "UNILAT LOWER EXT VEINS LEFT",
];

/// The seven CLIP labels, each with sentences that carry it.
pub(super) const CLIP_SENTENCES: &[(&str, &[&str])] = &[
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

pub(super) const CLIP_FILLER: &[&str] = &[
    "It was a pleasure taking care of you.",
    "You were admitted for shortness of breath.",
    "You were treated with antibiotics for pneumonia.",
    "Your symptoms improved during the hospital stay.",
];

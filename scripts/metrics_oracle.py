"""Oracle scores for the metric tests.

SQuAD v2: the official evaluate-v2.0.py definitions (normalize_answer, compute_exact,
compute_f1, maximum over gold answers, unanswerable questions scored against ""), written
out here because the script is not on PyPI. CLIP: scikit-learn's f1_score over the seven
labels with a MultiLabelBinarizer.

    python scripts/metrics_oracle.py CASES_JSON

CASES_JSON: {"squad": [[prediction, [gold, ...]], ...], "clip": [[prediction, reference], ...]}
where CLIP strings are comma-separated label names. Prints one JSON line.
"""

import collections
import json
import re
import string
import sys

from sklearn.metrics import f1_score
from sklearn.preprocessing import MultiLabelBinarizer

LABELS = [
    "Appointment-related followup",
    "Case-specific instructions for patient",
    "Imaging-related followup",
    "Lab-related followup",
    "Medication-related followups",
    "Other helpful contextual information",
    "Procedure-related followup",
]


def normalize_answer(s):
    def remove_articles(text):
        return re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def get_tokens(s):
    return normalize_answer(s).split() if s else []


def compute_exact(a_gold, a_pred):
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold, a_pred):
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def squad(cases):
    em = f1 = 0.0
    for pred, golds in cases:
        golds = [a for a in golds if normalize_answer(a)] or [""]
        em += max(compute_exact(a, pred) for a in golds)
        f1 += max(compute_f1(a, pred) for a in golds)
    return em / len(cases), f1 / len(cases)


def labels(text):
    return [p.strip() for p in text.split(",") if p.strip() in LABELS]


def clip(cases):
    mlb = MultiLabelBinarizer(classes=LABELS)
    y_pred = mlb.fit_transform([labels(p) for p, _ in cases])
    y_true = mlb.transform([labels(r) for _, r in cases])
    micro = f1_score(y_true, y_pred, average="micro", zero_division=0)
    macro = f1_score(y_true, y_pred, average="macro", zero_division=0)
    return float(micro), float(macro)


cases = json.load(open(sys.argv[1]))
em, f1 = squad(cases["squad"])
micro, macro = clip(cases["clip"])
print(json.dumps({"squad_em": em, "squad_f1": f1, "clip_micro": micro, "clip_macro": macro}))

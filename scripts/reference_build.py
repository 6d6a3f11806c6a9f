#!/usr/bin/env python3
"""Python reference for the corpus build benchmark: the same steps as `ehrprep build`
(read MIMIC CSVs, drop ISERROR rows and superseded drafts, normalize placeholders and junk
with `re`, drop empty notes and exact duplicates) written the way a notebook would, with
pandas read_csv and re. Writes the kept notes to OUT/corpus.csv.

Usage: reference_build.py MIMIC_DIR OUT
"""
import hashlib
import os
import re
import sys

import pandas as pd

PLACEHOLDER = re.compile(r"\[\*\*([^\[\]]{0,120}?)\*\*\]")
DATE_LIKE = re.compile(r"^(?:\d{4}(?:-\d{1,2}){0,2}|\d{1,2}-\d{1,2}(?:-\d{2,4})?|\d{1,2}/\d{1,2}(?:/\d{2,4})?)$")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
TYPES = [
    ("known", "[Name]"), ("first name", "[Name]"), ("last name", "[Name]"), ("name", "[Name]"),
    ("initial", "[Name]"), ("hospital", "[Company]"), ("company", "[Company]"),
    ("university", "[Company]"), ("college", "[Company]"), ("medical record", "[Reg#]"),
    ("md number", "[Reg#]"), ("clip number", "[Reg#]"), ("job number", "[Reg#]"),
    ("unit number", "[Reg#]"), ("numeric identifier", "[Reg#]"), ("location", "[LOC]"),
    ("street", "[LOC]"), ("apartment", "[LOC]"), ("po box", "[LOC]"), ("telephone", "[#]"),
    ("pager", "[#]"), ("social security", "[#]"), ("serial", "[#]"), ("provider", "[#]"),
    ("e-mail", "[CI]"), ("cc contact", "[CI]"), ("attending info", "[CI]"),
    ("dictator info", "[CI]"), ("date range", "[DR]"), ("year", "[YR]"), ("month", "[MO]"),
    ("day", "[DAY]"), ("holiday", "[DAY]"), ("age over 90", "[Age]"), ("state", "[State]"),
    ("country", "[Country]"), ("url", "[URL]"),
]


def tag(m):
    inner = " ".join(m.group(1).split())
    compact = inner.replace(" ", "")
    if not inner:
        return "[MISC]"
    if DATE_LIKE.match(compact):
        return compact
    low = inner.lower()
    for prefix, t in TYPES:
        if low.startswith(prefix):
            return t
    return "[Reg#]" if compact.isdigit() else "[MISC]"


def normalize(text):
    lines = [l for l in str(text).split("\n") if "JavaScript:parent.POPUP" not in l]
    text = CONTROL.sub("", "\n".join(lines))
    text = PLACEHOLDER.sub(tag, text)
    text = re.sub(r"(?<!_)___(?!_)", "[MISC]", text)
    return "\n".join(l.rstrip() for l in text.split("\n")).strip("\n ")


def find(root, name):
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f in (name + ".csv", name + ".csv.gz"):
                return os.path.join(d, f)
    return None


def main():
    root, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    frames = []
    m3 = find(root, "NOTEEVENTS")
    if m3:
        df = pd.read_csv(m3, dtype={"HADM_ID": "Int64", "CGID": "Int64", "ISERROR": "Int64"})
        df = df[df["ISERROR"].fillna(0) != 1]
        timed = df[df["CHARTTIME"].notna() & df["CGID"].notna()]
        latest = timed.sort_values("STORETIME").groupby(
            ["CHARTTIME", "SUBJECT_ID", "CATEGORY", "CGID"]).tail(1)
        df = pd.concat([df[~df.index.isin(timed.index)], latest]).sort_index()
        frames.append(pd.DataFrame({"note_id": df["ROW_ID"].astype(str),
                                    "subject_id": df["SUBJECT_ID"], "text": df["TEXT"]}))
    for name in ("discharge", "radiology"):
        p = find(root, name)
        if p:
            df = pd.read_csv(p, dtype={"hadm_id": "Int64"})
            frames.append(df[["note_id", "subject_id", "text"]])
    notes = pd.concat(frames, ignore_index=True)
    notes["text"] = notes["text"].fillna("").map(normalize)
    notes = notes[notes["text"] != ""]
    digest = notes["text"].map(lambda t: hashlib.sha256(t.encode()).digest()[:16])
    notes = notes[~digest.duplicated()]
    notes.to_csv(os.path.join(out, "corpus.csv"), index=False)
    print(len(notes))


if __name__ == "__main__":
    main()

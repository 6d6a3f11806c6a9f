"""Near-duplicate detection against the copies `ehrprep synth` planted.

    python scripts/dedup_quality.py --notes 200000 [--bin target/debug/ehrprep] [--workdir DIR]

Makes a synth corpus, builds it (`--no-shards`, recipe paper: clusters recorded, nothing
dropped), and reads `synth_truth.csv` beside `dedup_clusters`:

- recall: planted near copies (both the copy and its original kept) that share a cluster
  with their original;
- precision: of the notes flagged as a later cluster member, the share that synth planted
  as a copy (exact copies are gone before this step, so these are near copies and drafts).
  Synth writes templated notes, so two unrelated notes can truly be near duplicates; this
  precision is a lower bound on the method's.
"""

import argparse
import csv
import io
import os
import subprocess
import tempfile

QUERY = """
WITH t AS (SELECT * FROM read_csv('{truth}', all_varchar = true)),
kept AS (SELECT note_id FROM corpus),
planted AS (
    SELECT note_id, of_note_id FROM t
    WHERE kind = 'near_copy' AND note_id IN (SELECT note_id FROM kept)
      AND of_note_id IN (SELECT note_id FROM kept)
),
cl AS (SELECT note_id, cluster_id, first FROM dedup_clusters)
SELECT
    (SELECT count(*) FROM planted) AS planted,
    (SELECT count(*) FROM planted p JOIN cl a ON a.note_id = p.note_id
        JOIN cl b ON b.note_id = p.of_note_id AND a.cluster_id = b.cluster_id) AS found,
    (SELECT count(*) FROM cl WHERE NOT first) AS flagged,
    (SELECT count(*) FROM cl WHERE NOT first AND note_id IN (SELECT note_id FROM t)) AS flagged_planted,
    (SELECT count(DISTINCT cluster_id) FROM cl) AS clusters,
    (SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM cl GROUP BY cluster_id)) AS largest,
    (SELECT count(*) FROM kept) AS kept
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--notes", type=int, default=200_000)
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "ehrprep"))
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="ehrprep-dedup-")
    synth = os.path.join(work, f"synth-{args.notes}")
    out = os.path.join(work, f"dedup-{args.notes}")
    if not os.path.exists(synth):
        subprocess.run([args.bin, "synth", "--out", synth, "--notes", str(args.notes), "--seed", "7"],
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run([args.bin, "build", "--mimic-dir", synth, "--out", out, "--force", "--quiet", "--no-shards"],
                   check=True, stdout=subprocess.DEVNULL)
    truth = os.path.join(synth, "synth_truth.csv")
    text = subprocess.run([args.bin, "sql", "--db", os.path.join(out, "catalog.duckdb"), "--format", "csv",
                           QUERY.format(truth=truth)], check=True, capture_output=True, text=True).stdout
    row = {k: int(v) for k, v in next(csv.DictReader(io.StringIO(text))).items()}
    print(f"notes {args.notes}, kept {row['kept']}")
    print(f"recall: {row['found']}/{row['planted']} planted near copies share a cluster with their original "
          f"({row['found'] / max(row['planted'], 1):.1%})")
    print(f"precision vs planted: {row['flagged_planted']}/{row['flagged']} flagged notes were planted "
          f"({row['flagged_planted'] / max(row['flagged'], 1):.1%})")
    print(f"clusters {row['clusters']}, largest {row['largest']} notes")


if __name__ == "__main__":
    main()

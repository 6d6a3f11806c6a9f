#!/usr/bin/env python3
"""Cost of the task-text guard: `ehrprep build --no-shards --no-near-duplicates --task-data`
with the guard and with `--no-task-overlap` (the baseline), on the same synthetic corpus, in
turn, `--repeat` times each; prints medians, the ratio, and what the guard dropped.
Not a test: run it by hand, and put its output in docs/performance.md.

The task documents are the real tasks' count and size (RadQA: 1,009 reports of about 200
words; CLIP: 718 summaries of about 1,500 words) in random words, so that every one is looked
for: synth's own task documents are too templated for the guard to tell apart, and with
none to look for it does no work.

Usage: bench_guard.py [--notes N] [--repeat R] [--bin target/.../ehrprep] [--workdir DIR]
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile

from bench_build import run


def write_tasks(root):
    """RadQA and CLIP files of random-word documents keyed by ROW_IDs past synth's."""
    rng = random.Random(7)
    words = lambda n: " ".join(f"w{rng.randrange(50_000)}" for _ in range(n))
    os.makedirs(os.path.join(root, "radqa"), exist_ok=True)
    os.makedirs(os.path.join(root, "clip"), exist_ok=True)
    data = [{"title": str(10_000_000 + i),
             "paragraphs": [{"context": words(140), "qas": []}, {"context": words(60), "qas": []}]}
            for i in range(1009)]
    with open(os.path.join(root, "radqa", "test.json"), "w") as f:
        json.dump({"version": "v2.0", "data": data}, f)
    with open(os.path.join(root, "clip", "sentence_level.csv"), "w") as f:
        f.write("doc_id,sent_index,sentence,labels\n")
        for d in range(718):
            for i in range(100):
                tokens = ", ".join(f"'{w}'" for w in words(15).split())
                f.write(f'{20_000_000 + d},{i},"[{tokens}]",[]\n')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--notes", type=int, default=200_000)
    ap.add_argument("--bin", default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    binary = args.bin or os.path.join(target, "debug", "ehrprep")
    work = args.workdir or tempfile.mkdtemp(prefix="ehrprep-guard-")
    synth = os.path.join(work, f"synth-{args.notes}")
    if not os.path.exists(synth):
        subprocess.run([binary, "synth", "--out", synth, "--notes", str(args.notes), "--seed", "7"],
                       check=True, stdout=subprocess.DEVNULL)
    tasks = os.path.join(work, "tasks")
    write_tasks(tasks)
    out = os.path.join(work, "out")
    build = [binary, "build", "--mimic-dir", synth, "--out", out, "--force", "--quiet",
             "--no-shards", "--no-near-duplicates", "--task-data", tasks]
    tools = [("baseline", build + ["--no-task-overlap"]), ("guard", build)]
    runs = {tool: [] for tool, _ in tools}
    normalize = {tool: [] for tool, _ in tools}
    for _ in range(args.repeat):
        for tool, cmd in tools:
            runs[tool].append(run(cmd))
            stats = subprocess.run(
                [binary, "sql", "--db", os.path.join(out, "catalog.duckdb"), "--format", "csv",
                 "SELECT stats FROM build_runs"], check=True, capture_output=True, text=True)
            line = stats.stdout.splitlines()[1].strip()
            line = line[1:-1].replace('""', '"') if line.startswith('"') else line
            normalize[tool].append(json.loads(line)["stage_seconds"]["normalize"])
    med = {}
    for tool, _ in tools:
        secs = statistics.median(s for s, _ in runs[tool])
        norm = statistics.median(normalize[tool])
        rss = max(r for _, r in runs[tool])
        med[tool] = (secs, norm)
        each = " ".join(f"{s:.2f}" for s, _ in runs[tool])
        print(f"{args.notes} notes, {tool:>8}: {secs:.2f} s (normalize {norm:.2f} s), "
              f"peak {rss:.0f} MiB; runs {each}")
    (bs, bn), (gs, gn) = med["baseline"], med["guard"]
    print(f"guard / baseline: build x{gs / bs:.2f}, normalize stage x{gn / bn:.2f}")
    dropped = subprocess.run(
        [binary, "sql", "--db", os.path.join(out, "catalog.duckdb"), "--format", "csv",
         "SELECT (SELECT count(*) FROM task_documents WHERE guarded) AS guarded,"
         " (SELECT count(*) FROM task_documents) AS documents,"
         " (SELECT count(DISTINCT note_id) FROM task_overlap) AS notes_dropped"],
        check=True, capture_output=True, text=True).stdout
    print(dropped.strip())
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

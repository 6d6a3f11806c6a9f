#!/usr/bin/env python3
"""Data-parallel scaling: `ehrprep pretrain` on one rank against `--nproc-per-node N`, the
same per-rank batch and threads per rank, on the same build, in the same run. Reports input
tokens/s (median over the steps after `--skip`, from train_steps) in total and per rank, and
the scaling efficiency: per-rank tokens/s with N ranks over tokens/s with one. The N-rank run
is repeated with EHRPREP_DIST_OVERLAP=0 (the gradient buckets summed after backward instead
of during it) to show what overlapping buys.
Not a test: run it by hand, and put its output in docs/performance.md.

    python3 scripts/bench_dist.py [--bin target/debug/ehrprep] [--model tiny] [--ranks 2]
        [--batch 8] [--steps 40] [--skip 10] [--threads 1] [--device cpu]

On a machine with N cores and `--threads 1`, one rank leaves cores idle that N ranks use,
so the total speeds up by up to N; the efficiency says what the all-reduces cost.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile


def sql(binary, db, query):
    out = subprocess.run([binary, "sql", "--db", db, "--format", "json", query],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=None)
    ap.add_argument("--plugin", default=None)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--notes", type=int, default=3000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    binary = args.bin or os.path.join(target, "debug", "ehrprep")
    plugin = args.plugin or os.path.join(os.path.dirname(binary), "libehrprep_t5.so")
    work = args.workdir or tempfile.mkdtemp(prefix="ehrprep-dist-")
    synth, build = os.path.join(work, "synth"), os.path.join(work, "build")
    if not os.path.exists(os.path.join(build, "catalog.duckdb")):
        subprocess.run([binary, "synth", "--out", synth, "--notes", str(args.notes), "--seed", "7"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([binary, "build", "--mimic-dir", synth, "--out", build, "--force", "--quiet",
                        "--vocab-size", "4000", "--input-length", "512"],
                       check=True, stdout=subprocess.DEVNULL)
    results = {}
    for ranks, overlap in ((1, True), (args.ranks, True), (args.ranks, False)):
        # A fresh folder each time: the catalog remembers every run folder it has seen.
        out = os.path.join(work, f"run-{args.model}-{ranks}-{overlap}-{os.getpid()}")
        cmd = [binary, "pretrain", "--build", build, "--out", out, "--model", args.model,
               "--steps", str(args.steps), "--batch-size", str(args.batch), "--lr", "0.01",
               "--device", args.device, "--threads", str(args.threads), "--save-every", "0",
               "--eval-every", "0", "--plugin", plugin, "--quiet"]
        if ranks > 1:
            cmd += ["--nproc-per-node", str(ranks)]
        env = dict(os.environ, EHRPREP_DIST_OVERLAP="1" if overlap else "0")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        rows = sql(binary, os.path.join(build, "catalog.duckdb"),
                   f"SELECT s.tokens_per_s FROM train_steps s JOIN train_runs r USING (run_id) "
                   f"WHERE r.out = '{out}' AND s.step > {args.skip} ORDER BY s.step")
        total = statistics.median(r["tokens_per_s"] for r in rows)
        results[(ranks, overlap)] = total
        how = "" if ranks == 1 else (", all-reduce during backward" if overlap
                                     else ", all-reduce after backward")
        print(f"{ranks} rank(s), batch {args.batch} each, {args.threads} thread(s) each{how}: "
              f"{total:,.0f} input tokens/s, {total / ranks:,.0f} per rank")
    one = results[(1, True)]
    for overlap in (True, False):
        many = results[(args.ranks, overlap)]
        when = "during" if overlap else "after"
        print(f"all-reduce {when} backward: speedup x{many / one:.2f}, scaling efficiency "
              f"{many / args.ranks / one:.2f} ({args.model}, {args.device})")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Corpus build benchmark: `ehrprep build --no-shards` (the corpus stage), with and without
near-duplicate detection (the reference does none), beside the Python reference (pandas +
re) on the same synthetic corpus, in the same run. Each of the three runs `--repeat` times,
in turn, and the median time counts (a single run moves by 20% on a shared machine).
Reports notes/s, MB/s of raw text and peak RSS (the largest of the runs), and the ratios.
Not a test: run it by hand, and put its output in the README.

Usage: bench_build.py [--notes N ...] [--repeat R] [--bin target/.../ehrprep] [--workdir DIR]
Needs pandas for the reference (pip install pandas).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def run(cmd):
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.perf_counter() - start
    err = p.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    return secs, usage.ru_maxrss / 1024  # MiB


def raw_mb(root):
    import gzip
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".csv.gz") and "detail" not in f and "ICUSTAYS" not in f:
                with gzip.open(os.path.join(d, f)) as fh:
                    while chunk := fh.read(1 << 24):
                        total += len(chunk)
    return total / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--notes", type=int, nargs="+", default=[50_000, 200_000])
    ap.add_argument("--bin", default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    binary = args.bin or os.path.join(target, "debug", "ehrprep")
    here = os.path.dirname(os.path.abspath(__file__))
    work = args.workdir or tempfile.mkdtemp(prefix="ehrprep-bench-")
    print(f"binary: {binary}\ncpus: {os.cpu_count()}")
    print(f"{'notes':>8} {'tool':>10} {'seconds':>8} {'notes/s':>9} {'MB/s':>6} {'peak MiB':>9}")
    for n in args.notes:
        synth = os.path.join(work, f"synth-{n}")
        if not os.path.exists(synth):
            subprocess.run([binary, "synth", "--out", synth, "--notes", str(n), "--seed", "7"],
                           check=True, stdout=subprocess.DEVNULL)
        mb = raw_mb(synth)
        build = [binary, "build", "--mimic-dir", synth, "--out",
                 os.path.join(work, f"out-{n}"), "--force", "--quiet", "--no-shards"]
        tools = [
            ("ehrprep", build),
            ("no-neardup", build + ["--no-near-duplicates"]),
            ("python", [sys.executable, os.path.join(here, "reference_build.py"), synth,
                        os.path.join(work, f"ref-{n}")]),
        ]
        runs = {tool: [] for tool, _ in tools}
        for _ in range(args.repeat):
            for tool, cmd in tools:
                runs[tool].append(run(cmd))
        results = {}
        for tool, _ in tools:
            secs = statistics.median(s for s, _ in runs[tool])
            rss = max(r for _, r in runs[tool])
            results[tool] = (secs, rss)
            each = " ".join(f"{s:.2f}" for s, _ in runs[tool])
            print(f"{n:>8} {tool:>10} {secs:>8.2f} {n / secs:>9.0f} {mb / secs:>6.1f} {rss:>9.0f}"
                  f"   runs: {each}")
        ps, pr = results["python"]
        for tool in ("ehrprep", "no-neardup"):
            es, er = results[tool]
            print(f"{n:>8} {tool:>10} throughput x{ps / es:.2f}, peak memory x{er / pr:.2f} of the reference")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

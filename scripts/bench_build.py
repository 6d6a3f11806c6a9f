#!/usr/bin/env python3
"""Corpus build benchmark: `ehrprep build --no-shards` (the corpus stage), with and without
near-duplicate detection (the reference does none), beside the Python reference (pandas +
re) on the same synthetic corpus, in the same run. Reports notes/s, MB/s of raw text and
peak RSS, and the ratios. Not a test: run it by hand, and put its output in the README.

Usage: bench_build.py [--notes N ...] [--bin target/.../ehrprep] [--workdir DIR]
Needs pandas for the reference (pip install pandas).
"""
import argparse
import os
import shutil
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
        results = {}
        build = [binary, "build", "--mimic-dir", synth, "--out",
                 os.path.join(work, f"out-{n}"), "--force", "--quiet", "--no-shards"]
        for tool, cmd in [
            ("ehrprep", build),
            ("no-neardup", build + ["--no-near-duplicates"]),
            ("python", [sys.executable, os.path.join(here, "reference_build.py"), synth,
                        os.path.join(work, f"ref-{n}")]),
        ]:
            secs, rss = run(cmd)
            results[tool] = (secs, rss)
            print(f"{n:>8} {tool:>10} {secs:>8.2f} {n / secs:>9.0f} {mb / secs:>6.1f} {rss:>9.0f}")
        ps, pr = results["python"]
        for tool in ("ehrprep", "no-neardup"):
            es, er = results[tool]
            print(f"{n:>8} {tool:>10} throughput x{ps / es:.2f}, peak memory x{er / pr:.2f} of the reference")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

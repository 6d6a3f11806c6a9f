#!/usr/bin/env python3
"""Tokenize+pack benchmark: ehrprep's stage, plain `tokenizers` batch encoding in the same
process (the limit), and a Python reference (HF tokenizers encode_batch + numpy packing
into .npy rows), all on the same synthetic corpus in the same run. Reports tokens/s,
ratios, and the peak RSS of each process.

Usage: bench_pack.py [--notes N] [--bin PATH]   (needs the venv of scripts/requirements-test.txt)
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def reference(tokenizer_dir, texts_path, out_dir):
    import numpy as np
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    texts = json.load(open(texts_path))
    start = time.perf_counter()
    buffer = np.empty(0, dtype=np.uint16)
    rows = []
    tokens = 0
    for i in range(0, len(texts), 4096):
        for enc in tok.encode_batch(texts[i:i + 4096]):
            ids = np.asarray(enc.ids, dtype=np.uint16)
            tokens += len(ids)
            buffer = np.concatenate([buffer, ids])
            whole = len(buffer) // 568 * 568
            if whole:
                rows.append(buffer[:whole].reshape(-1, 568))
                buffer = buffer[whole:]
    np.save(os.path.join(out_dir, "rows.npy"), np.concatenate(rows))
    secs = time.perf_counter() - start
    return tokens, secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--notes", type=int, default=50_000)
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "ehrprep"))
    ap.add_argument("--reference", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        tokens, secs = reference(args.reference[0], args.reference[1], os.path.dirname(args.reference[1]))
        print(json.dumps({"tokens": tokens, "seconds": secs,
                          "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    work = tempfile.mkdtemp(prefix="ehrprep-packbench-")
    run = lambda *a: subprocess.run([args.bin, *a], check=True, capture_output=True, text=True).stdout
    run("synth", "--out", f"{work}/synth", "--notes", str(args.notes), "--seed", "7")
    run("build", "--mimic-dir", f"{work}/synth", "--out", f"{work}/out", "--quiet")
    p = subprocess.Popen([args.bin, "bench-pack", "--db", f"{work}/out/catalog.duckdb",
                          "--tokenizer", f"{work}/out/tokenizer", "--scratch", f"{work}/scratch"],
                         stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("ehrprep bench-pack failed")
    ours = json.loads(out)
    ours_peak = usage.ru_maxrss / 1024
    texts = json.loads(run("sql", "--db", f"{work}/out/catalog.duckdb", "--format", "json",
                           "SELECT text FROM corpus ORDER BY seq"))
    json.dump([t["text"] for t in texts], open(f"{work}/texts.json", "w"))
    ref = json.loads(subprocess.run([sys.executable, __file__, "--reference", f"{work}/out/tokenizer",
                                     f"{work}/texts.json"], check=True, capture_output=True, text=True).stdout)
    ref_tps = ref["tokens"] / ref["seconds"]
    print(f"notes {ours['notes']}, tokens {ours['tokens']}, cpus {os.cpu_count()}")
    if ours["differing_notes"]:
        sys.exit(f"ehrprep's ids differ from plain tokenizers on {ours['differing_notes']} notes")
    print(f"ehrprep word cache in use: {ours['word_cache']}; ids identical to plain tokenizers on all notes")
    print(f"plain tokenizers encode_batch (limit): {ours['encode_tokens_per_s']:,.0f} tokens/s")
    print(f"ehrprep tokenize+pack:                 {ours['pack_tokens_per_s']:,.0f} tokens/s "
          f"(limit / ehrprep = {ours['encode_tokens_per_s'] / ours['pack_tokens_per_s']:.2f}); "
          f"peak {ours_peak:.0f} MiB for the whole bench process (corpus held in memory)")
    print(f"python reference (HF tokenizers + numpy): {ref_tps:,.0f} tokens/s, peak {ref['peak_mib']:.0f} MiB "
          f"(ehrprep is {ours['pack_tokens_per_s'] / ref_tps:.2f}x faster)")


if __name__ == "__main__":
    main()

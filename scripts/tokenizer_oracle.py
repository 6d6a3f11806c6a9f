#!/usr/bin/env python3
"""Oracle for the tokenizer interop test: loads ehrprep's tokenizer directory with Hugging
Face `tokenizers` and `transformers` and checks that both give the ids ehrprep gave.

Usage: tokenizer_oracle.py TOKENIZER_DIR CASES_JSON
CASES_JSON: [{"text": ..., "ids": [...]}, ...]. Exit code 1 on any mismatch.
"""
import json
import sys

from tokenizers import Tokenizer
from transformers import T5TokenizerFast


def main():
    directory, cases_path = sys.argv[1], sys.argv[2]
    cases = json.load(open(cases_path))
    raw = Tokenizer.from_file(f"{directory}/tokenizer.json")
    fast = T5TokenizerFast.from_pretrained(directory)
    bad = 0
    for i, case in enumerate(cases):
        want = case["ids"]
        got_raw = raw.encode(case["text"]).ids
        got_fast = fast(case["text"])["input_ids"]
        for name, got in (("tokenizers", got_raw), ("transformers", got_fast)):
            if got != want:
                bad += 1
                first = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                print(f"case {i}: {name} differs at position {first} (lengths {len(got)} vs {len(want)})")
    sentinel = fast.convert_tokens_to_ids("<extra_id_0>")
    print(json.dumps({"cases": len(cases), "mismatches": bad, "extra_id_0": sentinel,
                      "eos": fast.eos_token_id, "pad": fast.pad_token_id, "unk": fast.unk_token_id}))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

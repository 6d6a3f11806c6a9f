"""Generation throughput: the T5 plugin's batched greedy and beam search (through the
`t5-bench` driver) against Hugging Face transformers `generate`, on the same checkpoint,
the same examples, batches and threads, in the same run.

    python scripts/bench_generate.py --driver target/debug/t5-bench [--model t5-small]
        [--examples 64] [--batch 8] [--inputs 128] [--max-new 32] [--beams 1,3,5]
        [--device cpu] [--threads N] [--fill-ab]

The checkpoint is a randomly initialized model saved by transformers and loaded by both, so
both sides must produce the same ids (the script counts the examples that agree); random
weights rarely emit `</s>`, so every example generates about `--max-new` tokens on both
sides and the work is equal. Prints one JSON line per implementation and beam width, then
the ratios (ehrprep / transformers examples per second). With `--fill-ab` the plugin also
runs with PyTorch's deterministic-mode fill of new tensors turned back on
(`fill_uninitialized: true` in its line), right after the run without it.
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

from bench_train import PRESETS


def examples(args):
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(args.examples):
        n = int(torch.randint(args.inputs // 2, args.inputs, (1,), generator=g))
        rows.append(torch.randint(2, 32128, (n - 1,), generator=g).tolist() + [1])
    return rows


def strip(row):
    """Ids after the start token, up to (not including) </s>, without padding."""
    row = row[1:]
    if 1 in row:
        row = row[: row.index(1)]
    return row


def hf(model, rows, args, beams):
    device = torch.device(args.device)

    def run(chunk):
        width = max(len(r) for r in chunk)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in chunk], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.max_new,
                num_beams=beams,
                do_sample=False,
                length_penalty=1.0,
                early_stopping=False,
            )
        return [strip(r) for r in out.tolist()]

    chunks = [rows[i : i + args.batch] for i in range(0, len(rows), args.batch)]
    run(chunks[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outputs = [o for chunk in chunks for o in run(chunk)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return outputs, {
        "impl": "transformers",
        "device": args.device,
        "examples": len(rows), "batch": args.batch, "beams": beams, "max_new_tokens": args.max_new,
        "seconds": seconds,
        "examples_per_s": len(rows) / seconds,
        "generated_tokens": sum(len(o) for o in outputs),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--driver", required=True)
    p.add_argument("--model", default="t5-small", choices=sorted(PRESETS))
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--inputs", type=int, default=128)
    p.add_argument("--max-new", type=int, default=32)
    p.add_argument("--beams", default="1,3,5")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--fill-ab", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **PRESETS[args.model])
    model = T5ForConditionalGeneration(config).eval()
    rows = examples(args)
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model.save_pretrained(tmp / "model", safe_serialization=True)
        (tmp / "model" / "generation_config.json").unlink(missing_ok=True)
        (tmp / "examples.json").write_text(json.dumps(rows))
        model = model.to(args.device)
        for beams in [int(b) for b in args.beams.split(",")]:
            out = tmp / f"outputs-{beams}.json"
            driver = [args.driver, "--generate", str(tmp / "model"), "--examples", str(tmp / "examples.json"),
                      "--out", str(out), "--beams", str(beams), "--max-new", str(args.max_new),
                      "--batch", str(args.batch), "--device", args.device, "--threads", str(args.threads)]
            run = lambda extra: json.loads(subprocess.run(
                driver + extra, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            ours = run([])
            our_ids = json.loads(out.read_text())
            if args.fill_ab:
                filled = run(["--fill-uninitialized"])
                filled["fill_uninitialized"] = True
                filled["same_ids_as_unfilled"] = json.loads(out.read_text()) == our_ids
                print(json.dumps(filled))
            their_ids, theirs = hf(model, rows, args, beams)
            same = sum(a == b for a, b in zip(our_ids, their_ids))
            ours["same_as_transformers"] = same
            print(json.dumps(ours))
            print(json.dumps(theirs))
            ratios[f"beams_{beams}"] = ours["examples_per_s"] / theirs["examples_per_s"]
    print(json.dumps({"ratio_ehrprep_over_transformers": ratios}))


if __name__ == "__main__":
    main()

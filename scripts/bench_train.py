"""Training throughput: ehrprep's T5 (the plugin's model and Adafactor step, through the
`t5-bench` driver) against Hugging Face transformers in PyTorch eager, same config, same
batch, same threads, in the same run.

    python scripts/bench_train.py --driver target/release/t5-bench [--model t5-small]
        [--batch 8] [--inputs 128] [--targets 32] [--steps 5] [--warmup 2] [--device cpu]

Prints both JSON lines and the ratio (ehrprep / transformers input tokens per second).
"""

import argparse
import json
import subprocess
import time

import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.optimization import Adafactor

PRESETS = {
    "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, feed_forward_proj="relu", tie_word_embeddings=True),
    "t5-base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, feed_forward_proj="relu", tie_word_embeddings=True),
    "t5-v1_1-base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def hf(args):
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = T5Config(vocab_size=32128, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **PRESETS[args.model])
    model = T5ForConditionalGeneration(config).to(device).train()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    opt = Adafactor(model.parameters(), lr=1e-3, scale_parameter=True, relative_step=False, warmup_init=False)
    x = torch.randint(2, config.vocab_size, (args.batch, args.inputs), device=device)
    y = torch.randint(2, config.vocab_size, (args.batch, args.targets), device=device)
    timed = 0.0
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            timed += time.perf_counter() - t0
    step_s = timed / args.steps
    extra = {}
    if device.type == "cuda":
        extra["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return {
        **extra,
        "impl": "transformers",
        "model": args.model,
        "device": args.device,
        "step_s": step_s,
        "input_tokens_per_s": args.batch * args.inputs / step_s,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--driver", required=True)
    p.add_argument("--model", default="t5-small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--inputs", type=int, default=128)
    p.add_argument("--targets", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ours = json.loads(subprocess.run(
        [args.driver, "--model", args.model, "--batch", str(args.batch), "--inputs", str(args.inputs),
         "--targets", str(args.targets), "--steps", str(args.steps), "--warmup", str(args.warmup),
         "--device", args.device, "--threads", str(args.threads)],
        check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    theirs = hf(args)
    print(json.dumps(ours))
    print(json.dumps(theirs))
    print(json.dumps({"ratio_ehrprep_over_transformers": ours["input_tokens_per_s"] / theirs["input_tokens_per_s"]}))


if __name__ == "__main__":
    main()

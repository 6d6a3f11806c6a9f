"""Golden data for the T5 parity tests: tiny random T5 v1.0 and v1.1 models made and run by
Hugging Face transformers (fp32, CPU).

Writes fixtures/t5/{v1_0,v1_1}/ with config.json and model.safetensors (the model, as
save_pretrained writes it) and golden.safetensors (input_ids, attention_mask, labels,
logits, loss). Run from the repository root:

    python scripts/t5_golden.py
"""

import pathlib

import torch
from safetensors.torch import save_file
from transformers import T5Config, T5ForConditionalGeneration

OUT = pathlib.Path("fixtures/t5")


def make(name, **kw):
    torch.manual_seed(1234)
    config = T5Config(
        vocab_size=96,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        # Few buckets and a short max distance so the test sequences reach the
        # logarithmic buckets and the clamp at the last one.
        relative_attention_num_buckets=16,
        relative_attention_max_distance=20,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        **kw,
    )
    model = T5ForConditionalGeneration(config).eval()
    # Random norms too, so a norm applied in the wrong place shows.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "layer_norm" in pname:
                p.uniform_(0.5, 1.5)
    g = torch.Generator().manual_seed(99)
    batch, src, tgt = 3, 40, 12
    input_ids = torch.randint(2, config.vocab_size, (batch, src), generator=g)
    attention_mask = torch.ones(batch, src, dtype=torch.long)
    attention_mask[1, 31:] = 0  # padding in one row
    input_ids[1, 31:] = 0
    labels = torch.randint(2, config.vocab_size, (batch, tgt), generator=g)
    labels[:, -1] = 1
    labels[2, 9:] = -100  # ignored positions
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        # Generation: ids after the start token, up to (not including) </s>, padded with -1.
        generated = {}
        for key, beams in (("greedy", 1), ("beam3", 3)):
            out_ids = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=10,
                num_beams=beams,
                do_sample=False,
                length_penalty=1.0,
                early_stopping=False,
            )
            rows = []
            for row in out_ids[:, 1:].tolist():
                row = row[: row.index(1)] if 1 in row else row
                rows.append(row + [-1] * (10 - len(row)))
            generated[key] = torch.tensor(rows, dtype=torch.long)
    d = OUT / name
    model.save_pretrained(d, safe_serialization=True)
    (d / "generation_config.json").unlink(missing_ok=True)
    save_file(
        {
            "input_ids": input_ids.contiguous(),
            "attention_mask": attention_mask.contiguous(),
            "labels": labels.contiguous(),
            "logits": out.logits.contiguous(),
            "loss": out.loss.reshape(1).contiguous(),
            "greedy": generated["greedy"].contiguous(),
            "beam3": generated["beam3"].contiguous(),
        },
        d / "golden.safetensors",
    )
    print(name, "loss", float(out.loss))


make("v1_0", feed_forward_proj="relu", tie_word_embeddings=True)
make("v1_1", feed_forward_proj="gated-gelu", tie_word_embeddings=False)

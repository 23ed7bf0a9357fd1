#!/usr/bin/env python
"""Regenerate the bundled Fashion-MNIST example in ``examples/fmnist_cnn/``.

Trains a small CNN (Conv/BatchNorm/ReLU/MaxPool, one residual Add block,
AvgPool, Flatten, Gemm head) on Fashion-MNIST, exports it to ONNX with the
BatchNormalization nodes kept (so the converter's BN-folding pass is
exercised), and writes a calibration split and a test split as ``.npz``.

This script is the only part of the project that needs PyTorch::

    pip install torch==2.13.0
    python examples/make_example.py

Fashion-MNIST is read from the gzipped IDX files (no torchvision needed);
point ``--data-dir`` at the directory holding
``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import struct
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "fmnist_cnn")
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"

SEED = 0
N_CALIB = 1000  # images drawn (seeded) from the TRAIN set
N_TEST_SPLIT = 2000  # first images of the TEST set


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def read_idx(path: str) -> np.ndarray:
    """Parse a (gzipped) IDX file into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: unsupported IDX header (dtype 0x{dtype_code:02x})")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(shape)


def load_split(data_dir: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    x = (x.astype(np.float32) / 255.0)[:, None, :, :]  # [N,1,28,28] in [0,1]
    return np.ascontiguousarray(x), y.astype(np.int64)


# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------
def conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=True), nn.BatchNorm2d(cout)]


class ResidualBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(ch, ch), nn.ReLU(), *conv_bn(ch, ch))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + x)


class FmnistCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(1, 16), nn.ReLU(),                      # 16x28x28
            *conv_bn(16, 32), nn.ReLU(), nn.MaxPool2d(2),   # 32x14x14
            ResidualBlock(32),                              # 32x14x14
            nn.MaxPool2d(2),                                # 32x7x7
            *conv_bn(32, 64), nn.ReLU(),                    # 64x7x7
            nn.AvgPool2d(7),                                # 64x1x1
        )
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


# --------------------------------------------------------------------------
# train / eval
# --------------------------------------------------------------------------
@torch.no_grad()
def torch_predict(model: nn.Module, x: np.ndarray, bs: int = 1000) -> np.ndarray:
    model.eval()
    preds = []
    for i in range(0, len(x), bs):
        preds.append(model(torch.from_numpy(x[i : i + bs])).argmax(1).numpy())
    return np.concatenate(preds)


def ort_predict(path: str, x: np.ndarray, bs: int = 1000) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    preds = []
    for i in range(0, len(x), bs):
        (logits,) = sess.run(["logits"], {"input": x[i : i + bs]})
        preds.append(logits.argmax(1))
    return np.concatenate(preds)


def train(model, xtr, ytr, xte, yte, epochs, bs, lr, hflip):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (len(xtr) + bs - 1) // bs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    xtr_t = torch.from_numpy(xtr)
    ytr_t = torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.time()
    for ep in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr_t), generator=gen)
        tot_loss, tot_correct, n = 0.0, 0, 0
        te = time.time()
        for i in range(0, len(perm), bs):
            idx = perm[i : i + bs]
            xb, yb = xtr_t[idx], ytr_t[idx]
            if hflip:
                flip = torch.rand(len(xb), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(xb)
            tot_correct += (logits.argmax(1) == yb).sum().item()
            n += len(xb)
        test_acc = float((torch_predict(model, xte) == yte).mean())
        print(
            f"epoch {ep}/{epochs}  loss {tot_loss / n:.4f}  train_acc {tot_correct / n:.4f}  "
            f"test_acc {test_acc:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
            f"({time.time() - te:.1f}s, total {time.time() - t0:.1f}s)",
            flush=True,
        )
    return time.time() - t0


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-hflip", action="store_true", help="disable random horizontal flips")
    args = ap.parse_args()

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    random.seed(SEED)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    xtr, ytr = load_split(args.data_dir, "train")
    xte, yte = load_split(args.data_dir, "t10k")
    print(f"train {xtr.shape} test {xte.shape}", flush=True)

    model = FmnistCNN()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model parameters: {n_params}", flush=True)

    train_s = train(model, xtr, ytr, xte, yte, args.epochs, args.batch_size, args.lr,
                    hflip=not args.no_hflip)
    print(f"training wall time: {train_s:.1f}s", flush=True)

    model.eval()
    torch_pred = torch_predict(model, xte)
    torch_acc = float((torch_pred == yte).mean())
    torch_acc_split = float((torch_pred[:N_TEST_SPLIT] == yte[:N_TEST_SPLIT]).mean())

    # ---- export (classic exporter; PRESERVE keeps BatchNormalization nodes,
    #      EVAL would fuse them into the Convs) ----
    onnx_path = os.path.join(args.out, "model.onnx")
    torch.onnx.export(
        model,
        (torch.from_numpy(xte[:1]),),
        onnx_path,
        dynamo=False,
        export_params=True,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
        training=torch.onnx.TrainingMode.PRESERVE,
    )
    m = onnx.load(onnx_path)
    onnx.checker.check_model(m)
    op_counts: dict[str, int] = {}
    for node in m.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    print("ONNX op types:", dict(sorted(op_counts.items())), flush=True)
    if op_counts.get("BatchNormalization", 0) != 5:
        raise RuntimeError("expected 5 BatchNormalization nodes in the exported graph")

    ort_pred = ort_predict(onnx_path, xte)
    ort_acc = float((ort_pred == yte).mean())
    ort_acc_split = float((ort_pred[:N_TEST_SPLIT] == yte[:N_TEST_SPLIT]).mean())
    n_diff = int((ort_pred != torch_pred).sum())
    print(f"test accuracy (10k):   torch {torch_acc:.4f}  onnxruntime {ort_acc:.4f}", flush=True)
    print(f"test accuracy (split): torch {torch_acc_split:.4f}  onnxruntime {ort_acc_split:.4f}",
          flush=True)
    print(f"prediction mismatches torch vs onnxruntime: {n_diff}", flush=True)
    if ort_acc != torch_acc:
        raise RuntimeError("onnxruntime accuracy differs from torch accuracy")

    # ---- metadata ----
    meta = {
        "ann2snn.example": "fmnist_cnn",
        "dataset": "Fashion-MNIST",
        "ann_test_accuracy": f"{ort_acc:.4f}",
        "ann_test_accuracy_split": f"{ort_acc_split:.4f}",
    }
    del m.metadata_props[:]
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, onnx_path)

    # ---- data splits ----
    rng = np.random.default_rng(SEED)
    calib_idx = np.sort(rng.choice(len(xtr), size=N_CALIB, replace=False))
    np.savez_compressed(os.path.join(args.out, "calib.npz"),
                        x=xtr[calib_idx].astype(np.float32), y=ytr[calib_idx].astype(np.int64))
    np.savez_compressed(os.path.join(args.out, "test.npz"),
                        x=xte[:N_TEST_SPLIT].astype(np.float32),
                        y=yte[:N_TEST_SPLIT].astype(np.int64))

    total = 0
    for name in sorted(os.listdir(args.out)):
        size = os.path.getsize(os.path.join(args.out, name))
        total += size
        print(f"{name:12s} {size:>10d} bytes", flush=True)
    print(f"total        {total:>10d} bytes", flush=True)


if __name__ == "__main__":
    main()

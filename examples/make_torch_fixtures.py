#!/usr/bin/env python
"""Regenerate the torch-exported architecture fixtures in ``tests/fixtures/torch/`` (issue 6).

Tiny versions of the architectures people export from PyTorch (random weights from a fixed seed, BatchNorm
statistics set to non-trivial values, eval mode), each exported as torch writes it:

- ``resnet`` (residual Add, 1x1 projection skip, ``torch.flatten`` -> Flatten head), ``resnet_view``
  (``x.view(x.size(0), -1)``: a Shape/Gather/Concat/Reshape chain in the classic export), ``resnet_mean``
  (``x.mean((2, 3))`` -> ReduceMean head instead of GlobalAveragePool);
- ``mobilenet_v2`` (ReLU6 -> Clip, depthwise Conv, inverted residuals), ``vgg_bn`` (Conv-BN-ReLU, MaxPool,
  Linear-ReLU-Dropout-Linear head), ``squeezenet`` (Fire modules -> Concat, ``ceil_mode`` MaxPool),
  ``densenet`` (pre-activation BN after Concat, AvgPool transition), ``efficientnet`` (SiLU, depthwise,
  squeeze-excite: Sigmoid gate times the features, a product of two signals);
- ``vit`` (patch Conv, class token concatenated to the patches, pre-LN blocks with LayerNorm, hand-written
  multi-head attention with Softmax, erf GELU, class-token head through Gather; every reshape reads the
  batch from ``x.shape``, as real code does), ``bert`` (int64 token ids -> Embedding, post-LN encoder,
  Tanh pooler on the first token);
- ``nhwc`` (channels-last input and a ``permute`` -> Transpose), ``multi_io`` (an image and a vector in,
  logits and a score out).

Every model is exported with a dynamic batch axis by the classic TorchScript exporter (``dynamo=False``) at
opsets 11 and 17 (13 instead of 17 for ``resnet_view``; the transformers also at 13, where LayerNorm is
spelled out and Softmax has its new semantics)
and by the dynamo exporter (``dynamo=True``, opset 18, plus opset 21 for the transformers, where GELU may
become the Gelu op). Node doc strings and the dynamo exporter's per-node metadata are dropped so the files
stay small. Each file is checked against torch with onnxruntime (max abs difference printed).

Data: one calibration and one test ``.npz`` per input signature, arrays named after the model's inputs
(``x``; ``image`` and ``meta``; ``input_ids``), images as pixel values ``k / 255`` so they compress.

    pip install torch==2.13.0 onnxscript
    python examples/make_torch_fixtures.py [--out tests/fixtures/torch] [--only resnet,vit]

Like the other make_*.py scripts this is the only kind of code that needs PyTorch; tests only read the
committed files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "torch")
SEED = 0
N_CALIB, N_TEST = 32, 16
IMG = (3, 16, 16)
META = 5
SEQ, VOCAB = 8, 32


# --------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------
def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride=stride), conv_bn(cout, cout, act=None))
        self.skip = conv_bn(cin, cout, k=1, stride=stride, act=None) if stride != 1 or cin != cout else None

    def forward(self, x):
        return F.relu(self.body(x) + (self.skip(x) if self.skip is not None else x))


class ResNet(nn.Module):
    """x -> conv-bn-relu(8) -> block(8, identity skip) -> block(16, stride 2, 1x1 projection skip) -> head"""

    def __init__(self, head: str = "flatten"):
        super().__init__()
        self.head = head
        self.stem = conv_bn(3, 8)
        self.blocks = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        if self.head == "flatten":
            x = torch.flatten(self.pool(x), 1)
        elif self.head == "view":
            x = self.pool(x).view(x.size(0), -1)
        else:  # mean
            x = x.mean((2, 3))
        return self.fc(x)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 3):
        super().__init__()
        mid = cin * expand
        self.use_skip = stride == 1 and cin == cout
        self.body = nn.Sequential(conv_bn(cin, mid, k=1, act=nn.ReLU6),
                                  conv_bn(mid, mid, stride=stride, groups=mid, act=nn.ReLU6),
                                  conv_bn(mid, cout, k=1, act=None))

    def forward(self, x):
        return x + self.body(x) if self.use_skip else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, stride=2, act=nn.ReLU6), InvertedResidual(8, 8, 1),
                                      InvertedResidual(8, 12, 2), InvertedResidual(12, 12, 1),
                                      conv_bn(12, 24, k=1, act=nn.ReLU6))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(24, 10))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class VGGBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8), conv_bn(8, 8), nn.MaxPool2d(2, 2),
                                      conv_bn(8, 16), nn.MaxPool2d(2, 2), conv_bn(16, 16), nn.MaxPool2d(2, 2))
        self.classifier = nn.Sequential(nn.Linear(16 * 2 * 2, 32), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.e1 = nn.Conv2d(squeeze, expand, 1)
        self.e3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        s = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], 1)


class SqueezeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(True),
                                      nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 4, 8), Fire(16, 4, 8))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(16, 10, 1), nn.ReLU(True),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.norm, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], 1)


class DenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.block = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4), DenseLayer(16, 4))
        self.transition = nn.Sequential(nn.BatchNorm2d(20), nn.ReLU(), nn.Conv2d(20, 10, 1, bias=False),
                                        nn.AvgPool2d(2, 2))
        self.final = nn.BatchNorm2d(10)
        self.fc = nn.Linear(10, 10)

    def forward(self, x):
        x = F.relu(self.final(self.transition(self.block(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(s))))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 2):
        super().__init__()
        mid = cin * expand
        self.use_skip = stride == 1 and cin == cout
        self.body = nn.Sequential(conv_bn(cin, mid, k=1, act=nn.SiLU),
                                  conv_bn(mid, mid, stride=stride, groups=mid, act=nn.SiLU),
                                  SqueezeExcite(mid, max(1, cin // 4)), conv_bn(mid, cout, k=1, act=None))

    def forward(self, x):
        return x + self.body(x) if self.use_skip else self.body(x)


class EfficientNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, stride=2, act=nn.SiLU), MBConv(8, 8, 1), MBConv(8, 12, 2),
                                      conv_bn(12, 16, k=1, act=nn.SiLU))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class Attention(nn.Module):
    """Multi-head self-attention as timm writes it: B, N, C from x.shape, one fused qkv Linear."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-LN transformer block (ViT)."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.n1, self.attn, self.n2 = nn.LayerNorm(dim), Attention(dim, heads), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


class ViT(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2, depth: int = 2, patch: int = 4):
        super().__init__()
        tokens = (IMG[1] // patch) * (IMG[2] // patch)
        self.patch = nn.Conv2d(IMG[0], dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.5)
        self.blocks = nn.Sequential(*[Block(dim, heads, 2 * dim) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)  # [B, tokens, dim]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class BertLayer(nn.Module):
    """Post-LN encoder layer (BERT): x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.attn, self.n1 = Attention(dim, heads), nn.LayerNorm(dim, eps=1e-12)
        self.mlp, self.n2 = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim)), nn.LayerNorm(dim)

    def forward(self, x):
        x = self.n1(x + self.attn(x))
        return self.n2(x + self.mlp(x))


class Bert(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2, depth: int = 2):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, dim), nn.Parameter(torch.randn(1, SEQ, dim) * 0.5)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.Sequential(*[BertLayer(dim, heads, 2 * dim) for _ in range(depth)])
        self.pooler, self.head = nn.Linear(dim, dim), nn.Linear(dim, 4)

    def forward(self, input_ids):
        x = self.layers(self.norm(self.tok(input_ids) + self.pos))
        return self.head(torch.tanh(self.pooler(x[:, 0])))


class NHWC(nn.Module):
    """Channels-last input as TensorFlow-style pipelines feed it: permute -> Transpose."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8), nn.MaxPool2d(2), conv_bn(8, 16, stride=2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.features(x.permute(0, 3, 1, 2)).mean((2, 3)))


class MultiIO(nn.Module):
    """image -> conv-bn-relu x2 -> GAP -+-> cat -> Linear-ReLU -+-> Linear(10): logits
    meta  -> Linear -> ReLU ----------+                       +-> Linear(1): score"""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(conv_bn(3, 8), conv_bn(8, 8, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.side = nn.Sequential(nn.Linear(META, 8), nn.ReLU())  # not `meta`: torch.export reserves it
        self.trunk = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.logits, self.score = nn.Linear(16, 10), nn.Linear(16, 1)

    def forward(self, image, meta):
        h = self.trunk(torch.cat([self.image(image), self.side(meta)], 1))
        return self.logits(h), self.score(h)


class QCFS(nn.Module):
    """Seed 000's MyFloor / seed 004's QCFS activation, lambda * clip(floor(x * L / lambda + 1/2) / L, 0, 1),
    with lambda a trained parameter of shape [1] (fixed here; eval only, so no straight-through gradient)."""

    def __init__(self, lam: float, L: int = 4):
        super().__init__()
        self.up = nn.Parameter(torch.tensor([lam]))
        self.L = L

    def forward(self, x):
        x = torch.floor(x / self.up * self.L + 0.5) / self.L
        return torch.clamp(x, 0, 1) * self.up


class QcfsCNN(nn.Module):
    """A QCFS-trained CNN as make_qcfs_example.py writes it: conv-bn-QCFS x2, MaxPool, conv-bn-QCFS, GAP,
    Linear-QCFS, Linear; each QCFS with its own lambda, L = 4."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, act=None), QCFS(1.5), conv_bn(8, 8, act=None), QCFS(2.0),
                                      nn.MaxPool2d(2), conv_bn(8, 16, stride=2, act=None), QCFS(2.5),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(16, 16), QCFS(1.8), nn.Linear(16, 10))

    def forward(self, x):
        return self.head(self.features(x))


# --------------------------------------------------------------------------
# the fixtures
# --------------------------------------------------------------------------
# arch -> (module factory, input signature, input names, output names, classic opsets, dynamo opsets).
# The classic exporter at opset 11 keeps BatchNormalization (TrainingMode.PRESERVE, so fold_batchnorm
# sees it); at 13 and 17 it folds BN into the Conv as a default export does; the dynamo exporter's
# optimiser folds a BN that follows a Conv and keeps the others (DenseNet's pre-activation BNs).
CNN_EXPORTS = ((11, 17), (18,))
TRANSFORMER_EXPORTS = ((11, 13, 17), (18, 21))
ARCHS = {
    "resnet": (lambda: ResNet("flatten"), "image", ["x"], ["logits"], *CNN_EXPORTS),
    # the dynamo exporter writes the same graph as for `resnet` for these two heads: classic only
    "resnet_view": (lambda: ResNet("view"), "image", ["x"], ["logits"], (11, 13), ()),
    "resnet_mean": (lambda: ResNet("mean"), "image", ["x"], ["logits"], (11, 17), ()),
    "mobilenet_v2": (MobileNetV2, "image", ["x"], ["logits"], *CNN_EXPORTS),
    "vgg_bn": (VGGBN, "image", ["x"], ["logits"], *CNN_EXPORTS),
    "squeezenet": (SqueezeNet, "image", ["x"], ["logits"], *CNN_EXPORTS),
    "densenet": (DenseNet, "image", ["x"], ["logits"], *CNN_EXPORTS),
    "efficientnet": (EfficientNet, "image", ["x"], ["logits"], *CNN_EXPORTS),
    "vit": (ViT, "image", ["x"], ["logits"], *TRANSFORMER_EXPORTS),
    "bert": (Bert, "ids", ["input_ids"], ["logits"], *TRANSFORMER_EXPORTS),
    "nhwc": (NHWC, "nhwc", ["x"], ["logits"], *CNN_EXPORTS),
    "multi_io": (MultiIO, "multi", ["image", "meta"], ["logits", "score"], *CNN_EXPORTS),
    "qcfs_cnn": (QcfsCNN, "image", ["x"], ["logits"], *CNN_EXPORTS),
}


def make_data(signature: str, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    def pixels(shape):
        return (rng.integers(0, 256, (n,) + shape) / 255).astype(np.float32)

    if signature == "image":
        return {"x": pixels(IMG)}
    if signature == "nhwc":
        return {"x": pixels(IMG[1:] + IMG[:1])}
    if signature == "multi":
        return {"image": pixels(IMG), "meta": np.round(rng.normal(0, 1, (n, META)), 2).astype(np.float32)}
    if signature == "ids":
        return {"input_ids": rng.integers(0, VOCAB, (n, SEQ)).astype(np.int64)}
    raise ValueError(signature)


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Seeded weights that keep activations O(1) (He init), BatchNorm with non-trivial statistics, eval."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.6, 1.4)
            m.bias.data.uniform_(-0.2, 0.2)
        elif isinstance(m, nn.LayerNorm):
            m.weight.data.uniform_(0.8, 1.2)
            m.bias.data.uniform_(-0.1, 0.1)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0, 1)
    for name, p in model.named_parameters():
        if isinstance(model, (ViT, Bert)) and "qkv" in name and p.dim() == 2:
            p.data.mul_(0.5)  # attention logits O(1): the softmax is neither uniform nor one-hot
    return model.eval()


def strip(path: str) -> None:
    """Drop doc strings and per-node metadata (the dynamo exporter's source locations); keep one file."""
    model = onnx.load(path)
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        del vi.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]
    del model.metadata_props[:]
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    data = path + ".data"
    if os.path.exists(data):
        os.remove(data)


def export(module: nn.Module, example: tuple, names: list[str], outputs: list[str], path: str, opset: int,
           dynamo: bool) -> None:
    if dynamo:
        batch = torch.export.Dim("N", min=1, max=1024)
        program = torch.onnx.export(module, example, dynamo=True, opset_version=opset, input_names=names,
                                    output_names=outputs, dynamic_shapes=tuple({0: batch} for _ in names),
                                    external_data=False, verbose=False)
        program.save(path)
    else:
        torch.onnx.export(module, example, path, dynamo=False, opset_version=opset, input_names=names,
                          output_names=outputs, dynamic_axes={n: {0: "N"} for n in names + outputs},
                          do_constant_folding=True,
                          training=torch.onnx.TrainingMode.PRESERVE if opset == 11 else
                          torch.onnx.TrainingMode.EVAL)
    strip(path)


def check(path: str, module: nn.Module, data: dict[str, np.ndarray]) -> float:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    got = session.run(None, data)
    with torch.no_grad():
        want = module(*[torch.from_numpy(data[k]) for k in data])
    want = want if isinstance(want, tuple) else (want,)
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--only", default="", help="comma-separated architecture names")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    only = set(filter(None, args.only.split(",")))
    rng = np.random.default_rng(SEED)
    signatures = sorted({spec[1] for spec in ARCHS.values()})
    data = {}
    for sig in signatures:
        data[sig] = {"calib": make_data(sig, N_CALIB, rng), "test": make_data(sig, N_TEST, rng)}
        for split, arrays in data[sig].items():
            np.savez_compressed(os.path.join(args.out, f"{sig}.{split}.npz"), **arrays)
    index = os.path.join(args.out, "fixtures.json")
    summary = {}
    if only and os.path.exists(index):  # a partial run updates the other entries in place
        with open(index) as f:
            summary = json.load(f)["fixtures"]
    for i, (arch, (factory, sig, names, outputs, classic, dynamo)) in enumerate(ARCHS.items()):
        if only and arch not in only:
            continue
        module = randomise(factory(), SEED + i)
        example = tuple(torch.from_numpy(data[sig]["calib"][n][:2]) for n in names)
        for exporter, opsets in (("classic", classic), ("dynamo", dynamo)):
            for opset in opsets:
                path = os.path.join(args.out, f"{arch}_{exporter}_op{opset}.onnx")
                try:
                    export(module, example, names, outputs, path, opset, exporter == "dynamo")
                except Exception as exc:  # say why and go on with the others
                    print(f"{os.path.basename(path)}: export failed: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}", file=sys.stderr)
                    continue
                diff = check(path, module, data[sig]["test"])
                ops = Counter(n.op_type for n in onnx.load(path).graph.node)
                size = os.path.getsize(path)
                summary[os.path.basename(path)] = {"bytes": size, "max_abs_diff_vs_torch": diff, "ops": dict(ops)}
                print(f"{os.path.basename(path):40s} {size:8,d} B  max|ort - torch| {diff:.2e}  "
                      f"{' '.join(f'{k}:{v}' for k, v in sorted(ops.items()))}")
                if diff > 1e-4:
                    print(f"  warning: onnxruntime differs from torch by {diff:.2e}", file=sys.stderr)
    with open(index, "w") as f:
        json.dump({"torch": torch.__version__, "onnx": onnx.__version__, "fixtures": summary}, f, indent=1,
                  sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

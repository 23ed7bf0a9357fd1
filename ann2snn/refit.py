"""Weight refit: each linear layer of the ANN given the weights with which the spiking input it really gets
delivers the ANN's current.

A layer after spiking layers reads their decoded rates, not the ANN's activations: quantised, late in deep
layers (the lag), clipped where a threshold clips. The refit solves, per linear layer (Conv, Gemm, MatMul with a
constant weight), the ridge regression

    min_W'  |W' r - (W a + b)|^2 + lam |W' - W|^2

over the calibration samples, with r the spiking input's mean over the window and a the ANN's input: SNN
Calibration's weight calibration (Li et al., ICML 2021) in closed form, one layer at a time, each fitted to
what the layers before it deliver once they are refitted. The rows come from the window T and from 4T alike:
the lag shrinks as 1/T, so a fit to T alone over-corrects a file read longer. lam is chosen on half of the
samples and checked on the other half; a layer keeps its weights unless the fit lowers the held-out error by
MIN_GAIN."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from snnfile import DRIVE

WINDOWS = (1, 4)  # the rows' windows, in multiples of T
LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0)  # ridge strength, relative to the mean square of the inputs
MAX_FEATURES = 1024  # inputs per output (per group, bias included) that a layer is refitted for
ROW_BUDGET = 2e9  # multiply-adds per window spent on the normal equations of one layer
MIN_GAIN = 0.02  # the held-out error must fall by this share for a layer to take its fit
CHUNK = 1 << 22  # patch elements formed at once


@dataclass(frozen=True)
class Linear:
    """A linear node of the ANN as it stands in the converted file: its weight as [groups, outputs per group,
    inputs per group] and its bias, both from initializers the node alone reads."""
    node: str
    op: str
    input: str
    weight: str
    bias: str | None
    attrs: dict

    def matrices(self, inits: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        w = inits[self.weight].astype(np.float64)
        if self.op == "Conv":
            g = int(self.attrs.get("group", 1))
            m = w.reshape(g, w.shape[0] // g, -1)
        else:
            m = (w if self.op == "Gemm" and self.attrs.get("transB", 0) else w.T)[None]
        b = inits[self.bias].astype(np.float64).reshape(m.shape[0], m.shape[1]) if self.bias else None
        return m, b

    def arrays(self, m: np.ndarray, b: np.ndarray | None, inits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The initializers for fitted matrices, in their own shapes and types."""
        w = inits[self.weight]
        if self.op == "Conv":
            out = m.reshape(w.shape)
        else:
            out = m[0] if self.op == "Gemm" and self.attrs.get("transB", 0) else m[0].T
        values = {self.weight: out.astype(w.dtype)}
        if self.bias:
            values[self.bias] = b.reshape(inits[self.bias].shape).astype(inits[self.bias].dtype)
        return values


@dataclass
class Refit:
    node: str
    features: int  # inputs per output, bias included
    rows: int  # rows per window
    lam: float | None  # None: the weights are kept
    error_before: float  # held-out squared error of the current with the converted weights, relative
    error_after: float  # the same with the fit (equal to error_before when kept)
    skipped: str = ""  # why the layer was not fitted at all (then both errors are nan)

    @property
    def refitted(self) -> bool:
        return self.lam is not None

    def to_json(self) -> dict:
        if self.skipped:
            return {"node": self.node, "refitted": False, "features": self.features, "skipped": self.skipped}
        return {"node": self.node, "refitted": self.refitted, "lambda": self.lam, "features": self.features,
                "rows": self.rows, "error_before": round(self.error_before, 6),
                "error_after": round(self.error_after, 6)}


def linear_layers(proto: onnx.ModelProto, ann: onnx.ModelProto) -> list[Linear]:
    """The ANN's own linear nodes in the converted file that a refit can change: a constant weight read by
    that node alone, an input tensor the ANN has, a bias (if any) that is an initializer read only by the
    node or by its snn.drive gate."""
    inits = {t.name: t for t in proto.graph.initializer}
    readers: dict[str, int] = {}
    for node in proto.graph.node:
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    gates = {n.output[0]: next(x for x in n.input if x != DRIVE) for n in proto.graph.node
             if n.op_type == "Mul" and DRIVE in n.input and len(n.input) == 2}
    ann_nodes = {n.name: n.op_type for n in ann.graph.node}
    ann_tensors = {o for n in ann.graph.node for o in n.output} | {i.name for i in ann.graph.input}
    found = []
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or ann_nodes.get(node.name) != node.op_type:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1]
        if node.op_type == "Conv" and weight in inits:
            attrs.setdefault("kernel_shape", list(inits[weight].dims)[2:])
        if weight not in inits or readers.get(weight) != 1 or node.input[0] not in ann_tensors:
            continue
        shape = list(inits[weight].dims)
        if node.op_type == "Conv" and (len(shape) != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            continue
        if node.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                                       or attrs.get("beta", 1.0) != 1.0):
            continue
        if node.op_type != "Conv" and len(shape) != 2:
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None:
            bias = gates.get(bias, bias)
            outputs = shape[0] if node.op_type == "Conv" or attrs.get("transB", 0) else shape[1]
            if bias not in inits or readers.get(bias) != 1 or int(np.prod(inits[bias].dims)) != outputs:
                continue  # a shared or broadcast bias: leave the node as it is
        found.append(Linear(node.name, node.op_type, node.input[0], weight, bias, attrs))
    return found


def refit(layer: Linear, inits: dict[str, np.ndarray], rates: list[np.ndarray], target_input: np.ndarray
          ) -> tuple[Refit, dict[str, np.ndarray]]:
    """Fit `layer` to what it is fed: `rates` are its spiking input's means over each window, [B, ...];
    `target_input` the ANN's input. Returns the record and the initializers to set (none when kept)."""
    m, b = layer.matrices(inits)
    groups, outputs, inputs = m.shape
    features = inputs + (b is not None)
    batch = len(target_input)
    if features > MAX_FEATURES or batch < 4:
        why = f"more than {MAX_FEATURES} inputs per output" if features > MAX_FEATURES else "fewer than 4 samples"
        return Refit(layer.node, features, 0, None, float("nan"), float("nan"), why), {}
    full = np.concatenate([m, b[..., None]], axis=2) if b is not None else m  # [g, out, features]
    sums = _Normal(groups, features, outputs)
    per_sample = _patch_count(layer, target_input[:1])
    budget = max(10 * features, int(ROW_BUDGET / (groups * features ** 2)))
    stride = max(1, -(-batch * per_sample // budget))
    chunk = max(1, CHUNK // (per_sample * groups * features))
    for start in range(0, batch, chunk):
        samples = np.arange(start, min(batch, start + chunk))
        keep = _kept_rows(samples, per_sample, stride)
        halves = samples.repeat(per_sample)[keep] % 2
        target = np.einsum("rgf,gof->rgo", _rows(layer, target_input[samples], b is not None)[keep], full)
        for rate in rates:
            x = _rows(layer, rate[samples], b is not None)[keep]
            for half in (0, 1):
                sums.add(half, x[halves == half], target[halves == half])
    rows = int(sums.rows[0] + sums.rows[1]) // len(rates)
    before = sums.error(1, full)
    if before <= 1e-9 * sums.yy[1]:  # nothing to fix, to rounding (the quadratic form cancels)
        return Refit(layer.node, features, rows, None, 0.0, 0.0), {}
    best_lam, best = None, before
    for lam in LAMBDAS:
        error = sums.error(1, sums.solve(0, full, lam))
        if error < best:
            best_lam, best = lam, error
    relative = lambda e: float(e / sums.yy[1])  # noqa: E731
    if best_lam is None or best > (1 - MIN_GAIN) * before:
        return Refit(layer.node, features, rows, None, relative(before), relative(before)), {}
    fitted = sums.solve(None, full, best_lam)
    new_m, new_b = (fitted[..., :-1], fitted[..., -1]) if b is not None else (fitted, None)
    return Refit(layer.node, features, rows, best_lam, relative(before), relative(best)), \
        layer.arrays(new_m, new_b, inits)


class _Normal:
    """The normal equations of the regression, per half of the samples: X^T X, X^T Y and |Y|^2 per group."""

    def __init__(self, groups: int, features: int, outputs: int):
        self.xx = np.zeros((2, groups, features, features))
        self.xy = np.zeros((2, groups, features, outputs))
        self.yy = np.zeros(2)
        self.rows = np.zeros(2, np.int64)

    def add(self, half: int, x: np.ndarray, y: np.ndarray) -> None:
        if len(x):
            self.xx[half] += np.einsum("rgi,rgj->gij", x, x)
            self.xy[half] += np.einsum("rgi,rgo->gio", x, y)
            self.yy[half] += float(np.sum(y * y))
            self.rows[half] += len(x)

    def error(self, half: int, w: np.ndarray) -> float:
        """|X w^T - Y|^2 on that half, w [g, out, features]."""
        xx, xy = self.xx[half], self.xy[half]
        return max(0.0, float(np.einsum("goi,gij,goj->", w, xx, w) - 2 * np.einsum("goi,gio->", w, xy)
                              + self.yy[half]))

    def solve(self, half: int | None, prior: np.ndarray, lam: float) -> np.ndarray:
        """The ridge fit towards `prior` on one half (None: both)."""
        xx = self.xx.sum(axis=0) if half is None else self.xx[half]
        xy = self.xy.sum(axis=0) if half is None else self.xy[half]
        features = xx.shape[-1]
        reg = lam * np.trace(xx, axis1=1, axis2=2) / features + 1e-12  # per group
        eye = np.eye(features)[None] * reg[:, None, None]
        rhs = xy + reg[:, None, None] * prior.transpose(0, 2, 1)
        return np.linalg.solve(xx + eye, rhs).transpose(0, 2, 1)


def _patch_count(layer: Linear, x: np.ndarray) -> int:
    return len(_rows(layer, x, False))


def _kept_rows(samples: np.ndarray, per_sample: int, stride: int) -> np.ndarray:
    """Every stride-th row of each sample's rows, at an offset that moves with the sample (all of them where
    a sample has fewer rows than the stride), as indices into the samples' rows."""
    if per_sample < stride:
        return np.arange(len(samples) * per_sample)
    position = np.tile(np.arange(per_sample), len(samples)) + samples.repeat(per_sample)
    return np.flatnonzero(position % stride == 0)


def _rows(layer: Linear, x: np.ndarray, bias: bool) -> np.ndarray:
    """The layer's input as regression rows [rows, groups, inputs per group (+1 for the bias)], float64."""
    x = np.asarray(x, np.float64)
    if layer.op == "Conv":
        rows = _patches(x, layer.attrs)
    else:
        rows = x.reshape(-1, 1, x.shape[-1]) if layer.op == "MatMul" else x.reshape(len(x), 1, -1)
    if bias:
        rows = np.concatenate([rows, np.ones(rows.shape[:2] + (1,))], axis=2)
    return rows


def _patches(x: np.ndarray, attrs: dict) -> np.ndarray:
    """im2col of a 2-D convolution's input [B, C, H, W]: [B * Ho * Wo, groups, C / groups * kh * kw]."""
    kernel = attrs["kernel_shape"]
    strides = attrs.get("strides", [1, 1])
    dilations = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    groups = int(attrs.get("group", 1))
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    view = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))
    view = view[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]  # B C Ho Wo kh kw
    b, c, ho, wo = view.shape[:4]
    return view.transpose(0, 2, 3, 1, 4, 5).reshape(b * ho * wo, groups, -1)

"""fold_batchnorm: fold an inference BatchNormalization into the Conv or Gemm that feeds it.

Matches BatchNormalization(X, scale, B, mean, var) whose X comes from a Conv (any groups) or a Gemm
(transA = 0) with constant weights, is used by nothing else, and whose parameters are constants. With
s = scale / sqrt(var + eps): W' = W * s along output channels, b' = (b - mean) * s + B. The folded node
writes the BatchNormalization's output tensor, so tensor names downstream (and calibration keys) stay."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.passes.base import Pass, PassContext, PassReport


def _reason_not_foldable(bn: gs.Node) -> str | None:
    if len([o for o in bn.outputs if o.name]) > 1:
        return "training-mode BatchNormalization (extra outputs)"
    if not all(isinstance(t, gs.Constant) for t in bn.inputs[1:5]):
        return "BatchNormalization parameters are not constants"
    x = bn.inputs[0]
    if not x.inputs:
        return "input is a graph input"
    producer = x.inputs[0]
    if producer.op not in ("Conv", "Gemm"):
        return f"input comes from {producer.op}, not Conv or Gemm"
    if len(x.outputs) != 1:
        return f"{producer.op} output is also used elsewhere"
    if not isinstance(producer.inputs[1], gs.Constant):
        return f"{producer.op} weights are not constants"
    if len(producer.inputs) > 2 and producer.inputs[2].name and not isinstance(producer.inputs[2], gs.Constant):
        return f"{producer.op} bias is not a constant"
    if producer.op == "Gemm" and (producer.attrs.get("transA", 0) or producer.attrs.get("alpha", 1.0) != 1.0
                                  or producer.attrs.get("beta", 1.0) != 1.0):
        return "Gemm with transA, alpha or beta"
    return None


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("fold_batchnorm")
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        reason = _reason_not_foldable(bn)
        if reason:
            report.skipped.append((bn.name, reason))
            continue
        producer = bn.inputs[0].inputs[0]
        scale, beta, mean, var = (np.asarray(t.values, np.float64) for t in bn.inputs[1:5])
        s = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        weight = np.asarray(producer.inputs[1].values)
        dtype = weight.dtype
        out_channels = s.size
        has_bias = len(producer.inputs) > 2 and producer.inputs[2].name
        bias = np.asarray(producer.inputs[2].values, np.float64) if has_bias else np.zeros(out_channels)
        if producer.op == "Conv":
            w = weight.astype(np.float64) * s.reshape((-1,) + (1,) * (weight.ndim - 1))
        elif producer.attrs.get("transB", 0):
            w = weight.astype(np.float64) * s[:, None]
        else:
            w = weight.astype(np.float64) * s[None, :]
        b = (bias - mean) * s + beta
        new_w = gs.Constant(f"{producer.name}.weight_bnfolded", w.astype(dtype))
        new_b = gs.Constant(f"{producer.name}.bias_bnfolded", b.astype(dtype))
        producer.inputs[1] = new_w
        if has_bias:
            producer.inputs[2] = new_b
        else:
            producer.inputs.append(new_b)
        producer.outputs[0] = bn.outputs[0]
        bn.inputs.clear()
        bn.outputs.clear()
        report.converted.append(bn.name)
    return report


PASS = Pass("fold_batchnorm", run, doc="BatchNormalization folded into Conv/Gemm.")

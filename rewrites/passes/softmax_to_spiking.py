"""softmax_to_spiking: Softmax over calibrated ranges.

--nonlinear ugo: Softmax(x) = e * Reciprocal(ReduceSum(e)) with e = Exp(u - c), u = x - mean(x) over the
softmax axes and c the calibrated max of u. Softmax is shift-invariant: subtracting the row mean (linear)
takes out most of the rows' differing levels, which a single constant cannot, and c keeps exp at most 1.
The later passes turn Exp(u - c) and the Reciprocal into UGOs (fitted for relative error: both span
decades) and the product into a spiking product; the Reciprocal's input distribution comes from the
calibrated log-sum-exp of u: sum = exp(lse - c).
--nonlinear exact: the Softmax reads the running mean of x and its output is corrected (one float operator)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.config import Nonlinear
from rewrites.errors import CalibrationError, ModelError
from rewrites.passes._emit import Emitter, reduce
from rewrites.passes.base import Pass, PassContext, PassReport
from rewrites.passes.spiking import wrap_exact
from rewrites.ugo import samples_from_stats

CENTRED_SUFFIX = ".centred"  # calibration tensor: the Softmax input minus its mean over the axes
LSE_SUFFIX = ".logsumexp"  # calibration tensor: ReduceLogSumExp of the centred input over the axes
SAMPLES = 20000


def softmax_axes(node: gs.Node, rank: int | None, opset: int) -> list[int]:
    """The axes a Softmax normalises over; a last-axis Softmax needs no rank."""
    axis = node.attrs.get("axis", -1 if opset >= 13 else 1)
    if rank is None:
        if axis == -1 or (opset >= 13 and axis < 0):
            return [axis]
        raise ModelError(f"Softmax '{node.name}': the rank of its input is unknown, so axis {axis} cannot be "
                         "resolved", "run onnx shape inference on the model, or export it at opset 14 or later")
    axis %= rank
    return [axis] if opset >= 13 else list(range(axis, rank))


def rank_of(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def centred(emit: Emitter, x: gs.Tensor, axes: list[int], opset: int, out: gs.Variable) -> gs.Variable:
    """x minus its mean over the softmax axes (written to `out`)."""
    return emit("Sub", [x, reduce(emit, "ReduceMean", x, axes, "row_mean", opset)], "centre", out=out)


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("softmax_to_spiking")
    for node in [n for n in graph.nodes if n.op == "Softmax" and n.name not in ctx.kept_float]:
        x, y = node.inputs[0], node.outputs[0]
        if ctx.options.nonlinear is Nonlinear.EXACT:
            wrap_exact(graph, node.name, [node], [x], [y])
            ctx.kept_float.append(node.name)
            report.converted.append(node.name)
            report.layers.append({"node": node.name, "op": "Softmax", "nonlinear": "exact"})
            continue
        if ctx.calibration is None:
            raise CalibrationError("softmax_to_spiking needs a calibration", "pass --calib FILE")
        stats = ctx.calibration.stats(node.name + CENTRED_SUFFIX, node.name)
        lse = ctx.calibration.stats(node.name + LSE_SUFFIX, node.name)
        shift = float(stats.maximum)
        rng = np.random.default_rng(0)
        axes = softmax_axes(node, rank_of(x), graph.opset)
        node.inputs.clear()
        node.outputs.clear()
        emit = Emitter(graph, node.name)
        shape = list(x.shape)
        u = centred(emit, x, axes, graph.opset, gs.Variable(node.name + CENTRED_SUFFIX, np.float32, shape))
        e = emit("Exp", [emit("Sub", [u, np.array(shift, np.float32)], "shift", shape=shape)], "exp", shape=shape)
        total = reduce(emit, "ReduceSum", e, axes, "sum", graph.opset)
        ctx.distributions[total.name] = np.exp(samples_from_stats(lse, SAMPLES, rng) - shift)
        emit("Mul", [e, emit("Reciprocal", [total], "reciprocal", shape=total.shape)], "normalise", out=y)
        report.converted.append(node.name)
        report.layers.append({"node": node.name, "op": "Softmax", "nonlinear": "ugo", "shift": shift,
                              "sum_range": [float(np.exp(lse.minimum - shift)), float(np.exp(lse.maximum - shift))]})
    return report


PASS = Pass("softmax_to_spiking", run, spiking=True, doc="Softmax -> exp UGO, sum, reciprocal UGO, product.")

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
from ground.errors import CalibrationError
from rewrites.emit import Emitter, reduce
from rewrites.optable import Conversion, NodeConversion
from rewrites.passes.base import Pass, PassContext, PassReport, inputs_of
from rewrites.passes.spiking import wrap_exact
from rewrites.patterns.softmax import CENTRED_SUFFIX, LSE_SUFFIX, centred, rank_of, softmax_axes
from rewrites.ugo import samples_from_stats

SAMPLES = 20000


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("softmax_to_spiking")
    for node in [n for n in graph.nodes if n.op == "Softmax" and n.name not in ctx.kept_float]:
        x, y = node.inputs[0], node.outputs[0]
        if ctx.options.nonlinear is Nonlinear.EXACT or ctx.options.fs:  # FS: no spiking Softmax yet
            wrap_exact(graph, node.name, [node], [x], [y], summed=ctx.options.fs)
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


def observes(graph: gs.Graph, verdicts: list[NodeConversion]) -> list[str]:
    """The inputs of the normalisations, and of each Softmax its centred input and log-sum-exp (the ranges of
    its exp and of its sum), which calibration adds to the graph (rewrites/calibration/collect.py)."""
    return inputs_of(Conversion.NORMALIZATION)(graph, verdicts) + [
        n.name + suffix for n in graph.nodes if n.op == "Softmax" for suffix in (CENTRED_SUFFIX, LSE_SUFFIX)]


PASS = Pass("softmax_to_spiking", run, spiking=True, doc="Softmax -> exp UGO, sum, reciprocal UGO, product.",
            converts=frozenset({Conversion.NORMALIZATION}), observes=observes)

"""softmax_to_spiking: Softmax over calibrated ranges.

--nonlinear ugo: Softmax(x) = e * Reciprocal(ReduceSum(e)) with e = Exp(x - max(x)), the max over the softmax
axes. Softmax is shift-invariant, and the row max is exact in spiking form (max_to_neuron's SpikeReduceMax:
the max of the running means), so exp reads at most 0 in every row and its sum lies in [1, row length]
whatever the rows' levels: the reciprocal's input spans at most that, where one constant shift left sums
spanning decades. The later passes turn the Exp and the Reciprocal into UGOs, fitted on the calibrated
distributions of the shifted input and of the sum, and the product into a spiking product.
--nonlinear exact: the Softmax reads the running mean of x and its output is corrected (one float operator)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.config import Nonlinear
from ground.errors import CalibrationError
from rewrites.emit import Emitter
from rewrites.optable import Conversion, NodeConversion, Verdict
from rewrites.passes.base import Pass, PassContext, PassReport, inputs_of
from rewrites.passes.spiking import wrap_exact
from rewrites.patterns.softmax import exp_sum, rank_of, shifted, SHIFTED_SUFFIX, softmax_axes, SUM_SUFFIX
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
        stats = ctx.calibration.stats(node.name + SHIFTED_SUFFIX, node.name)
        sums = ctx.calibration.stats(node.name + SUM_SUFFIX, node.name)
        axes = softmax_axes(node, rank_of(x), graph.opset)
        node.inputs.clear()
        node.outputs.clear()
        emit = Emitter(graph, node.name)
        shape = list(x.shape)
        u = shifted(emit, x, axes, graph.opset, gs.Variable(node.name + SHIFTED_SUFFIX, np.float32, shape))
        ctx.distributions[u.name] = samples_from_stats(stats, SAMPLES, np.random.default_rng(0))
        e, total = exp_sum(emit, u, axes, graph.opset, shape=shape)
        ctx.distributions[total.name] = samples_from_stats(sums, SAMPLES, np.random.default_rng(1))
        emit("Mul", [e, emit("Reciprocal", [total], "reciprocal", shape=total.shape)], "normalise", out=y)
        report.converted.append(node.name)
        report.layers.append({"node": node.name, "op": "Softmax", "nonlinear": "ugo",
                              "shifted_range": [float(stats.minimum), 0.0],
                              "sum_range": [float(sums.minimum), float(sums.maximum)]})
    return report


def observes(graph: gs.Graph, verdicts: list[NodeConversion]) -> list[str]:
    """The inputs of the normalisations, and of each Softmax its input less the row max and the sum of exp of
    that (the inputs of its exp and of its reciprocal), which calibration adds to the graph
    (rewrites/calibration/collect.py)."""
    return inputs_of(Conversion.NORMALIZATION)(graph, verdicts) + [
        n.name + suffix for n in graph.nodes if n.op == "Softmax" for suffix in (SHIFTED_SUFFIX, SUM_SUFFIX)]


def claim(node: gs.Node, ins: list, is_dynamic: list[bool]) -> Verdict | None:
    return (Conversion.NORMALIZATION, "normalisation over features") if node.op == "Softmax" else None


PASS = Pass("softmax_to_spiking", run, spiking=True,
            doc="Softmax -> row max, exp UGO, sum, reciprocal UGO, product.",
            converts=frozenset({Conversion.NORMALIZATION}), observes=observes, claims=claim)

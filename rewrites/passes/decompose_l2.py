"""decompose_l2: ReduceL2 -> Sqrt(ReduceSum(x * x)), ReduceSumSquare -> ReduceSum(x * x), over the same axes.

The same function in standard ops, so that the spiking passes see its parts: the square becomes a spiking
product, the sum stays linear and the square root (with what follows it, such as the clamp and the division
of an L2 normalisation, x / max(|x|, eps)) one UGO. Left alone with the reason: a reduction over the batch
axis (every axis, when none is given), whose value mixes the samples."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from rewrites.emit import Emitter, reduce, reduce_axes
from rewrites.optable import Conversion, Verdict, constant_axes
from rewrites.passes.base import Pass, PassContext, PassReport

OPS = ("ReduceL2", "ReduceSumSquare")


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("decompose_l2")
    for node in [n for n in graph.nodes if n.op in OPS]:
        x, y = node.inputs[0], node.outputs[0]
        axes = reduce_axes(node, graph.opset)
        rank = len(x.shape) if x.shape is not None else None
        if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
            report.skipped.append((node.name, "reduction axes that are not constant"))
            continue
        if not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                report.skipped.append((node.name, "no axes with noop_with_empty_axes: nothing to decompose"))
                continue
            axes = list(range(rank)) if rank is not None else None
        if rank is None or axes is None:
            report.skipped.append((node.name, "the input's rank is unknown"))
            continue
        if 0 in [a % rank for a in axes]:
            report.skipped.append((node.name, f"{node.op} over the batch axis"))
            continue
        keepdims = int(node.attrs.get("keepdims", 1))
        node.inputs.clear()
        node.outputs.clear()
        emit = Emitter(graph, node.name)
        square = emit("Mul", [x, x], "square", shape=x.shape)
        if node.op == "ReduceSumSquare":
            reduce(emit, "ReduceSum", square, axes, "sum", graph.opset, out=y, keepdims=keepdims)
        else:
            total = reduce(emit, "ReduceSum", square, axes, "sum", graph.opset, keepdims=keepdims)
            emit("Sqrt", [total], "sqrt", out=y)
        report.converted.append(node.name)
    return report


def claim(node: gs.Node, ins: list, is_dynamic: list[bool]) -> Verdict | None:
    """Constant axes that leave the batch axis alone."""
    if node.op not in ("ReduceL2", "ReduceSumSquare"):
        return None
    axes = constant_axes(node, ins)
    if axes is None:
        return Conversion.UNSUPPORTED, "reduction axes that are not constant"
    rank = len(ins[0].shape) if ins[0].shape is not None else None
    if rank is not None and (not axes or 0 in [int(a) % rank for a in axes]):
        return Conversion.UNSUPPORTED, f"{node.op} over the batch axis"
    return Conversion.L2, "norm over features"


PASS = Pass("decompose_l2", run, doc="ReduceL2 and ReduceSumSquare -> square, sum (and square root).",
            converts=frozenset({Conversion.L2}), claims=claim)

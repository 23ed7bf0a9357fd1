"""fuse_softmax: the exp / sum / divide spelling of softmax -> one Softmax node.

Matches Div(e, ReduceSum(e, [a], keepdims=1)) with e = Exp(u) used only there, and u = x or
u = Sub(x, ReduceMax(x, [a], keepdims=1)) (the overflow guard exporters write). Softmax is shift-invariant, so
the ReduceMax, which has no spiking form, goes; the spiking passes then subtract a calibrated constant instead.
Before opset 13 Softmax flattens from its axis on, so there only the last axis is fused."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from rewrites.passes._emit import reduce_axes
from rewrites.passes.base import Pass, PassContext, PassReport


def _producer(t: gs.Tensor, op: str) -> gs.Node | None:
    return t.inputs[0] if t.inputs and t.inputs[0].op == op else None


def _axis(node: gs.Node, rank: int, opset: int) -> int | None:
    axes = reduce_axes(node, opset)
    if axes is None or len(axes) != 1 or node.attrs.get("keepdims", 1) != 1:
        return None
    return axes[0] % rank


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("fuse_softmax")
    for div in [n for n in graph.nodes if n.op == "Div"]:
        e, s = div.inputs[0], div.inputs[1]
        exp, total = _producer(e, "Exp"), _producer(s, "ReduceSum")
        if exp is None or total is None or total.inputs[0] is not e or not e.shape:
            continue
        if {id(c) for c in e.outputs} != {id(div), id(total)} or len(s.outputs) != 1:
            continue
        rank = len(e.shape)
        axis = _axis(total, rank, graph.opset)
        if axis is None or (graph.opset < 13 and axis != rank - 1):
            continue
        x = exp.inputs[0]
        sub = _producer(x, "Sub")
        if sub is not None:
            peak = _producer(sub.inputs[1], "ReduceMax")
            if peak is not None and peak.inputs[0] is sub.inputs[0] and _axis(peak, rank, graph.opset) == axis:
                x = sub.inputs[0]
        y = div.outputs[0]
        div.outputs.clear()
        graph.nodes.append(gs.Node("Softmax", name=f"{div.name}.softmax", attrs={"axis": axis}, inputs=[x],
                                   outputs=[y]))
        report.converted.append(div.name)
    return report


PASS = Pass("fuse_softmax", run, doc="Exp / ReduceSum / Div (with or without ReduceMax) -> Softmax.")

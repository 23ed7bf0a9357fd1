"""fuse_softmax: the exp / sum / divide spelling of softmax -> one Softmax node.

Matches Div(e, ReduceSum(e, [a], keepdims=1)) with e = Exp(u) used only there, and u = x or
u = Sub(x, ReduceMax(x, [a], keepdims=1)) (the overflow guard exporters write). A reduction with keepdims=0
whose axis comes back by Unsqueeze or by a Reshape to the kept shape, then perhaps an Expand that keeps it
of size 1 (jax2tf writes jax.nn.softmax so), counts as keepdims=1. Softmax is shift-invariant, so
the ReduceMax, which has no spiking form, goes; the spiking passes then subtract a calibrated constant instead.
Before opset 13 Softmax flattens from its axis on, so there only the last axis is fused."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from rewrites.emit import reduce_axes
from rewrites.passes.base import Pass, PassContext, PassReport


def _producer(t: gs.Tensor, op: str) -> gs.Node | None:
    return t.inputs[0] if t.inputs and t.inputs[0].op == op else None


def _axis(node: gs.Node, rank: int, opset: int, keepdims: int = 1) -> int | None:
    axes = reduce_axes(node, opset)
    if axes is None or len(axes) != 1 or node.attrs.get("keepdims", 1) != keepdims:
        return None
    return axes[0] % rank


def _kept_shape(t: gs.Tensor, x: gs.Tensor, axis: int) -> bool:
    """t has x's shape with 1 at `axis` (a symbolic batch dim matches any symbolic dim)."""
    if t.shape is None or x.shape is None or len(t.shape) != len(x.shape) or t.shape[axis] != 1:
        return False
    return all(k == axis or a == b or (k == 0 and not isinstance(a, int) and not isinstance(b, int))
               for k, (a, b) in enumerate(zip(t.shape, x.shape)))


def _reduction(t: gs.Tensor, op: str, x: gs.Tensor, rank: int, opset: int) -> tuple[gs.Node, int] | None:
    """(the reduction, its axis) where t is ReduceX(x) over one axis as keepdims=1 would give it."""
    node = _producer(t, op)
    if node is not None:
        axis = _axis(node, rank, opset)
        return None if axis is None else (node, axis)
    expand = _producer(t, "Expand")
    if expand is not None:
        t = expand.inputs[0]
    restore = t.inputs[0] if t.inputs and t.inputs[0].op in ("Reshape", "Unsqueeze") else None
    node = None if restore is None else _producer(restore.inputs[0], op)
    if node is None or node.inputs[0] is not x:
        return None
    axis = _axis(node, rank, opset, keepdims=0)
    if axis is None or not _kept_shape(t, x, axis) or (expand is not None and (
            expand.outputs[0].shape is None or len(expand.outputs[0].shape) != rank
            or expand.outputs[0].shape[axis] != 1)):
        return None
    return node, axis


def _fill_shapes(graph: gs.Graph) -> None:
    """Shapes by onnx shape inference on a weightless copy, for the tensors that earlier passes left without."""
    from rewrites.export import graph_to_model  # export imports the passes
    from ground.protos import infer_shapes
    tensors = graph.tensors()
    for vi in infer_shapes(graph_to_model(graph, weights=False)).graph.value_info:
        t = tensors.get(vi.name)
        if t is not None and t.shape is None and vi.type.tensor_type.HasField("shape"):
            t.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                       for d in vi.type.tensor_type.shape.dim]


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("fuse_softmax")
    divs = [n for n in graph.nodes if n.op == "Div"]
    if any(_producer(d.inputs[0], "Exp") for d in divs):
        _fill_shapes(graph)
    for div in divs:
        e, s = div.inputs[0], div.inputs[1]
        exp = _producer(e, "Exp")
        if exp is None or not e.shape:
            continue
        rank = len(e.shape)
        found = _reduction(s, "ReduceSum", e, rank, graph.opset)
        if found is None or len(s.outputs) != 1:
            continue
        total, axis = found
        if {id(c) for c in e.outputs} != {id(div), id(total)} or len(total.outputs[0].outputs) != 1:
            continue
        if graph.opset < 13 and axis != rank - 1:
            continue
        x = exp.inputs[0]
        sub = _producer(x, "Sub")
        if sub is not None:
            peak = _reduction(sub.inputs[1], "ReduceMax", sub.inputs[0], rank, graph.opset)
            if peak is not None and peak[1] == axis:
                x = sub.inputs[0]
        y = div.outputs[0]
        div.outputs.clear()
        graph.nodes.append(gs.Node("Softmax", name=f"{div.name}.softmax", attrs={"axis": axis}, inputs=[x],
                                   outputs=[y]))
        report.converted.append(div.name)
    return report


PASS = Pass("fuse_softmax", run, doc="Exp / ReduceSum / Div (with or without ReduceMax) -> Softmax.")

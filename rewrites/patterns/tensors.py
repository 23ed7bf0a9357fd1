"""Facts about single tensors and nodes that the passes, the patterns and the op table all read."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})  # they read a tensor's shape, never its values


def dynamic_tensors(graph: gs.Graph) -> set[str]:
    """Names of tensors whose value depends on the graph inputs (shape-only dependence does not count).
    The graph must be topologically sorted."""
    dynamic = {t.name for t in graph.inputs}
    for node in graph.nodes:
        if node.op in SHAPE_ONLY_OPS:
            continue
        if any(isinstance(i, gs.Variable) and i.name in dynamic for i in node.inputs):
            dynamic.update(o.name for o in node.outputs)
    return dynamic


def clip_bounds(node: gs.Node) -> tuple[float | None, float | None] | None:
    """(min, max) of a Clip when both are constants (None = absent), else None."""
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return node.attrs.get("min"), node.attrs.get("max")
    bounds = []
    for i in (1, 2):
        if len(node.inputs) <= i or node.inputs[i].name == "":
            bounds.append(None)
        elif isinstance(node.inputs[i], gs.Constant):
            bounds.append(float(np.asarray(node.inputs[i].values).reshape(-1)[0]))
        else:
            return None
    return bounds[0], bounds[1]


def is_relu_like(node: gs.Node) -> bool:
    if node.op == "Relu":
        return True
    if node.op == "Clip":
        bounds = clip_bounds(node)
        return bounds is not None and bounds[0] == 0.0 and (bounds[1] is None or bounds[1] > 0.0)
    return False


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)

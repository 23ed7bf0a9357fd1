"""Building replacement subgraphs node by node, with names derived from the node they replace."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


class Emitter:
    """Appends nodes named `<prefix>.<label>` to the graph. Inputs are tensors or numpy constants; the output
    is a new variable unless `out` (an existing variable, e.g. the replaced node's output) is given."""

    def __init__(self, graph: gs.Graph, prefix: str):
        self.graph = graph
        self.prefix = prefix
        self.count = 0

    def const(self, label: str, value) -> gs.Constant:
        return gs.Constant(f"{self.prefix}.{label}", np.asarray(value))

    def __call__(self, op: str, inputs: list, label: str, out: gs.Variable | None = None,
                 domain: str | None = None, shape: list | None = None, **attrs) -> gs.Variable:
        self.count += 1
        name = f"{self.prefix}.{label}"
        tensors = [self.const(f"{label}.c{k}", v) if isinstance(v, (np.ndarray, float, int)) else v
                   for k, v in enumerate(inputs)]
        out = out if out is not None else gs.Variable(f"{name}.out", dtype=np.float32, shape=shape)
        node = gs.Node(op, name=name, attrs=attrs, inputs=tensors, outputs=[out])
        if domain:
            node.domain = domain
        self.graph.nodes.append(node)
        return out


def reduce(emit: Emitter, op: str, x: gs.Tensor, axes: list[int], label: str, opset: int,
           out: gs.Variable | None = None, keepdims: int = 1) -> gs.Variable:
    """ReduceMean/ReduceSum/ReduceMax/ReduceLogSumExp over `axes`, as an attribute or an input by opset."""
    shape = None
    if x.shape is not None and keepdims:
        shape = [1 if k in [a % len(x.shape) for a in axes] else d for k, d in enumerate(x.shape)]
    if opset >= (13 if op == "ReduceSum" else 18):
        return emit(op, [x, np.asarray(axes, np.int64)], label, out, shape=shape, keepdims=keepdims)
    return emit(op, [x], label, out, shape=shape, axes=list(axes), keepdims=keepdims)


def reduce_axes(node: gs.Node, opset: int) -> list[int] | None:
    """The constant axes of a Reduce* node (attribute or input), None when not constant or absent."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        return [int(a) for a in np.asarray(node.inputs[1].values).reshape(-1)]
    return None

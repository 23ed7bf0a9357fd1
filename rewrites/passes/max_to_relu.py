"""max_to_relu: Max(x, 0) -> Relu(x), the ReLU that tf2onnx writes for JAX and TensorFlow graphs.

Matches Max of two inputs of which one is a constant of one element equal to zero (either order) and the
other is the same shape as the output. Same function, one node: relu_to_if then makes it an IF neuron."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.passes.base import Pass, PassContext, PassReport


def _zero(t) -> bool:
    return isinstance(t, gs.Constant) and t.values.size == 1 and float(np.asarray(t.values).reshape(-1)[0]) == 0.0


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("max_to_relu")
    for node in [n for n in graph.nodes if n.op == "Max" and len(n.inputs) == 2]:
        zeros = [_zero(t) for t in node.inputs]
        if zeros.count(True) != 1:
            continue
        x = node.inputs[zeros.index(False)]
        if isinstance(x, gs.Constant) or x.shape is None or node.outputs[0].shape is None \
                or list(x.shape) != list(node.outputs[0].shape):
            report.skipped.append((node.name, "the zero broadcasts the other operand to a larger shape"))
            continue
        node.op = "Relu"
        node.inputs.clear()
        node.inputs.append(x)
        report.converted.append(node.name)
    return report


PASS = Pass("max_to_relu", run, doc="Max(x, 0) -> Relu(x).")

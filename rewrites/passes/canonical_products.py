"""canonical_products: one spelling for squares and for division by a signal.

Pow(x, 2) -> Mul(x, x), and Div(a, b) with b depending on the input -> Mul(a, Reciprocal(b)). After it,
every product of two signals is a Mul or MatMul (a spiking product) and every division a Reciprocal (a
nonlinearity of one signal)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.patterns.tensors import dynamic_tensors
from rewrites.passes.base import Pass, PassContext, PassReport


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("canonical_products")
    graph.toposort()
    dynamic = dynamic_tensors(graph)
    for node in list(graph.nodes):
        if node.op == "Pow" and isinstance(node.inputs[1], gs.Constant) \
                and np.asarray(node.inputs[1].values).size == 1 and float(np.asarray(node.inputs[1].values)) == 2.0:
            x = node.inputs[0]
            node.op = "Mul"
            node.inputs[1] = x
            report.converted.append(node.name)
        elif node.op == "Div" and node.inputs[1].name in dynamic:
            b = node.inputs[1]
            inverse = gs.Variable(f"{node.name}.reciprocal.out", dtype=np.float32)
            graph.nodes.append(gs.Node("Reciprocal", name=f"{node.name}.reciprocal", inputs=[b], outputs=[inverse]))
            node.op = "Mul"
            node.inputs[1] = inverse
            report.converted.append(node.name)
    return report


PASS = Pass("canonical_products", run, doc="Pow(x, 2) -> x*x; a / b -> a * Reciprocal(b).")

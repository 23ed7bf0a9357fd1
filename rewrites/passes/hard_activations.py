"""hard_activations: HardSigmoid and HardSwish spelled as the clipped ReLU they are.

HardSigmoid(x) = Clip(alpha * x + beta, 0, 1) and HardSwish(x) = x * Clip(x + 3, 0, 6) / 6 (the form
paddle2onnx already writes). Same function; the Clip then becomes a clipped IF neuron (relu_to_if) and the
product of x and that gate a spiking product (products_to_spiking), both exact as T grows, with one state
tensor per element where a UGO subnet holds one per hidden neuron (rewrites/patterns/regions.py: a product gated by a
ReLU-like node is not a nonlinearity of its own). A HardSigmoid head before a graph output is left to
decoded_head."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.emit import Emitter
from rewrites.optable import Conversion, Verdict
from rewrites.passes.base import Pass, PassContext, PassReport
from rewrites.passes.decoded_head import head_nodes

HEAD = "a head before a graph output: decoded_head applies it to the decoded value of its input"


def _clip(emit: Emitter, x: gs.Tensor, high: float, opset: int, shape, out: gs.Variable | None = None
          ) -> gs.Variable:
    if opset >= 11:
        return emit("Clip", [x, np.array(0.0, np.float32), np.array(high, np.float32)], "clip", out, shape=shape)
    return emit("Clip", [x], "clip", out, shape=shape, min=0.0, max=float(high))


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("hard_activations")
    heads = {id(n) for n in head_nodes(graph)}
    for node in [n for n in graph.nodes if _is_hard(n)]:
        if id(node) in heads:
            report.skipped.append((node.name, HEAD))
            continue
        x, y = node.inputs[0], node.outputs[0]
        shape = x.shape
        emit = Emitter(graph, node.name)
        if node.op == "HardSigmoid":
            alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
            scaled = emit("Mul", [x, np.array(alpha, np.float32)], "scale", shape=shape)
            shifted = emit("Add", [scaled, np.array(beta, np.float32)], "shift", shape=shape)
            _clip(emit, shifted, 1.0, graph.opset, shape, out=y)
        else:
            shifted = emit("Add", [x, np.array(3.0, np.float32)], "shift", shape=shape)
            gate = _clip(emit, shifted, 6.0, graph.opset, shape)
            product = emit("Mul", [x, gate], "gated", shape=shape)
            emit("Mul", [product, np.array(1.0 / 6.0, np.float32)], "out", out=y)
        node.inputs.clear()
        node.outputs.clear()
        report.converted.append(node.name)
    return report


def _is_hard(node: gs.Node) -> bool:
    return node.op in ("HardSigmoid", "HardSwish") and node.domain in (None, "", "ai.onnx")


def claim(node: gs.Node, ins: list, is_dynamic: list[bool]) -> Verdict | None:
    return (Conversion.HARD, "") if _is_hard(node) else None


PASS = Pass("hard_activations", run, doc="HardSigmoid -> Clip(alpha x + beta, 0, 1); HardSwish -> x Clip(x + 3, 0, 6) / 6.",
            converts=frozenset({Conversion.HARD}), claims=claim)

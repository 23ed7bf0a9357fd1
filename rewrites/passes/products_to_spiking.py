"""products_to_spiking: MatMul / Mul of two signals -> SpikeMatMul / SpikeMul (TCSA, seed 002).

The spiking product keeps the running sums of both operands and emits at each step what makes the running
mean of its output equal the product of the operands' running means (snnfile/operators.py), computed from the
increments. Needs no calibration. Products with a constant operand stay linear. Under --coding fs (decoded by
the sum) the product reads the operands' running sums and emits the increments of their product."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from ground.errors import PassError
from snnfile.operators import SPIKE_MATMUL, SPIKE_MUL
from rewrites.patterns.tensors import dynamic_tensors
from rewrites.passes.base import Pass, PassContext, PassReport
from rewrites.optable import BILINEAR_OPS, Conversion, Verdict
from rewrites.passes.spiking import replace_node, spiking_node, step_like, wrap_exact

SPECS = {"MatMul": SPIKE_MATMUL, "Mul": SPIKE_MUL}


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("products_to_spiking")
    graph.toposort()
    dynamic = dynamic_tensors(graph)
    for node in [n for n in graph.nodes if n.op in SPECS and n.domain in (None, "", "ai.onnx")]:
        a, b = node.inputs[:2]
        if node.name in ctx.kept_float or not (a.name in dynamic and b.name in dynamic):
            continue
        y = node.outputs[0]
        for t in (a, b, y):
            if not t.shape or any(not isinstance(d, int) for d in list(t.shape)[1:]):
                raise PassError(f"node '{node.name}': the shape of '{t.name}' is not static ({t.shape})",
                                "export the model with static non-batch dimensions")
        if ctx.options.fs:  # decoded by the sum: the product of the running sums, emitted as increments
            wrap_exact(graph, node.name, [node], [a, b], [y], summed=True)
            ctx.kept_float.append(node.name)
            report.converted.append(node.name)
            report.layers.append({"node": node.name, "op": node.op, "from": node.op, "inputs": [a.name, b.name],
                                  "nonlinear": "product of running sums"})
            continue
        spec = SPECS[node.op]
        replace_node(graph, node, spiking_node(spec, node.name, [a, b], y, [a, b, y, step_like()]))
        report.converted.append(node.name)
        report.layers.append({"node": node.name, "op": spec.op_type, "from": node.op,
                              "inputs": [a.name, b.name]})
    return report


def claim(node: gs.Node, ins: list, is_dynamic: list[bool]) -> Verdict | None:
    if node.op in BILINEAR_OPS and sum(is_dynamic) >= 2:
        return Conversion.PRODUCT, "both operands depend on the input"
    return None


PASS = Pass("products_to_spiking", run, spiking=True, doc="Variable x variable MatMul / Mul -> spiking product.",
            converts=frozenset({Conversion.PRODUCT}), claims=claim)

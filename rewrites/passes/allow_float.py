"""allow_float: nodes of the op types named by --allow-float, which no other pass maps, stay floating-point
operators with estimate-and-correct semantics: they read the running means of their inputs and emit what
makes the running mean of each output equal their value (DESIGN.md). Listed as kept float in the report."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from rewrites.optable import classify_graph, dynamic_tensors
from rewrites.passes.base import Pass, PassContext, PassReport
from rewrites.passes.spiking import wrap_exact


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("allow_float")
    allowed = set(ctx.options.allow_float)
    if not allowed:
        return report
    by_name = {n.name: n for n in graph.nodes}
    dynamic = dynamic_tensors(graph)
    for conv in classify_graph(graph):
        node = by_name[conv.node]
        if conv.conversion.converts or node.op not in allowed or node.name in ctx.kept_float:
            continue
        inputs = list({id(t): t for t in node.inputs if isinstance(t, gs.Variable) and t.name in dynamic}.values())
        wrap_exact(graph, node.name, [node], inputs, [o for o in node.outputs if o.name])
        ctx.kept_float.append(node.name)
        report.converted.append(node.name)
        report.layers.append({"node": node.name, "op": node.op, "nonlinear": "float (--allow-float)"})
    return report


PASS = Pass("allow_float", run, spiking=True, doc="--allow-float OP: keep those ops as exact float operators.")

"""eliminate_identity: remove Identity and inference-mode Dropout nodes.

Matches Identity, and Dropout whose mask output is unused. The node's consumers read its input instead;
when its output is a graph output, the producer's tensor takes the output's place and name. Kept when the
input is itself a graph input or initializer that is also a graph output (nothing to bypass to)."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from rewrites.passes.base import Pass, PassContext, PassReport, redirect_readers
from rewrites.patterns.tensors import is_graph_output


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("eliminate_identity")
    for node in list(graph.nodes):
        if node.op not in ("Identity", "Dropout"):
            continue
        if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
            report.skipped.append((node.name, "the Dropout mask output is used"))
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if is_graph_output(graph, dst):
            if not isinstance(src, gs.Variable) or src in graph.inputs or is_graph_output(graph, src) \
                    or len(src.outputs) > 1:
                report.skipped.append((node.name, "its input cannot take the graph output's place"))
                continue
            producer = src.inputs[0]
            producer.outputs[producer.outputs.index(src)] = dst
            node.outputs.clear()
            node.inputs.clear()
        else:
            redirect_readers(dst, src)
            node.outputs.clear()
            node.inputs.clear()
        report.converted.append(node.name)
    return report


PASS = Pass("eliminate_identity", run, doc="Remove Identity / inference Dropout.")

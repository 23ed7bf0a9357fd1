"""decoded_head: the model's head (a Softmax, LogSoftmax, Sigmoid, HardSigmoid or Tanh on the way to a graph
output, with the layout ops around it) is applied exactly to the decoded value of its input.

A head is a function of the logits that the reader wants as it is (class probabilities, a text map's
probability). Made of spiking subnets it carries their fit error into the result; applied to the running
mean of its input and corrected (estimate-and-correct, DESIGN.md), the running mean of the file's output is
the head of the decoded logits at every step, so the decoding stays `mean` and a runtime needs to know
nothing new. The head's counters divide by the step count, so a file converted for drain steps keeps an
elementwise head spiking instead (`skipped`, with the reason); a spiking Softmax holds products, which
divide by the step count too, so it is exact either way."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.patterns.tensors import dynamic_tensors
from rewrites.passes.base import Pass, PassContext, PassReport
from rewrites.optable import Conversion
from rewrites.passes.spiking import wrap_exact

HEAD_OPS = frozenset({"Softmax", "LogSoftmax", "Sigmoid", "HardSigmoid", "Tanh"})
LAYOUT_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})
NORMALISING = frozenset({"Softmax", "LogSoftmax"})  # spiking, they hold products: no file with them drains
DRAINS = "the file drains (--drain-steps): the head's running mean would count the drain steps"


def _float(t: gs.Tensor) -> bool:
    return t.dtype is not None and np.dtype(t.dtype) == np.float32


def head_nodes(graph: gs.Graph) -> list[gs.Node]:
    """The nodes between the last layers and the graph outputs that make up heads: head and layout ops whose
    every output is a float graph output or read only by other such nodes; only tails that hold a head op."""
    graph.toposort()
    outputs = {t.name for t in graph.outputs}
    tail: dict[int, gs.Node] = {}
    for node in reversed(graph.nodes):
        if node.domain not in (None, "", "ai.onnx") or node.op not in HEAD_OPS | LAYOUT_OPS:
            continue
        if all(o.name and _float(o) and (o.outputs or o.name in outputs)
               and all(id(r) in tail for r in o.outputs) for o in node.outputs):
            tail[id(node)] = node
    after: set[int] = set()  # tail nodes that are or follow a head op
    for node in graph.nodes:
        if id(node) in tail and (node.op in HEAD_OPS or any(
                t.inputs and id(t.inputs[0]) in after for t in node.inputs)):
            after.add(id(node))
    return [n for n in graph.nodes if id(n) in after or (id(n) in tail and _reaches_head(n, tail))]


def _reaches_head(node: gs.Node, tail: dict[int, gs.Node]) -> bool:
    """A head op lies between the node and the graph output."""
    return node.op in HEAD_OPS or any(_reaches_head(r, tail) for o in node.outputs for r in o.outputs
                                      if id(r) in tail)


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("decoded_head")
    nodes = head_nodes(graph)
    if not nodes:
        return report
    if ctx.options.drain_steps and not any(n.op in NORMALISING for n in nodes):
        report.skipped.extend((n.name, DRAINS) for n in nodes)
        return report
    members = {id(n) for n in nodes}
    dynamic = dynamic_tensors(graph)
    inputs = list({id(t): t for n in nodes for t in n.inputs if isinstance(t, gs.Variable) and t.name in dynamic
                   and not (t.inputs and id(t.inputs[0]) in members)}.values())
    outputs = [t for t in graph.outputs if t.inputs and id(t.inputs[0]) in members]
    name = "head." + nodes[-1].name
    wrap_exact(graph, name, nodes, inputs, outputs, summed=ctx.options.fs)
    ctx.kept_float.extend(n.name for n in nodes)
    report.converted.extend(n.name for n in nodes)
    for n in nodes:
        report.layers.append({"node": n.name, "op": n.op, "nonlinear": "head: exact on the decoded value"})
    return report


PASS = Pass("decoded_head", run, spiking=True,
            doc="Softmax/Sigmoid/... heads before the graph outputs: exact on the decoded value of their input.",
            converts=frozenset({Conversion.HEAD}))

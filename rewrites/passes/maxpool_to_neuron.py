"""maxpool_to_neuron: MaxPool -> MaxPool neuron (max pooling of the accumulated input, emitting the
increase of the pooled value each step; seed 000, from the Quantization Framework for Fast SNNs).

Matches MaxPool with a single output (no Indices). Attributes are carried over, and those left at their
defaults are written out: onnx before 1.18 gives a function body an absent attribute as an empty list
("Attribute dilations has incorrect size")."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from snnfile.operators import MAXPOOL_NEURON
from rewrites.passes.base import Pass, PassContext, PassReport, inputs_of
from rewrites.optable import Conversion, Verdict
from rewrites.passes.spiking import replace_node, spiking_node


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("maxpool_to_neuron")
    for node in [n for n in graph.nodes if n.op == "MaxPool"]:
        if len([o for o in node.outputs if o.name]) > 1:
            report.skipped.append((node.name, "MaxPool with an Indices output"))
            continue
        if node.attrs.get("storage_order", 0):
            report.skipped.append((node.name, "MaxPool with storage_order"))
            continue
        x, y = node.inputs[0], node.outputs[0]
        attrs = {k: v for k, v in node.attrs.items() if k in MAXPOOL_NEURON.attributes}
        rank = len(attrs["kernel_shape"])
        defaults = {"strides": [1] * rank, "dilations": [1] * rank, "ceil_mode": 0, "auto_pad": "NOTSET"}
        if attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET"):
            defaults["pads"] = [0] * (2 * rank)
        attrs = {**defaults, **attrs}
        neuron = spiking_node(MAXPOOL_NEURON, node.name, [x], y, [x, y], attrs)
        replace_node(graph, node, neuron)
        report.converted.append(node.name)
        report.layers.append({"node": node.name, "op": MAXPOOL_NEURON.op_type, "from": "MaxPool"})
    return report


def claim(node: gs.Node, ins: list, is_dynamic: list[bool]) -> Verdict | None:
    if node.op != "MaxPool":
        return None
    if len([o for o in node.outputs if o.name]) > 1:
        return Conversion.UNSUPPORTED, "MaxPool with an Indices output"
    return Conversion.MAXPOOL_NEURON, ""


PASS = Pass("maxpool_to_neuron", run, spiking=True, doc="MaxPool -> MaxPool neuron.",
            converts=frozenset({Conversion.MAXPOOL_NEURON}), observes=inputs_of(Conversion.MAXPOOL_NEURON),
            claims=claim)

"""decompose_layernorm: LayerNormalization -> centring, variance, 1/sqrt, product, affine.

y = (x - mean) * Reciprocal(Sqrt(ReduceMean((x - mean)^2) + eps)) * scale + bias over the axes from `axis` on.
The same function in standard ops, so that the spiking passes see its parts: the centring and the affine stay
linear, the square and the normalising product become spiking products, 1/sqrt(v + eps) one UGO (or an exact
float operator). Torch's pre-opset-17 exports already have this shape (with Pow and Div, which
canonical_products rewrites)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.emit import Emitter, reduce
from rewrites.optable import Conversion, Verdict
from rewrites.passes.base import Pass, PassContext, PassReport


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("decompose_layernorm")
    for node in [n for n in graph.nodes if n.op == "LayerNormalization"]:
        x = node.inputs[0]
        if len([o for o in node.outputs if o.name]) > 1:
            report.skipped.append((node.name, "its Mean / InvStdDev outputs are used"))
            continue
        if not x.shape:
            report.skipped.append((node.name, "the input's rank is unknown"))
            continue
        rank = len(x.shape)
        axes = list(range(node.attrs.get("axis", -1) % rank, rank))
        eps = np.array(node.attrs.get("epsilon", 1e-5), np.float32)
        scale = node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        y = node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        emit = Emitter(graph, node.name)
        mean = reduce(emit, "ReduceMean", x, axes, "mean", graph.opset)
        centred = emit("Sub", [x, mean], "centred")
        square = emit("Mul", [centred, centred], "square")
        variance = reduce(emit, "ReduceMean", square, axes, "variance", graph.opset)
        inv_std = emit("Reciprocal", [emit("Sqrt", [emit("Add", [variance, eps], "variance_eps")], "std")], "inv_std")
        normalised = emit("Mul", [centred, inv_std], "normalised")
        scaled = emit("Mul", [normalised, scale], "scale", out=None if bias is not None else y)
        if bias is not None:
            emit("Add", [scaled, bias], "shift", out=y)
        report.converted.append(node.name)
    return report


def claim(node: gs.Node, ins: list, is_dynamic: list[bool]) -> Verdict | None:
    if node.op != "LayerNormalization":
        return None
    if len([o for o in node.outputs if o.name]) > 1:
        return Conversion.UNSUPPORTED, "LayerNormalization with its Mean / InvStdDev outputs used"
    return Conversion.LAYERNORM, "normalisation over features"


PASS = Pass("decompose_layernorm", run, doc="LayerNormalization -> its standard-op form.",
            converts=frozenset({Conversion.LAYERNORM}), claims=claim)

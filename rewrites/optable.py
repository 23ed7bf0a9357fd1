"""How each node of an ANN converts: kept as a linear operator, replaced by a spiking operator, left to a
later pass, or unsupported. The verdicts a pass carries out are its own claims (`Pass.claims`); what is kept
as it is is decided here. Shared by `inspect` (the table users read first) and `convert` (the final check
that nothing stays silently unconverted)."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

import onnx_graphsurgeon as gs
import numpy as np

from rewrites.patterns.qcfs import find_chains
from rewrites.patterns.regions import find_regions
from rewrites.patterns.tensors import SHAPE_ONLY_OPS, dynamic_tensors
from snnfile import DOMAIN


class Conversion(enum.Enum):
    LINEAR = "kept (linear)"
    STATIC = "kept (shape/constant computation)"
    IF_NEURON = "IF neuron"
    QCFS = "IF neuron (QCFS activation, threshold from the model)"
    MAXPOOL_NEURON = "MaxPool neuron"
    MAX_NEURON = "spiking max (increase of the max of the summed inputs)"
    SPIKING = "spiking operator"
    UGO = "nonlinearity: UGO subnet of IF neurons (exact float with --nonlinear exact)"
    PRODUCT = "variable x variable product: spiking product (TCSA)"
    NORMALIZATION = "softmax: exp and reciprocal UGO subnets, spiking product"
    LAYERNORM = "LayerNorm: decomposed, then a 1/sqrt UGO and spiking products"
    L2 = "L2 norm / sum of squares: decomposed, a spiking product, a sum and a sqrt UGO"
    HARD = "clipped IF neuron (HardSwish: times its input by a spiking product)"
    FLOAT = "kept float (estimate-and-correct)"
    HEAD = "head: exact on the decoded value"
    UNSUPPORTED = "unsupported"

    @property
    def converts(self) -> bool:
        return self is not Conversion.UNSUPPORTED


LINEAR_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "Add", "Sub", "Neg", "Sum", "Mean", "Concat", "AveragePool",
    "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Pad", "Squeeze", "Unsqueeze", "ReduceMean",
    "ReduceSum", "BatchNormalization", "Identity", "Dropout", "Slice", "Split", "Gather", "Expand", "Tile",
    "DepthToSpace", "SpaceToDepth", "Resize",
})
# Linear when at most one operand depends on the input (and, for Div, the divisor does not).
BILINEAR_OPS = frozenset({"MatMul", "Mul", "Div", "Einsum"})


@dataclass(frozen=True)
class NodeConversion:
    node: str
    op_type: str
    conversion: Conversion
    reason: str = ""


Verdict = tuple[Conversion, str]
# A pass's claim on a node that depends on the input and is not kept linear: the node, its named inputs and
# which of them depend on the input -> the verdict, or None when the pass does not take the node.
Claim = Callable[[gs.Node, list, list[bool]], "Verdict | None"]


def classify(node: gs.Node, dynamic: set[str], claims: tuple[Claim, ...]) -> NodeConversion:
    """Kept (spiking, static, linear) here; otherwise the first pass that claims the node (in pipeline
    order) gives the verdict, and a node no pass claims is unsupported."""
    op = node.op
    ins, is_dynamic = _operands(node, dynamic)

    def result(conv: Conversion, reason: str = "") -> NodeConversion:
        return NodeConversion(node.name, op, conv, reason)

    if node.domain == DOMAIN:
        return result(Conversion.SPIKING)
    if not any(is_dynamic) or op in SHAPE_ONLY_OPS:  # Shape / Size read the shape, never the values
        return result(Conversion.STATIC)
    if op in LINEAR_OPS:
        if op == "Resize" and node.attrs.get("mode", "nearest") not in ("nearest", "linear"):
            return result(Conversion.UNSUPPORTED, f"Resize mode {node.attrs.get('mode')} is not linear")
        if op == "Pad" and node.attrs.get("mode", "constant") not in ("constant", "reflect", "edge"):
            return result(Conversion.UNSUPPORTED, "Pad mode is not linear")
        return result(Conversion.LINEAR)
    if op in BILINEAR_OPS and sum(is_dynamic) == 1 and not (op == "Div" and is_dynamic[-1]):
        return result(Conversion.LINEAR)
    for claim in claims:
        verdict = claim(node, ins, is_dynamic)
        if verdict is not None:
            return result(*verdict)
    return result(Conversion.UNSUPPORTED, f"no conversion of {op} on input-dependent tensors")


def _operands(node: gs.Node, dynamic: set[str]) -> tuple[list, list[bool]]:
    """A node's named inputs and which of them depend on the input: what a claim reads."""
    ins = [i for i in node.inputs if i.name]
    return ins, [isinstance(i, gs.Variable) and i.name in dynamic for i in ins]


def _taken(node: gs.Node, dynamic: set[str], claims: tuple[Claim, ...]) -> bool:
    ins, is_dynamic = _operands(node, dynamic)
    return any(claim(node, ins, is_dynamic) is not None for claim in claims)


def constant_axes(node: gs.Node, ins: list) -> list[int] | None:
    """A reduction's axes, from its second input or its attribute; None when they are not constant."""
    if len(ins) > 1:
        return np.asarray(ins[1].values).reshape(-1).tolist() if isinstance(ins[1], gs.Constant) else None
    return list(node.attrs.get("axes", []))


def classify_graph(graph: gs.Graph, claims: tuple[Claim, ...], kept_float: frozenset[str] = frozenset(),
                   normalising: tuple[Claim, ...] = ()) -> list[NodeConversion]:
    """`claims`: the pipeline's, in its order (rewrites.passes.verdicts); `kept_float`: nodes a pass kept as
    exact float operators (they convert, as float); `normalising`: the claims of normalising passes, whose
    nodes are rewritten before any function region is found (a HardSwish is no UGO region)."""
    graph.toposort()
    dynamic = dynamic_tensors(graph)
    in_qcfs = {id(n) for m in find_chains(graph)[0] for n in m.nodes}
    rewritten = frozenset(n.name for n in graph.nodes if normalising and _taken(n, dynamic, normalising))
    in_region = {id(n): r for r in find_regions(graph, rewritten) for n in r.nodes}
    out = []
    for node in graph.nodes:
        if id(node) in in_qcfs:
            out.append(NodeConversion(node.name, node.op, Conversion.QCFS))
        elif node.name in kept_float:
            out.append(NodeConversion(node.name, node.op, Conversion.FLOAT))
        elif id(node) in in_region:
            region = in_region[id(node)]
            out.append(NodeConversion(node.name, node.op, Conversion.UGO,
                                      f"part of f({region.root.name}): {'/'.join(dict.fromkeys(region.ops))}"))
        else:
            out.append(classify(node, dynamic, claims))
    return out

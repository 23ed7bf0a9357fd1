"""How each node of an ANN converts: kept as a linear operator, replaced by a spiking operator, left to a
later pass, or unsupported. Shared by `inspect` (the table users read first) and `convert` (the final check
that nothing stays silently unconverted)."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import onnx_graphsurgeon as gs
import numpy as np

from rewrites.patterns.qcfs import find_chains
from rewrites.patterns.regions import find_regions
from rewrites.patterns.tensors import SHAPE_ONLY_OPS, dynamic_tensors, is_relu_like
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
UGO_OPS = frozenset({
    "Gelu", "Erf", "Exp", "Sigmoid", "Tanh", "Softplus", "Elu", "Selu", "LeakyRelu", "PRelu", "HardSigmoid",
    "HardSwish", "Abs", "Reciprocal", "Sqrt", "Pow", "Log", "Mish", "Sin", "Cos", "Celu", "ThresholdedRelu",
})
NORMALIZATION_OPS = frozenset({"Softmax", "LayerNormalization"})  # decomposed by passes
MAX_OPS = frozenset({"Max", "Min", "ReduceMax", "ReduceMin", "GlobalMaxPool"})  # max_to_neuron


@dataclass(frozen=True)
class NodeConversion:
    node: str
    op_type: str
    conversion: Conversion
    reason: str = ""


def classify(node: gs.Node, dynamic: set[str]) -> NodeConversion:
    op = node.op
    ins = [i for i in node.inputs if i.name]
    is_dynamic = [isinstance(i, gs.Variable) and i.name in dynamic for i in ins]

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
    if op in BILINEAR_OPS:
        if sum(is_dynamic) >= 2:
            return result(Conversion.PRODUCT, "both operands depend on the input")
        if op == "Div" and is_dynamic[-1]:
            return result(Conversion.UGO, "divides by a tensor that depends on the input (reciprocal)")
        return result(Conversion.LINEAR)
    if is_relu_like(node):
        return result(Conversion.IF_NEURON)
    if op == "MaxPool":
        if len([o for o in node.outputs if o.name]) > 1:
            return result(Conversion.UNSUPPORTED, "MaxPool with an Indices output")
        return result(Conversion.MAXPOOL_NEURON)
    if op in MAX_OPS:
        return _max_conversion(node, ins, is_dynamic, result)
    if op == "Clip":
        return result(Conversion.UGO, "Clip that is not ReLU-like (min != 0 or bounds not constant)")
    if op in UGO_OPS:
        if op == "Pow" and not (len(ins) > 1 and not is_dynamic[1]):
            return result(Conversion.UNSUPPORTED, "Pow with an exponent that depends on the input")
        return result(Conversion.UGO, "elementwise nonlinearity")
    if op in ("ReduceL2", "ReduceSumSquare"):
        return _l2_conversion(node, ins, is_dynamic, result)
    if op in NORMALIZATION_OPS:
        if op == "LayerNormalization" and len([o for o in node.outputs if o.name]) > 1:
            return result(Conversion.UNSUPPORTED, "LayerNormalization with its Mean / InvStdDev outputs used")
        return result(Conversion.LAYERNORM if op == "LayerNormalization" else Conversion.NORMALIZATION,
                      "normalisation over features")
    return result(Conversion.UNSUPPORTED, f"no conversion of {op} on input-dependent tensors")


def _l2_conversion(node: gs.Node, ins: list, is_dynamic: list[bool], result) -> NodeConversion:
    """The verdict of decompose_l2: constant axes that leave the batch axis alone."""
    if len(ins) > 1 and not isinstance(ins[1], gs.Constant):
        return result(Conversion.UNSUPPORTED, "reduction axes that are not constant")
    axes = np.asarray(ins[1].values).reshape(-1).tolist() if len(ins) > 1 else list(node.attrs.get("axes", []))
    rank = len(ins[0].shape) if ins[0].shape is not None else None
    if rank is not None and (not axes or 0 in [int(a) % rank for a in axes]):
        return result(Conversion.UNSUPPORTED, f"{node.op} over the batch axis")
    return result(Conversion.L2, "norm over features")


def _max_conversion(node: gs.Node, ins: list, is_dynamic: list[bool], result) -> NodeConversion:
    """The verdict of max_to_neuron, which takes every Max, Min and GlobalMaxPool and the reductions whose
    axes are constant and leave the batch axis alone."""
    if node.op in ("ReduceMax", "ReduceMin"):
        x = next(t for t, d in zip(ins, is_dynamic) if d)
        if len(ins) > 1 and is_dynamic[1]:
            return result(Conversion.UNSUPPORTED, "reduction axes that depend on the input")
        rank = len(x.shape) if x.shape is not None else None
        if len(ins) > 1 and not isinstance(ins[1], gs.Constant):
            return result(Conversion.UNSUPPORTED, "reduction axes that are not constant")
        axes = np.asarray(ins[1].values).reshape(-1).tolist() if len(ins) > 1 else list(node.attrs.get("axes", []))
        if rank is not None and (not axes and not node.attrs.get("noop_with_empty_axes", 0) or
                                 0 in [int(a) % rank for a in axes]):
            return result(Conversion.UNSUPPORTED, f"{node.op} over the batch axis")
    return result(Conversion.MAX_NEURON)


def classify_graph(graph: gs.Graph, kept_float: frozenset[str] = frozenset()) -> list[NodeConversion]:
    """`kept_float`: nodes a pass kept as exact float operators (they convert, as float)."""
    graph.toposort()
    dynamic = dynamic_tensors(graph)
    in_qcfs = {id(n) for m in find_chains(graph)[0] for n in m.nodes}
    in_region = {id(n): r for r in find_regions(graph) for n in r.nodes}
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
            out.append(classify(node, dynamic))
    return out

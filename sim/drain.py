"""Drain steps: silent steps in which no new charge enters the network.

Seed 000's extra_t steps zero the input but every bias is still added at each step, so a layer whose bias is
positive keeps charging and the longer window measures a different function (the seed saw extra_t hurt).
A drain step zeroes the input and every constant additive term as well: Conv/ConvTranspose/Gemm biases and
the constant operand of an Add or Sub whose other operand is a signal. The charge a layer integrates over
T + E steps is then what it integrated over the T input steps, and the neurons only settle: signed neurons
take back early spikes, IF neurons flush what the input left below threshold. The output, summed over all
steps, estimates T times the ANN's output, so it is decoded as that sum / T."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from sim.model import SpikingModel

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class BiasTerm:
    node: int  # index in the graph's node list
    input: int  # which input holds the constant
    offset: np.ndarray  # what the term adds to the node's output at each step, broadcastable to it


def bias_terms(model: SpikingModel) -> dict[int, BiasTerm]:
    """The constant additive terms a drain step leaves out, by node index."""
    constants = model.constants
    signals = {i.name for i in model.proto.graph.input if i.name not in constants}
    terms: dict[int, BiasTerm] = {}
    for i, node in enumerate(model.nodes):
        if any(name in signals for name in node.input):
            signals.update(name for name in node.output if name)
        if node.domain not in DEFAULT_DOMAINS:
            continue
        term = _term(i, node, constants, signals)
        if term is not None and np.any(term.offset):
            terms[i] = term
    return terms


def _term(i: int, node: onnx.NodeProto, constants: dict[str, np.ndarray], signals: set[str]) -> BiasTerm | None:
    inputs = list(node.input)
    op = node.op_type
    if not inputs or inputs[0] not in signals and op not in ("Add", "Sub"):
        return None
    if op in ("Conv", "ConvTranspose") and len(inputs) > 2 and inputs[2] in constants and inputs[1] in constants:
        spatial = constants[inputs[1]].ndim - 2
        bias = constants[inputs[2]].astype(np.float32)
        return BiasTerm(i, 2, bias.reshape((-1,) + (1,) * spatial))
    if op == "Gemm" and len(inputs) > 2 and inputs[2] in constants:
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
        return BiasTerm(i, 2, (beta * constants[inputs[2]]).astype(np.float32))
    if op in ("Add", "Sub") and len(inputs) == 2:
        first, second = (name in constants for name in inputs)
        if first == second or inputs[1 if first else 0] not in signals:
            return None
        index = 0 if first else 1
        value = constants[inputs[index]]
        if value.dtype.kind != "f":
            return None
        value = value.astype(np.float32)
        if op == "Sub" and index == 1:
            value = -value
        return BiasTerm(i, index, value)
    return None


def without_biases(proto: onnx.ModelProto, terms: dict[int, BiasTerm]) -> onnx.ModelProto:
    """A copy of the model whose bias terms read zeros: one step of it is a drain step."""
    drained = onnx.ModelProto()
    drained.CopyFrom(proto)
    graph = drained.graph
    shapes = {t.name: (tuple(t.dims), t.data_type) for t in graph.initializer}
    zeros: dict[str, str] = {}
    for i, term in terms.items():
        node = graph.node[i]
        name = node.input[term.input]
        if name not in zeros:
            dims, dtype = shapes[name]
            zero = numpy_helper.from_array(np.zeros(dims, onnx.helper.tensor_dtype_to_np_dtype(dtype)),
                                           f"{name}.drained")
            graph.initializer.append(zero)
            zeros[name] = zero.name
        node.input[term.input] = zeros[name]
    return drained

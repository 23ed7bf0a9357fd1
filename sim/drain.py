"""Drain steps: silent steps in which no new charge enters the network.

Seed 000's extra_t steps zero the input but every bias is still added at each step, so a layer whose bias is
positive keeps charging and the longer window measures a different function (the seed saw extra_t hurt).
A drain step zeroes the input and every constant additive term as well: Conv/ConvTranspose/Gemm biases, the
offset of a BatchNormalization left unfolded, and the constant operand of an Add or Sub whose other operand
is a signal. The charge a layer integrates over T + E steps is then what it integrated over the T input
steps, and the neurons only settle: signed neurons take back early spikes, IF neurons flush what the input
left below threshold. The output, summed over all
steps, estimates T times the ANN's output, so it is decoded as that sum / T.

Operators that divide by the step count (spiking products, running means, rate corrections: the transformer
operators) would be diluted by steps without charge, so a model with them cannot drain."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from rewrites.errors import SpikingModelError
from sim.model import DEFAULT_DOMAINS, SPIKING_DOMAIN, SpikingModel

TIME_NORMALISED = frozenset({"SpikeMatMul", "SpikeMul", "RunningMean", "RateCorrect"})


@dataclass(frozen=True)
class BiasTerm:
    node: int  # index in the graph's node list
    inputs: tuple[int, ...]  # the inputs that hold the term's constants (zeroed in a drain step)
    offset: np.ndarray  # what the term adds to the node's output at each step
    per_channel: bool = False  # offset is [C], to be broadcast along axis 1 of the output

    def offset_for(self, per_step_rank: int) -> np.ndarray:
        """The offset shaped to broadcast against one step's output of the given rank."""
        if not self.per_channel:
            return self.offset
        return self.offset.reshape((-1,) + (1,) * (per_step_rank - 2))


def check_drainable(model: SpikingModel) -> None:
    for node in model.nodes:
        if node.domain == SPIKING_DOMAIN and node.op_type in TIME_NORMALISED:
            raise SpikingModelError(f"{model.path}: --drain cannot run node '{node.name}' ({node.op_type}): it "
                                    "divides by the step count, so steps without charge would dilute it",
                                    "simulate without --drain: its silent steps keep the biases, as seed 000's "
                                    "extra_t")


def bias_terms(model: SpikingModel) -> dict[int, BiasTerm]:
    """The constant additive terms a drain step leaves out, by node index."""
    check_drainable(model)
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
        return BiasTerm(i, (2,), constants[inputs[2]].astype(np.float32).reshape(-1), per_channel=True)
    if op == "Gemm" and len(inputs) > 2 and inputs[2] in constants:
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
        return BiasTerm(i, (2,), (beta * constants[inputs[2]]).astype(np.float32))
    if op == "BatchNormalization" and len(inputs) >= 5 and all(n in constants for n in inputs[1:5]):
        scale, bias, mean, var = (constants[n].astype(np.float64) for n in inputs[1:5])
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        offset = bias - mean * scale / np.sqrt(var + epsilon)
        return BiasTerm(i, (2, 3), offset.astype(np.float32).reshape(-1), per_channel=True)
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
        return BiasTerm(i, (index,), value)
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
        for index in term.inputs:
            name = node.input[index]
            if name not in zeros:
                dims, dtype = shapes[name]
                zero = numpy_helper.from_array(np.zeros(dims, onnx.helper.tensor_dtype_to_np_dtype(dtype)),
                                               f"{name}.drained")
                graph.initializer.append(zero)
                zeros[name] = zero.name
            node.input[index] = zeros[name]
    return drained

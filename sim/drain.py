"""Drain steps: silent steps in which no new charge enters the network.

Seed 000's extra_t steps zero the input but every bias is still added at each step, so a layer whose bias is
positive keeps charging and the longer window measures a different function (the seed saw extra_t hurt).
A drain step is what the exported file computes with its input `snn.drive` fed 0 (docs/contract.md): the
data inputs and every constant additive term that the converter gated (Conv/ConvTranspose/Gemm biases, the
offset of a BatchNormalization left unfolded, the constant operand of an Add or Sub whose other operand is a
signal) read zero, and the spike budget of the signed neurons stays at T. The charge a layer integrates over
T + E steps is then what it integrated over the T input steps, and the neurons only settle. The output,
summed over all steps, estimates T times the ANN's output, so it is decoded as that sum / T.

On load the gate is folded away at drive 1 (`fold_drive`: bit for bit the same step, no Mul on the hot
path) and remembered as the set of gated (node, input) pairs, from which both engines drain. A file without
the gate cannot drain: it holds operators that divide by the step count (its metadata `ann2snn.no_drain`
says which), or was written by an older version."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ground.errors import SpikingModelError
from sim.model import SpikingModel
from snnfile import DRIVE, Meta


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
    if model.drainable:
        return
    why = model.metadata.get(Meta.NO_DRAIN)
    if why:
        raise SpikingModelError(f"{model.path}: the file cannot drain: {why}",
                                "simulate without --drain: its silent steps keep the biases, as seed 000's extra_t")
    raise SpikingModelError(f"{model.path}: the file has no drain gate (input {DRIVE})",
                            "export it again with this version of `ann2snn convert`")


def bias_terms(model: SpikingModel) -> dict[int, BiasTerm]:
    """The constant additive terms a drain step leaves out, by node index: the file's gated terms."""
    check_drainable(model)
    constants = model.constants
    terms: dict[int, BiasTerm] = {}
    for i in sorted({i for i, _ in model.gated}):
        inputs = tuple(k for j, k in sorted(model.gated) if j == i)
        term = _term(i, model.nodes[i], constants, inputs)
        if term is not None and np.any(term.offset):
            terms[i] = term
    return terms


def _term(i: int, node: onnx.NodeProto, constants: dict[str, np.ndarray], gated: tuple[int, ...]) -> BiasTerm | None:
    """What the gated inputs of node i add to its output at each step."""
    inputs = list(node.input)
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        return BiasTerm(i, gated, constants[inputs[2]].astype(np.float32).reshape(-1), per_channel=True)
    if op == "Gemm":
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
        return BiasTerm(i, gated, (beta * constants[inputs[2]]).astype(np.float32))
    if op == "BatchNormalization":
        scale, bias, mean, var = (constants[n].astype(np.float64) for n in inputs[1:5])
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        offset = bias - mean * scale / np.sqrt(var + epsilon)
        return BiasTerm(i, gated, offset.astype(np.float32).reshape(-1), per_channel=True)
    if op in ("Add", "Sub") and gated in ((0,), (1,)):
        value = constants[inputs[gated[0]]].astype(np.float32)
        return BiasTerm(i, gated, -value if op == "Sub" and gated == (1,) else value)
    return None


def without_biases(proto: onnx.ModelProto, terms: dict[int, BiasTerm]) -> onnx.ModelProto:
    """A copy of the (folded) model whose bias terms read zeros and whose step count stops: one step of it
    is a drain step, as the file computes it with snn.drive = 0."""
    drained = onnx.ModelProto()
    drained.CopyFrom(proto)
    graph = drained.graph
    shapes = {t.name: (tuple(t.dims), t.data_type) for t in graph.initializer}
    zeros: dict[str, str] = {}

    def zero(name: str) -> str:
        if name not in zeros:
            dims, dtype = shapes[name]
            tensor = numpy_helper.from_array(np.zeros(dims, onnx.helper.tensor_dtype_to_np_dtype(dtype)),
                                             f"{name}.drained")
            graph.initializer.append(tensor)
            zeros[name] = tensor.name
        return zeros[name]

    for i, term in terms.items():
        node = graph.node[i]
        for index in term.inputs:
            node.input[index] = zero(node.input[index])
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == DRIVE:
                node.input[k] = zero(DRIVE)
    return drained

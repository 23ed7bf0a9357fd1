"""A Softmax's axes and its input shifted by its max: what the softmax pass rewrites and what calibration observes
for it."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from ground.errors import ModelError
from rewrites.emit import Emitter, reduce


SHIFTED_SUFFIX = ".shifted"  # calibration tensor: the Softmax input minus its max over the axes (at most 0)
SUM_SUFFIX = ".exp_sum"  # calibration tensor: the sum of exp of that over the axes (1 to the row's length)


def softmax_axes(node: gs.Node, rank: int | None, opset: int) -> list[int]:
    """The axes a Softmax normalises over; a last-axis Softmax needs no rank."""
    axis = node.attrs.get("axis", -1 if opset >= 13 else 1)
    if rank is None:
        if axis == -1 or (opset >= 13 and axis < 0):
            return [axis]
        raise ModelError(f"Softmax '{node.name}': the rank of its input is unknown, so axis {axis} cannot be "
                         "resolved", "run onnx shape inference on the model, or export it at opset 14 or later")
    axis %= rank
    return [axis] if opset >= 13 else list(range(axis, rank))


def rank_of(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def shifted(emit: Emitter, x: gs.Tensor, axes: list[int], opset: int, out: gs.Variable) -> gs.Variable:
    """x minus its max over the softmax axes (written to `out`)."""
    return emit("Sub", [x, reduce(emit, "ReduceMax", x, axes, "row_max", opset)], "shift", out=out)


def exp_sum(emit: Emitter, u: gs.Tensor, axes: list[int], opset: int, out: gs.Variable | None = None,
            shape: list | None = None) -> tuple[gs.Variable, gs.Variable]:
    """exp(u) and its sum over the softmax axes (the sum written to `out`)."""
    e = emit("Exp", [u], "exp", shape=shape)
    return e, reduce(emit, "ReduceSum", e, axes, "sum", opset, out=out)

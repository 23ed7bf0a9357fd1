"""A Softmax's axes and its centred input: what the softmax pass rewrites and what calibration observes for it."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from ground.errors import ModelError
from rewrites.emit import Emitter, reduce


CENTRED_SUFFIX = ".centred"  # calibration tensor: the Softmax input minus its mean over the axes
LSE_SUFFIX = ".logsumexp"  # calibration tensor: ReduceLogSumExp of the centred input over the axes


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


def centred(emit: Emitter, x: gs.Tensor, axes: list[int], opset: int, out: gs.Variable) -> gs.Variable:
    """x minus its mean over the softmax axes (written to `out`)."""
    return emit("Sub", [x, reduce(emit, "ReduceMean", x, axes, "row_mean", opset)], "centre", out=out)

"""The kernel registry of the NumPy engine's standard ONNX operators, and the decoding of node attributes.

Each kernel takes the node's inputs in order (``None`` for an omitted optional input) and the decoded
attribute dict, and returns the list of outputs. Floating-point inputs keep their dtype; float32 is never
promoted to float64."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

Kernel = Callable[[list[np.ndarray | None], dict[str, Any]], list[np.ndarray]]

KERNELS: dict[str, Kernel] = {}



def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """Decode a node's attributes into plain Python / NumPy values.

    Split nodes without ``split`` and ``num_outputs`` get ``num_outputs`` set to
    the node's output count, because an even split depends on it.
    """
    kinds = onnx.AttributeProto
    decoded: dict[str, Any] = {}
    for attribute in node.attribute:
        kind = attribute.type
        if kind == kinds.FLOAT:
            value: Any = float(attribute.f)
        elif kind == kinds.INT:
            value = int(attribute.i)
        elif kind == kinds.STRING:
            value = attribute.s.decode("utf-8")
        elif kind == kinds.TENSOR:
            value = numpy_helper.to_array(attribute.t)
        elif kind == kinds.FLOATS:
            value = [float(v) for v in attribute.floats]
        elif kind == kinds.INTS:
            value = [int(v) for v in attribute.ints]
        elif kind == kinds.STRINGS:
            value = [s.decode("utf-8") for s in attribute.strings]
        elif kind == kinds.TENSORS:
            value = [numpy_helper.to_array(t) for t in attribute.tensors]
        else:
            value = onnx.helper.get_attribute_value(attribute)
        decoded[attribute.name] = value
    if node.op_type == "Split" and "split" not in decoded and "num_outputs" not in decoded:
        decoded["num_outputs"] = len(node.output)
    return decoded


def register(*op_types: str) -> Callable[[Kernel], Kernel]:
    def decorator(kernel: Kernel) -> Kernel:
        for op_type in op_types:
            KERNELS[op_type] = kernel
        return kernel

    return decorator


def optional(inputs: Sequence[np.ndarray | None], index: int) -> np.ndarray | None:
    """Input ``index`` or None when omitted or absent."""
    return inputs[index] if index < len(inputs) else None


def int_list(values: np.ndarray | Sequence[int]) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


def axes_from(inputs: Sequence[np.ndarray | None], index: int, attrs: dict[str, Any]) -> list[int] | None:
    """Axes given as input ``index`` (newer opsets) or as the ``axes`` attribute."""
    axes_input = optional(inputs, index)
    if axes_input is not None:
        return int_list(axes_input)
    if "axes" in attrs:
        return list(attrs["axes"])
    return None


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def scalar(value: np.ndarray) -> Any:
    return np.asarray(value).reshape(-1)[0]

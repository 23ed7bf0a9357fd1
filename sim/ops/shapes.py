"""Shape handling kernels: reshapes, slicing, gathering, padding, constants."""
from __future__ import annotations

import math

import numpy as np

from sim.ops.registry import axes_from, int_list, normalize_axis, optional, register, scalar


@register("Flatten")
def _flatten(inputs, attrs):
    x = inputs[0]
    axis = normalize_axis(attrs.get("axis", 1), x.ndim)
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@register("Reshape")
def _reshape(inputs, attrs):
    x = inputs[0]
    requested = int_list(inputs[1]) if optional(inputs, 1) is not None else list(attrs["shape"])
    if not attrs.get("allowzero", 0):
        requested = [x.shape[i] if d == 0 else d for i, d in enumerate(requested)]
    return [x.reshape(requested)]


@register("Transpose")
def _transpose(inputs, attrs):
    x = inputs[0]
    permutation = attrs.get("perm")
    return [np.ascontiguousarray(np.transpose(x, permutation))]


@register("Concat")
def _concat(inputs, attrs):
    operands = [x for x in inputs if x is not None]
    return [np.concatenate(operands, axis=attrs["axis"])]


@register("Split")
def _split(inputs, attrs):
    x = inputs[0]
    axis = normalize_axis(attrs.get("axis", 0), x.ndim)
    size = x.shape[axis]
    split_input = optional(inputs, 1)
    if split_input is not None:
        sizes = int_list(split_input)
    elif "split" in attrs:
        sizes = list(attrs["split"])
    else:
        parts = attrs["num_outputs"]
        chunk = -(-size // parts)
        sizes = [min(chunk, max(size - i * chunk, 0)) for i in range(parts)]
    boundaries = np.cumsum(sizes)[:-1]
    return list(np.split(x, boundaries, axis=axis))


def _slice_bounds(start: int, end: int, step: int, size: int) -> slice:
    if start < 0:
        start += size
    if end < 0:
        end += size
    if step > 0:
        start = min(max(start, 0), size)
        end = min(max(end, 0), size)
        return slice(start, end, step)
    start = min(max(start, 0), size - 1)
    end = min(max(end, -1), size - 1)
    return slice(start, None if end < 0 else end, step)


@register("Slice")
def _slice(inputs, attrs):
    x = inputs[0]
    if optional(inputs, 1) is not None:
        starts = int_list(inputs[1])
        ends = int_list(inputs[2])
        axes_input = optional(inputs, 3)
        steps_input = optional(inputs, 4)
        axes = int_list(axes_input) if axes_input is not None else list(range(len(starts)))
        steps = int_list(steps_input) if steps_input is not None else [1] * len(starts)
    else:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = normalize_axis(axis, x.ndim)
        index[axis] = _slice_bounds(start, end, step, x.shape[axis])
    return [x[tuple(index)]]


@register("Gather")
def _gather(inputs, attrs):
    x, indices = inputs[0], inputs[1]
    axis = normalize_axis(attrs.get("axis", 0), x.ndim)
    return [np.take(x, indices.astype(np.int64, copy=False), axis=axis)]


@register("Squeeze")
def _squeeze(inputs, attrs):
    x = inputs[0]
    axes = axes_from(inputs, 1, attrs)
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(normalize_axis(a, x.ndim) for a in axes))]


@register("Unsqueeze")
def _unsqueeze(inputs, attrs):
    x = inputs[0]
    axes = axes_from(inputs, 1, attrs)
    rank = x.ndim + len(axes)
    return [np.expand_dims(x, tuple(normalize_axis(a, rank) for a in axes))]


@register("Dropout")
def _dropout(inputs, attrs):
    x = inputs[0]
    training = optional(inputs, 2)
    if training is not None and bool(scalar(training)):
        raise NotImplementedError("Dropout in training mode is not supported")
    return [x, np.broadcast_to(np.True_, x.shape)]


@register("Pad")
def _pad(inputs, attrs):
    x = inputs[0]
    mode = attrs.get("mode", "constant")
    pads_input = optional(inputs, 1)
    if pads_input is not None:
        pads = int_list(pads_input)
        value_input = optional(inputs, 2)
        value = scalar(value_input) if value_input is not None and value_input.size else 0
        axes = axes_from(inputs, 3, {})
    else:
        pads = list(attrs["pads"])
        value = attrs.get("value", 0.0)
        axes = None
    if axes is None:
        axes = list(range(x.ndim))
    axes = [normalize_axis(a, x.ndim) for a in axes]
    widths = [[0, 0] for _ in range(x.ndim)]
    for i, axis in enumerate(axes):
        widths[axis] = [pads[i], pads[i + len(axes)]]
    crop = tuple(slice(max(-b, 0), x.shape[a] - max(-e, 0)) for a, (b, e) in enumerate(widths))
    x = x[crop]
    positive = [(max(b, 0), max(e, 0)) for b, e in widths]
    if mode == "constant":
        return [np.pad(x, positive, mode="constant", constant_values=np.asarray(value, dtype=x.dtype))]
    numpy_mode = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode]
    return [np.pad(x, positive, mode=numpy_mode)]


@register("Shape")
def _shape(inputs, attrs):
    shape = np.asarray(inputs[0].shape, dtype=np.int64)
    start = attrs.get("start", 0)
    end = attrs.get("end")
    return [np.ascontiguousarray(shape[start:end])]


@register("Size")
def _size(inputs, attrs):
    return [np.asarray(inputs[0].size, dtype=np.int64)]


@register("Constant")
def _constant(inputs, attrs):
    if "value" in attrs:
        return [np.asarray(attrs["value"])]
    if "value_float" in attrs:
        return [np.asarray(attrs["value_float"], dtype=np.float32)]
    if "value_floats" in attrs:
        return [np.asarray(attrs["value_floats"], dtype=np.float32)]
    if "value_int" in attrs:
        return [np.asarray(attrs["value_int"], dtype=np.int64)]
    if "value_ints" in attrs:
        return [np.asarray(attrs["value_ints"], dtype=np.int64)]
    if "value_string" in attrs:
        return [np.asarray(attrs["value_string"], dtype=object)]
    if "value_strings" in attrs:
        return [np.asarray(attrs["value_strings"], dtype=object)]
    raise NotImplementedError(f"unsupported Constant attributes {sorted(attrs)}")


@register("ConstantOfShape")
def _constant_of_shape(inputs, attrs):
    fill = attrs.get("value")
    if fill is None:
        fill = np.zeros(1, dtype=np.float32)
    fill = np.asarray(fill)
    return [np.full(int_list(inputs[0]), fill.reshape(-1)[0], dtype=fill.dtype)]


@register("Expand")
def _expand(inputs, attrs):
    x = inputs[0]
    shape = np.broadcast_shapes(x.shape, tuple(int_list(inputs[1])))
    return [np.array(np.broadcast_to(x, shape))]


@register("Tile")
def _tile(inputs, attrs):
    return [np.tile(inputs[0], int_list(inputs[1]))]


@register("Range")
def _range(inputs, attrs):
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs[:3])
    dtype = start.dtype
    if np.issubdtype(dtype, np.integer):
        count = max(-(-(int(limit) - int(start)) // int(delta)), 0)
    else:
        count = max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)
    return [(start + np.arange(count, dtype=dtype) * delta).astype(dtype, copy=False)]

"""Linear algebra and windowed kernels: Gemm, Einsum, Conv, ConvTranspose and pooling (im2col over
batch chunks within a byte budget)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sim.ops.registry import optional, register

IM2COL_BYTES_LIMIT = 256 * 1024 * 1024
CACHE_CHUNK_BYTES = 1024 * 1024


@register("Gemm")
def _gemm(inputs, attrs):
    a, b, c = inputs[0], inputs[1], optional(inputs, 2)
    if attrs.get("transA", 0):
        a = a.T
    if attrs.get("transB", 0):
        b = b.T
    alpha = attrs.get("alpha", 1.0)
    beta = attrs.get("beta", 1.0)
    result = a @ b
    if alpha != 1.0:
        result *= np.asarray(alpha, dtype=result.dtype)
    if c is not None and beta != 0.0:
        if beta == 1.0:
            result += c
        else:
            result += np.asarray(beta, dtype=result.dtype) * c
    return [result]


@register("Einsum")
def _einsum(inputs, attrs):
    equation = attrs["equation"].replace(" ", "")
    operands = [x for x in inputs if x is not None]
    return [np.ascontiguousarray(np.einsum(equation, *operands, optimize=len(operands) > 1))]


def _window_geometry(
    spatial_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    attrs: dict[str, Any],
    ceil_mode: bool = False,
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Begin pads, end pads, output shape and extra end padding needed by ceil_mode."""
    rank = len(spatial_shape)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    explicit = list(attrs.get("pads", [0] * (2 * rank)))
    pads_begin, pads_end, out_shape, extra_end = [], [], [], []
    for i in range(rank):
        size, stride = spatial_shape[i], strides[i]
        extent = (kernel_shape[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-size // stride)
            total = max((out - 1) * stride + extent - size, 0)
            small, large = total // 2, total - total // 2
            begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        elif auto_pad == "VALID":
            begin, end = 0, 0
            out = (size - extent) // stride + 1
        else:
            begin, end = explicit[i], explicit[i + rank]
            span = size + begin + end - extent
            if ceil_mode:
                out = -(-span // stride) + 1
                if (out - 1) * stride >= size + begin:
                    out -= 1
            else:
                out = span // stride + 1
        pads_begin.append(begin)
        pads_end.append(end)
        out_shape.append(max(out, 0))
        extra_end.append(max((out - 1) * stride + extent - (size + begin + end), 0))
    return pads_begin, pads_end, out_shape, extra_end


def _pad_spatial(x: np.ndarray, begin: Sequence[int], end: Sequence[int], value: Any) -> np.ndarray:
    """Constant-pad the trailing ``len(begin)`` axes."""
    if not any(begin) and not any(end):
        return x
    lead = x.ndim - len(begin)
    shape = x.shape[:lead] + tuple(n + b + e for n, b, e in zip(x.shape[lead:], begin, end))
    padded = np.empty(shape, dtype=x.dtype)
    interior = tuple(slice(b, b + n) for b, n in zip(begin, x.shape[lead:]))
    padded[(Ellipsis, *interior)] = x
    for i, (b, e) in enumerate(zip(begin, end)):
        prefix = (slice(None),) * (lead + i)
        if b:
            padded[(*prefix, slice(0, b))] = value
        if e:
            padded[(*prefix, slice(shape[lead + i] - e, None))] = value
    return padded


def _windows(
    padded: np.ndarray,
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    out_shape: Sequence[int],
) -> np.ndarray:
    """Strided view of shape (*leading, *out_shape, *kernel_shape) over the trailing axes."""
    rank = len(kernel_shape)
    extents = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations)]
    spatial_axes = tuple(range(padded.ndim - rank, padded.ndim))
    view = sliding_window_view(padded, extents, axis=spatial_axes)
    index = (
        [slice(None)] * (padded.ndim - rank)
        + [slice(0, max((o - 1) * s + 1, 0), s) for o, s in zip(out_shape, strides)]
        + [slice(None, None, d) for d in dilations]
    )
    return view[tuple(index)]


def _window_attrs(attrs: dict[str, Any], kernel_shape: Sequence[int]) -> tuple[list[int], list[int]]:
    rank = len(kernel_shape)
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    return strides, dilations


def _batch_chunks(batch: int, bytes_per_sample: int, budget: int):
    """Slices of the batch axis holding about ``budget`` bytes each."""
    step = max(1, budget // max(bytes_per_sample, 1))
    for start in range(0, batch, step):
        yield slice(start, min(start + step, batch))


def _kernel_offsets(kernel_shape: Sequence[int]) -> list[tuple[int, ...]]:
    return list(np.ndindex(*kernel_shape))


def _conv_depthwise(windows: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
    """Depthwise convolution: one broadcast multiply-add per kernel offset over the window view."""
    batch, channels = windows.shape[:2]
    rank = weight.ndim - 2
    multiplier = weight.shape[0] // channels
    kernel_shape = weight.shape[2:]
    offsets = _kernel_offsets(kernel_shape)
    grouped_weight = weight.reshape(channels, multiplier, *kernel_shape)
    spatial = (None,) * rank
    if multiplier == 1:
        accumulator = out
        patches = windows
        taps = [grouped_weight[(slice(None), 0, *offset, *spatial)] for offset in offsets]
    else:
        accumulator = out.reshape(batch, channels, multiplier, *out.shape[2:])
        patches = windows[:, :, None]
        taps = [grouped_weight[(slice(None), slice(None), *offset, *spatial)] for offset in offsets]
    bytes_per_sample = out[:1].nbytes
    chunk_capacity = min(batch, max(1, CACHE_CHUNK_BYTES // max(bytes_per_sample, 1)))
    product = np.empty((chunk_capacity, *accumulator.shape[1:]), accumulator.dtype)
    for chunk in _batch_chunks(batch, bytes_per_sample, CACHE_CHUNK_BYTES):
        target = accumulator[chunk]
        scratch = product[: target.shape[0]]
        view = patches[chunk]
        np.multiply(view[(Ellipsis, *offsets[0])], taps[0], out=target)
        for offset, tap in zip(offsets[1:], taps[1:]):
            np.multiply(view[(Ellipsis, *offset)], tap, out=scratch)
            target += scratch


def _reduce_windows(windows: np.ndarray, kernel_rank: int, combine: np.ufunc, out: np.ndarray) -> None:
    """Fold the trailing ``kernel_rank`` window axes into ``out`` with ``combine``, offset by offset."""
    offsets = _kernel_offsets(windows.shape[windows.ndim - kernel_rank:])
    for chunk in _batch_chunks(out.shape[0], out[:1].nbytes, CACHE_CHUNK_BYTES):
        target = out[chunk]
        view = windows[chunk]
        target[...] = view[(Ellipsis, *offsets[0])]
        for offset in offsets[1:]:
            combine(target, view[(Ellipsis, *offset)], out=target)


def _conv_grouped(windows: np.ndarray, weight: np.ndarray, group: int, out: np.ndarray) -> None:
    """Grouped convolution as one im2col matmul per group and batch chunk, reusing one column buffer."""
    batch, channels = windows.shape[:2]
    rank = weight.ndim - 2
    out_shape = out.shape[2:]
    channels_per_group = channels // group
    filters_per_group = weight.shape[0] // group
    window_volume = channels_per_group * math.prod(weight.shape[2:])
    positions = math.prod(out_shape)
    chunk = max(1, IM2COL_BYTES_LIMIT // max(window_volume * positions * windows.itemsize, 1))
    largest = min(chunk, batch)
    column_buffer = np.empty(window_volume * largest * positions, dtype=windows.dtype)
    product_buffer = np.empty(filters_per_group * largest * positions, dtype=windows.dtype)
    column_order = (1, *range(2 + rank, 2 + 2 * rank), 0, *range(2, 2 + rank))
    for g in range(group):
        channel_slice = slice(g * channels_per_group, (g + 1) * channels_per_group)
        filter_slice = slice(g * filters_per_group, (g + 1) * filters_per_group)
        matrix = weight[filter_slice].reshape(filters_per_group, window_volume)
        for start in range(0, batch, chunk):
            stop = min(start + chunk, batch)
            count = (stop - start) * positions
            source = windows[start:stop, channel_slice].transpose(column_order)
            columns = column_buffer[: window_volume * count].reshape(source.shape)
            np.copyto(columns, source)
            product = product_buffer[: filters_per_group * count].reshape(filters_per_group, count)
            np.matmul(matrix, columns.reshape(window_volume, count), out=product)
            per_sample = product.reshape(filters_per_group, stop - start, *out_shape)
            out[start:stop, filter_slice] = per_sample.swapaxes(0, 1)


@register("Conv")
def _conv(inputs, attrs):
    x, weight, bias = inputs[0], inputs[1], optional(inputs, 2)
    kernel_shape = list(attrs.get("kernel_shape", weight.shape[2:]))
    strides, dilations = _window_attrs(attrs, kernel_shape)
    group = attrs.get("group", 1)
    pads_begin, pads_end, out_shape, _ = _window_geometry(x.shape[2:], kernel_shape, strides, dilations, attrs)
    dtype = np.result_type(x, weight)
    padded = _pad_spatial(x.astype(dtype, copy=False), pads_begin, pads_end, 0)
    windows = _windows(padded, kernel_shape, strides, dilations, out_shape)
    out = np.empty((x.shape[0], weight.shape[0], *out_shape), dtype=dtype)
    if group == x.shape[1] and weight.shape[1] == 1 and group > 1:
        _conv_depthwise(windows, weight.astype(dtype, copy=False), out)
    else:
        _conv_grouped(windows, weight.astype(dtype, copy=False), group, out)
    if bias is not None:
        out += bias.astype(dtype, copy=False).reshape(-1, *([1] * len(out_shape)))
    return [out]


def _conv_transpose_pads(
    in_size: int,
    stride: int,
    extent: int,
    output_padding: int,
    attrs: dict[str, Any],
    index: int,
    rank: int,
    out_size: int | None,
) -> tuple[int, int]:
    """Begin/end crop of a transposed convolution, following onnxruntime's conventions."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    full = (in_size - 1) * stride + output_padding + extent
    if out_size is not None:
        total = max(full - out_size, 0)
        if auto_pad == "SAME_UPPER":
            return total // 2, total - total // 2
        return total - total // 2, total // 2
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = max(full - in_size * stride, 0)
        if auto_pad == "SAME_UPPER":
            return total // 2, total - total // 2
        return total - total // 2, total // 2
    if auto_pad == "VALID":
        return 0, 0
    pads = attrs.get("pads", [0] * (2 * rank))
    return pads[index], pads[index + rank]


@register("ConvTranspose")
def _conv_transpose(inputs, attrs):
    x, weight, bias = inputs[0], inputs[1], optional(inputs, 2)
    batch, channels = x.shape[:2]
    in_shape = x.shape[2:]
    rank = len(in_shape)
    kernel_shape = list(attrs.get("kernel_shape", weight.shape[2:]))
    strides, dilations = _window_attrs(attrs, kernel_shape)
    group = attrs.get("group", 1)
    output_padding = list(attrs.get("output_padding", [0] * rank))
    requested = attrs.get("output_shape")
    if requested is not None:
        requested = list(requested)[-rank:]
    dtype = np.result_type(x, weight)
    channels_per_group = channels // group
    filters_per_group = weight.shape[1]
    extents = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations)]
    full_shape = [(n - 1) * s + o + e for n, s, o, e in zip(in_shape, strides, output_padding, extents)]
    full = np.zeros((batch, filters_per_group * group, *full_shape), dtype=dtype)
    positions = math.prod(in_shape)
    for g in range(group):
        channel_slice = slice(g * channels_per_group, (g + 1) * channels_per_group)
        matrix = weight[channel_slice].astype(dtype, copy=False).reshape(channels_per_group, -1).T
        group_input = x[:, channel_slice].astype(dtype, copy=False).reshape(batch, channels_per_group, positions)
        columns = np.matmul(matrix, group_input)
        columns = columns.reshape(batch, filters_per_group, *kernel_shape, *in_shape)
        target = full[:, g * filters_per_group:(g + 1) * filters_per_group]
        for offset in _kernel_offsets(kernel_shape):
            region = tuple(
                slice(k * d, k * d + (n - 1) * s + 1, s)
                for k, d, n, s in zip(offset, dilations, in_shape, strides)
            )
            target[(slice(None), slice(None), *region)] += columns[(slice(None), slice(None), *offset)]
    crops = [
        _conv_transpose_pads(
            in_shape[i], strides[i], extents[i], output_padding[i], attrs, i, rank,
            None if requested is None else requested[i],
        )
        for i in range(rank)
    ]
    out = full[(slice(None), slice(None), *(slice(b, size - e) for (b, e), size in zip(crops, full_shape)))]
    out = np.ascontiguousarray(out)
    if bias is not None:
        out += bias.astype(dtype, copy=False).reshape(-1, *([1] * rank))
    return [out]


def _pool_setup(x: np.ndarray, attrs: dict[str, Any], pad_value: Any):
    kernel_shape = list(attrs["kernel_shape"])
    strides, dilations = _window_attrs(attrs, kernel_shape)
    geometry = _window_geometry(
        x.shape[2:], kernel_shape, strides, dilations, attrs, ceil_mode=bool(attrs.get("ceil_mode", 0))
    )
    pads_begin, pads_end, out_shape, extra_end = geometry
    padded = _pad_spatial(x, pads_begin, [e + extra for e, extra in zip(pads_end, extra_end)], pad_value)
    windows = _windows(padded, kernel_shape, strides, dilations, out_shape)
    return windows, kernel_shape, strides, dilations, geometry


def _lowest(dtype: np.dtype) -> Any:
    if np.issubdtype(dtype, np.floating):
        return -np.inf
    return np.iinfo(dtype).min


@register("MaxPool")
def _max_pool(inputs, attrs):
    x = inputs[0]
    windows, kernel_shape, *_ = _pool_setup(x, attrs, _lowest(x.dtype))
    out = np.empty(windows.shape[: windows.ndim - len(kernel_shape)], dtype=x.dtype)
    _reduce_windows(windows, len(kernel_shape), np.maximum, out)
    return [out]


@register("AveragePool")
def _average_pool(inputs, attrs):
    x = inputs[0]
    windows, kernel_shape, strides, dilations, geometry = _pool_setup(x, attrs, 0)
    pads_begin, pads_end, out_shape, extra_end = geometry
    rank = len(kernel_shape)
    out = np.empty(windows.shape[: windows.ndim - rank], dtype=x.dtype)
    _reduce_windows(windows, rank, np.add, out)
    if attrs.get("count_include_pad", 0):
        counted = np.ones([n + b + e for n, b, e in zip(x.shape[2:], pads_begin, pads_end)], dtype=x.dtype)
        counted = _pad_spatial(counted, [0] * rank, extra_end, 0)
    else:
        counted = np.ones(x.shape[2:], dtype=x.dtype)
        counted = _pad_spatial(counted, pads_begin, [e + extra for e, extra in zip(pads_end, extra_end)], 0)
    counts = _windows(counted, kernel_shape, strides, dilations, out_shape).sum(axis=tuple(range(rank, 2 * rank)))
    out /= counts
    return [out]


@register("GlobalAveragePool")
def _global_average_pool(inputs, attrs):
    x = inputs[0]
    return [np.ascontiguousarray(x.mean(axis=tuple(range(2, x.ndim)), keepdims=True))]


@register("GlobalMaxPool")
def _global_max_pool(inputs, attrs):
    x = inputs[0]
    return [np.ascontiguousarray(x.max(axis=tuple(range(2, x.ndim)), keepdims=True))]

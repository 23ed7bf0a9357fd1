"""NumPy kernels for standard ONNX operators (default domain, opset 11-21 semantics).

Each kernel takes the node's inputs in order (``None`` for an omitted optional
input) and the decoded attribute dict, and returns the list of outputs.
Floating-point inputs keep their dtype; float32 is never promoted to float64.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

Kernel = Callable[[list[np.ndarray | None], dict[str, Any]], list[np.ndarray]]

KERNELS: dict[str, Kernel] = {}

IM2COL_BYTES_LIMIT = 256 * 1024 * 1024
CACHE_CHUNK_BYTES = 1024 * 1024


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


def _register(*op_types: str) -> Callable[[Kernel], Kernel]:
    def decorator(kernel: Kernel) -> Kernel:
        for op_type in op_types:
            KERNELS[op_type] = kernel
        return kernel

    return decorator


def _optional(inputs: Sequence[np.ndarray | None], index: int) -> np.ndarray | None:
    """Input ``index`` or None when omitted or absent."""
    return inputs[index] if index < len(inputs) else None


def _int_list(values: np.ndarray | Sequence[int]) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


def axes_from(inputs: Sequence[np.ndarray | None], index: int, attrs: dict[str, Any]) -> list[int] | None:
    """Axes given as input ``index`` (newer opsets) or as the ``axes`` attribute."""
    axes_input = _optional(inputs, index)
    if axes_input is not None:
        return _int_list(axes_input)
    if "axes" in attrs:
        return list(attrs["axes"])
    return None


def _normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _scalar(value: np.ndarray) -> Any:
    return np.asarray(value).reshape(-1)[0]


# ---------------------------------------------------------------- elementwise


def _unary(function: Callable[[np.ndarray], np.ndarray]) -> Kernel:
    def kernel(inputs, attrs):
        return [np.asarray(function(inputs[0]))]

    return kernel


def _binary(function: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Kernel:
    def kernel(inputs, attrs):
        return [np.asarray(function(inputs[0], inputs[1]))]

    return kernel


def _variadic(function: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Kernel:
    def kernel(inputs, attrs):
        operands = [x for x in inputs if x is not None]
        return [np.array(functools.reduce(function, operands))]

    return kernel


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Div: true division for floats, truncation toward zero for integers."""
    if np.issubdtype(np.result_type(a, b), np.integer):
        quotient = np.floor_divide(a, b)
        inexact = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
        return quotient + inexact.astype(quotient.dtype)
    return np.divide(a, b)


def _power(inputs, attrs):
    base, exponent = inputs[0], inputs[1]
    if np.issubdtype(base.dtype, np.floating) and exponent.dtype != base.dtype:
        exponent = exponent.astype(base.dtype)
    return [np.asarray(np.power(base, exponent)).astype(base.dtype, copy=False)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    exp_neg_abs = np.exp(-np.abs(x))
    positive = 1 / (1 + exp_neg_abs)
    return np.where(x >= 0, positive, exp_neg_abs * positive)


_ERF_T = (9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3,
          7.00332514112805075473e3, 5.55923013010394962768e4)
_ERF_U = (1.0, 3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
          2.26290000613890934246e4, 4.92673942608635921086e4)
_ERFC_P = (2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
           4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
           9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2)
_ERFC_Q = (1.0, 1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
           9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
           1.65666309194161350182e3, 5.57535340817727675546e2)


def _polynomial(x: np.ndarray, coefficients: Sequence[float]) -> np.ndarray:
    result = np.full_like(x, coefficients[0])
    for coefficient in coefficients[1:]:
        result *= x
        result += coefficient
    return result


def erf(x: np.ndarray) -> np.ndarray:
    """Error function via the Cephes rational approximations, evaluated in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    magnitude = np.minimum(np.abs(x64), 8.0)
    squared = magnitude * magnitude
    small = magnitude * _polynomial(squared, _ERF_T) / _polynomial(squared, _ERF_U)
    large = 1.0 - np.exp(-squared) * _polynomial(magnitude, _ERFC_P) / _polynomial(magnitude, _ERFC_Q)
    result = np.where(magnitude <= 1.0, small, large)
    return np.copysign(result, x64).astype(np.result_type(x), copy=False)


def _gelu(inputs, attrs):
    x = inputs[0]
    if attrs.get("approximate", "none") == "tanh":
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)
        return [np.asarray(0.5 * x * (1 + np.tanh(inner)), dtype=x.dtype)]
    return [np.asarray(0.5 * x * (1 + erf(x * (1 / math.sqrt(2)))), dtype=x.dtype)]


for _op_type, _function in {
    "Neg": np.negative,
    "Abs": np.abs,
    "Sqrt": np.sqrt,
    "Reciprocal": np.reciprocal,
    "Exp": np.exp,
    "Log": np.log,
    "Tanh": np.tanh,
    "Sigmoid": _sigmoid,
    "Erf": erf,
    "Relu": lambda x: np.maximum(x, 0),
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Round": np.rint,
    "Sign": np.sign,
    "Not": np.logical_not,
    "Identity": lambda x: x,
    "Softplus": lambda x: np.logaddexp(x, 0),
    "HardSwish": lambda x: x * np.clip(x * (1 / 6) + 0.5, 0, 1),
    "Sin": np.sin,
    "Cos": np.cos,
    "Softsign": lambda x: x / (1 + np.abs(x)),
}.items():
    KERNELS[_op_type] = _unary(_function)

for _op_type, _function in {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _divide,
    "Equal": np.equal,
    "Greater": np.greater,
    "Less": np.less,
    "GreaterOrEqual": np.greater_equal,
    "LessOrEqual": np.less_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
    "MatMul": np.matmul,
}.items():
    KERNELS[_op_type] = _binary(_function)

KERNELS["Max"] = _variadic(np.maximum)
KERNELS["Min"] = _variadic(np.minimum)
KERNELS["Sum"] = _variadic(np.add)
KERNELS["Pow"] = _power
KERNELS["Gelu"] = _gelu


@_register("Mean")
def _mean(inputs, attrs):
    operands = [x for x in inputs if x is not None]
    total = functools.reduce(np.add, operands)
    return [np.asarray(total / len(operands), dtype=operands[0].dtype)]


@_register("Mod")
def _mod(inputs, attrs):
    a, b = inputs[0], inputs[1]
    if attrs.get("fmod", 0):
        return [np.asarray(np.fmod(a, b))]
    return [np.asarray(np.mod(a, b))]


@_register("LeakyRelu")
def _leaky_relu(inputs, attrs):
    x = inputs[0]
    alpha = attrs.get("alpha", 0.01)
    return [np.where(x >= 0, x, x * np.asarray(alpha, dtype=x.dtype))]


@_register("PRelu")
def _prelu(inputs, attrs):
    x, slope = inputs[0], inputs[1]
    return [np.asarray(np.where(x < 0, x * slope, x), dtype=x.dtype)]


@_register("Elu")
def _elu(inputs, attrs):
    x = inputs[0]
    alpha = np.asarray(attrs.get("alpha", 1.0), dtype=x.dtype)
    return [np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))]


@_register("Selu")
def _selu(inputs, attrs):
    x = inputs[0]
    alpha = np.asarray(attrs.get("alpha", 1.67326319217681884765625), dtype=x.dtype)
    gamma = np.asarray(attrs.get("gamma", 1.05070102214813232421875), dtype=x.dtype)
    return [np.where(x > 0, gamma * x, gamma * alpha * np.expm1(np.minimum(x, 0)))]


@_register("HardSigmoid")
def _hard_sigmoid(inputs, attrs):
    x = inputs[0]
    alpha = np.asarray(attrs.get("alpha", 0.2), dtype=x.dtype)
    beta = np.asarray(attrs.get("beta", 0.5), dtype=x.dtype)
    return [np.clip(alpha * x + beta, 0, 1).astype(x.dtype, copy=False)]


@_register("Clip")
def _clip(inputs, attrs):
    x = inputs[0]
    low = _optional(inputs, 1)
    high = _optional(inputs, 2)
    if low is None and "min" in attrs:
        low = np.asarray(attrs["min"], dtype=x.dtype)
    if high is None and "max" in attrs:
        high = np.asarray(attrs["max"], dtype=x.dtype)
    result = x
    if low is not None:
        result = np.maximum(result, np.asarray(low, dtype=x.dtype))
    if high is not None:
        result = np.minimum(result, np.asarray(high, dtype=x.dtype))
    return [np.asarray(result)]


@_register("Where")
def _where(inputs, attrs):
    return [np.where(inputs[0], inputs[1], inputs[2])]


@_register("Cast")
def _cast(inputs, attrs):
    dtype = onnx.helper.tensor_dtype_to_np_dtype(attrs["to"])
    return [np.asarray(inputs[0]).astype(dtype, copy=False)]


# ------------------------------------------------------------ linear algebra


@_register("Gemm")
def _gemm(inputs, attrs):
    a, b, c = inputs[0], inputs[1], _optional(inputs, 2)
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


@_register("Einsum")
def _einsum(inputs, attrs):
    equation = attrs["equation"].replace(" ", "")
    operands = [x for x in inputs if x is not None]
    return [np.ascontiguousarray(np.einsum(equation, *operands, optimize=len(operands) > 1))]


# ------------------------------------------------------- windowed operations


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


@_register("Conv")
def _conv(inputs, attrs):
    x, weight, bias = inputs[0], inputs[1], _optional(inputs, 2)
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


@_register("ConvTranspose")
def _conv_transpose(inputs, attrs):
    x, weight, bias = inputs[0], inputs[1], _optional(inputs, 2)
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


@_register("MaxPool")
def _max_pool(inputs, attrs):
    x = inputs[0]
    windows, kernel_shape, *_ = _pool_setup(x, attrs, _lowest(x.dtype))
    out = np.empty(windows.shape[: windows.ndim - len(kernel_shape)], dtype=x.dtype)
    _reduce_windows(windows, len(kernel_shape), np.maximum, out)
    return [out]


@_register("AveragePool")
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


@_register("GlobalAveragePool")
def _global_average_pool(inputs, attrs):
    x = inputs[0]
    return [np.ascontiguousarray(x.mean(axis=tuple(range(2, x.ndim)), keepdims=True))]


@_register("GlobalMaxPool")
def _global_max_pool(inputs, attrs):
    x = inputs[0]
    return [np.ascontiguousarray(x.max(axis=tuple(range(2, x.ndim)), keepdims=True))]


# ------------------------------------------------------------- normalization


@_register("BatchNormalization")
def _batch_normalization(inputs, attrs):
    x, scale, bias, mean, variance = inputs[:5]
    epsilon = attrs.get("epsilon", 1e-5)
    broadcast = (-1,) + (1,) * (x.ndim - 2)
    factor = (scale / np.sqrt(variance + np.asarray(epsilon, dtype=variance.dtype))).astype(x.dtype, copy=False)
    shift = (bias - mean * factor).astype(x.dtype, copy=False)
    return [x * factor.reshape(broadcast) + shift.reshape(broadcast)]


@_register("LayerNormalization")
def _layer_normalization(inputs, attrs):
    x, scale, bias = inputs[0], inputs[1], _optional(inputs, 2)
    axis = _normalize_axis(attrs.get("axis", -1), x.ndim)
    epsilon = attrs.get("epsilon", 1e-5)
    axes = tuple(range(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(axis=axes, keepdims=True)
    inverse_std = 1 / np.sqrt(variance + np.asarray(epsilon, dtype=x.dtype))
    y = centered * inverse_std * scale
    if bias is not None:
        y += bias
    return [y.astype(x.dtype, copy=False), mean, inverse_std]


def _softmax_shifted(x: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    return x - x.max(axis=axis, keepdims=True)


def softmax_axes(attrs: dict, rank: int) -> tuple[int, ...]:
    """The axes a Softmax or LogSoftmax normalises over: its axis from opset 13 (default -1); before, the
    input is taken as 2-D at `axis` (default 1), so every axis from it on. `opset` in attrs: the model's
    (the engine adds it; 13 when absent)."""
    if attrs.get("opset", 13) < 13:
        return tuple(range(_normalize_axis(attrs.get("axis", 1), rank), rank))
    return (_normalize_axis(attrs.get("axis", -1), rank),)


@_register("Softmax")
def _softmax(inputs, attrs):
    x = inputs[0]
    axes = softmax_axes(attrs, x.ndim)
    exponentials = np.exp(_softmax_shifted(x, axes))
    exponentials /= exponentials.sum(axis=axes, keepdims=True)
    return [exponentials]


@_register("LogSoftmax")
def _log_softmax(inputs, attrs):
    x = inputs[0]
    axes = softmax_axes(attrs, x.ndim)
    shifted = _softmax_shifted(x, axes)
    return [shifted - np.log(np.exp(shifted).sum(axis=axes, keepdims=True))]


# ---------------------------------------------------------------- reductions


def _reduction(function: Callable[..., np.ndarray], axes_input_index: int = 1) -> Kernel:
    def kernel(inputs, attrs):
        x = inputs[0]
        axes = axes_from(inputs, axes_input_index, attrs)
        keepdims = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.ndim))
        axis = tuple(_normalize_axis(a, x.ndim) for a in axes)
        return [np.asarray(function(x, axis=axis, keepdims=keepdims)).astype(x.dtype, copy=False)]

    return kernel


KERNELS["ReduceMean"] = _reduction(np.mean)
KERNELS["ReduceSum"] = _reduction(np.sum)
KERNELS["ReduceMax"] = _reduction(np.max)
KERNELS["ReduceMin"] = _reduction(np.min)
KERNELS["ReduceProd"] = _reduction(np.prod)
KERNELS["ReduceL2"] = _reduction(lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)))
KERNELS["ReduceSumSquare"] = _reduction(lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims))


def _arg_kernel(function: Callable[..., np.ndarray]) -> Kernel:
    def kernel(inputs, attrs):
        x = inputs[0]
        axis = _normalize_axis(attrs.get("axis", 0), x.ndim)
        if attrs.get("select_last_index", 0):
            indices = x.shape[axis] - 1 - function(np.flip(x, axis=axis), axis=axis)
        else:
            indices = function(x, axis=axis)
        indices = np.asarray(indices, dtype=np.int64)
        if attrs.get("keepdims", 1):
            indices = np.expand_dims(indices, axis)
        return [indices]

    return kernel


KERNELS["ArgMax"] = _arg_kernel(np.argmax)
KERNELS["ArgMin"] = _arg_kernel(np.argmin)


# ------------------------------------------------------------ shape handling


@_register("Flatten")
def _flatten(inputs, attrs):
    x = inputs[0]
    axis = _normalize_axis(attrs.get("axis", 1), x.ndim)
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@_register("Reshape")
def _reshape(inputs, attrs):
    x = inputs[0]
    requested = _int_list(inputs[1]) if _optional(inputs, 1) is not None else list(attrs["shape"])
    if not attrs.get("allowzero", 0):
        requested = [x.shape[i] if d == 0 else d for i, d in enumerate(requested)]
    return [x.reshape(requested)]


@_register("Transpose")
def _transpose(inputs, attrs):
    x = inputs[0]
    permutation = attrs.get("perm")
    return [np.ascontiguousarray(np.transpose(x, permutation))]


@_register("Concat")
def _concat(inputs, attrs):
    operands = [x for x in inputs if x is not None]
    return [np.concatenate(operands, axis=attrs["axis"])]


@_register("Split")
def _split(inputs, attrs):
    x = inputs[0]
    axis = _normalize_axis(attrs.get("axis", 0), x.ndim)
    size = x.shape[axis]
    split_input = _optional(inputs, 1)
    if split_input is not None:
        sizes = _int_list(split_input)
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


@_register("Slice")
def _slice(inputs, attrs):
    x = inputs[0]
    if _optional(inputs, 1) is not None:
        starts = _int_list(inputs[1])
        ends = _int_list(inputs[2])
        axes_input = _optional(inputs, 3)
        steps_input = _optional(inputs, 4)
        axes = _int_list(axes_input) if axes_input is not None else list(range(len(starts)))
        steps = _int_list(steps_input) if steps_input is not None else [1] * len(starts)
    else:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _normalize_axis(axis, x.ndim)
        index[axis] = _slice_bounds(start, end, step, x.shape[axis])
    return [x[tuple(index)]]


@_register("Gather")
def _gather(inputs, attrs):
    x, indices = inputs[0], inputs[1]
    axis = _normalize_axis(attrs.get("axis", 0), x.ndim)
    return [np.take(x, indices.astype(np.int64, copy=False), axis=axis)]


@_register("Squeeze")
def _squeeze(inputs, attrs):
    x = inputs[0]
    axes = axes_from(inputs, 1, attrs)
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(_normalize_axis(a, x.ndim) for a in axes))]


@_register("Unsqueeze")
def _unsqueeze(inputs, attrs):
    x = inputs[0]
    axes = axes_from(inputs, 1, attrs)
    rank = x.ndim + len(axes)
    return [np.expand_dims(x, tuple(_normalize_axis(a, rank) for a in axes))]


@_register("Dropout")
def _dropout(inputs, attrs):
    x = inputs[0]
    training = _optional(inputs, 2)
    if training is not None and bool(_scalar(training)):
        raise NotImplementedError("Dropout in training mode is not supported")
    return [x, np.broadcast_to(np.True_, x.shape)]


@_register("Pad")
def _pad(inputs, attrs):
    x = inputs[0]
    mode = attrs.get("mode", "constant")
    pads_input = _optional(inputs, 1)
    if pads_input is not None:
        pads = _int_list(pads_input)
        value_input = _optional(inputs, 2)
        value = _scalar(value_input) if value_input is not None and value_input.size else 0
        axes = axes_from(inputs, 3, {})
    else:
        pads = list(attrs["pads"])
        value = attrs.get("value", 0.0)
        axes = None
    if axes is None:
        axes = list(range(x.ndim))
    axes = [_normalize_axis(a, x.ndim) for a in axes]
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


@_register("Shape")
def _shape(inputs, attrs):
    shape = np.asarray(inputs[0].shape, dtype=np.int64)
    start = attrs.get("start", 0)
    end = attrs.get("end")
    return [np.ascontiguousarray(shape[start:end])]


@_register("Size")
def _size(inputs, attrs):
    return [np.asarray(inputs[0].size, dtype=np.int64)]


@_register("Constant")
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


@_register("ConstantOfShape")
def _constant_of_shape(inputs, attrs):
    fill = attrs.get("value")
    if fill is None:
        fill = np.zeros(1, dtype=np.float32)
    fill = np.asarray(fill)
    return [np.full(_int_list(inputs[0]), fill.reshape(-1)[0], dtype=fill.dtype)]


@_register("Expand")
def _expand(inputs, attrs):
    x = inputs[0]
    shape = np.broadcast_shapes(x.shape, tuple(_int_list(inputs[1])))
    return [np.array(np.broadcast_to(x, shape))]


@_register("Tile")
def _tile(inputs, attrs):
    return [np.tile(inputs[0], _int_list(inputs[1]))]


@_register("Range")
def _range(inputs, attrs):
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs[:3])
    dtype = start.dtype
    if np.issubdtype(dtype, np.integer):
        count = max(-(-(int(limit) - int(start)) // int(delta)), 0)
    else:
        count = max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)
    return [(start + np.arange(count, dtype=dtype) * delta).astype(dtype, copy=False)]

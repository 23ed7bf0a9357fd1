"""Kernels that reduce over axes: normalisations (BatchNormalization, LayerNormalization, Softmax) and
the Reduce and Arg families."""
from __future__ import annotations

from typing import Callable

import numpy as np

from sim.ops.registry import KERNELS, Kernel, axes_from, normalize_axis, optional, register


@register("BatchNormalization")
def _batch_normalization(inputs, attrs):
    x, scale, bias, mean, variance = inputs[:5]
    epsilon = attrs.get("epsilon", 1e-5)
    broadcast = (-1,) + (1,) * (x.ndim - 2)
    factor = (scale / np.sqrt(variance + np.asarray(epsilon, dtype=variance.dtype))).astype(x.dtype, copy=False)
    shift = (bias - mean * factor).astype(x.dtype, copy=False)
    return [x * factor.reshape(broadcast) + shift.reshape(broadcast)]


@register("LayerNormalization")
def _layer_normalization(inputs, attrs):
    x, scale, bias = inputs[0], inputs[1], optional(inputs, 2)
    axis = normalize_axis(attrs.get("axis", -1), x.ndim)
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
        return tuple(range(normalize_axis(attrs.get("axis", 1), rank), rank))
    return (normalize_axis(attrs.get("axis", -1), rank),)


@register("Softmax")
def _softmax(inputs, attrs):
    x = inputs[0]
    axes = softmax_axes(attrs, x.ndim)
    exponentials = np.exp(_softmax_shifted(x, axes))
    exponentials /= exponentials.sum(axis=axes, keepdims=True)
    return [exponentials]


@register("LogSoftmax")
def _log_softmax(inputs, attrs):
    x = inputs[0]
    axes = softmax_axes(attrs, x.ndim)
    shifted = _softmax_shifted(x, axes)
    return [shifted - np.log(np.exp(shifted).sum(axis=axes, keepdims=True))]


def _reduction(function: Callable[..., np.ndarray], axes_input_index: int = 1) -> Kernel:
    def kernel(inputs, attrs):
        x = inputs[0]
        axes = axes_from(inputs, axes_input_index, attrs)
        keepdims = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.ndim))
        axis = tuple(normalize_axis(a, x.ndim) for a in axes)
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
        axis = normalize_axis(attrs.get("axis", 0), x.ndim)
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

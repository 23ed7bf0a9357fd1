"""Elementwise kernels: arithmetic, comparisons, activations, Clip, Where, Cast."""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np
import onnx

from sim.ops.registry import KERNELS, Kernel, optional, register


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


@register("Mean")
def _mean(inputs, attrs):
    operands = [x for x in inputs if x is not None]
    total = functools.reduce(np.add, operands)
    return [np.asarray(total / len(operands), dtype=operands[0].dtype)]


@register("Mod")
def _mod(inputs, attrs):
    a, b = inputs[0], inputs[1]
    if attrs.get("fmod", 0):
        return [np.asarray(np.fmod(a, b))]
    return [np.asarray(np.mod(a, b))]


@register("LeakyRelu")
def _leaky_relu(inputs, attrs):
    x = inputs[0]
    alpha = attrs.get("alpha", 0.01)
    return [np.where(x >= 0, x, x * np.asarray(alpha, dtype=x.dtype))]


@register("PRelu")
def _prelu(inputs, attrs):
    x, slope = inputs[0], inputs[1]
    return [np.asarray(np.where(x < 0, x * slope, x), dtype=x.dtype)]


@register("Elu")
def _elu(inputs, attrs):
    x = inputs[0]
    alpha = np.asarray(attrs.get("alpha", 1.0), dtype=x.dtype)
    return [np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))]


@register("Selu")
def _selu(inputs, attrs):
    x = inputs[0]
    alpha = np.asarray(attrs.get("alpha", 1.67326319217681884765625), dtype=x.dtype)
    gamma = np.asarray(attrs.get("gamma", 1.05070102214813232421875), dtype=x.dtype)
    return [np.where(x > 0, gamma * x, gamma * alpha * np.expm1(np.minimum(x, 0)))]


@register("HardSigmoid")
def _hard_sigmoid(inputs, attrs):
    x = inputs[0]
    alpha = np.asarray(attrs.get("alpha", 0.2), dtype=x.dtype)
    beta = np.asarray(attrs.get("beta", 0.5), dtype=x.dtype)
    return [np.clip(alpha * x + beta, 0, 1).astype(x.dtype, copy=False)]


@register("Clip")
def _clip(inputs, attrs):
    x = inputs[0]
    low = optional(inputs, 1)
    high = optional(inputs, 2)
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


@register("Where")
def _where(inputs, attrs):
    return [np.where(inputs[0], inputs[1], inputs[2])]


@register("Cast")
def _cast(inputs, attrs):
    dtype = onnx.helper.tensor_dtype_to_np_dtype(attrs["to"])
    return [np.asarray(inputs[0]).astype(dtype, copy=False)]

"""Each NumPy kernel in sim.ops against onnxruntime on a one-node model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ground.errors import SpikingModelError
from sim import ops
from sim.ops import linear
from sim.engine import NumpyEngine
from sim.model import load_spiking
from sim.ort import OrtEngine

RNG = np.random.default_rng(20240611)


@dataclass
class Var:
    """A graph input."""

    value: np.ndarray


@dataclass
class Const:
    """An initializer."""

    value: np.ndarray


def rand(*shape: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return RNG.uniform(low, high, size=shape).astype(np.float32)


def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def scalar(value: float, dtype: type) -> np.ndarray:
    return np.asarray(value, dtype=dtype)


def build_node(op_type, operands, attrs, num_outputs):
    input_names = ["" if operand is None else f"in{i}" for i, operand in enumerate(operands)]
    output_names = [f"out{i}" for i in range(num_outputs)]
    return helper.make_node(op_type, input_names, output_names, **attrs)


def run_onnxruntime(node, operands, outputs, opset):
    graph_inputs, initializers, feeds = [], [], {}
    for name, operand in zip(node.input, operands):
        if isinstance(operand, Var):
            dtype = helper.np_dtype_to_tensor_dtype(operand.value.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, dtype, operand.value.shape))
            feeds[name] = operand.value
        elif isinstance(operand, Const):
            initializers.append(numpy_helper.from_array(operand.value, name))
    graph_outputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), [None] * value.ndim)
        for name, value in zip(node.output, outputs)
    ]
    graph = helper.make_graph([node], "single_node", graph_inputs, graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 10
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def check(op_type: str, operands: list, attrs: dict[str, Any] | None = None, opset: int = 18, num_outputs: int = 1):
    """Run the kernel and onnxruntime on the same one-node model and compare every output."""
    node = build_node(op_type, operands, attrs or {}, num_outputs)
    values = [None if operand is None else operand.value for operand in operands]
    actual = ops.KERNELS[op_type](values, ops.attributes(node))[:num_outputs]
    assert len(actual) == num_outputs
    expected = run_onnxruntime(node, operands, actual, opset)
    for got, want in zip(actual, expected):
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
        assert got.shape == want.shape, (got.shape, want.shape)
        if np.issubdtype(want.dtype, np.floating):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(got, want)
    return actual


def case(op_type, operands, attrs=None, opset=18, num_outputs=1, id=None):
    return pytest.param(op_type, operands, attrs or {}, opset, num_outputs, id=id)


def run_cases(cases):
    return pytest.mark.parametrize("op_type, operands, attrs, opset, num_outputs", cases)


CONV_CASES = [
    case("Conv", [Var(normal(2, 4, 9, 9)), Const(normal(6, 4, 3, 3, scale=0.3)), Const(normal(6))], id="basic"),
    case("Conv", [Var(normal(2, 4, 9, 9)), Const(normal(6, 4, 3, 3, scale=0.3))], id="no_bias"),
    case(
        "Conv",
        [Var(normal(2, 4, 9, 9)), Const(normal(6, 2, 3, 3, scale=0.3)), Const(normal(6))],
        {"group": 2},
        id="groups2",
    ),
    case(
        "Conv",
        [Var(normal(2, 4, 9, 9)), Const(normal(4, 1, 3, 3)), Const(normal(4))],
        {"group": 4, "pads": [1, 1, 1, 1]},
        id="depthwise",
    ),
    case(
        "Conv",
        [Var(normal(2, 4, 9, 8)), Const(normal(8, 1, 3, 3)), Const(normal(8))],
        {"group": 4, "strides": [2, 2], "pads": [1, 0, 1, 2]},
        id="depthwise_multiplier2_stride2",
    ),
    case(
        "Conv",
        [Var(normal(2, 3, 11, 10)), Const(normal(5, 3, 3, 3, scale=0.3)), Const(normal(5))],
        {"strides": [2, 2], "pads": [1, 1, 1, 1]},
        id="stride2",
    ),
    case(
        "Conv",
        [Var(normal(2, 3, 11, 10)), Const(normal(5, 3, 3, 3, scale=0.3))],
        {"dilations": [2, 2], "pads": [2, 2, 2, 2]},
        id="dilation2",
    ),
    case(
        "Conv",
        [Var(normal(2, 3, 11, 10)), Const(normal(5, 3, 3, 2, scale=0.3))],
        {"pads": [0, 1, 2, 0], "strides": [1, 2]},
        id="asymmetric_pads",
    ),
    case(
        "Conv",
        [Var(normal(2, 3, 11, 10)), Const(normal(5, 3, 3, 3, scale=0.3))],
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        id="same_upper",
    ),
    case(
        "Conv",
        [Var(normal(2, 3, 10, 10)), Const(normal(5, 3, 4, 4, scale=0.3))],
        {"auto_pad": "SAME_LOWER", "strides": [1, 1]},
        id="same_lower",
    ),
    case(
        "Conv",
        [Var(normal(2, 3, 11, 10)), Const(normal(5, 3, 3, 3, scale=0.3))],
        {"auto_pad": "VALID", "strides": [2, 3]},
        id="valid",
    ),
    case(
        "Conv",
        [Var(normal(2, 8, 6, 6)), Const(normal(4, 8, 1, 1, scale=0.3)), Const(normal(4))],
        {"kernel_shape": [1, 1]},
        id="pointwise",
    ),
    case(
        "Conv",
        [Var(normal(3, 3, 20)), Const(normal(5, 3, 3, scale=0.3)), Const(normal(5))],
        {"strides": [2], "pads": [1, 2]},
        id="conv1d",
    ),
    case(
        "Conv",
        [Var(normal(3, 4, 20)), Const(normal(4, 1, 5)), Const(normal(4))],
        {"group": 4, "dilations": [2], "pads": [4, 4]},
        id="depthwise1d",
    ),
    case(
        "Conv",
        [Var(normal(2, 64, 7, 7)), Const(normal(32, 64, 3, 3, scale=1 / 24)), Const(normal(32))],
        {"pads": [1, 1, 1, 1]},
        id="wide_fan_in",
    ),
    case(
        "Conv",
        [Var(normal(1, 2, 5, 6, 7)), Const(normal(3, 2, 2, 3, 2, scale=0.3)), Const(normal(3))],
        {"pads": [1, 0, 1, 0, 1, 1]},
        id="conv3d",
    ),
    case(
        "ConvTranspose",
        [Var(normal(2, 3, 5, 4)), Const(normal(3, 4, 3, 3, scale=0.3)), Const(normal(4))],
        id="transpose_basic",
    ),
    case(
        "ConvTranspose",
        [Var(normal(2, 3, 5, 4)), Const(normal(3, 4, 3, 3, scale=0.3))],
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
        id="transpose_stride2",
    ),
    case(
        "ConvTranspose",
        [Var(normal(2, 3, 5, 4)), Const(normal(3, 2, 3, 2, scale=0.3))],
        {"strides": [2, 3], "dilations": [2, 1], "pads": [0, 1, 2, 0]},
        id="transpose_dilation",
    ),
    case(
        "ConvTranspose",
        [Var(normal(2, 4, 5, 4)), Const(normal(4, 3, 3, 3, scale=0.3)), Const(normal(6))],
        {"group": 2, "strides": [2, 2]},
        id="transpose_groups2",
    ),
    case(
        "ConvTranspose",
        [Var(normal(2, 3, 5, 4)), Const(normal(3, 2, 3, 3, scale=0.3))],
        {"strides": [2, 2], "output_shape": [10, 8]},
        id="transpose_output_shape",
    ),
    case(
        "ConvTranspose",
        [Var(normal(2, 3, 5, 4)), Const(normal(3, 2, 3, 3, scale=0.3))],
        {"strides": [2, 2], "output_shape": [9, 8], "auto_pad": "SAME_UPPER"},
        id="transpose_output_shape_same_upper",
    ),
    case(
        "ConvTranspose",
        [Var(normal(2, 3, 5, 4)), Const(normal(3, 2, 4, 3, scale=0.3))],
        {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
        id="transpose_same_upper",
    ),
    case(
        "ConvTranspose",
        [Var(normal(2, 3, 5, 4)), Const(normal(3, 2, 4, 3, scale=0.3))],
        {"strides": [2, 2], "auto_pad": "SAME_LOWER"},
        id="transpose_same_lower",
    ),
    case(
        "ConvTranspose",
        [Var(normal(2, 3, 7)), Const(normal(3, 2, 3, scale=0.3))],
        {"strides": [2]},
        id="transpose_1d",
    ),
]


@run_cases(CONV_CASES)
def test_convolution(op_type, operands, attrs, opset, num_outputs):
    result = check(op_type, operands, attrs, opset, num_outputs)[0]
    assert result.flags.c_contiguous


def test_conv_chunked_batches_match_unchunked(monkeypatch):
    x = normal(7, 4, 9, 9)
    weight = normal(6, 2, 3, 3, scale=0.3)
    attrs = {"group": 2, "pads": [1, 1, 1, 1], "strides": [2, 1]}
    whole = ops.KERNELS["Conv"]([x, weight, None], attrs)[0]
    monkeypatch.setattr(linear, "IM2COL_BYTES_LIMIT", 1)
    chunked = ops.KERNELS["Conv"]([x, weight, None], attrs)[0]
    np.testing.assert_array_equal(whole, chunked)


@pytest.mark.parametrize(
    "op_type, inputs, attrs",
    [
        ("Conv", [normal(5, 4, 9, 8), normal(4, 1, 3, 3)], {"group": 4, "pads": [1, 1, 1, 1]}),
        ("Conv", [normal(5, 2, 9, 8), normal(6, 1, 3, 3)], {"group": 2, "strides": [2, 2]}),
        ("MaxPool", [normal(5, 3, 9, 9)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ("AveragePool", [normal(5, 3, 9, 9)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ],
)
def test_cache_chunking_matches_single_chunk(monkeypatch, op_type, inputs, attrs):
    whole = ops.KERNELS[op_type](inputs, attrs)[0]
    monkeypatch.setattr(linear, "CACHE_CHUNK_BYTES", 1)
    chunked = ops.KERNELS[op_type](inputs, attrs)[0]
    np.testing.assert_array_equal(whole, chunked)


POOL_CASES = [
    case("MaxPool", [Var(normal(2, 3, 8, 8))], {"kernel_shape": [2, 2], "strides": [2, 2]}, id="max_2x2"),
    case(
        "MaxPool",
        [Var(normal(2, 3, 9, 9))],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        id="max_pads",
    ),
    case(
        "MaxPool",
        [Var(normal(2, 3, 10, 9))],
        {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
        id="max_ceil",
    ),
    case(
        "MaxPool",
        [Var(normal(2, 3, 10, 9))],
        {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1], "ceil_mode": 1},
        id="max_ceil_pads",
    ),
    case(
        "MaxPool",
        [Var(normal(2, 3, 10, 9))],
        {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [1, 1]},
        id="max_dilation",
    ),
    case(
        "MaxPool",
        [Var(normal(2, 3, 10, 9))],
        {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
        id="max_same_upper",
    ),
    case(
        "MaxPool",
        [Var(normal(2, 3, 10, 9))],
        {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
        id="max_same_lower",
    ),
    case("MaxPool", [Var(normal(2, 3, 15))], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, id="max_1d"),
    case("AveragePool", [Var(normal(2, 3, 8, 8))], {"kernel_shape": [2, 2], "strides": [2, 2]}, id="avg_2x2"),
    case(
        "AveragePool",
        [Var(normal(2, 3, 9, 9))],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        id="avg_pads_exclude",
    ),
    case(
        "AveragePool",
        [Var(normal(2, 3, 9, 9))],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        id="avg_pads_include",
    ),
    case(
        "AveragePool",
        [Var(normal(2, 3, 10, 9))],
        {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
        id="avg_ceil",
    ),
    case(
        "AveragePool",
        [Var(normal(2, 3, 10, 9))],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 1], "ceil_mode": 1, "count_include_pad": 1},
        id="avg_ceil_include",
    ),
    case(
        "AveragePool",
        [Var(normal(2, 3, 10, 9))],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 1], "ceil_mode": 1},
        id="avg_ceil_exclude",
    ),
    case(
        "AveragePool",
        [Var(normal(2, 3, 10, 9))],
        {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
        id="avg_same_upper",
    ),
    case(
        "AveragePool",
        [Var(normal(2, 3, 15))],
        {"kernel_shape": [4], "strides": [3], "pads": [2, 1], "count_include_pad": 1},
        id="avg_1d",
    ),
    case(
        "AveragePool",
        [Var(normal(2, 3, 10, 9))],
        {"kernel_shape": [2, 3], "dilations": [2, 1], "pads": [1, 1, 1, 1]},
        opset=19,
        id="avg_dilation",
    ),
    case(
        "MaxPool",
        [Var(normal(2, 3, 4, 5, 6))],
        {"kernel_shape": [2, 2, 3], "strides": [2, 1, 2], "pads": [0, 1, 1, 1, 0, 1]},
        id="max_3d",
    ),
    case("GlobalAveragePool", [Var(normal(2, 3, 7, 5))], id="global_avg"),
    case("GlobalMaxPool", [Var(normal(2, 3, 7, 5))], id="global_max"),
]


@run_cases(POOL_CASES)
def test_pooling(op_type, operands, attrs, opset, num_outputs):
    result = check(op_type, operands, attrs, opset, num_outputs)[0]
    assert result.flags.c_contiguous


LINEAR_CASES = [
    case("Gemm", [Var(normal(4, 5)), Const(normal(5, 3)), Const(normal(3))], id="gemm_bias_vector"),
    case(
        "Gemm",
        [Var(normal(4, 5)), Const(normal(3, 5)), Const(normal(4, 3))],
        {"transB": 1, "alpha": 0.5, "beta": 2.0},
        id="gemm_transB_alpha_beta",
    ),
    case("Gemm", [Var(normal(5, 4)), Const(normal(5, 3))], {"transA": 1}, id="gemm_transA_no_c"),
    case(
        "Gemm",
        [Var(normal(5, 4)), Const(normal(3, 5)), Const(normal(1))],
        {"transA": 1, "transB": 1, "beta": 0.0},
        id="gemm_beta_zero",
    ),
    case(
        "Gemm",
        [Var(normal(4, 5)), Const(normal(5, 3)), Const(normal(1, 3))],
        {"alpha": -1.5},
        id="gemm_row_bias",
    ),
    case("MatMul", [Var(normal(4, 5)), Const(normal(5, 3))], id="matmul_2d"),
    case("MatMul", [Var(normal(2, 4, 5)), Const(normal(5, 3))], id="matmul_batched"),
    case("MatMul", [Var(normal(2, 1, 4, 5)), Var(normal(3, 5, 2))], id="matmul_broadcast"),
    case("MatMul", [Var(normal(5)), Const(normal(5, 3))], id="matmul_vector_left"),
    case("MatMul", [Var(normal(2, 4, 5)), Const(normal(5))], id="matmul_vector_right"),
    case("Einsum", [Var(normal(2, 3, 4)), Var(normal(2, 4, 5))], {"equation": "bij,bjk->bik"}, id="einsum_bmm"),
    case("Einsum", [Var(normal(3, 4))], {"equation": "ij->ji"}, id="einsum_transpose"),
    case("Einsum", [Var(normal(2, 3, 4)), Const(normal(4))], {"equation": "...j, j -> ..."}, id="einsum_ellipsis"),
]


@run_cases(LINEAR_CASES)
def test_linear_algebra(op_type, operands, attrs, opset, num_outputs):
    check(op_type, operands, attrs, opset, num_outputs)


POSITIVE = rand(3, 4, low=0.1, high=3.0)
HALVES = np.asarray([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -1.2, 1.7, 0.0], dtype=np.float32)
BOOLS_A = RNG.random((3, 4)) > 0.5
BOOLS_B = RNG.random((4,)) > 0.5
INTS_A = RNG.integers(-9, 10, size=(3, 4)).astype(np.int64)
INTS_B = np.asarray([3, -2, 5, -4], dtype=np.int64)

ELEMENTWISE_CASES = [
    case("Add", [Var(normal(3, 4)), Const(normal(4))], id="add"),
    case("Sub", [Var(normal(3, 1)), Var(normal(1, 4))], id="sub"),
    case("Mul", [Var(normal(2, 3, 4)), Const(normal(3, 1))], id="mul"),
    case("Div", [Var(normal(3, 4)), Const(rand(4, low=0.5, high=2.0))], id="div"),
    case("Div", [Var(INTS_A), Const(INTS_B)], id="div_int"),
    case("Mod", [Var(INTS_A), Const(INTS_B)], id="mod_int"),
    case("Mod", [Var(normal(3, 4)), Const(rand(4, low=0.5, high=2.0))], {"fmod": 1}, id="mod_fmod"),
    case("Pow", [Var(POSITIVE), Const(np.asarray(2.5, dtype=np.float32))], id="pow"),
    case("Pow", [Var(normal(3, 4)), Const(np.asarray(3, dtype=np.int64))], id="pow_int_exponent"),
    case("Neg", [Var(normal(3, 4))], id="neg"),
    case("Abs", [Var(normal(3, 4))], id="abs"),
    case("Sqrt", [Var(POSITIVE)], id="sqrt"),
    case("Reciprocal", [Var(POSITIVE)], id="reciprocal"),
    case("Exp", [Var(normal(3, 4))], id="exp"),
    case("Log", [Var(POSITIVE)], id="log"),
    case("Erf", [Var(normal(5, 40, scale=2.0))], id="erf"),
    case("Tanh", [Var(normal(3, 4, scale=3.0))], id="tanh"),
    case("Sigmoid", [Var(normal(3, 40, scale=6.0))], id="sigmoid"),
    case("Sin", [Var(normal(3, 4))], id="sin"),
    case("Cos", [Var(normal(3, 4))], id="cos"),
    case("Relu", [Var(normal(3, 4))], id="relu"),
    case("LeakyRelu", [Var(normal(3, 4))], id="leaky_relu_default"),
    case("LeakyRelu", [Var(normal(3, 4))], {"alpha": 0.2}, id="leaky_relu_alpha"),
    case("PRelu", [Var(normal(2, 3, 4, 4)), Const(rand(3, 1, 1))], id="prelu"),
    case("Elu", [Var(normal(3, 4))], {"alpha": 0.7}, id="elu"),
    case("Selu", [Var(normal(3, 4))], id="selu"),
    case("HardSigmoid", [Var(normal(3, 4, scale=4.0))], {"alpha": 0.3}, id="hard_sigmoid"),
    case("HardSwish", [Var(normal(3, 4, scale=4.0))], id="hard_swish"),
    case("Softplus", [Var(normal(3, 4, scale=10.0))], id="softplus"),
    case("Softsign", [Var(normal(3, 4))], id="softsign"),
    case("Gelu", [Var(normal(3, 40, scale=2.0))], opset=20, id="gelu"),
    case("Gelu", [Var(normal(3, 40, scale=2.0))], {"approximate": "tanh"}, opset=20, id="gelu_tanh"),
    case("Sign", [Var(np.asarray([-2.0, 0.0, 3.0], dtype=np.float32))], id="sign"),
    case("Floor", [Var(HALVES)], id="floor"),
    case("Ceil", [Var(HALVES)], id="ceil"),
    case("Round", [Var(HALVES)], id="round_half_even"),
    case(
        "Clip",
        [Var(normal(3, 4)), Const(np.asarray(-0.5, dtype=np.float32)), Const(np.asarray(0.5, dtype=np.float32))],
        id="clip_min_max",
    ),
    case("Clip", [Var(normal(3, 4)), None, Const(np.asarray(0.3, dtype=np.float32))], id="clip_max_only"),
    case("Clip", [Var(normal(3, 4)), Const(np.asarray(0.1, dtype=np.float32))], id="clip_min_only"),
    case("Clip", [Var(normal(3, 4))], id="clip_none"),
    case("Clip", [Var(normal(3, 4))], {"min": -0.2, "max": 0.4}, opset=6, id="clip_attributes"),
    case("Max", [Var(normal(3, 4)), Var(normal(4)), Const(normal(3, 1))], id="max"),
    case("Min", [Var(normal(3, 4)), Var(normal(4))], id="min"),
    case("Sum", [Var(normal(3, 4)), Var(normal(4)), Const(normal(3, 1))], id="sum"),
    case("Mean", [Var(normal(3, 4)), Var(normal(4)), Const(normal(3, 1))], id="mean"),
    case("Where", [Var(BOOLS_A), Var(normal(3, 4)), Const(normal(4))], id="where"),
    case("Equal", [Var(INTS_A), Const(INTS_B)], id="equal"),
    case("Greater", [Var(normal(3, 4)), Const(normal(4))], id="greater"),
    case("Less", [Var(normal(3, 4)), Const(normal(4))], id="less"),
    case("GreaterOrEqual", [Var(INTS_A), Const(INTS_B)], id="greater_or_equal"),
    case("LessOrEqual", [Var(INTS_A), Const(INTS_B)], id="less_or_equal"),
    case("Not", [Var(BOOLS_A)], id="not"),
    case("And", [Var(BOOLS_A), Var(BOOLS_B)], id="and"),
    case("Or", [Var(BOOLS_A), Var(BOOLS_B)], id="or"),
    case("Xor", [Var(BOOLS_A), Var(BOOLS_B)], id="xor"),
    case("Cast", [Var(normal(3, 4, scale=5.0))], {"to": TensorProto.INT32}, id="cast_float_to_int"),
    case("Cast", [Var(INTS_A)], {"to": TensorProto.FLOAT}, id="cast_int_to_float"),
    case(
        "Cast",
        [Var(np.asarray([0.0, 1.5, -2.0], dtype=np.float32))],
        {"to": TensorProto.BOOL},
        id="cast_float_to_bool",
    ),
    case("Identity", [Var(normal(3, 4))], id="identity"),
    case("Dropout", [Var(normal(3, 4))], num_outputs=2, id="dropout_with_mask"),
    case("Dropout", [Var(normal(3, 4)), Const(np.asarray(0.3, dtype=np.float32))], opset=13, id="dropout_ratio"),
]


@run_cases(ELEMENTWISE_CASES)
def test_elementwise(op_type, operands, attrs, opset, num_outputs):
    check(op_type, operands, attrs, opset, num_outputs)


NORMALIZATION_CASES = [
    case(
        "BatchNormalization",
        [Var(normal(2, 3, 4, 5)), Const(normal(3)), Const(normal(3)), Const(normal(3)), Const(rand(3, low=0.5, high=2.0))],
        {"epsilon": 1e-3},
        id="batch_norm",
    ),
    case(
        "BatchNormalization",
        [Var(normal(4, 3)), Const(normal(3)), Const(normal(3)), Const(normal(3)), Const(rand(3, low=0.5, high=2.0))],
        id="batch_norm_2d",
    ),
    case(
        "LayerNormalization",
        [Var(normal(2, 3, 8)), Const(normal(8)), Const(normal(8))],
        opset=17,
        id="layer_norm",
    ),
    case(
        "LayerNormalization",
        [Var(normal(2, 3, 8)), Const(normal(3, 8))],
        {"axis": 1, "epsilon": 1e-3},
        opset=17,
        id="layer_norm_axis1_no_bias",
    ),
    case(
        "LayerNormalization",
        [Var(normal(2, 3, 8)), Const(normal(8))],
        opset=17,
        num_outputs=3,
        id="layer_norm_statistics",
    ),
    case("Softmax", [Var(normal(2, 3, 5, scale=3.0))], id="softmax_default"),
    case("Softmax", [Var(normal(2, 3, 5, scale=3.0))], {"axis": 1}, id="softmax_axis1"),
    case("Softmax", [Var(normal(2, 3, 5, scale=3.0))], {"axis": 0}, id="softmax_axis0"),
    case("LogSoftmax", [Var(normal(2, 3, 5, scale=3.0))], id="log_softmax_default"),
    case("LogSoftmax", [Var(normal(2, 3, 5, scale=3.0))], {"axis": -2}, id="log_softmax_axis"),
]


@run_cases(NORMALIZATION_CASES)
def test_normalization(op_type, operands, attrs, opset, num_outputs):
    check(op_type, operands, attrs, opset, num_outputs)


REDUCTION_CASES = [
    case(op, [Var(normal(2, 3, 4, 5)), Const(ints(1, -1))], {"keepdims": keep}, id=f"{op}_axes_input_keepdims{keep}")
    for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
    for keep in (0, 1)
] + [
    case(
        "ReduceMean",
        [Var(normal(2, 3, 4))],
        {"axes": [2], "keepdims": 0},
        opset=13,
        id="reduce_mean_axes_attribute",
    ),
    case("ReduceSum", [Var(normal(2, 3, 4))], {"axes": [0, 2]}, opset=11, id="reduce_sum_axes_attribute"),
    case("ReduceSum", [Var(normal(2, 3, 4))], {"keepdims": 0}, opset=13, id="reduce_sum_all"),
    case("ReduceMax", [Var(normal(2, 3, 4))], id="reduce_max_all"),
    case(
        "ReduceSum",
        [Var(normal(2, 3, 4)), Const(ints())],
        {"noop_with_empty_axes": 1},
        opset=13,
        id="reduce_sum_noop",
    ),
    case("ReduceProd", [Var(normal(2, 3, 4))], {"axes": [1]}, opset=13, id="reduce_prod"),
    case("ReduceL2", [Var(normal(2, 3, 4)), Const(ints(2))], id="reduce_l2"),
    case("ReduceSumSquare", [Var(normal(2, 3, 4)), Const(ints(0))], id="reduce_sum_square"),
    case("ArgMax", [Var(normal(3, 4, 5))], {"axis": 1}, id="argmax"),
    case("ArgMax", [Var(normal(3, 4, 5))], {"axis": -1, "keepdims": 0}, id="argmax_no_keepdims"),
    case(
        "ArgMax",
        [Var(np.asarray([[1, 3, 3, 0], [2, 2, 1, 2]], dtype=np.float32))],
        {"axis": 1, "select_last_index": 1},
        id="argmax_last_index",
    ),
    case("ArgMin", [Var(normal(3, 4, 5))], {"axis": 2}, id="argmin"),
]


@run_cases(REDUCTION_CASES)
def test_reductions(op_type, operands, attrs, opset, num_outputs):
    check(op_type, operands, attrs, opset, num_outputs)


SHAPE_CASES = [
    case("Flatten", [Var(normal(2, 3, 4, 5))], id="flatten_default"),
    case("Flatten", [Var(normal(2, 3, 4, 5))], {"axis": 0}, id="flatten_axis0"),
    case("Flatten", [Var(normal(2, 3, 4, 5))], {"axis": -1}, id="flatten_axis_negative"),
    case("Reshape", [Var(normal(2, 3, 4)), Const(ints(0, -1))], id="reshape_copy_and_infer"),
    case("Reshape", [Var(normal(2, 3, 4)), Const(ints(4, 0, 2))], id="reshape_copy_middle"),
    case("Reshape", [Var(normal(2, 3, 4)), Const(ints(-1))], id="reshape_flat"),
    case("Reshape", [Var(normal(2, 0, 4)), Const(ints(0, 4))], {"allowzero": 1}, id="reshape_allowzero"),
    case("Transpose", [Var(normal(2, 3, 4))], id="transpose_default"),
    case("Transpose", [Var(normal(2, 3, 4, 5))], {"perm": [0, 2, 3, 1]}, id="transpose_perm"),
    case("Concat", [Var(normal(2, 3)), Const(normal(2, 1)), Var(normal(2, 2))], {"axis": -1}, id="concat"),
    case(
        "Split",
        [Var(normal(2, 6)), Const(ints(1, 2, 3))],
        {"axis": 1},
        opset=13,
        num_outputs=3,
        id="split_input",
    ),
    case("Split", [Var(normal(6, 2))], {"split": [4, 2]}, opset=11, num_outputs=2, id="split_attribute"),
    case("Split", [Var(normal(2, 6))], {"axis": -1}, opset=13, num_outputs=3, id="split_even"),
    case("Split", [Var(normal(7, 2))], {"num_outputs": 3}, opset=18, num_outputs=3, id="split_num_outputs_uneven"),
    case("Slice", [Var(normal(5, 6)), Const(ints(1, 0)), Const(ints(4, 5))], id="slice_starts_ends"),
    case(
        "Slice",
        [Var(normal(5, 6)), Const(ints(-1)), Const(ints(-(2**63 - 1))), Const(ints(1)), Const(ints(-1))],
        id="slice_reverse",
    ),
    case(
        "Slice",
        [Var(normal(5, 6, 7)), Const(ints(4, 1)), Const(ints(0, 100)), Const(ints(0, -1)), Const(ints(-2, 2))],
        id="slice_negative_steps",
    ),
    case("Slice", [Var(normal(5, 6)), Const(ints(-100)), Const(ints(100)), Const(ints(-1))], id="slice_clamped"),
    case("Slice", [Var(normal(5, 6))], {"starts": [1], "ends": [3], "axes": [1]}, opset=9, id="slice_attributes"),
    case("Gather", [Var(normal(5, 4)), Const(ints(0, -1, 2))], id="gather_axis0"),
    case(
        "Gather",
        [Var(normal(3, 5, 4)), Const(np.asarray([[1, 0], [-2, 4]], dtype=np.int64))],
        {"axis": 1},
        id="gather_axis1_2d",
    ),
    case("Gather", [Var(normal(3, 5)), Const(np.asarray(2, dtype=np.int64))], {"axis": 1}, id="gather_scalar"),
    case("Squeeze", [Var(normal(1, 3, 1, 4)), Const(ints(0, -2))], id="squeeze_axes_input"),
    case("Squeeze", [Var(normal(1, 3, 1, 4))], {"axes": [2]}, opset=11, id="squeeze_axes_attribute"),
    case("Squeeze", [Var(normal(1, 3, 1, 4))], id="squeeze_all"),
    case("Unsqueeze", [Var(normal(3, 4)), Const(ints(0, -1))], id="unsqueeze_axes_input"),
    case("Unsqueeze", [Var(normal(3, 4))], {"axes": [1, 3]}, opset=11, id="unsqueeze_axes_attribute"),
    case(
        "Pad",
        [Var(normal(2, 3, 4)), Const(ints(0, 1, 2, 0, 2, 1)), Const(np.asarray(1.5, dtype=np.float32))],
        id="pad_constant_value",
    ),
    case("Pad", [Var(normal(2, 3, 4)), Const(ints(0, 1, 2, 0, 2, 1))], {"mode": "reflect"}, id="pad_reflect"),
    case("Pad", [Var(normal(2, 3, 4)), Const(ints(0, 1, 2, 0, 2, 1))], {"mode": "edge"}, id="pad_edge"),
    case("Pad", [Var(normal(2, 3, 4)), Const(ints(0, -1, 2, 0, 1, -1))], id="pad_negative"),
    case("Pad", [Var(normal(2, 3, 4)), Const(ints(0, 1, 2, 0, 2, 1))], {"mode": "wrap"}, opset=19, id="pad_wrap"),
    case("Pad", [Var(normal(2, 3, 4)), Const(ints(1, 2, 3, 0)), None, Const(ints(-1, 1))], id="pad_axes"),
    case("Pad", [Var(normal(2, 3, 4))], {"pads": [0, 1, 1, 0, 0, 2], "value": -1.0}, opset=2, id="pad_attributes"),
    case("Shape", [Var(normal(2, 3, 4, 5))], id="shape"),
    case("Shape", [Var(normal(2, 3, 4, 5))], {"start": 1, "end": -1}, opset=15, id="shape_start_end"),
    case("Size", [Var(normal(2, 3, 4))], id="size"),
    case("ConstantOfShape", [Var(ints(2, 3))], id="constant_of_shape_default"),
    case(
        "ConstantOfShape",
        [Var(ints(2, 3))],
        {"value": numpy_helper.from_array(np.asarray([7], dtype=np.int64))},
        id="constant_of_shape_value",
    ),
    case("Expand", [Var(normal(3, 1)), Const(ints(2, 1, 4))], id="expand"),
    case("Tile", [Var(normal(2, 3)), Const(ints(2, 3))], id="tile"),
    case(
        "Range",
        [Var(scalar(1, np.int64)), Var(scalar(10, np.int64)), Var(scalar(3, np.int64))],
        id="range_int",
    ),
    case(
        "Range",
        [Var(scalar(5, np.int64)), Var(scalar(-3, np.int64)), Var(scalar(-2, np.int64))],
        id="range_int_negative",
    ),
    case(
        "Range",
        [Var(scalar(0.5, np.float32)), Var(scalar(3.0, np.float32)), Var(scalar(0.25, np.float32))],
        id="range_float",
    ),
    case("Constant", [], {"value": numpy_helper.from_array(normal(2, 3))}, id="constant_tensor"),
    case("Constant", [], {"value_float": 2.5}, id="constant_value_float"),
    case("Constant", [], {"value_floats": [1.0, 2.5]}, id="constant_value_floats"),
    case("Constant", [], {"value_int": 7}, id="constant_value_int"),
    case("Constant", [], {"value_ints": [3, -1]}, id="constant_value_ints"),
]


@run_cases(SHAPE_CASES)
def test_shape_ops(op_type, operands, attrs, opset, num_outputs):
    check(op_type, operands, attrs, opset, num_outputs)


def test_erf_matches_math_erf():
    grid = np.linspace(-9.0, 9.0, 4001)
    expected = np.asarray([math.erf(v) for v in grid])
    np.testing.assert_allclose(ops.erf(grid), expected, rtol=0, atol=1e-13)


def test_float32_stays_float32():
    x = normal(2, 3, 6, 6)
    cases = {
        "Conv": ([x, normal(4, 3, 3, 3), normal(4)], {"pads": [1, 1, 1, 1]}),
        "Gemm": ([normal(4, 5), normal(5, 3), normal(3)], {"alpha": 0.5, "beta": 2.0}),
        "MaxPool": ([x], {"kernel_shape": [2, 2], "strides": [2, 2]}),
        "AveragePool": ([x], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        "Erf": ([x], {}),
        "Gelu": ([x], {}),
        "LeakyRelu": ([x], {"alpha": 0.1}),
        "HardSigmoid": ([x], {}),
        "Mean": ([x, x], {}),
        "Pow": ([x, np.asarray(2, dtype=np.int64)], {}),
        "BatchNormalization": ([x, normal(3), normal(3), normal(3), rand(3, low=0.5)], {}),
        "LayerNormalization": ([x, normal(6)], {}),
    }
    for op_type, (inputs, attrs) in cases.items():
        assert ops.KERNELS[op_type](inputs, attrs)[0].dtype == np.float32, op_type


def test_attributes_decoding():
    node = helper.make_node(
        "Custom",
        ["x"],
        ["y"],
        f=0.5,
        i=3,
        s="text",
        t=numpy_helper.from_array(np.arange(3, dtype=np.int64)),
        fs=[1.0, 2.0],
        is_=[1, 2],
    )
    decoded = ops.attributes(node)
    assert decoded["f"] == 0.5 and decoded["i"] == 3 and decoded["s"] == "text"
    np.testing.assert_array_equal(decoded["t"], [0, 1, 2])
    assert decoded["fs"] == [1.0, 2.0] and decoded["is_"] == [1, 2]
    assert isinstance(decoded["is_"], list)


def test_split_without_sizes_uses_output_count():
    node = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=0)
    assert ops.attributes(node)["num_outputs"] == 3


# ------------------------------------------- Conv in cache-sized chunks, and the engine's linear backends

CHUNK_CASES = [
    ((5, 6, 11, 9), (9, 2, 3, 2), {"group": 3, "strides": [3, 2], "dilations": [2, 1], "pads": [2, 0, 1, 3]}),
    ((5, 4, 10, 10), (6, 4, 3, 3), {"strides": [2, 3], "dilations": [3, 2], "pads": [3, 1, 0, 2]}),
    ((5, 4, 7, 7), (6, 4, 1, 1), {"strides": [2, 2]}),
    ((5, 3, 13), (4, 3, 4), {"strides": [3], "dilations": [2], "pads": [1, 2]}),
]


@pytest.mark.parametrize("limit", [1, 600, 10**9])
@pytest.mark.parametrize("x_shape, w_shape, attrs", CHUNK_CASES)
def test_conv_chunks_match_onnxruntime(monkeypatch, limit, x_shape, w_shape, attrs):
    """Column buffers of one sample, of a few (with a partial last chunk), and of the whole batch."""
    monkeypatch.setattr(linear, "IM2COL_BYTES_LIMIT", limit)
    check("Conv", [Var(normal(*x_shape)), Const(normal(*w_shape, scale=0.3)), Const(normal(w_shape[0]))], attrs)


def _linear_snn(tmp_path):
    """input [N,4,9,9] -> Conv(4->6, group 2, stride 2) -> Relu -> Conv(6->8, dilation 2) -> Relu -> Flatten
    -> MatMul(const) -> Relu -> Gemm(3): every op the NumPy engine hands to onnxruntime."""
    from builders import ModelBuilder
    from spiking_helpers import convert_with_data

    b = ModelBuilder(seed=5)
    x = b.node("Relu", [b.conv("input", 4, 6, stride=2, group=2)])
    x = b.node("Relu", [b.node("Conv", [x, b.const(b.rng.normal(0, 0.4, (8, 6, 3, 3)), "w")], kernel_shape=[3, 3],
                                dilations=[2, 2], pads=[2, 2, 2, 2])])
    x = b.node("Flatten", [x])
    x = b.node("Relu", [b.node("MatMul", [x, b.const(b.rng.normal(0, 0.1, (8 * 5 * 5, 7)), "m")])])
    model = b.build({"input": [4, 9, 9]}, [b.gemm(x, 7, 3)])
    data = np.random.default_rng(6).random((40, 4, 9, 9)).astype(np.float32)
    return load_spiking(convert_with_data(model, data, tmp_path, norm="max")[0]), data


def test_engine_linear_backends_agree_with_onnxruntime_engine(tmp_path):
    model, x = _linear_snn(tmp_path)
    delegated = NumpyEngine(model)
    assert sorted(model.nodes[i].op_type for i in delegated.delegated) == ["Conv", "Conv", "Gemm", "MatMul"]
    reference = OrtEngine(model).run({"input": x}, 16, 2)
    for engine in (delegated, NumpyEngine(model, linear="numpy")):
        result = engine.run({"input": x}, 16, 2)
        np.testing.assert_allclose(result.outputs[model.outputs[0]], reference.outputs[model.outputs[0]],
                                   rtol=1e-5, atol=1e-5)
        assert {k: v.spikes for k, v in result.spikes.items()} == {k: v.spikes for k, v in reference.spikes.items()}
    # every delegated node ran under onnxruntime: plain, or channel-blocked where this CPU has the NCHWc kernels
    assert all(n.session is not None and not n.reason for i, n in delegated.delegated.items()
               if i not in delegated.blocked_convs)


def test_engine_slices_on_workers_equal_one_slice(tmp_path):
    model, x = _linear_snn(tmp_path)
    whole = NumpyEngine(model, memory_budget=2**40, workers=1).run({"input": x}, 8, observe=8)
    sliced = NumpyEngine(model, memory_budget=1, workers=3).run({"input": x}, 8, observe=8)
    np.testing.assert_array_equal(sliced.outputs[model.outputs[0]], whole.outputs[model.outputs[0]])
    assert {k: vars(v) for k, v in sliced.spikes.items()} == {k: vars(v) for k, v in whole.spikes.items()}
    np.testing.assert_array_equal(sliced.active, whole.active)


def test_ort_node_falls_back_to_numpy():
    """float64 data, and a node onnxruntime refuses (float64 weights on float32 data), use the NumPy kernel."""
    from sim.engine import OrtNode

    w = normal(3, 2, 3, 3)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])
    model = SimpleNamespace(constants={"w": w}, proto=helper.make_model(helper.make_graph([node], "g", [], [])),
                            path="m.onnx")
    x = normal(2, 2, 5, 5)
    want = ops.KERNELS["Conv"]([x.astype(np.float64), w], {})[0]
    np.testing.assert_array_equal(OrtNode(model, node, 1)([x.astype(np.float64), w], {})[0], want)
    model.constants["w"] = w.astype(np.float64)
    refused = OrtNode(model, node, 1)
    got = refused([x, w.astype(np.float64)], {})[0]
    assert refused.session is None and refused.reason
    np.testing.assert_array_equal(got, ops.KERNELS["Conv"]([x, w.astype(np.float64)], {})[0])


def test_unknown_linear_backend_is_refused(tmp_path):
    model, _ = _linear_snn(tmp_path)
    with pytest.raises(SpikingModelError, match="linear backend"):
        NumpyEngine(model, linear="blas")


@pytest.mark.parametrize("opset", [11, 12, 13, 17])
@pytest.mark.parametrize("op,axis", [("Softmax", None), ("Softmax", 2), ("LogSoftmax", 1), ("LogSoftmax", -1)])
def test_numpy_softmax_follows_the_axis_semantics_of_the_opset(opset, op, axis):
    """Before opset 13 Softmax and LogSoftmax normalise over every axis from `axis` on (default 1); from 13
    over `axis` alone (default -1). The NumPy kernel, given the model's opset, matches onnxruntime."""
    x = np.random.default_rng(opset).normal(size=(3, 4, 5, 6)).astype(np.float32)
    attrs = {} if axis is None else {"axis": axis}
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ops.KERNELS[op]([x], {**attrs, "opset": opset})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_engine_gives_softmax_the_model_opset(tmp_path):
    from builders import ModelBuilder
    from sim.model import spiking_from_proto
    from spiking_helpers import convert_with_data
    b = ModelBuilder(0)
    x = b.node("Relu", [b.conv("input", 1, 6)])
    data = np.random.default_rng(0).random((8, 1, 5, 5)).astype(np.float32)
    proto = load_spiking(convert_with_data(b.build({"input": [1, 5, 5]}, [x]), data, tmp_path, T=8)[0]).proto
    last = [n for n in proto.graph.node if n.op_type == "IFNeuron"][-1].output[0]
    proto.graph.node.append(helper.make_node("Softmax", [last], ["y"], axis=1))  # over C, H and W before 13
    state = [o for o in proto.graph.output if o.name.startswith("state.")]
    del proto.graph.output[:]
    proto.graph.output.extend([helper.make_tensor_value_info("y", TensorProto.FLOAT, None)] + state)
    next(o for o in proto.opset_import if o.domain == "").version = 12
    model = spiking_from_proto(proto, tmp_path / "softmax12.snn.onnx")
    ours = NumpyEngine(model, linear="numpy").run({"input": data}, 8).outputs["y"]
    np.testing.assert_allclose(ours, OrtEngine(model).run({"input": data}, 8).outputs["y"], atol=1e-6)

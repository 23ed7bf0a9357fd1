"""The estimate-and-correct operators (RunningMean, RateCorrect) and the spiking products (SpikeMatMul,
SpikeMul) against their closed forms, and their ONNX function bodies stepped by onnxruntime against the NumPy
kernels."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from snnfile.bodies import function_body
from snnfile.operators import OPERATORS
from sim.neurons import NEURON_KERNELS

T = 24
# float32 sums over at most T = 24 steps of O(1) values: relative rounding well under 1e-5 of the scale
RTOL = 1e-5


def _means(seq: np.ndarray) -> np.ndarray:
    return np.cumsum(seq.astype(np.float64), axis=0) / np.arange(1, len(seq) + 1).reshape((-1,) + (1,) * (seq.ndim - 1))


def _close(got: np.ndarray, want: np.ndarray) -> None:
    scale = max(float(np.abs(want).max()), 1.0)
    assert float(np.abs(got - want).max()) <= RTOL * scale


@pytest.mark.parametrize("op, shapes", [("SpikeMatMul", ([T, 3, 2, 5, 4], [T, 3, 2, 4, 6])),
                                        ("SpikeMul", ([T, 3, 5, 4], [T, 3, 5, 4])),
                                        ("SpikeMul", ([T, 3, 5, 4], [T, 3, 5, 1]))])
def test_product_running_mean_is_product_of_running_means(op, shapes):
    """For arbitrary (not spike-like) sequences, at every t: mean of the output = product of the means."""
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=s).astype(np.float32) for s in shapes)
    out, counts = NEURON_KERNELS[op]([a, b], {}, T)
    assert counts is None
    fn = np.matmul if op == "SpikeMatMul" else np.multiply
    _close(_means(out), fn(_means(a), _means(b)))


def test_product_of_an_input_that_repeats():
    """T_in = 1 (the same value at every step, direct coding) is broadcast over the window."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=[1, 2, 3, 4]).astype(np.float32), rng.normal(size=[T, 2, 4, 5]).astype(np.float32)
    out, _ = NEURON_KERNELS["SpikeMatMul"]([a, b], {}, T)
    _close(_means(out), np.matmul(a[0].astype(np.float64), _means(b)))


def test_running_mean_and_rate_correct_closed_form():
    rng = np.random.default_rng(2)
    x = rng.normal(size=[T, 3, 7]).astype(np.float32)
    mean, _ = NEURON_KERNELS["RunningMean"]([x], {}, T)
    _close(mean, _means(x))
    out, _ = NEURON_KERNELS["RateCorrect"]([x], {}, T)  # emits so that the running mean of out is x[t]
    _close(_means(out), x)


def _single_op_model(op: str, shapes: list[list[int]], out_shape: list[int]) -> onnx.ModelProto:
    spec = OPERATORS[op]
    state_shapes = {"sum": shapes[0], "sum_a": shapes[0], "sum_b": shapes[-1], "emitted": out_shape, "step": [1]}
    names = list(spec.inputs) + list(spec.state)
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(spec.inputs, shapes)]
    ins += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state_shapes[n]) for n in spec.state]
    outs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)]
    outs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state_shapes[n.removesuffix("_next")])
             for n in spec.state_outputs]
    node = helper.make_node(op, names, ["Y"] + list(spec.state_outputs), domain="ai.ann2snn")
    graph = helper.make_graph([node], "g", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.ann2snn", 1)],
                              functions=[function_body(spec, 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("op, shapes, out_shape", [
    ("SpikeMatMul", [[2, 3, 4], [2, 4, 5]], [2, 3, 5]),
    ("SpikeMul", [[2, 3, 4], [2, 3, 4]], [2, 3, 4]),
    ("RunningMean", [[2, 6]], [2, 6]),
    ("RateCorrect", [[2, 6]], [2, 6]),
])
def test_function_body_steps_like_the_kernel(op, shapes, out_shape):
    model = _single_op_model(op, shapes, out_shape)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    spec = OPERATORS[op]
    rng = np.random.default_rng(3)
    seqs = [rng.normal(size=[T] + s).astype(np.float32) for s in shapes]
    state = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
             for i in session.get_inputs() if i.name in spec.state}
    stepped = []
    for t in range(T):
        values = session.run(None, {**{n: s[t] for n, s in zip(spec.inputs, seqs)}, **state})
        stepped.append(values[0])
        state = dict(zip(spec.state, values[1:]))
    kernel, _ = NEURON_KERNELS[op](seqs, {}, T)
    _close(np.stack(stepped), kernel)
    assert state["step"].tolist() == [float(T)]


@pytest.mark.parametrize("repeats", [False, True])
def test_spike_matmul_under_onnxruntime_rounds_as_its_stepped_body(repeats):
    """With the NumPy engine's onnxruntime product (the default linear backend), the SpikeMatMul kernel gives
    the stepped function body's floats bit for bit: the same MLAS GEMM per matrix, however many are batched.
    Under OpenBLAS (np.matmul) sums of 16 terms round otherwise and moved spikes of the ViT example. Attention
    shapes: [batch, heads, tokens, head dim] @ [batch, heads, head dim, tokens]; a of length 1 repeats."""
    from types import SimpleNamespace

    from sim.engine import OrtNode, _product_of

    shapes, out_shape = [[2, 2, 17, 16], [2, 2, 16, 17]], [2, 2, 17, 17]
    model = _single_op_model("SpikeMatMul", shapes, out_shape)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    spec = OPERATORS["SpikeMatMul"]
    rng = np.random.default_rng(4)
    a, b = (rng.normal(size=[T] + s).astype(np.float32) for s in shapes)
    if repeats:
        a = a[:1]
    state = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
             for i in session.get_inputs() if i.name in spec.state}
    stepped = []
    for t in range(T):
        values = session.run(None, {"A": a[0 if repeats else t], "B": b[t], **state})
        stepped.append(values[0])
        state = dict(zip(spec.state, values[1:]))
    node = helper.make_node("SpikeMatMul", ["A", "B"], ["Y"], name="m", domain="ai.ann2snn")
    product = OrtNode(SimpleNamespace(constants={}, proto=model), _product_of(node), 1, constants={})
    kernel, _ = NEURON_KERNELS["SpikeMatMul"]([a, b], {}, T, product=product)
    assert product.session is not None
    np.testing.assert_array_equal(kernel, np.stack(stepped))

"""Spiking operators against closed forms, through both engines (the NumPy kernels and onnxruntime running
the exported function bodies)."""
import numpy as np
import onnx
import pytest

from builders import ModelBuilder
from snnfile.bodies import function_body
from snnfile.operators import MAXPOOL_NEURON
from sim.metrics import running_mean
from sim.neurons import maxpool_neuron
from sim.ops import KERNELS
from spiking_helpers import both_engines, convert_with_data


def relu_model(k: int, opset: int = 17) -> onnx.ModelProto:
    """input [N, k] -> Relu -> output: the output layer is the IF neuron itself."""
    b = ModelBuilder(opset=opset)
    return b.build({"input": [k]}, [b.node("Relu", ["input"])])


@pytest.mark.parametrize("phi, opset", [(0.5, 17), (0.0, 17), (0.5, 11)])
def test_if_neuron_spike_count_closed_form(tmp_path, phi, opset):
    """Constant input x, threshold theta, v(0) = phi*theta: spikes by step t = clip(floor(t x/theta + phi), 0, t).
    Inputs are multiples of 1/64 and theta = 1, so float32 arithmetic is exact and the match must be exact."""
    rng = np.random.default_rng(1)
    x = (rng.integers(-32, 64, size=(64, 16), endpoint=True) / 64.0).astype(np.float32)
    x[0, 0] = 1.0  # the calibrated max, hence theta = 1 under --norm max (x = 1 fires at every step)
    snn, _ = convert_with_data(relu_model(16, opset), x, tmp_path, "max", phi)
    T = 40
    steps = np.arange(1, T + 1, dtype=np.float64)[:, None, None]
    expected = np.clip(np.floor(steps * x[None].astype(np.float64) + phi), 0, steps)
    numpy_run, ort_run, out = both_engines(snn, x, T)
    for result in (numpy_run, ort_run):
        spikes_by_t = np.cumsum(result.outputs[out], axis=0) / 1.0  # theta = 1: output = spike count
        np.testing.assert_array_equal(spikes_by_t, expected)
        assert sum(layer.spikes for layer in result.spikes.values()) == int(expected[-1].sum())


def test_maxpool_neuron_kernel_sums_to_maxpool_of_sum():
    """For any input sequence, the outputs up to t sum to MaxPool of the inputs summed up to t."""
    rng = np.random.default_rng(2)
    x = (rng.integers(-8, 9, size=(12, 3, 2, 6, 6)) / 8.0).astype(np.float32)
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2]}
    out, spikes = maxpool_neuron([x], attrs, 12)
    assert spikes is None
    for t in range(12):
        want = KERNELS["MaxPool"]([x[: t + 1].sum(0)], attrs)[0]
        np.testing.assert_array_equal(out[: t + 1].sum(0), want)


def test_maxpool_neuron_function_body_steps_like_the_kernel():
    """The ONNX function body, stepped by onnxruntime with a different input each step, emits the same values
    as the NumPy kernel."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    node = helper.make_node("MaxPoolNeuron", ["x", "acc", "pooled"], ["y", "acc_next", "pooled_next"],
                            domain="ai.ann2snn", **attrs)
    shape_in, shape_out = [2, 3, 7, 7], [2, 3, 4, 4]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
                                            (("x", shape_in), ("acc", shape_in), ("pooled", shape_out))],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
                               (("y", shape_out), ("acc_next", shape_in), ("pooled_next", shape_out))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.ann2snn", 1)],
                              functions=[function_body(MAXPOOL_NEURON, 17)])
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    xs = rng.normal(size=[6] + shape_in).astype(np.float32)
    acc, pooled = np.zeros(shape_in, np.float32), np.zeros(shape_out, np.float32)
    stepped = []
    for x in xs:
        y, acc, pooled = session.run(None, {"x": x, "acc": acc, "pooled": pooled})
        stepped.append(y)
    kernel, _ = maxpool_neuron([xs], attrs, 6)
    np.testing.assert_array_equal(np.stack(stepped), kernel)


def test_maxpool_neuron_decodes_maxpool_exactly_for_constant_input(tmp_path):
    """input -> MaxPool -> output: under direct coding the running mean equals MaxPool(x) at every t."""
    b = ModelBuilder()
    model = b.build({"input": [2, 6, 6]}, [b.node("MaxPool", ["input"], kernel_shape=[2, 2], strides=[2, 2])])
    x = (np.random.default_rng(4).integers(-16, 16, size=(5, 2, 6, 6)) / 16.0).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path)
    want = KERNELS["MaxPool"]([x], {"kernel_shape": [2, 2], "strides": [2, 2]})[0]
    for result in both_engines(snn, x, 16)[:2]:
        decoded = running_mean(result.outputs[next(iter(result.outputs))])
        np.testing.assert_allclose(decoded, np.broadcast_to(want, decoded.shape), rtol=0, atol=1e-6)


def test_relu_to_if_error_within_quantisation_bound(tmp_path):
    """input -> Gemm -> Relu -> Gemm -> output, thresholds = calibrated max on the simulated data (no clipping).
    Each hidden neuron sees a constant current a_j <= theta and, with phi = 1/2, its rate is within theta/(2t)
    of relu(a_j); so output i is within sum_j |W2_ij| * theta / (2t) of the ANN (plus float32 rounding)."""
    b = ModelBuilder(5)
    h = b.node("Relu", [b.gemm("input", 8, 32)])
    model = b.build({"input": [8]}, [b.gemm(h, 32, 4)])
    w2 = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == model.graph.node[-1].input[1]))
    x = np.random.default_rng(6).normal(size=(50, 8)).astype(np.float32)
    snn, result = convert_with_data(model, x, tmp_path, "max", 0.5)
    theta = result.layers[0]["threshold"]
    from conftest import run_ort
    ann = run_ort(model, {"input": x})[0]
    T = 64
    numpy_run, ort_run, out = both_engines(snn, x, T)
    steps = np.arange(1, T + 1)[:, None, None]
    bound = np.abs(w2).sum(axis=1)[None, None, :] * theta / (2 * steps) + 1e-5
    for run in (numpy_run, ort_run):
        err = np.abs(running_mean(run.outputs[out]) - ann[None])
        assert (err <= bound).all()
    assert np.abs(running_mean(numpy_run.outputs[out])[-1] - ann).max() < np.abs(ann).max() / 10


def test_clip_becomes_if_neuron_capped_at_its_max(tmp_path):
    """input -> Clip(0, 0.5) -> output; data reaches 2.0, so the threshold is the cap 0.5, not the data max."""
    b = ModelBuilder()
    model = b.build({"input": [4]}, [b.node("Clip", ["input", b.const(0.0), b.const(0.5)])])
    x = np.linspace(-1, 2, 40, dtype=np.float32).reshape(10, 4)
    snn, result = convert_with_data(model, x, tmp_path, "max")
    assert [l["threshold"] for l in result.layers] == [0.5]
    numpy_run, _, out = both_engines(snn, x, 200)
    decoded = running_mean(numpy_run.outputs[out])[-1]
    np.testing.assert_allclose(decoded, np.clip(x, 0, 0.5), atol=0.5 / (2 * 200) + 1e-6)

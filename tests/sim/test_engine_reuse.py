"""Neuron kernels, Add, Sub and Mul write their output over an input the engine gives up
(NumpyEngine._reusable): never over a tensor that is read later, shared with a live view, or fed by the
caller."""
from __future__ import annotations

import numpy as np
import pytest

from builders import ModelBuilder
from sim.engine import NumpyEngine, Seq
from sim.model import load_spiking
from sim.neurons import if_neuron, maxpool_neuron, signed_if_neuron
from sim.ort import OrtEngine
from spiking_helpers import convert_with_data


def _shared_inputs():
    """Each neuron's input is also read later: by a residual Add, and through a Flatten view by a Gemm."""
    b = ModelBuilder(3)
    x = b.conv("input", 1, 4)
    r = b.node("Relu", [x])
    x = b.node("Add", [x, b.conv(r, 4, 4)])  # x read after the neuron on it
    flat = b.node("Flatten", [x])  # a view of x
    h = b.node("Relu", [flat])
    out = b.node("Add", [b.gemm(h, 4 * 6 * 6, 5), b.gemm(b.node("Flatten", [x]), 4 * 6 * 6, 5)])
    return b.build({"input": [1, 6, 6]}, [out])


def _chain():
    b = ModelBuilder(4)
    x = b.node("Relu", [b.conv("input", 1, 4)])
    x = b.node("MaxPool", [b.node("Relu", [b.conv(x, 4, 4)])], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Flatten", [x])
    return b.build({"input": [1, 6, 6]}, [b.gemm(x, 4 * 3 * 3, 5)])


@pytest.mark.parametrize("build,neuron", [(_shared_inputs, "if"), (_chain, "if"), (_chain, "signed")])
def test_reused_inputs_change_nothing(tmp_path, monkeypatch, build, neuron):
    x = np.random.default_rng(0).random((12, 1, 6, 6)).astype(np.float32)
    path, _ = convert_with_data(build(), x, tmp_path, neuron=neuron)
    model = load_spiking(path)
    name = model.outputs[0]
    fed = x.copy()
    given = []
    original = NumpyEngine._reusable

    def spy(self, i, name, *args):
        given.append((model.nodes[i].op_type, original(self, i, name, *args)))
        return given[-1][1]

    monkeypatch.setattr(NumpyEngine, "_reusable", spy)
    ours = NumpyEngine(model).run({"input": fed}, 12, observe=6)
    np.testing.assert_array_equal(fed, x)  # the caller's array is never written
    monkeypatch.setattr(NumpyEngine, "_reusable", lambda *args: False)
    fresh = NumpyEngine(model).run({"input": x}, 12, observe=6)
    np.testing.assert_array_equal(ours.outputs[name], fresh.outputs[name])
    assert ours.spikes == fresh.spikes
    for layer in fresh.sums:
        np.testing.assert_array_equal(ours.sums[layer], fresh.sums[layer])
    np.testing.assert_allclose(ours.outputs[name], OrtEngine(model).run({"input": x}, 12).outputs[name], atol=1e-5)
    assert given[0][1] is False  # the first neuron's input is the same at every step: [1, ...]
    if build is _chain:
        assert any(op.endswith("IFNeuron") and reused for op, reused in given)
    else:
        assert ("Add", True) in given  # the residual Add writes over its Conv's output, not over x


@pytest.mark.parametrize("kernel,extra", [(if_neuron, 2), (signed_if_neuron, 4), (maxpool_neuron, 0)])
def test_kernels_reusing_their_input_equal_fresh_output(kernel, extra):
    rng = np.random.default_rng(1)
    x = rng.normal(0.2, 0.6, (9, 2, 3, 4, 4)).astype(np.float32)
    params = [np.array(0.8, np.float32), np.array(0.4, np.float32), np.array(-0.4, np.float32),
              np.array(5, np.float32)][:extra]
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2]}
    fresh = kernel([x.copy()] + params, attrs, 9)
    given = x.copy()
    reused = kernel([given] + params, attrs, 9, reuse_input=True)
    np.testing.assert_array_equal(reused[0], fresh[0])
    if fresh[1] is not None:
        np.testing.assert_array_equal(reused[1], fresh[1])
    if kernel is not maxpool_neuron:
        assert np.shares_memory(reused[0], given)


def test_reusable_only_when_nothing_else_can_read_it(tmp_path):
    x = np.random.default_rng(0).random((6, 1, 6, 6)).astype(np.float32)
    model = load_spiking(convert_with_data(_chain(), x, tmp_path)[0])
    engine = NumpyEngine(model)
    i = next(k for k, n in enumerate(model.nodes) if n.op_type == "IFNeuron" and k > 1)
    node = model.nodes[i]
    data = np.zeros((8, 6, 4, 6, 6), np.float32)
    seq = Seq(data)
    assert engine._reusable(i, node.input[0], seq, {node.input[0]: seq}, 8)
    assert not engine._reusable(i, node.input[0], seq, {node.input[0]: seq}, 1)  # one step: could be the caller's array
    assert not engine._reusable(i, node.input[0], Seq(data[:1]), {}, 8)  # time-invariant [1, ...]
    view = Seq(data.reshape(8, 6, -1))
    assert not engine._reusable(i, node.input[0], seq, {node.input[0]: seq, "other": view}, 8)  # a live view of it
    shared = load_spiking(convert_with_data(_shared_inputs(), x, tmp_path, name="shared")[0])
    k = next(k for k, n in enumerate(shared.nodes) if n.op_type == "IFNeuron")  # its input is read by an Add later
    first = shared.nodes[k]
    assert not NumpyEngine(shared)._reusable(k, first.input[0], seq, {first.input[0]: seq}, 8)


def test_in_place_arithmetic_only_when_the_result_fits_the_given_up_operand():
    from sim.engine import _in_place
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    row = np.ones(3, np.float32)
    assert _in_place("Add", [a.copy(), row], None) is None
    out = _in_place("Sub", [row, b := a.copy()], 1)[0]  # written over the second operand
    assert out is b and np.array_equal(out, row - a)
    assert _in_place("Add", [row, a.copy()], 0) is None  # the result is larger than the row
    assert _in_place("Add", [a.astype(np.float64), a], 0) is None
    assert _in_place("Div", [a.copy(), row], 0) is None
    assert _in_place("Mul", [a.copy(), np.array(2.0, np.float32)], 0) is not None
    assert _in_place("Mul", [a.copy(), np.float64(2.0)], 0) is None  # float64 result, as the kernel gives


def test_outputs_not_batched_on_axis_1_are_not_joined_across_slices(tmp_path):
    """Slices of the batch are joined on axis 1 of [T, B, ...]; an output with another layout there (a
    constant that adds a leading axis, a mean over the batch) makes the engine run the batch whole."""
    from onnx import TensorProto, helper, numpy_helper
    from sim.model import spiking_from_proto
    x = np.random.default_rng(0).random((7, 1, 6, 6)).astype(np.float32)
    proto = load_spiking(convert_with_data(_chain(), x, tmp_path)[0]).proto
    logits = [o.name for o in proto.graph.output if not o.name.startswith("state.")][0]
    proto.graph.initializer.append(numpy_helper.from_array(np.full((1, 1, 1), 0.5, np.float32), "half"))
    proto.graph.node.extend([helper.make_node("Mul", [logits, "half"], ["raised"]),
                             helper.make_node("ReduceMean", [logits], ["over_batch"], axes=[0], keepdims=1)])
    state = [o for o in proto.graph.output if o.name.startswith("state.")]
    del proto.graph.output[:]
    proto.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in (logits, "raised", "over_batch")] + state)
    model = spiking_from_proto(proto, tmp_path / "odd.snn.onnx")
    whole = NumpyEngine(model, memory_budget=2**40, workers=1).run({"input": x}, 6).outputs
    for workers in (1, 2):
        sliced = NumpyEngine(model, memory_budget=1, workers=workers).run({"input": x}, 6).outputs
        for name in whole:
            np.testing.assert_allclose(sliced[name], whole[name], rtol=0, atol=1e-6)
    np.testing.assert_allclose(whole["raised"], OrtEngine(model).run({"input": x}, 6).outputs["raised"], atol=1e-5)

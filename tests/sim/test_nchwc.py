"""The NumPy engine's channel-blocked layout (sim/nchwc.py) computes exactly what the plain layout does."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from builders import ModelBuilder
from rewrites.calibration.collect import calibrate
from rewrites.config import ConvertOptions, Neuron, NormSpec
from rewrites.convert import convert_model
from ground.save import save_model
from sim.engine import NumpyEngine, OrtNode
from sim.model import load_spiking
from sim.nchwc import (blocked_constant, blocked_conv, blocked_pool, blocked_view, block_size, from_blocked,
                       to_blocked)
from sim.ort import OrtEngine

BLOCK = block_size()
needs_blocks = pytest.mark.skipif(not BLOCK, reason="onnxruntime uses no channel-blocked layout on this CPU")


def test_layout_round_trip_and_order():
    x = np.arange(2 * 32 * 3 * 5, dtype=np.float32).reshape(2, 32, 3, 5)
    for block in (8, 16):
        blocked = to_blocked(x, block)
        assert blocked.shape == x.shape
        np.testing.assert_array_equal(from_blocked(blocked, block), x)
        # memory order [N, C/b, H, W, b]: element (n, c, h, w) sits at block c // b, lane c % b
        view = blocked_view(blocked, block)
        assert view[1, 17 // block, 2, 4, 17 % block] == x[1, 17, 2, 4]


@pytest.mark.parametrize("shape", [(), (1,), (32, 1, 1), (1, 32, 1, 1), (32, 3, 5), (3, 5), (5,), (1, 1, 5)])
def test_blocked_constants_broadcast_like_plain(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2, 32, 3, 5)).astype(np.float32)  # [T, N, C, H, W]
    c = rng.normal(size=shape).astype(np.float32)
    for block in (8, 16):
        blocked = blocked_constant(c, x.shape[1:], block)
        got = (blocked_view(to_blocked(x, block), block) * blocked).reshape(x.shape)
        np.testing.assert_array_equal(from_blocked(got, block), x * c)


def test_constants_that_vary_over_the_batch_are_refused():
    assert blocked_constant(np.ones((2, 32, 1, 1), np.float32), (2, 32, 3, 5), 16) is None


def _conv_node(cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1):
    rng = np.random.default_rng(cin * 100 + cout)
    constants = {"w": rng.normal(size=(cout, cin // group, k, k)).astype(np.float32),
                 "b": rng.normal(size=cout).astype(np.float32)}
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=[k, k],
                            strides=[stride, stride], pads=[k // 2] * 4, group=group)
    return node, constants


class _Model:  # what OrtNode reads of a SpikingModel
    def __init__(self, constants):
        self.constants = constants
        self.proto = helper.make_model(helper.make_graph([], "m", [], []), opset_imports=[helper.make_opsetid("", 17)])


@needs_blocks
@pytest.mark.parametrize("cin,cout,k,stride,group", [
    (16, 16, 3, 1, 1), (32, 64, 3, 2, 1), (16, 32, 1, 1, 1), (1, 16, 3, 1, 1), (3, 32, 3, 1, 1), (32, 32, 3, 1, 32)])
def test_blocked_conv_equals_the_plain_session(cin, cout, k, stride, group):
    node, constants = _conv_node(cin, cout, k, stride, group)
    conv = blocked_conv(node, constants, [helper.make_opsetid("", 17)], 1)
    assert conv is not None
    x = (np.random.default_rng(1).random((6, cin, 12, 12)) < 0.3).astype(np.float32) * 0.7
    plain = OrtNode(_Model(constants), node, 1)([x], {})[0]
    got = conv([to_blocked(x, BLOCK) if conv.input_blocked else x], {})[0]
    assert conv.input_blocked == (cin >= BLOCK)
    np.testing.assert_array_equal(from_blocked(got, BLOCK), plain)


@needs_blocks
@pytest.mark.parametrize("cin,cout", [(16, 18), (24, 32), (36, 16)])
def test_conv_whose_channels_do_not_fill_blocks_is_not_blocked(cin, cout):
    node, constants = _conv_node(cin, cout)
    if cin % BLOCK == 0 and cout % BLOCK == 0:
        pytest.skip("fills whole blocks of this CPU")
    assert blocked_conv(node, constants, [helper.make_opsetid("", 17)], 1) is None


@needs_blocks
@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 2], ceil_mode=1)),
    ("GlobalMaxPool", {})])
def test_blocked_pool_equals_the_plain_session(op, attrs):
    node = helper.make_node(op, ["x"], ["y"], name="pool", **attrs)
    pool = blocked_pool(node, 1)
    assert pool is not None and pool.input_blocked
    x = np.random.default_rng(3).normal(size=(6, 32, 12, 12)).astype(np.float32)
    plain = OrtNode(_Model({}), node, 1)([x], {})[0]
    np.testing.assert_array_equal(from_blocked(pool([to_blocked(x, BLOCK)], {})[0], BLOCK), plain)


@needs_blocks
def test_blocked_average_pools_round_otherwise_and_are_not_used():
    x = np.random.default_rng(3).normal(size=(6, 32, 12, 12)).astype(np.float32)
    node = helper.make_node("GlobalAveragePool", ["x"], ["y"], name="pool")
    plain = OrtNode(_Model({}), node, 1)([x], {})[0]
    pool = blocked_pool(node, 1, "MaxPool")  # the NCHWc kernel built by hand, as blocked_pool would
    pool.model.graph.node[0].op_type = "GlobalAveragePool"
    del pool.model.graph.node[0].attribute[:]
    blocked = from_blocked(pool([to_blocked(x, BLOCK)], {})[0], BLOCK)
    np.testing.assert_allclose(blocked, plain, rtol=0, atol=1e-6)
    assert blocked_pool(node, 1) is None
    assert blocked_pool(helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2]), 1) is None


def test_pools_onnxruntime_does_not_block_are_refused():
    assert blocked_pool(helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2]), 1) is None
    assert blocked_pool(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2]), 1) is None
    assert blocked_pool(helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 2]), 1) is None


def _cnn(seed: int = 0) -> onnx.ModelProto:
    """Blocked-friendly and unfriendly parts: 32/16 channels, MaxPool, a residual Add, a per-channel scale
    (Mul by a [C,1,1] constant), AveragePool, a Conv of 10 channels (not a whole block), GlobalAveragePool,
    Gemm."""
    b = ModelBuilder(seed)
    x = b.node("Relu", [b.bn(b.conv("input", 3, 32), 32)])
    x = b.node("MaxPool", [b.node("Relu", [b.bn(b.conv(x, 32, 32), 32)])], kernel_shape=[2, 2], strides=[2, 2])
    y = b.node("Relu", [b.conv(x, 32, 32)])
    y = b.node("Mul", [b.conv(y, 32, 32), b.const(b.rng.uniform(0.5, 1.5, (32, 1, 1)), "scale")])
    x = b.node("Relu", [b.node("Add", [x, y])])
    x = b.node("Relu", [b.conv(x, 32, 16, stride=2)])
    x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Relu", [b.conv(x, 16, 10)])
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    return b.build({"input": [3, 16, 16]}, [b.gemm(x, 10, 10)])


def _convert(tmp_path, options: ConvertOptions, name: str):
    model = _cnn()
    x = np.random.default_rng(2).random((48, 3, 16, 16)).astype(np.float32)
    save_model(model, tmp_path / f"{name}.onnx")
    np.savez(tmp_path / f"{name}.npz", x=x)
    calibration = calibrate(tmp_path / f"{name}.onnx", tmp_path / f"{name}.npz", batch_size=16)
    save_model(convert_model(model, calibration, options).model, tmp_path / f"{name}.snn.onnx")
    return load_spiking(tmp_path / f"{name}.snn.onnx"), x[:24]


OPTIONS = {
    "if": ConvertOptions(NormSpec.parse("max")),
    "per_channel": ConvertOptions(NormSpec.parse("percentile:99.9"), per_channel=True),
    "signed": ConvertOptions(NormSpec.parse("max"), neuron=Neuron.SIGNED, tmax=6, default_T=12),
}


@needs_blocks
@pytest.mark.parametrize("variant", list(OPTIONS))
def test_engine_blocked_equals_plain(tmp_path, variant):
    model, x = _convert(tmp_path, OPTIONS[variant], variant)
    blocked, plain = NumpyEngine(model, memory_budget=2**20), NumpyEngine(model, memory_budget=2**20, blocked=False)
    # the 10-channel Conv stays plain, and so do average pools
    assert len(blocked.blocked_convs) == 5 and len(blocked.blocked_pools) == 1 and not blocked.blocked_ops
    assert not plain.blocked_convs
    for observe in (0, 5):
        a = blocked.run({"input": x}, 16, observe=observe)
        b = plain.run({"input": x}, 16, observe=observe)
        for name in b.outputs:
            np.testing.assert_array_equal(a.outputs[name], b.outputs[name])
        assert a.spikes == b.spikes
        assert a.sums.keys() == b.sums.keys()
        for name in b.sums:
            np.testing.assert_array_equal(a.sums[name], b.sums[name])
        np.testing.assert_array_equal(a.active, b.active)
    assert sum(s.spikes for s in b.spikes.values()) > 0


@needs_blocks
def test_blocked_engine_agrees_with_onnxruntime_and_drains_unblocked(tmp_path):
    model, x = _convert(tmp_path, OPTIONS["if"], "drain")
    name = model.outputs[0]
    engine = NumpyEngine(model)
    ours = engine.run({"input": x}, 16).outputs[name]
    theirs = OrtEngine(model).run({"input": x}, 16).outputs[name]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    drained = engine.run({"input": x}, 8, extra_t=8, drain=True).outputs[name]
    reference = NumpyEngine(model, blocked=False).run({"input": x}, 8, extra_t=8, drain=True).outputs[name]
    np.testing.assert_array_equal(drained, reference)


def _random_cnn(seed: int) -> onnx.ModelProto:
    """A random stack over 16/32 channels: Convs (strides, dilations, groups, 1x1), pools, residual Adds,
    per-channel Mul/Add constants, Concat, Sigmoid gates; some Convs of 8 or 24 channels that stay plain."""
    b = ModelBuilder(seed)
    rng = np.random.default_rng(seed)
    x, c = b.node("Relu", [b.conv("input", 3, 16)]), 16
    for _ in range(int(rng.integers(3, 6))):
        kind = rng.choice(["conv", "dilated", "group", "pool", "avg", "residual", "scale", "concat", "narrow"])
        if kind == "conv":
            cout, k = int(rng.choice([16, 32])), int(rng.choice([1, 3]))
            x, c = b.node("Relu", [b.bn(b.conv(x, c, cout, k=k, pad=k // 2), cout)]), cout
        elif kind == "dilated":
            x = b.node("Relu", [b.node("Conv", [x, b.const(b.rng.normal(0, 0.2, (c, c, 3, 3)), "w")],
                                       kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2])])
        elif kind == "group":
            x = b.node("Relu", [b.conv(x, c, c, group=int(rng.choice([2, c])))])
        elif kind == "pool":
            x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        elif kind == "avg":
            x = b.node("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
        elif kind == "residual":
            x = b.node("Relu", [b.node("Add", [x, b.conv(b.node("Relu", [b.conv(x, c, c)]), c, c)])])
        elif kind == "scale":
            gate = b.node("Sigmoid", [b.const(b.rng.normal(0, 1, (1, c, 1, 1)), "g")])
            x = b.node("Relu", [b.node("Add", [b.node("Mul", [b.conv(x, c, c), gate]),
                                               b.const(b.rng.normal(0, 0.1, (c, 1, 1)), "shift")])])
        elif kind == "concat":
            x = b.node("Concat", [x, b.node("Relu", [b.conv(x, c, 16)])], axis=1)
            c += 16
        else:
            narrow = int(rng.choice([8, 24]))
            x, c = b.node("Relu", [b.conv(x, c, narrow)]), narrow
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    return b.build({"input": [3, 12, 12]}, [b.gemm(x, c, 5)])


@needs_blocks
@pytest.mark.parametrize("seed", range(8))
def test_random_cnns_blocked_equal_plain(tmp_path, seed):
    from spiking_helpers import convert_with_data
    x = np.random.default_rng(seed).random((16, 3, 12, 12)).astype(np.float32)
    neuron = "signed" if seed % 2 else "if"
    path, _ = convert_with_data(_random_cnn(seed), x, tmp_path, neuron=neuron, T=10)
    model = load_spiking(path)
    engine = NumpyEngine(model, memory_budget=2**18)
    assert engine.blocked_convs
    a = engine.run({"input": x}, 10, observe=4)
    b = NumpyEngine(model, memory_budget=2**18, blocked=False).run({"input": x}, 10, observe=4)
    out = model.outputs[0]
    np.testing.assert_array_equal(a.outputs[out], b.outputs[out])
    assert a.spikes == b.spikes
    for name in b.sums:
        np.testing.assert_array_equal(a.sums[name], b.sums[name])
    np.testing.assert_allclose(a.outputs[out], OrtEngine(model).run({"input": x}, 10).outputs[out], atol=1e-5)


@needs_blocks
@pytest.mark.parametrize("bias", ["x", "y"])
def test_blocked_conv_whose_bias_has_the_kernel_io_names(bias):
    """onnxruntime keeps a bias initializer's name in the optimised model: it must not collide with the
    blocked kernel's own input and output."""
    node, constants = _conv_node(16, 16)
    constants[bias] = constants.pop("b")
    node.input[0], node.input[2], node.output[0] = "data", bias, "out"
    conv = blocked_conv(node, constants, [helper.make_opsetid("", 17)], 1)
    x = (np.random.default_rng(1).random((4, 16, 8, 8)) < 0.3).astype(np.float32)
    plain = OrtNode(_Model(constants), node, 1)([x], {})[0]
    np.testing.assert_array_equal(from_blocked(conv([to_blocked(x, BLOCK)], {})[0], BLOCK), plain)


def test_constants_of_higher_rank_than_a_step_are_refused():
    assert blocked_constant(np.ones((1, 1, 1, 1, 1), np.float32), (2, 32, 3, 5), 16) is None


@needs_blocks
def test_blocked_tensor_cast_to_double_reaches_a_pool_unblocked(tmp_path):
    """onnxruntime's blocked kernels take float32: a cast tensor goes to the plain path (NumPy's MaxPool)."""
    from onnx import TensorProto
    from sim.model import spiking_from_proto
    from spiking_helpers import convert_with_data
    b = ModelBuilder(0)
    x = b.node("Relu", [b.conv(b.node("Relu", [b.conv("input", 16, 16)]), 16, 16)])
    x_data = np.random.default_rng(0).random((8, 16, 6, 6)).astype(np.float32)
    path, _ = convert_with_data(b.build({"input": [16, 6, 6]}, [x]), x_data, tmp_path, T=8)
    proto = load_spiking(path).proto
    last = [n for n in proto.graph.node if n.op_type == "IFNeuron"][-1].output[0]
    proto.graph.node.extend([helper.make_node("Cast", [last], ["c"], to=TensorProto.DOUBLE),
                             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                             helper.make_node("Cast", ["p"], ["y"], to=TensorProto.FLOAT)])
    state = [o for o in proto.graph.output if o.name.startswith("state.")]
    del proto.graph.output[:]
    proto.graph.output.extend([helper.make_tensor_value_info("y", TensorProto.FLOAT, None)] + state)
    model = spiking_from_proto(proto, tmp_path / "cast.snn.onnx")
    ours = NumpyEngine(model).run({"input": x_data}, 8).outputs["y"]
    np.testing.assert_array_equal(ours, NumpyEngine(model, blocked=False).run({"input": x_data}, 8).outputs["y"])
    np.testing.assert_allclose(ours, OrtEngine(model).run({"input": x_data}, 8).outputs["y"], atol=1e-5)

"""The per-layer search (ann2snn/tune.py) measures a layer read by a max through that max: the observer of a
layer is what its reader makes of a rate, checked against onnxruntime running the same ANN op."""
from __future__ import annotations

import numpy as np
import pytest

from ann2snn.tune import _layers, _observer, _with_outputs, tunable_layers
from builders import ModelBuilder
from conftest import run_ort
from spiking_helpers import convert_with_data


def _net(pool: str):
    b = ModelBuilder(seed=1)
    h = b.node("Relu", [b.conv("x", 2, 4)])
    if pool == "maxpool":
        h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    elif pool == "global":
        h = b.node("GlobalMaxPool", [h])
    elif pool == "reducemax":
        h = b.node("ReduceMax", [h], axes=[2, 3], keepdims=0)
    elif pool == "chain":  # jax's reduce_window max pool, then jnp.max over H and W
        h = b.node("ReduceMax", [b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])], axes=[2, 3], keepdims=0)
    return b.build({"x": [2, 6, 6]}, [b.node("Flatten", [h])])


@pytest.mark.parametrize("pool", ["maxpool", "global", "reducemax", "chain", "none"])
def test_a_layer_read_by_a_max_is_measured_through_it(tmp_path, pool):
    x = np.random.default_rng(0).normal(size=(8, 2, 6, 6)).astype(np.float32)
    _, result = convert_with_data(_net(pool), x, tmp_path, T=8)
    layers = _with_outputs(result.model, tunable_layers(_layers(result.model)))
    assert len(layers) == 1
    observe = _observer(result.model, layers[0])
    rate = np.random.default_rng(1).random((8, 4, 6, 6)).astype(np.float32)
    b = ModelBuilder()
    pooling = {"kernel_shape": [2, 2], "strides": [2, 2]}
    reduce = {"axes": [2, 3], "keepdims": 0}
    out = {"maxpool": lambda: b.node("MaxPool", ["r"], **pooling), "global": lambda: b.node("GlobalMaxPool", ["r"]),
           "reducemax": lambda: b.node("ReduceMax", ["r"], **reduce),
           "chain": lambda: b.node("ReduceMax", [b.node("MaxPool", ["r"], **pooling)], **reduce),
           "none": lambda: b.node("Identity", ["r"])}[pool]()
    expected = run_ort(b.build({"r": [4, 6, 6]}, [out]), {"r": rate})[0]
    np.testing.assert_array_equal(observe(rate), expected)


def test_a_network_with_an_op_the_numpy_engine_lacks_is_searched_under_onnxruntime(tmp_path):
    """Resize has no NumPy kernel: the search steps its probe with onnxruntime instead of failing (a
    paddle2onnx text detector was refused so). One IF layer whose chosen setting's measured error is a
    relative mean square of ~1e-2 at T = 8: at T = 32 the decoded output's relative RMS error is below 0.1."""
    import ann2snn
    from rewrites.graph import save_model
    from spiking_helpers import step_by_contract
    b = ModelBuilder(seed=5)
    h = b.node("Relu", [b.conv("x", 2, 4)])
    scales = b.const(np.array([1, 1, 2, 2]))
    up = b.node("Resize", [h, "", scales], mode="nearest")
    model = b.build({"x": [2, 6, 6]}, [b.conv(up, 4, 3)])
    path, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    save_model(model, path)
    x = np.random.default_rng(3).normal(size=(16, 2, 6, 6)).astype(np.float32)
    np.savez(data, x=x)
    converted = ann2snn.convert(path, data=data)
    assert converted.choices  # the layer was searched
    ann2snn.save_model(converted.result.model, tmp_path / "s.onnx")
    ann = run_ort(model, {"x": x})[0]
    decoded = step_by_contract(tmp_path / "s.onnx", {"x": x}, 32)
    assert np.sqrt(np.mean((decoded - ann) ** 2) / np.mean(ann.astype(np.float64) ** 2)) <= 0.1

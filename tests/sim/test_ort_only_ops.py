"""Operators with no NumPy kernel (sim.engine.ORT_ONLY: Resize) run in the NumPy engine under onnxruntime,
with time folded into the batch where the op keeps axis 0 (scales [1, ...]; step by step otherwise): both
engines give the same spikes and outputs, to float rounding."""
from __future__ import annotations

import numpy as np
import pytest

from builders import ModelBuilder
from sim.engine import NumpyEngine
from sim.model import load_spiking
from sim.ort import OrtEngine
from spiking_helpers import convert_with_data


def _net(kind: str):
    b = ModelBuilder(seed=3)
    h = b.node("Relu", [b.conv("x", 2, 4)])
    if kind == "scales":
        up = b.node("Resize", [h, b.const(np.zeros(0, np.float32)), b.const(np.array([1, 1, 2, 2], np.float32))],
                    mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    else:
        up = b.node("Resize", [h, "", b.const(np.array([1, 1, 1.5, 2], np.float32))], mode="linear")
    return b.build({"x": [2, 6, 6]}, [b.node("Relu", [b.conv(up, 4, 3)])])


@pytest.mark.parametrize("kind", ["scales", "linear"])
def test_resize_runs_in_the_numpy_engine_as_in_onnxruntime(tmp_path, kind):
    model = _net(kind)
    x = np.random.default_rng(0).normal(size=(4, 2, 6, 6)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path, T=8)
    spiking = load_spiking(snn)
    engine = NumpyEngine(spiking)
    assert any(node.op_type == "Resize" for node in engine.nodes)
    name, out = spiking.inputs[0].name, spiking.outputs[0]
    a = engine.run({name: x}, 8)
    b = OrtEngine(spiking).run({name: x}, 8)
    np.testing.assert_allclose(a.outputs[out], b.outputs[out], rtol=1e-5, atol=1e-5)
    assert {k: v.spikes for k, v in a.spikes.items()} == {k: v.spikes for k, v in b.spikes.items()}


def test_resize_without_onnxruntime_is_refused_with_the_way_out(tmp_path):
    from ground.errors import SpikingModelError
    model = _net("scales")
    x = np.random.default_rng(0).normal(size=(4, 2, 6, 6)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path, T=8)
    with pytest.raises(SpikingModelError, match="no NumPy kernel"):
        NumpyEngine(load_spiking(snn), linear="numpy")

"""The exported model's public contract, and agreement of the two engines that step it."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from builders import ModelBuilder, small_cnn
from conftest import REPO
from test_normalise import concat_net
from spiking_helpers import both_engines, convert_with_data

STEP_TOOL = REPO.parent / "shared" / "tools" / "step_onnx.py"


def images(shape, n=24, seed=0):
    return np.random.default_rng(seed).random((n,) + shape).astype(np.float32)


def test_state_contract(tmp_path):
    model = small_cnn()
    snn_path, result = convert_with_data(model, images((1, 12, 12)), tmp_path)
    snn = onnx.load(snn_path)
    onnx.checker.check_model(snn, full_check=True)
    inputs = [i.name for i in snn.graph.input]
    outputs = [o.name for o in snn.graph.output]
    # the original inputs and outputs first, same names, same order
    assert inputs[:1] == [i.name for i in model.graph.input] and outputs[:1] == [o.name for o in model.graph.output]
    # then the state, then the drain gate: a scalar float input whose initializer holds 1
    assert inputs[-1] == "snn.drive"
    states = inputs[1:-1]
    assert states and all(s.startswith("state.") for s in states)
    assert outputs[1:] == [s + ".next" for s in states]
    drive = next(i for i in snn.graph.input if i.name == "snn.drive")
    assert drive.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and not drive.type.tensor_type.shape.dim
    assert onnx.numpy_helper.to_array(next(t for t in snn.graph.initializer if t.name == "snn.drive")) == 1.0
    for vi in snn.graph.input[1:-1]:
        dims = vi.type.tensor_type.shape.dim
        assert dims[0].dim_param and all(d.dim_value > 0 for d in dims[1:])
    assert {f.name for f in snn.functions} == {"IFNeuron", "MaxPoolNeuron"}
    assert {f.domain for f in snn.functions} == {"ai.ann2snn"}
    meta = {p.key: p.value for p in snn.metadata_props}
    assert meta["ann2snn.decoding"] == "mean" and meta["ann2snn.coding"] == "direct"
    assert meta["ann2snn.drain_steps"] == "0" and "ann2snn.no_drain" not in meta
    assert [l["node"] for l in json.loads(meta["ann2snn.layers"])] == [l["node"] for l in result.layers]


def test_ann_metadata_is_carried_over(tmp_path):
    model = small_cnn()
    model.metadata_props.add(key="ann_test_accuracy", value="0.9")
    snn_path, _ = convert_with_data(model, images((1, 12, 12)), tmp_path)
    assert {p.key: p.value for p in onnx.load(snn_path).metadata_props}["ann_test_accuracy"] == "0.9"


@pytest.mark.parametrize("make, shape, extra_t", [(small_cnn, (1, 12, 12), 0), (small_cnn, (1, 12, 12), 5),
                                                  (concat_net, (3, 8, 8), 3)])
def test_numpy_engine_agrees_with_onnxruntime(tmp_path, make, shape, extra_t):
    x = images(shape)
    snn_path, _ = convert_with_data(make(), x, tmp_path, "percentile:99.9")
    numpy_run, ort_run, out = both_engines(snn_path, x, 20, extra_t)
    np.testing.assert_allclose(numpy_run.outputs[out], ort_run.outputs[out], rtol=1e-5, atol=1e-5)
    assert {k: v.spikes for k, v in numpy_run.spikes.items()} == {k: v.spikes for k, v in ort_run.spikes.items()}


@pytest.mark.skipif(not STEP_TOOL.exists(), reason="shared/tools/step_onnx.py is not beside the repository")
def test_contract_tool_steps_our_file(tmp_path):
    """The shared tool knows only the public contract; its decoded outputs must converge to the ANN's."""
    model = small_cnn()
    x = images((1, 12, 12), 32)
    snn_path, _ = convert_with_data(model, x, tmp_path, "max")
    out = subprocess.run([sys.executable, str(STEP_TOOL), str(snn_path), str(tmp_path / "model.npz"), "--T",
                          "4,64", "--ann", str(tmp_path / "model.onnx")], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["rel_err"]["64"] < report["rel_err"]["4"]


def test_static_batch_model_exports(tmp_path):
    """A model exported with batch 1 fixed keeps it; states get the same fixed batch."""
    b = ModelBuilder()
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["input"], ["y"], name="r")], "g",
                                   [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    snn_path, _ = convert_with_data(model, np.ones((1, 4), np.float32), tmp_path)
    snn = onnx.load(snn_path)
    assert [d.dim_value for d in snn.graph.input[1].type.tensor_type.shape.dim] == [1, 4]
    numpy_run, ort_run, out = both_engines(snn_path, np.ones((1, 4), np.float32), 4)
    np.testing.assert_array_equal(numpy_run.outputs[out], ort_run.outputs[out])

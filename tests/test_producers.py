"""Graphs as other producers than torch write them (issue 14; tests/producers.py builds them): paddle2onnx's
-1 dims and Constant-node weights read as a dynamic batch and initializers; dims that are damage are still
refused in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import ann2snn
from conftest import run_ort
from producers import image_data, jax_classifier, keras_classifier, paddle_classifier, token_data
from rewrites.calibration.data import input_specs
from rewrites.convert import inspect_model, normalise, self_check, to_model
from rewrites.graph import load_model
from test_cli import assert_bad_input, files, invoke

BUILD = {"paddle": (paddle_classifier, lambda n, s: image_data(n, s)),
         "keras": (keras_classifier, lambda n, s: image_data(n, s, nhwc=True)),
         "jax": (jax_classifier, token_data)}


def write(tmp_path: Path, name: str, opset: int = 13) -> tuple[Path, Path, Path]:
    build, data = BUILD[name]
    path = tmp_path / f"{name}.onnx"
    onnx.save(build(opset=opset), path)
    calib, test = tmp_path / f"{name}.calib.npz", tmp_path / f"{name}.test.npz"
    np.savez(calib, x=data(64, 0))
    np.savez(test, x=data(32, 1))
    return path, calib, test


def test_minus_one_and_zero_dims_read_as_dynamic(tmp_path):
    path, _, _ = write(tmp_path, "paddle")
    model = load_model(path)
    assert [s.shape for s in input_specs(model)] == [("N", 3, 8, 8)]
    out = model.graph.output[0].type.tensor_type.shape.dim
    assert out[0].dim_param == "N" and out[1].dim_value == 5
    info = model.graph.value_info[0].type.tensor_type.shape.dim  # value_info's -1: an unnamed dim
    assert not info[0].HasField("dim_value") and not info[0].dim_param
    model = paddle_classifier()
    model.graph.value_info[0].type.tensor_type.shape.dim[0].dim_value = 0  # a 0 written by the producer
    onnx.save(model, tmp_path / "zero.onnx")
    info = load_model(tmp_path / "zero.onnx").graph.value_info[0].type.tensor_type.shape.dim
    assert not info[0].HasField("dim_value") and [d.dim_value for d in info[1:]] == [8, 8, 8]
    summary = inspect_model(tmp_path / "paddle.onnx")
    assert summary.inputs[0]["shape"] == ["N", 3, 8, 8] and summary.parameters == 853  # Constant weights count


@pytest.mark.parametrize("batch", [-1, 0, "N", "batch_size", None])
def test_a_batch_of_minus_one_or_zero_converts_like_a_symbolic_batch(tmp_path, batch):
    """The same exported file (up to the batch dim's name) whatever the producer wrote for the batch."""
    path, calib, _ = write(tmp_path, "paddle")
    model = onnx.load(path)
    for vi in (model.graph.input[0], model.graph.output[0]):
        dim = vi.type.tensor_type.shape.dim[0]
        dim.Clear()
        if isinstance(batch, int):
            dim.dim_value = batch
        elif batch:
            dim.dim_param = batch
    onnx.save(model, path)
    snn = ann2snn.convert(path, ann2snn.ConvertRequest(T=8, norm="max", neuron="if", phi=0.5), data=calib).result.model
    reference = _reference_snn(tmp_path, calib)
    assert [n.op_type for n in snn.graph.node] == [n.op_type for n in reference.graph.node]

    def dims(m):
        return [[d.dim_value if d.HasField("dim_value") else "?" for d in vi.type.tensor_type.shape.dim]
                for vi in list(m.graph.input) + list(m.graph.output)]
    assert dims(snn) == dims(reference) and dims(snn)[0] == ["?", 3, 8, 8]
    for a, b in zip(snn.graph.initializer, reference.graph.initializer):
        assert a.name == b.name and np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def _reference_snn(tmp_path: Path, calib: Path) -> onnx.ModelProto:
    path = tmp_path / "reference" / "paddle.onnx"
    path.parent.mkdir(exist_ok=True)
    model = paddle_classifier()
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].Clear()
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(model, path)
    return ann2snn.convert(path, ann2snn.ConvertRequest(T=8, norm="max", neuron="if", phi=0.5),
                           data=calib).result.model


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_normalised_graph_equals_the_ann_in_onnxruntime(tmp_path, opset):
    name = "paddle"
    """Constant-node weights become initializers; the function is the same (onnxruntime on the calibration
    samples, and the pipeline's own self-check)."""
    path, calib, _ = write(tmp_path, name, opset)
    ann = load_model(path)
    graph, reports = normalise(ann)
    ops = [n.op for n in graph.nodes]
    assert "Constant" not in ops and len(graph.nodes) == 8
    assert self_check(ann, graph, "normalising passes") < 1e-5
    feeds = {input_specs(ann)[0].name: np.load(calib)["x"]}
    before, after = run_ort(ann, feeds)[0], run_ort(to_model(graph, ann), feeds)[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def _edit(path: Path, edit) -> Path:
    model = onnx.load(path)
    edit(model)
    onnx.save(model, path)
    return path


def test_absurd_dims_are_still_refused(tmp_path):
    path, _, _ = write(tmp_path, "paddle")
    _edit(path, lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[1], "dim_value", -7))
    assert_bad_input(invoke("inspect", path), files(tmp_path), tmp_path, names=["'x'", "-7"], mentions=["damaged"])
    _edit(path, lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[1], "dim_value", 2**30))
    assert_bad_input(invoke("inspect", path), files(tmp_path), tmp_path, names=["'x'"], mentions=["damaged"])

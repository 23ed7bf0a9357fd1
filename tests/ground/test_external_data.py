"""Models whose weights live beside the .onnx (external data): they load, calibrate, convert and simulate,
and the converted model is saved with external data too, atomically (temporary files, then rename)."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from builders import ModelBuilder
from conftest import run_ort
from ground.errors import InputFileError
from ground.load import load_model
from ground.protos import EXTERNAL_DATA_KEY, fingerprint
from ground.save import ALIGN, save_model
from test_cli import invoke, ok


def mlp() -> onnx.ModelProto:
    """x [N,64] -> Gemm(128) -> Relu -> Gemm(128) -> Relu -> Gemm(10); 25k weights, 100 kB."""
    b = ModelBuilder(seed=5, opset=17)
    x = b.node("Relu", [b.gemm("x", 64, 128)])
    x = b.node("Relu", [b.gemm(x, 128, 128)])
    return b.build({"x": [64]}, [b.gemm(x, 128, 10)])


def save_external(model: onnx.ModelProto, path) -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save moves the weights out of the proto it is given
    onnx.save(copy, path, save_as_external_data=True, location=path.name + ".weights", size_threshold=1024)


def external_tensors(path) -> dict[str, dict[str, str]]:
    model = onnx.load(str(path), load_external_data=False)
    return {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer
            if t.data_location == TensorProto.EXTERNAL}


def test_load_reads_external_data_and_marks_it(tmp_path):
    model = mlp()
    save_external(model, tmp_path / "m.onnx")
    assert len(external_tensors(tmp_path / "m.onnx")) == 3  # the three weight matrices (biases are small)
    loaded = load_model(tmp_path / "m.onnx")
    assert fingerprint(loaded) == fingerprint(model)
    assert {p.key: p.value for p in loaded.metadata_props}[EXTERNAL_DATA_KEY] == "true"
    assert EXTERNAL_DATA_KEY not in {p.key for p in load_model_inline(tmp_path, model).metadata_props}


def load_model_inline(folder, model):
    onnx.save(model, folder / "inline.onnx")
    return load_model(folder / "inline.onnx")


def test_save_external_round_trip_leaves_the_model_in_memory_alone(tmp_path):
    model = mlp()
    before = model.SerializeToString()
    save_model(model, tmp_path / "out.onnx", external_data=True)
    assert model.SerializeToString() == before
    assert sorted(os.listdir(tmp_path)) == ["out.onnx", "out.onnx.data"]
    tensors = external_tensors(tmp_path / "out.onnx")
    assert len(tensors) == 3 and all(t["location"] == "out.onnx.data" for t in tensors.values())
    assert all(int(t["offset"]) % ALIGN == 0 for t in tensors.values())
    assert (tmp_path / "out.onnx").stat().st_size < 4096  # the weights are not inline
    assert fingerprint(load_model(tmp_path / "out.onnx")) == fingerprint(model)


def test_small_inline_model_is_saved_inline(tmp_path):
    save_model(mlp(), tmp_path / "out.onnx")
    assert os.listdir(tmp_path) == ["out.onnx"] and not external_tensors(tmp_path / "out.onnx")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    """The model's rename fails after its data file was renamed into place: both are removed again."""
    real_replace = os.replace

    def failing(src, dst):
        if str(dst).endswith("out.onnx"):
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(InputFileError, match="out.onnx: cannot write it .No space left on device"):
        save_model(mlp(), tmp_path / "out.onnx", external_data=True)
    assert os.listdir(tmp_path) == []


def test_pipeline_on_external_data_through_the_cli(tmp_path):
    """calibrate, convert and simulate a model with external data; the spiking model keeps external data."""
    model = mlp()
    ann = tmp_path / "m.onnx"
    save_external(model, ann)
    x = np.random.default_rng(0).random((16, 64)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=run_ort(model, {"x": x})[0].argmax(-1))
    ok(invoke("calibrate", ann, "--data", tmp_path / "d.npz", "-o", tmp_path / "c.json", "--max"))
    snn = tmp_path / "m.snn.onnx"
    ok(invoke("convert", ann, "--calib", tmp_path / "c.json", "-o", snn, "--T", 64))
    assert (tmp_path / "m.snn.onnx.data").exists() and external_tensors(snn)
    assert not list(tmp_path.glob(".*.tmp"))
    report = json.loads(ok(invoke("simulate", snn, "--data", tmp_path / "d.npz", "--ann", ann,
                                  "--json", "-")).stdout)
    assert report["agreement"][-1] >= 0.9 and report["relative_error"][-1] < 0.05


def test_converted_model_from_external_input_is_saved_external_by_default(tmp_path):
    from rewrites.calibration.collect import calibrate
    from rewrites.config import ConvertOptions, NormSpec
    from rewrites.convert import convert_model
    model = mlp()
    save_external(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((8, 64)).astype(np.float32))
    calibration = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz")
    result = convert_model(load_model(tmp_path / "m.onnx"), calibration, ConvertOptions(NormSpec.parse("max"), 0.5, 8))
    save_model(result.model, tmp_path / "s.onnx")
    assert external_tensors(tmp_path / "s.onnx")
    w = numpy_helper.to_array(next(t for t in load_model(tmp_path / "s.onnx").graph.initializer
                                   if t.name == model.graph.initializer[0].name))
    assert w.shape == (128, 64)


def test_weights_as_inputs_session_gives_the_same_results(tmp_path, monkeypatch):
    """Large models run unoptimised sessions with their weights fed as inputs (one copy instead of three);
    forced here on a small model, calibration and conversion must come out identical."""
    import ground.sessions as runtime
    from rewrites.calibration.collect import calibrate
    from rewrites.config import ConvertOptions, NormSpec
    from rewrites.convert import convert_model
    onnx.save(mlp(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((8, 64)).astype(np.float32))
    options = ConvertOptions(NormSpec.parse("max"), 0.5, 8)
    results = []
    for threshold in (runtime.WEIGHTS_AS_INPUTS_ABOVE, 0):
        monkeypatch.setattr(runtime, "WEIGHTS_AS_INPUTS_ABOVE", threshold)
        session = runtime.Session(mlp(), "m", optimize=False)
        assert session.input_names == ["x"] and len(session.weights) == (3 if threshold == 0 else 0)
        calibration = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz")
        converted = convert_model(mlp(), calibration, options)
        results.append((calibration.to_json(), converted.model.SerializeToString(), converted.normalise_error))
    assert results[0] == results[1]


@pytest.mark.parametrize("values", [250, 256, 257])
def test_weights_left_out_are_exactly_those_fed_back(tmp_path, monkeypatch, values):
    """A weightless copy leaves out the tensors of more than WEIGHTLESS_ABOVE bytes of data, the rule the graph
    side (large_constants) uses to feed them back: a bias of 250 float32 (1,000 bytes of data, over 1,024
    once its name and dims are serialised) stays in the copy rather than becoming an input nobody feeds."""
    import ground.sessions as runtime
    from rewrites import convert as convert_module
    from rewrites.calibration import collect
    from rewrites.calibration.collect import calibrate
    from rewrites.config import ConvertOptions, NormSpec
    from rewrites.convert import convert_model
    rng = np.random.default_rng(values)
    w1 = numpy_helper.from_array(rng.normal(0, 0.1, (values, 16)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, values).astype(np.float32), "a_long_bias_name_" + "b" * 40)
    w2 = numpy_helper.from_array(rng.normal(0, 0.1, (4, values)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", b1.name], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w1, b1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=rng.random((8, 16)).astype(np.float32))
    for module in (runtime, collect, convert_module):
        monkeypatch.setattr(module, "WEIGHTS_AS_INPUTS_ABOVE", 0)
    calibration = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz")
    result = convert_model(model, calibration, ConvertOptions(NormSpec.parse("max"), 0.5, 8))
    assert result.normalise_error < 1e-5

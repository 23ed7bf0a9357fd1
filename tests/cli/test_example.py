"""End to end on the bundled example: calibrate on its calibration split, convert, simulate its test split."""
import numpy as np
import pytest

from conftest import EXAMPLE
from rewrites.calibration.collect import calibrate
from rewrites.config import DEFAULT_NORM, ConvertOptions, NormSpec
from rewrites.convert import convert_model
from ground.load import load_model
from ground.save import save_model
from sim.engine import NumpyEngine
from sim.model import load_spiking
from sim.ort import OrtEngine
from sim.simulate import simulate

MODEL, CALIB, TEST = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", EXAMPLE / "test.npz"


@pytest.fixture(scope="module")
def spiking_example(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("example")
    calibration = calibrate(MODEL, CALIB, 100)
    paths = {}
    for norm in (DEFAULT_NORM, "max"):
        path = tmp / f"{norm.replace(':', '_')}.snn.onnx"
        save_model(convert_model(load_model(MODEL), calibration, ConvertOptions(NormSpec.parse(norm))).model, path)
        paths[norm] = path
    return paths


def test_percentile_conversion_within_one_point_of_ann_at_T32(spiking_example):
    """The acceptance bound of the end-to-end issue: with the default percentile norm, at T = 32 the SNN is
    within 1 point of the ANN measured on the same data."""
    report = simulate(spiking_example[DEFAULT_NORM], TEST, 32, ann_path=MODEL, batch_size=250)
    assert report.samples == 2000
    assert report.ann_accuracy - report.accuracy[-1] <= 0.01


def test_accuracy_rises_with_t(spiking_example):
    """Quantisation error shrinks like theta/(2t): each 4x longer window must not be less accurate, and one
    step is far from the ANN."""
    report = simulate(spiking_example[DEFAULT_NORM], TEST, 32, ann_path=MODEL, batch_size=250, limit=1000)
    acc = dict(zip(report.steps, report.accuracy))
    assert acc[1] < acc[4] <= acc[16] and acc[2] <= acc[8] <= acc[32]
    assert acc[1] < report.ann_accuracy - 0.05


def test_engines_agree_on_example(spiking_example):
    model = load_spiking(spiking_example["max"])
    x = np.load(TEST)["x"][:64]
    a = NumpyEngine(model).run({"input": x}, 32, 2).outputs[model.outputs[0]]
    b = OrtEngine(model).run({"input": x}, 32, 2).outputs[model.outputs[0]]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["fmnist_vit/model.onnx", "fmnist_vit/model_opset13.onnx",
                                  "fmnist_vit/model_dynamo.onnx", "fmnist_qcfs_L4/model.onnx",
                                  "fmnist_qcfs_L8/model.onnx"])
def test_engines_agree_on_every_example(tmp_path, name):
    """Default conversion of each bundled model: the two engines give the same step outputs (to float
    rounding, 1e-5), so the same spikes, over 64 test images."""
    path = EXAMPLE.parent / name
    calibration = calibrate(path, CALIB, limit=200)
    snn = tmp_path / "model.snn.onnx"
    save_model(convert_model(load_model(path), calibration, ConvertOptions()).model, snn)
    model = load_spiking(snn)
    x = np.load(TEST)["x"][:64]
    a = NumpyEngine(model).run({"input": x}, 16, 2).outputs[model.outputs[0]]
    b = OrtEngine(model).run({"input": x}, 16, 2).outputs[model.outputs[0]]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

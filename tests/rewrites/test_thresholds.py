"""Threshold rules (max, percentile, mmse), per-channel thresholds, and bias correction."""
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from ann2snn_cli.app import app
from builders import ModelBuilder, small_cnn
from conftest import run_ort
from rewrites.calibration.collect import calibrate
from rewrites.calibration.stats import TensorStats
from rewrites.config import ConvertOptions, NormSpec
from rewrites.convert import convert_model
from ground.save import save_model
from rewrites.thresholds import MMSE_GRID, mmse_threshold, quantised
from sim.bias_correction import _mean_gap, correct_biases
from sim.model import load_spiking, spiking_from_proto
from sim.simulate import AnnReference
from spiking_helpers import both_engines


@pytest.mark.parametrize("T, phi", [(4, 0.5), (8, 0.5), (16, 0.0)])
def test_mmse_is_the_brute_force_minimiser(T, phi):
    """Values placed on the histogram's bin centres make the histogram exact, so the threshold it picks must
    be the grid point that minimises the squared error computed on the raw values."""
    rng = np.random.default_rng(T)
    width = 8.0 / 4096  # the range settles at [-4, 4) for data in (-4, 4)
    bins = np.clip(np.round(rng.normal(2048 + 256, 300, 20000)).astype(int), 0, 4095)
    z = -4.0 + (bins + 0.5) * width
    stats = TensorStats("z")
    stats.update(z)
    assert stats.half_range == 4.0
    thetas = z.max() * np.arange(1, MMSE_GRID + 1) / MMSE_GRID
    raw = [np.mean((np.maximum(z, 0) - quantised(z, th, T, phi)) ** 2) for th in thetas]
    assert mmse_threshold(stats, T, phi) == pytest.approx(thetas[int(np.argmin(raw))])


def test_mmse_threshold_shrinks_with_fewer_steps():
    """Fewer steps mean coarser quantisation, which a lower threshold (more clipping) offsets."""
    stats = TensorStats("z")
    stats.update(np.random.default_rng(0).gamma(1.5, 1.0, 50000) - 0.5)
    assert mmse_threshold(stats, 4, 0.5) < mmse_threshold(stats, 64, 0.5) <= stats.maximum


def conv_relu():
    """input -> Conv(3->6) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4)"""
    b = ModelBuilder(7)
    x = b.node("Relu", [b.conv("input", 3, 6)])
    return b.build({"input": [3, 8, 8]}, [b.gemm(b.node("Flatten", [b.node("GlobalAveragePool", [x])]), 6, 4)])


def test_per_channel_thresholds_are_channel_maxima(tmp_path):
    model = conv_relu()
    x = np.random.default_rng(1).random((30, 3, 8, 8)).astype(np.float32)
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x)
    calibration = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz", 7)
    options = ConvertOptions(NormSpec.parse("max"), per_channel=True)
    snn = convert_model(model, calibration, options).model
    relu_in = next(n.input[0] for n in model.graph.node if n.op_type == "Relu")
    oracle = onnx.ModelProto()
    oracle.CopyFrom(model)
    oracle.graph.output.append(onnx.helper.make_tensor_value_info(relu_in, onnx.TensorProto.FLOAT, None))
    z = run_ort(oracle, {"input": x})[1]
    neuron = next(n for n in snn.graph.node if n.op_type == "IFNeuron")
    theta = next(onnx.numpy_helper.to_array(t) for t in snn.graph.initializer if t.name == neuron.input[1])
    assert theta.shape == (6, 1, 1)
    np.testing.assert_allclose(theta.reshape(-1), np.maximum(z.max(axis=(0, 2, 3)), 0), rtol=1e-6)
    save_model(snn, tmp_path / "m.snn.onnx")
    numpy_run, ort_run, out = both_engines(tmp_path / "m.snn.onnx", x, 12)
    np.testing.assert_allclose(numpy_run.outputs[out], ort_run.outputs[out], rtol=1e-5, atol=1e-5)


def test_bias_correction_reduces_each_layers_mean_gap(tmp_path):
    """After correcting a layer, the per-channel mean gap between ANN activation and SNN rate on the same
    data is smaller than before for every corrected layer."""
    model = small_cnn()
    x = np.random.default_rng(2).random((60, 1, 12, 12)).astype(np.float32)
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x)
    calibration = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz", 20)
    T = 6
    snn = convert_model(model, calibration, ConvertOptions(default_T=T)).model
    from ground.data import load_dataset
    path = tmp_path / "m.snn.onnx"
    data = load_dataset(tmp_path / "d.npz", spiking_from_proto(snn, path).inputs)
    fixed, corrections = correct_biases(snn, path, tmp_path / "m.onnx", data, T, engine="numpy")
    assert all(c.bias for c in corrections)
    before_model, after_model = spiking_from_proto(snn, path), spiking_from_proto(fixed, path)
    from sim.analysis import neuron_layers
    layers = neuron_layers(before_model)
    ann = AnnReference(tmp_path / "m.onnx", before_model, [l.output for l in layers])
    for layer in layers:
        before = np.abs(_mean_gap(before_model, layer.node, layer.output, ann, data, T, 30, "numpy")).mean()
        after = np.abs(_mean_gap(after_model, layer.node, layer.output, ann, data, T, 30, "numpy")).mean()
        assert after < before


def test_bias_correction_needs_data(tmp_path):
    save_model(small_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(3).random((8, 1, 12, 12)).astype(np.float32))
    runner = CliRunner()
    assert runner.invoke(app, ["calibrate", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "-o",
                               str(tmp_path / "c.json")]).exit_code == 0
    result = runner.invoke(app, ["convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.json"),
                                 "--bias-correction", "-o", str(tmp_path / "s.onnx")])
    assert result.exit_code == 2 and "--data" in result.stderr and not (tmp_path / "s.onnx").exists()
    result = runner.invoke(app, ["convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.json"),
                                 "--bias-correction", "--data", str(tmp_path / "d.npz"), "--norm", "mmse",
                                 "--per-channel", "--T", "4", "-o", str(tmp_path / "s.onnx")])
    assert result.exit_code == 0, result.output
    assert load_spiking(tmp_path / "s.onnx").default_T == 4

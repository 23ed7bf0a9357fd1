"""Streaming calibration against an oracle that sees all data at once."""
import json

import numpy as np
import onnx
import pytest

from builders import small_cnn
from conftest import run_ort
from rewrites.calibration.collect import calibrate
from rewrites.calibration.stats import Calibration, TensorStats
from rewrites.config import ConvertOptions
from rewrites.convert import convert_model
from rewrites.errors import CalibrationError
from rewrites.graph import save_model


def test_histogram_growth_keeps_counts_exact():
    """Values arriving in growing ranges: the merged histogram equals one built over the final range."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, s, 1000) for s in (0.01, 0.1, 1.0, 50.0)]
    streamed = TensorStats("t", bins=64)
    for b in batches:
        streamed.update(b)
    everything = np.concatenate(batches)
    R = streamed.half_range
    want, _ = np.histogram(everything, bins=64, range=(-R, R))
    np.testing.assert_array_equal(streamed.counts, want)
    assert streamed.count == everything.size and R > np.abs(everything).max()


@pytest.mark.parametrize("q", [50.0, 99.0, 99.9, 99.99])
def test_percentile_within_one_bin(q):
    rng = np.random.default_rng(1)
    data = [rng.gamma(2.0, 1.0, 5000) - 1.0 for _ in range(4)]
    stats = TensorStats("t")
    for d in data:
        stats.update(d)
    assert_is_percentile(stats.percentile(q), np.concatenate(data), q, stats.bin_width)


def assert_is_percentile(p, values, q, width):
    """p is an empirical q-th percentile up to one bin: at least q% of the values lie at or below p + width
    and at most q% strictly below p - width. (np.percentile interpolates between order statistics, which can be
    far apart in a sparse tail, so it is not the oracle.)"""
    share = q / 100.0 * values.size
    assert (values <= p + width).sum() >= share
    assert (values < p - width).sum() <= share


def test_json_round_trip():
    stats = TensorStats("t")
    stats.update(np.random.default_rng(2).normal(size=1000))
    again = TensorStats.from_json("t", json.loads(json.dumps(stats.to_json())))
    assert again.percentile(99.9) == stats.percentile(99.9) and again.mean == pytest.approx(stats.mean)


def test_streamed_statistics_equal_oracle_over_all_batches(tmp_path):
    """Every observed tensor exposed by an oracle model: max/min/mean/count exact, percentile to one bin,
    aggregated over ALL batches (not the last one)."""
    model = small_cnn()
    x = np.random.default_rng(3).random((50, 1, 12, 12)).astype(np.float32)
    x[-7:] *= 3.0  # the last batch differs from the others
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x)
    calibration = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz", batch_size=16)
    assert calibration.samples == 50
    relu_inputs = [n.input[0] for n in model.graph.node if n.op_type == "Relu"]
    maxpool_inputs = [n.input[0] for n in model.graph.node if n.op_type == "MaxPool"]
    assert sorted(calibration.tensors) == sorted(set(relu_inputs + maxpool_inputs))
    oracle = onnx.ModelProto()
    oracle.CopyFrom(model)
    for name in calibration.tensors:
        oracle.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    values = dict(zip([o.name for o in oracle.graph.output], run_ort(oracle, {"input": x})))
    for name, stats in calibration.tensors.items():
        v = values[name].astype(np.float64)
        assert stats.count == v.size
        assert stats.maximum == pytest.approx(v.max(), rel=1e-6) and stats.minimum == pytest.approx(v.min(), rel=1e-6)
        assert stats.mean == pytest.approx(v.mean(), rel=1e-4, abs=1e-6)
        assert_is_percentile(stats.percentile(99.9), v.reshape(-1), 99.9, stats.bin_width)


def test_calibration_of_another_model_is_refused(tmp_path):
    save_model(small_cnn(seed=0), tmp_path / "a.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 12, 12), np.float32))
    calibration = calibrate(tmp_path / "a.onnx", tmp_path / "d.npz")
    with pytest.raises(CalibrationError, match="another model"):
        convert_model(small_cnn(seed=1), calibration, ConvertOptions(), "b.onnx", "a.calib.json")


def test_calibration_file_checks(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "ann2snn.calibration", "schema_version": 99}')
    with pytest.raises(CalibrationError, match="version"):
        Calibration.read(bad)
    bad.write_text("not json")
    with pytest.raises(CalibrationError, match="invalid JSON"):
        Calibration.read(bad)

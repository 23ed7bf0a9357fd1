"""Streaming calibration against an oracle that sees all data at once."""
import json

import numpy as np
import onnx
import pytest

from builders import small_cnn
from conftest import run_ort
from rewrites.calibration.collect import calibrate
from rewrites.calibration.stats import CHANNEL_BINS, Calibration, ChannelFold, TensorStats
from rewrites.config import ConvertOptions
from rewrites.convert import convert_model
from ground.errors import CalibrationError
from ground.save import save_model


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


def _old_update(stats: TensorStats, values: np.ndarray) -> None:
    """TensorStats.update as it was before vectorisation (float64 binning), the oracle for the new one."""
    x = np.asarray(values).reshape(-1)
    lo, hi = float(x.min()), float(x.max())
    stats.count += x.size
    stats.minimum, stats.maximum = min(stats.minimum, lo), max(stats.maximum, hi)
    stats.total += float(x.sum(dtype=np.float64))
    stats._grow(max(abs(lo), abs(hi)))
    if stats.half_range == 0.0:
        stats.counts[stats.bins // 2] += x.size
        return
    index = np.floor((x.astype(np.float64) + stats.half_range) / stats.bin_width).astype(np.int64)
    np.clip(index, 0, stats.bins - 1, out=index)
    stats.counts += np.bincount(index, minlength=stats.bins)


def _batches(dtype=np.float32):
    """[N, C, H, W] batches whose channel ranges grow, with exact zeros, a channel that is all zero in the
    first batch, one that stays zero, and one 1e5 times narrower than the others (inside two whole bins)."""
    rng = np.random.default_rng(7)
    out = []
    for k, scale in enumerate((0.01, 1.0, 0.5, 300.0)):
        x = rng.normal(0, scale, (6, 5, 4, 3)) * rng.uniform(0.1, 3.0, (1, 5, 1, 1))
        x[x < -scale] = 0.0
        x[:, 4] = 0.0
        x[:, 3] *= 1e-5
        if k == 0:
            x[:, 1] = 0.0
        out.append(x.astype(dtype))
    return out


@pytest.mark.parametrize("bins, dtype", [(4096, np.float32), (1024, np.float32), (4096, np.float64),
                                         (64, np.float32), (12, np.float32), (64, np.float64)])
def test_vectorised_statistics_equal_the_per_channel_loop(bins, dtype):
    """Vectorised binning gives exactly the counts, ranges and extrema of the old per-channel loop: every value
    binned once on a fine grid that nests in both histograms (power-of-two bins >= the channels' 512), or
    twice otherwise; float32 arithmetic for power-of-two bins, float64 otherwise."""
    new = TensorStats("t", bins)
    old = TensorStats("t", bins)
    old_channels = [TensorStats(f"t[{c}]", CHANNEL_BINS) for c in range(5)]
    for x in _batches(dtype):
        new.update(x, 1)
        _old_update(old, x)
        for c, stats in enumerate(old_channels):
            _old_update(stats, x[:, c])
    assert new.channel_axis == 1 and len(new.channels) == 5
    for got, want in [(new, old)] + list(zip(new.channels, old_channels)):
        np.testing.assert_array_equal(got.counts, want.counts)
        assert (got.count, got.half_range, got.minimum, got.maximum) == \
            (want.count, want.half_range, want.minimum, want.maximum)
        assert got.mean == pytest.approx(want.mean, rel=1e-6, abs=1e-9)
    assert new.channels[4].counts[CHANNEL_BINS // 2] == new.channels[4].count



@pytest.mark.parametrize("bins, dtype, axis", [(4096, np.float32, 1), (1024, np.float64, 1), (64, np.float32, 1),
                                               (12, np.float32, 1), (4096, np.float32, None)])
def test_deferred_fold_equals_update(bins, dtype, axis):
    """ChannelFold (what collect() runs: fine counts per channel, merged once at the end) gives exactly the
    statistics of TensorStats.update batch by batch, channels included, through ranges that grow per channel."""
    want = TensorStats("t", bins)
    fold = ChannelFold(TensorStats("t", bins), axis)
    for x in _batches(dtype):
        want.update(x, axis)
        fold.update(x)
    got = fold.finish()
    assert (got.channels is None) == (axis is None)
    for g, w in [(got, want)] + list(zip(got.channels or [], want.channels or [])):
        np.testing.assert_array_equal(g.counts, w.counts)
        assert (g.name, g.bins, g.count, g.half_range, g.minimum, g.maximum, g.total) == \
            (w.name, w.bins, w.count, w.half_range, w.minimum, w.maximum, w.total)


def test_channels_only_update_leaves_the_whole_tensor_alone():
    stats = TensorStats("t", 64)
    stats.update_channels(_batches()[1], 1)
    assert stats.count == 0 and stats.counts.sum() == 0 and sum(c.count for c in stats.channels) == 6 * 5 * 4 * 3


def test_tiny_negative_values_land_below_zero():
    """The one place where float32 binning differs from the old float64 formula: -1e-12 with R = 4 rounded
    to 4 - 1e-12 = 4 in float64 (the bin above zero); it belongs below zero."""
    stats = TensorStats("t", 64)
    stats.update(np.array([3.0, -1e-12], np.float32))
    assert stats.half_range == 4.0 and stats.counts[31] == 1 and stats.counts[32] == 0


def test_optimised_session_exposes_the_same_observed_tensors(tmp_path):
    """calibrate() runs its session with graph optimisation on: every observed tensor is still an output and
    equals the unoptimised session's within float rounding."""
    from ground.protos import add_outputs as augment
    from rewrites.calibration.collect import observed_tensors
    from rewrites.convert import normalise, to_model
    from ground.sessions import Session

    model = small_cnn()
    graph, _ = normalise(model)
    tensors = observed_tensors(graph)
    augmented = augment(to_model(graph, model), tensors)
    x = {"input": np.random.default_rng(8).random((16, 1, 12, 12)).astype(np.float32)}
    fast = Session(augmented, "m").run(tensors, x)
    plain = Session(augmented, "m", optimize=False).run(tensors, x)
    assert len(fast) == len(tensors) == 5
    for a, b in zip(fast, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_large_model_path_feeds_weights_as_inputs(tmp_path, monkeypatch):
    """Above WEIGHTS_AS_INPUTS_ABOVE bytes of weights, calibrate() runs a weightless export that takes them as
    inputs (one copy of the weights): same tensors and statistics as the ordinary session, within float
    rounding (another GEMM kernel: extrema to 1e-5, a value may move to a neighbouring bin)."""
    from rewrites.calibration import collect

    save_model(small_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(9).random((40, 1, 12, 12)).astype(np.float32))
    want = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz", batch_size=16)
    sessions = []
    original = collect._WithWeights

    class Spy(original):
        def __init__(self, session, weights):
            sessions.append(weights)
            super().__init__(session, weights)

    monkeypatch.setattr(collect, "WEIGHTS_AS_INPUTS_ABOVE", 0)
    monkeypatch.setattr(collect, "_WithWeights", Spy)
    got = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz", batch_size=16)
    assert len(sessions) == 1 and sessions[0]
    assert sorted(got.tensors) == sorted(want.tensors)
    for name, w in want.tensors.items():
        g = got.tensors[name]
        assert (g.count, g.half_range) == (w.count, w.half_range)
        assert g.maximum == pytest.approx(w.maximum, rel=1e-5) and g.minimum == pytest.approx(w.minimum, rel=1e-5)
        assert np.abs(np.cumsum(g.counts) - np.cumsum(w.counts)).max() <= 0.001 * w.count
        assert [c.maximum for c in g.channels] == pytest.approx([c.maximum for c in w.channels], rel=1e-5)

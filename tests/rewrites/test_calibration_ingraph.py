"""Calibration of large tensors: per-channel reductions inside the onnxruntime graph and a subsampled
histogram (rewrites/calibration/observe.py)."""
import json
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from builders import small_cnn
from conftest import run_ort
from rewrites.calibration import observe as observe_module
from rewrites.calibration.collect import calibrate
from rewrites.calibration.observe import observe
from rewrites.calibration.stats import Calibration, TensorStats
from ground.errors import CalibrationError
from ground.save import save_model
from ground.sessions import Session


def _identity_model(shape: list[int], opset: int) -> onnx.ModelProto:
    """X [N, *shape] -> Identity -> Y; X is the observed tensor."""
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N"] + shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N"] + shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("shape", [[3, 20], [4, 6, 5], [2, 3, 4, 5]])
@pytest.mark.parametrize("opset", [13, 18])  # ReduceMin/ReduceMax axes: attribute before 18, input from 18
def test_in_graph_reductions_equal_numpy(shape, opset, monkeypatch):
    monkeypatch.setattr(observe_module, "SAMPLE_ABOVE", 8)
    model = _identity_model(shape, opset)
    graph = gs.import_onnx(model)
    plan = observe(graph, ["X"], batch_size=7, bins=4096)
    (p,) = plan
    assert p.sampled and len(p.outputs) == 7
    exported = gs.export_onnx(graph)
    exported.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.INT32 if o.endswith("ids.out")
                                                               else TensorProto.FLOAT, None) for o in p.outputs)
    x = (np.random.default_rng(opset).normal(-1.0, 3.0, [7] + shape)).astype(np.float32)
    floor = np.linspace(-1.0, 2.0, shape[0], dtype=np.float32).reshape([1, shape[0]] + [1] * (len(shape) - 1))
    outputs = Session(exported, "m").run(p.outputs, {"X": x, p.floor: floor})
    # candidates for the top values: exactly the values above their channel's floor, with their channel
    above = x > floor
    np.testing.assert_array_equal(outputs[5], x[above])
    np.testing.assert_array_equal(outputs[6], np.broadcast_to(np.arange(shape[0]).reshape(floor.shape), x.shape)[above])
    np.testing.assert_allclose(outputs[4].astype(np.float64).sum(axis=0),
                               (x.astype(np.float64).reshape(7, shape[0], -1) ** 2).sum(axis=(0, 2)), rtol=1e-5)
    sample, (lows, highs, sums, per_channel), ids = p.fold_args(outputs)
    by_channel = x.reshape(7, shape[0], -1)
    np.testing.assert_array_equal(lows, by_channel.min(axis=(0, 2)))
    np.testing.assert_array_equal(highs, by_channel.max(axis=(0, 2)))
    np.testing.assert_allclose(sums, by_channel.astype(np.float64).sum(axis=(0, 2)), rtol=1e-5, atol=1e-4)
    assert per_channel == 7 * math.prod(shape[1:]) and (lows < 0).any()
    np.testing.assert_array_equal(sample, x.reshape(-1)[::p.step])
    np.testing.assert_array_equal(ids, (np.arange(x.size)[::p.step] // math.prod(shape[1:])) % shape[0])
    assert math.prod(shape) % p.step != 0  # coprime: consecutive samples are sampled at shifted positions


def _structured_images(n: int, seed: int) -> np.ndarray:
    """[n, 1, 12, 12] images with a bright centre and a dark border, like the example's."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:12, :12]
    centre = np.exp(-((yy - 5.5) ** 2 + (xx - 5.5) ** 2) / 12.0)
    return (rng.random((n, 1, 12, 12)) * centre * rng.uniform(0.5, 2.0, (n, 1, 1, 1))).astype(np.float32)


def test_subsampled_histogram_percentiles_within_sampling_error(tmp_path, monkeypatch):
    """Batch 64 of 12x12 maps is 9,216 values per channel, above SAMPLE_ABOVE = 4096: those tensors are
    subsampled.
    Count, extrema exact, mean to float rounding; the q-th percentile of the binned values lies within five
    standard errors of the binomial proportion (5 sqrt(q (1 - q) / binned), in probability) of the exact
    q-th percentile of all values, plus one bin."""
    monkeypatch.setattr(observe_module, "SAMPLE_ABOVE", 4096)
    model = small_cnn()
    x = _structured_images(640, 1)
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x)
    calibration = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz", batch_size=64)
    oracle = onnx.ModelProto()
    oracle.CopyFrom(model)
    for name in calibration.tensors:
        oracle.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    values = dict(zip([o.name for o in oracle.graph.output], run_ort(oracle, {"input": x})))
    sampled = [s for s in calibration.tensors.values() if s.binned < s.count]
    assert len(sampled) == 3 and len(sampled) < len(calibration.tensors)  # 12x12 maps; 6x6 ones whole
    for name, stats in calibration.tensors.items():
        v = values[name].astype(np.float64)
        assert stats.count == v.size
        assert stats.maximum == pytest.approx(v.max(), rel=1e-5) and stats.minimum == pytest.approx(v.min(), rel=1e-5)
        assert stats.mean == pytest.approx(v.mean(), rel=1e-4, abs=1e-6)
        assert stats.counts.sum() == stats.binned
        for q in (99.0, 99.9):
            band = 100 * 5 * math.sqrt(q / 100 * (1 - q / 100) / stats.binned)
            low, high = np.percentile(v, [q - band, min(q + band, 100.0)])
            assert low - stats.bin_width <= stats.percentile(q) <= high + stats.bin_width, (name, q)
        for c, channel in enumerate(stats.channels):
            assert channel.maximum == pytest.approx(v[:, c].max(), rel=1e-5)
            assert channel.count == v[:, c].size and channel.counts.sum() == channel.binned
    # the file says how many values each histogram holds, and reads back the same
    path = tmp_path / "c.json"
    path.write_text(calibration.to_json())
    body = json.loads(path.read_text())["tensors"][sampled[0].name]
    assert body["histogram"]["binned"] == sampled[0].binned
    again = Calibration.read(path).tensors[sampled[0].name]
    assert again.binned == sampled[0].binned and again.percentile(99.0) == sampled[0].percentile(99.0)


def test_small_batches_stay_exact(tmp_path):
    """At most SAMPLE_ABOVE values per channel in a batch: every value binned, no 'binned' in the file."""
    save_model(small_cnn(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=_structured_images(40, 2))
    calibration = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz", batch_size=16)
    assert all(s.binned == s.count for s in calibration.tensors.values())
    assert '"binned"' not in calibration.to_json()


def test_binned_field_is_checked(tmp_path):
    stats = TensorStats("t", bins=8)
    stats.update(np.array([1.0, -2.0, 3.0]))
    body = {"schema": "ann2snn.calibration", "schema_version": 1, "model": {"fingerprint": "f"}, "samples": 1,
            "tensors": {"t": stats.to_json()}}
    path = tmp_path / "c.json"
    body["tensors"]["t"]["histogram"]["binned"] = 2  # counts add up to 3
    path.write_text(json.dumps(body))
    with pytest.raises(CalibrationError, match="do not add up to binned"):
        Calibration.read(path)
    body["tensors"]["t"]["histogram"]["binned"] = 4
    path.write_text(json.dumps(body))
    with pytest.raises(CalibrationError, match="more than count"):
        Calibration.read(path)


def _nan_model() -> onnx.ModelProto:
    """input [N,1,12,12] -> Sqrt (NaN where negative) -> Conv 1x1 (2 channels) -> Relu"""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, -1.0])
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["input"], ["s"]), helper.make_node("Conv", ["s", "w"], ["c"]),
         helper.make_node("Relu", ["c"], ["y"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 12, 12])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("batch_size", [64, 4])  # sampled (9,216 values per channel) and whole (576)
def test_nan_inside_the_graph_is_one_line_error(tmp_path, batch_size, monkeypatch):
    monkeypatch.setattr(observe_module, "SAMPLE_ABOVE", 4096)
    save_model(_nan_model(), tmp_path / "m.onnx")
    x = np.abs(_structured_images(128, 3))
    x[100, 0, 3, 7] = -1.0  # sqrt(-1): NaN in one value of the observed tensor
    np.savez(tmp_path / "d.npz", x=x)
    with pytest.raises(CalibrationError, match="holds NaN or infinite values") as caught:
        calibrate(tmp_path / "m.onnx", tmp_path / "d.npz", batch_size=batch_size)
    assert "\n" not in str(caught.value)


def test_what_leaves_onnxruntime_is_bounded(tmp_path, monkeypatch):
    """Per batch, a sampled tensor returns 4 [N, C] reductions, about SAMPLE_ABOVE values per channel, and the
    candidates for its top values: once the floors have risen (the last of 10 batches), about the kept share
    of the batch (1.25% for exact p99), not the batch."""
    from rewrites.calibration import collect

    returned = {}
    original = collect.calibration_session

    class Spy:
        def __init__(self, session, side):
            self.session, self.side = session, side

        def run(self, outputs, feeds):
            values = self.session.run(outputs, feeds)
            returned.setdefault(self.side, []).append(sum(v.size for v in values))
            return values

    monkeypatch.setattr(observe_module, "SAMPLE_ABOVE", 4096)
    for side in (12, 24):
        monkeypatch.setattr(collect, "calibration_session", lambda *a, side=side: Spy(original(*a), side))
        model = _nan_model()
        for v in list(model.graph.input) + list(model.graph.output):
            v.type.tensor_type.shape.dim[2].dim_value = v.type.tensor_type.shape.dim[3].dim_value = side
        save_model(model, tmp_path / f"m{side}.onnx")
        np.savez(tmp_path / f"d{side}.npz", x=np.random.default_rng(4).random((640, 1, side, side)).astype(np.float32))
        calibrate(tmp_path / f"m{side}.onnx", tmp_path / f"d{side}.npz", batch_size=64)
    channels = 1 + 2  # observed: the input (Sqrt's range) and the Conv output
    for side in (12, 24):
        batch = 64 * channels * side * side
        bound = channels * (4 * 64 + observe_module.SAMPLE_ABOVE) + 2 + 2 * 3 * 0.0125 * batch
        assert returned[side][0] > batch  # the first batch: every value a candidate
        assert returned[side][-1] <= bound, (side, returned[side])

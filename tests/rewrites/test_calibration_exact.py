"""Exact high percentiles by streaming selection (stats.TopFold, candidates computed in the graph), shards
merged into one calibration, and old calibration files.

Convention: percentile(q) is numpy's np.percentile(values, q, method='higher'). The calibration session runs
the normalised graph (BatchNormalization folded, fused kernels), the oracle the model as built: values agree
to float32 rounding, hence rel=1e-5 rather than equality."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from ann2snn_cli.app import app
from builders import small_cnn
from conftest import run_ort
from rewrites.calibration import observe as observe_module
from rewrites.calibration.collect import calibrate
from rewrites.calibration.stats import Calibration, TopFold, TopValues
from ground.errors import CalibrationError
from ground.save import save_model


def _data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 1, 12, 12)) * rng.uniform(0.5, 2.0, (n, 1, 1, 1))).astype(np.float32)


def _activations(model: onnx.ModelProto, names, x: np.ndarray) -> dict[str, np.ndarray]:
    oracle = onnx.ModelProto()
    oracle.CopyFrom(model)
    for name in names:
        oracle.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    values = dict(zip([o.name for o in oracle.graph.output], run_ort(oracle, {"input": x})))
    return {n: values[n].astype(np.float64) for n in names}


@pytest.mark.parametrize("sample_above", [2**16, 1024])  # every tensor output whole; every one read in the graph
def test_percentiles_equal_numpy_exactly(tmp_path, monkeypatch, sample_above):
    monkeypatch.setattr(observe_module, "SAMPLE_ABOVE", sample_above)
    model, x = small_cnn(), _data(300, 1)
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x)
    cal = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz", batch_size=32)
    values = _activations(model, cal.tensors, x)
    for name, s in cal.tensors.items():
        v = values[name]
        tol = 1e-6 * np.abs(v).max()  # float32 rounding of the fused graph, absolute near zero
        assert s.count == v.size and s.std == pytest.approx(v.std(), rel=1e-5)
        for q in (99.0, 99.5, 99.9, 99.99):
            assert s.exact(q), (name, q)
            assert s.percentile(q) == pytest.approx(np.percentile(v, q, method="higher"), rel=1e-5, abs=tol), (name, q)
        for c, ch in enumerate(s.channels):
            for q in (99.0, 99.9):
                assert ch.exact(q), (name, c, q)
                assert ch.percentile(q) == pytest.approx(np.percentile(v[:, c], q, method="higher"), rel=1e-5, abs=tol)
    path = tmp_path / "c.json"
    path.write_text(cal.to_json())
    again = Calibration.read(path)
    for name, s in cal.tensors.items():
        assert again.tensors[name].percentile(99.9) == s.percentile(99.9)
        assert again.tensors[name].channels[1].percentile(99.0) == s.channels[1].percentile(99.0)


def test_convert_percentile_thresholds_are_numpy_percentiles(tmp_path):
    """`convert --norm percentile:99.9` thresholds = max(p99.9 of the ReLU's input over all data, 0) to 1e-5
    relative (float32 storage)."""
    model, x = small_cnn(), _data(200, 2)
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x)
    runner = CliRunner()
    r = runner.invoke(app, ["calibrate", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                            "-o", str(tmp_path / "c.json"), "--batch-size", "16"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.json"),
                            "--norm", "percentile:99.9", "-o", str(tmp_path / "s.onnx")])
    assert r.exit_code == 0, r.output
    snn = onnx.load(tmp_path / "s.onnx")
    relu_inputs = {n.name: n.input[0] for n in model.graph.node if n.op_type == "Relu"}
    thresholds = {i.name[:-len(".threshold")]: float(numpy_helper.to_array(i))
                  for i in snn.graph.initializer if i.name.endswith(".threshold")}
    assert set(thresholds) == set(relu_inputs)
    values = _activations(model, relu_inputs.values(), x)
    for node, theta in thresholds.items():
        want = max(np.percentile(values[relu_inputs[node]], 99.9, method="higher"), 0.0)
        assert theta == pytest.approx(want, rel=1e-5), node


def test_two_shards_merged_equal_one_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(observe_module, "SAMPLE_ABOVE", 1024)
    model, x = small_cnn(), _data(320, 3)
    save_model(model, tmp_path / "m.onnx")
    for name, part in (("all", x), ("a", x[:192]), ("b", x[192:])):  # shards end on batch boundaries
        np.savez(tmp_path / f"{name}.npz", x=part)
    one = calibrate(tmp_path / "m.onnx", tmp_path / "all.npz", batch_size=32)
    shards = [calibrate(tmp_path / "m.onnx", tmp_path / f"{s}.npz", batch_size=32) for s in "ab"]
    for i, s in enumerate(shards):  # through the file, as shards travel
        (tmp_path / f"{i}.json").write_text(s.to_json())
    merged = Calibration.merge([Calibration.read(tmp_path / f"{i}.json") for i in range(2)])
    assert merged.samples == one.samples
    for name, s in one.tensors.items():
        m = merged.tensors[name]
        for a, b in [(s, m)] + list(zip(s.channels, m.channels)):
            assert (a.count, a.minimum, a.maximum, a.binned, a.half_range) == (b.count, b.minimum, b.maximum,
                                                                                b.binned, b.half_range)
            np.testing.assert_array_equal(a.counts, b.counts)
            assert a.total == pytest.approx(b.total, rel=1e-12, abs=1e-9)
            assert a.total_sq == pytest.approx(b.total_sq, rel=1e-12)
            for q in (99.0, 99.9, 99.99):
                assert b.exact(q) and a.percentile(q) == b.percentile(q), (a.name, q)


def test_top_fold_floor_and_merge_are_exact():
    rng = np.random.default_rng(5)
    data = [rng.normal(size=(40, 3, 50)).astype(np.float32) * (1 + i % 3) for i in range(30)]
    fold = TopFold(500, 3, 200)
    for x in data:
        floors = fold.floors()
        ids = np.broadcast_to(np.arange(3)[None, :, None], x.shape).reshape(-1)
        keep = x.reshape(-1) > floors[ids]  # what the graph returns
        fold.update(x.reshape(-1)[keep], ids[keep])
    whole, channels = fold.finish()
    everything = np.concatenate(data)
    np.testing.assert_array_equal(whole.values, np.sort(everything.reshape(-1))[::-1][:500])
    assert whole.exact_rank == 500
    for c, t in enumerate(channels):
        np.testing.assert_array_equal(t.values, np.sort(everything[:, c].reshape(-1))[::-1][:200])
    parts = [TopValues(np.sort(p)[::-1][:50], float(np.sort(p)[::-1][49]), 50) for p in
             (everything[:500, 0, 0], everything[500:, 0, 0])]
    merged = TopValues.merge(parts)
    truth = np.sort(everything[:, 0, 0])[::-1]
    np.testing.assert_array_equal(merged.values[:merged.exact_rank], truth[:merged.exact_rank])


def test_top_fold_of_whole_blocks_with_ties_is_exact():
    """update_blocks (every value, tested against its channel's floor by broadcast) and the per-channel
    trimming keep, per channel, the multiset of the k largest values, ties at the k-th included, and the
    whole tensor's; the data repeats values (rounded to 1/8) so that trims cut through ties."""
    rng = np.random.default_rng(11)
    data = [np.round(rng.normal(size=(16, 5, 30)) * 8 * (1 + i % 4)).astype(np.float32) / 8 for i in range(40)]
    fold = TopFold(300, 5, 120)
    for x in data:
        fold.update_blocks(x)
    whole, channels = fold.finish()
    everything = np.concatenate(data)
    np.testing.assert_array_equal(whole.values, np.sort(everything.reshape(-1))[::-1][:300])
    for c, t in enumerate(channels):
        truth = np.sort(everything[:, c].reshape(-1))[::-1]
        np.testing.assert_array_equal(t.values, truth[:120])
        assert t.floor == truth[119]


def test_version_1_files_still_read(tmp_path):
    model, x = small_cnn(), _data(64, 4)
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x)
    cal = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz", batch_size=32)
    body = json.loads(cal.to_json())
    body["schema_version"] = 1

    def strip(t):
        t.pop("top", None), t.pop("sum_sq", None)
        for c in t.get("channels", {}).get("stats", []):
            strip(c)
    for t in body["tensors"].values():
        strip(t)
    (tmp_path / "v1.json").write_text(json.dumps(body))
    old = Calibration.read(tmp_path / "v1.json")
    name = next(iter(cal.tensors))
    s, o = cal.tensors[name], old.tensors[name]
    assert not o.exact(99.9) and s.exact(99.9)
    assert abs(o.percentile(99.9) - s.percentile(99.9)) <= o.bin_width  # the histogram, within a bin
    body["schema_version"] = 3
    (tmp_path / "v3.json").write_text(json.dumps(body))
    with pytest.raises(CalibrationError, match="schema version 3.*reads versions 1, 2.*recalibrate"):
        Calibration.read(tmp_path / "v3.json")

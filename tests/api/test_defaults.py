"""`ann2snn convert MODEL` as users run it: no calibration file, no tuning flags (ann2snn/conversion.py,
ann2snn/tune.py).

- A QCFS network converts from its graph alone: signed neurons, T = L, L drain steps recorded in the file;
  stepped by the contract with snn.drive = 0 for those steps, it is the ANN (closed form, tests/sim/test_drain.py).
- A plain network without data is refused before anything is written, naming --data.
- With --data, each ReLU layer's options are chosen by their measured error: the choice is recorded, it is
  never worse than the default setting on the same recorded input, and the file's decoded output is closer
  to the ANN than the old default's (percentile 99, IF neurons) at the same T."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from builders import small_cnn
from conftest import run_ort
from rewrites.calibration.stats import Calibration
from sim.engine import NumpyEngine
from sim.model import load_spiking
from sim.simulate import window_for
from spiking_helpers import step_by_contract
from test_cli import assert_bad_input, files, invoke, ok
from test_drain import L, deep_qcfs


def _meta(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_a_qcfs_network_converts_from_its_graph_and_drains_to_the_ann(tmp_path):
    model = deep_qcfs()
    ann_path, snn = tmp_path / "qcfs.onnx", tmp_path / "qcfs.snn.onnx"
    onnx.save(model, ann_path)
    ok(invoke("convert", ann_path))
    meta = _meta(snn)
    assert meta["ann2snn.default_T"] == str(L) and meta["ann2snn.drain_steps"] == str(L)
    layers = json.loads(meta["ann2snn.layers"])
    assert {l["neuron"] for l in layers if "neuron" in l} == {"signed"}
    assert {l["tmax"] for l in layers if l.get("neuron") == "signed"} == {"steps"}
    # read after drain steps, the file declares snn.drive without a default: a runtime must feed it, and
    # onnxruntime lists it among the inputs (an input with an initializer it hides)
    assert "snn.drive" not in {t.name for t in onnx.load(str(snn)).graph.initializer}
    session = ort.InferenceSession(str(snn), providers=["CPUExecutionProvider"])
    assert "snn.drive" in [i.name for i in session.get_inputs()]
    x = np.random.default_rng(0).normal(0, 1.5, (64, 6)).astype(np.float32)
    (ann,) = run_ort(model, {"input": x})
    # exact once every layer has settled (within L + 1 steps of the one before it: tests/sim/test_drain.py)
    decoded = step_by_contract(snn, {"input": x}, L, 4 * L)
    np.testing.assert_allclose(decoded, ann, atol=1e-4)
    window = window_for(load_spiking(snn), None, None, None)
    assert (window.T, window.extra_t, window.drain) == (L, L, True)  # simulate follows the file


def test_a_plain_network_without_data_is_refused_naming_data(tmp_path):
    ann_path = tmp_path / "net.onnx"
    onnx.save(small_cnn(), ann_path)
    before = files(tmp_path)
    result = invoke("convert", ann_path)
    assert_bad_input(result, before, tmp_path, targets=[tmp_path / "net.snn.onnx"],
                     mentions=["--data", "ann2snn calibrate"])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults")
    model = small_cnn()
    ann_path, data = root / "net.onnx", root / "calib.npz"
    onnx.save(model, ann_path)
    x = np.random.default_rng(0).random((96, 1, 12, 12)).astype(np.float32)
    np.savez(data, x=x)
    snn, summary, saved = root / "net.snn.onnx", root / "convert.json", root / "net.calib.json"
    ok(invoke("convert", ann_path, "--data", data, "--save-calib", saved, "--json", summary))
    return root, model, ann_path, data, x, snn, json.loads(summary.read_text()), saved


def test_defaults_are_chosen_per_layer_and_recorded(tuned):
    root, model, ann_path, data, x, snn, report, saved = tuned
    assert report["default_T"] == 8 and report["calibration"] == str(data)
    chosen = report["chosen"]
    relus = [n.name for n in model.graph.node if n.op_type == "Relu"]
    assert sorted(chosen) == sorted(relus)
    for entry in chosen.values():
        assert entry["neuron"] in ("if", "signed") and entry["candidates"] > 10
        assert entry["measured_error"] <= entry["default_error"]  # the default setting is a candidate
    layers = {l["node"]: l for l in json.loads(_meta(snn)["ann2snn.layers"])}
    for node, entry in chosen.items():
        assert layers[node]["chosen"] == entry
        assert layers[node]["neuron"] == entry["neuron"] and layers[node]["phi"] == entry["phi"]
    assert Calibration.read(saved).samples == len(x)


def test_chosen_defaults_beat_the_old_default_on_the_ann(tuned, tmp_path):
    """Decoded output at T = 8 on the calibration samples, relative L2 error to the ANN: the tuned file
    against percentile:99 IF neurons per tensor (the default before) and against --calib reuse."""
    root, model, ann_path, data, x, snn, report, saved = tuned
    old = tmp_path / "old.snn.onnx"
    ok(invoke("convert", ann_path, "--calib", saved, "--norm", "percentile:99", "--neuron", "if", "--T", 8,
              "-o", old))
    (ann,) = run_ort(model, {"input": x})

    def error(path):
        m = load_spiking(path)
        decoded = NumpyEngine(m).run({"input": x}, 8).outputs[m.outputs[0]].mean(axis=0)
        return np.linalg.norm(decoded - ann) / np.linalg.norm(ann)

    assert error(snn) < error(old)


def test_simulate_says_when_it_departs_from_the_file(tuned):
    root, model, ann_path, data, x, snn, report, saved = tuned
    result = ok(invoke("simulate", snn, "--data", data, "--T", 16, "--json", "-"))
    out = json.loads(result.stdout)
    assert out["T"] == 16 and any("converted for T = 8" in n for n in out["notes"])
    assert "converted for T = 8" in result.stderr
    assert not json.loads(ok(invoke("simulate", snn, "--data", data, "--json", "-")).stdout)["notes"]


def test_demo_runs_the_pipeline_and_says_where_its_files_are(tmp_path):
    """README's first command: calibrate, convert with the defaults, simulate; --out-dir keeps the files."""
    kept = tmp_path / "kept"
    result = ok(invoke("demo", "--limit", 100, "--out-dir", kept))
    assert {"model.calib.json", "model.snn.onnx"} <= set(files(kept))
    assert "3/3 simulate" in result.stdout and "temporary folder" not in result.stdout
    assert _meta(kept / "model.snn.onnx")["ann2snn.default_T"] == "8"

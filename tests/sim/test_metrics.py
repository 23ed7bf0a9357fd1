"""Figures of a simulation against closed forms: silent/saturated shares, latency, SynOps and energy; the
accuracy gates and the plot option of the CLI."""
import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from ann2snn_cli.app import app
from builders import ModelBuilder
from sim.energy import E_AC_PJ, E_MAC_PJ
from sim.engine import LayerSpikes
from sim.metrics import Accumulator
from sim.simulate import simulate
from spiking_helpers import convert_with_data


def test_silent_and_saturated_shares_closed_form(tmp_path):
    """input -> Relu with theta = 1, phi = 1/2, T steps: x <= 0 never fires; x >= 1 fires at every step; a neuron
    with 0 < x < 1/(2T) stays silent too, since floor(T x + 1/2) = 0."""
    T = 16
    x = np.array([[-1.0, 0.0, 0.5 / T - 1 / 256, 0.25, 0.5, 1.0]], np.float32)
    b = ModelBuilder()
    model = b.build({"input": [6]}, [b.node("Relu", ["input"])])
    snn, _ = convert_with_data(model, x, tmp_path, "max")
    np.savez(tmp_path / "d.npz", x=x)
    for engine in ("numpy", "onnxruntime"):
        layer = simulate(snn, tmp_path / "d.npz", T, engine=engine).layers[0]
        assert layer.silent == pytest.approx(3 / 6) and layer.saturated == pytest.approx(1 / 6)
        counts = np.clip(np.floor(T * x.astype(np.float64) + 0.5), 0, T)
        assert layer.spikes_per_neuron == pytest.approx(counts.mean())


def test_latency_closed_form():
    """Predictions over 4 steps for three samples: (a) right from t=1, (b) final from t=3, (c) equals the final
    class at t=1, leaves it at t=2 and is back from t=3."""
    steps = np.zeros((4, 3, 2), np.float32)
    steps[:, 0] = [0, 1]
    steps[:, 1] = [[2, 0], [0, 0], [0, 9], [0, 9]]
    steps[:, 2] = [[0, 1], [9, 0], [0, 9], [0, 9]]
    acc = Accumulator(4)
    acc.add(steps, None, None, {})
    assert acc.first_final == 1 + 3 + 1
    assert acc.settled == 1 + 3 + 3


def test_layer_spikes_from_counts():
    layer = LayerSpikes("n", "IFNeuron", 0)
    layer.add_counts(np.array([[0, 4, 2], [4, 0, 0]]), steps=4)
    assert (layer.neurons, layer.spikes, layer.silent, layer.saturated) == (3, 10, 3, 2)


def test_synops_and_energy_closed_form(tmp_path):
    """input[8] -> Gemm(8->32) -> Relu -> Gemm(32->4): the first Gemm sees the analog input, so it is dense at
    every step (256 MACs x T); the second costs 128 MACs per spike per input neuron."""
    b = ModelBuilder(3)
    model = b.build({"input": [8]}, [b.gemm(b.node("Relu", [b.gemm("input", 8, 32)]), 32, 4)])
    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path)
    np.savez(tmp_path / "d.npz", x=x)
    T = 10
    report = simulate(snn, tmp_path / "d.npz", T)
    e, layer = report.energy, report.layers[0]
    assert e["ann_macs"] == 8 * 32 + 32 * 4
    assert e["snn_macs"] == 8 * 32 * T
    assert e["synops"] == pytest.approx(32 * 4 * layer.spikes_per_neuron)
    assert e["ann_energy_uJ"] == pytest.approx(e["ann_macs"] * E_MAC_PJ * 1e-6)
    assert e["snn_energy_uJ"] == pytest.approx((e["snn_macs"] * E_MAC_PJ + e["synops"] * E_AC_PJ) * 1e-6)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gates")
    b = ModelBuilder(4)
    model = b.build({"input": [6]}, [b.gemm(b.node("Relu", [b.gemm("input", 6, 16)]), 16, 3)])
    x = np.random.default_rng(1).normal(size=(30, 6)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp)
    from conftest import run_ort
    labels = run_ort(model, {"input": x})[0].argmax(1)
    np.savez(tmp / "labelled.npz", x=x, y=labels.astype(np.int64))
    return tmp, snn


def run(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_gates_pass_and_fail(converted):
    tmp, snn = converted
    base = ["simulate", snn, "--data", tmp / "labelled.npz", "--T", 8, "--ann", tmp / "model.onnx"]
    assert run(base + ["--min-accuracy", 0, "--max-drop", 100]).exit_code == 0
    failed = run(base + ["--min-accuracy", 100.5, "--json", tmp / "r.json"])
    assert failed.exit_code == 1 and "gate failed: accuracy" in failed.stderr
    report = json.loads((tmp / "r.json").read_text())
    assert report["gates"]["failed"] and report["gates"]["min_accuracy"] == 100.5
    # labels are the ANN's own predictions, so the ANN scores 100%: any spiking error is a drop
    drop = 100 * (1 - report["accuracy"][-1])
    assert run(base + ["--max-drop", drop + 0.01]).exit_code == 0
    if drop > 0:
        assert run(base + ["--max-drop", drop - 0.01]).exit_code == 1


def test_gates_need_labels_and_ann(converted):
    tmp, snn = converted
    np.savez(tmp / "unlabelled.npz", x=np.zeros((3, 6), np.float32))
    no_labels = run(["simulate", snn, "--data", tmp / "unlabelled.npz", "--min-accuracy", 50])
    assert no_labels.exit_code == 2 and no_labels.stderr.startswith("error: ")
    no_ann = run(["simulate", snn, "--data", tmp / "labelled.npz", "--max-drop", 1])
    assert no_ann.exit_code == 2 and "--ann" in no_ann.stderr


def test_plot_without_matplotlib_is_a_clear_error(converted, monkeypatch):
    import sys
    tmp, snn = converted
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run(["simulate", snn, "--data", tmp / "labelled.npz", "--T", 4, "--plot", tmp / "p.png"])
    assert result.exit_code == 2 and "matplotlib" in result.stderr and not (tmp / "p.png").exists()


def test_plot_draws_several_runs(converted):
    pytest.importorskip("matplotlib")
    tmp, snn = converted
    assert run(["simulate", snn, "--data", tmp / "labelled.npz", "--T", 4, "--json", tmp / "a.json"]).exit_code == 0
    result = run(["simulate", snn, "--data", tmp / "labelled.npz", "--T", 8, "--plot", tmp / "p.png",
                  "--plot-with", tmp / "a.json"])
    assert result.exit_code == 0
    assert (tmp / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""Per-layer conversion error, until-silent stopping and the extra_t sweep."""
import numpy as np
import pytest

from builders import ModelBuilder, small_cnn
from sim.simulate import Analyses, simulate, sweep_extra_t
from spiking_helpers import convert_with_data


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cnn")
    x = np.random.default_rng(0).random((40, 1, 12, 12)).astype(np.float32)
    snn, _ = convert_with_data(small_cnn(), x, tmp, "percentile:99")
    from conftest import run_ort
    import onnx
    labels = run_ort(onnx.load(tmp / "model.onnx"), {"input": x})[0].argmax(1)
    np.savez(tmp / "labelled.npz", x=x, y=labels.astype(np.int64))
    return tmp, snn


@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_layer_error_decomposition(cnn, engine):
    """Clipping + quantisation + unevenness = total for every layer; the first IF layer sees a constant
    current under direct coding, so its rate IS the ideal quantised value: unevenness exactly 0."""
    tmp, snn = cnn
    report = simulate(snn, tmp / "labelled.npz", 16, engine=engine, ann_path=tmp / "model.onnx",
                      analyses=Analyses(layer_error=True))
    rows = report.layer_error["layers"]
    assert len(rows) == 4
    for r in rows:
        assert r["clipping"] + r["quantisation"] + r["unevenness"] == pytest.approx(r["mean_error"], abs=1e-9)
    assert rows[0]["unevenness"] == 0.0
    worst = max(rows, key=lambda r: r["relative_rms_error"])
    assert report.layer_error["worst_layer"] == worst["node"]


def test_layer_error_engines_agree(cnn):
    tmp, snn = cnn
    a, b = (simulate(snn, tmp / "labelled.npz", 8, engine=e, ann_path=tmp / "model.onnx",
                     analyses=Analyses(layer_error=True)).layer_error for e in ("numpy", "onnxruntime"))
    for ra, rb in zip(a["layers"], b["layers"]):
        assert ra["mean_error"] == pytest.approx(rb["mean_error"], abs=1e-6)


def test_layer_error_needs_the_ann(cnn):
    from ground.errors import Ann2SnnError
    tmp, snn = cnn
    with pytest.raises(Ann2SnnError, match="needs the ANN"):
        simulate(snn, tmp / "labelled.npz", 8, analyses=Analyses(layer_error=True))


def test_until_silent_stops_when_nothing_fires(tmp_path):
    """input -> Relu -> output, no bias: with zero input no neuron can fire again after the T input steps
    (the membrane stays below threshold), so every sample stops at step T + 1."""
    b = ModelBuilder()
    model = b.build({"input": [5]}, [b.node("Relu", ["input"])])
    x = np.random.default_rng(1).random((12, 5)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path, "max")
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(12, np.int64))
    for engine in ("numpy", "onnxruntime"):
        u = simulate(snn, tmp_path / "d.npz", 6, engine=engine, analyses=Analyses(until_silent=5)).until_silent
        assert u["mean_steps"] == 7 and u["share_capped"] == 0


def test_until_silent_caps_a_network_driven_by_biases(tmp_path):
    """A bias equal to the threshold (the calibrated max, as the data is zero) drives the neuron to fire at every
    step with zero input: every sample hits the cap."""
    b = ModelBuilder()
    y = b.node("Relu", [b.node("Add", ["input", b.const(np.full(3, 0.5))])])
    model = b.build({"input": [3]}, [y])
    x = np.zeros((4, 3), np.float32)
    snn, _ = convert_with_data(model, x, tmp_path, "max")
    np.savez(tmp_path / "d.npz", x=x)
    u = simulate(snn, tmp_path / "d.npz", 4, analyses=Analyses(until_silent=3)).until_silent
    assert u["mean_steps"] == 7 and u["share_capped"] == 1


def test_sweep_extra_t_grid(cnn):
    tmp, snn = cnn
    grid = sweep_extra_t(snn, tmp / "labelled.npz", [1, 2, 4], 2)
    assert grid["t"] == [1, 2, 4] and grid["extra_t"] == [0, 1, 2]
    for t, row in zip(grid["t"], grid["accuracy"]):
        plain = simulate(snn, tmp / "labelled.npz", t)
        assert row[0] == plain.accuracy[-1]
        with_extra = simulate(snn, tmp / "labelled.npz", t, extra_t=2)
        assert row[1:] == with_extra.accuracy_all[t:t + 2]


def test_layer_error_of_a_neuron_whose_input_a_normalising_pass_made(tmp_path):
    """HardSigmoid becomes Clip(alpha x + beta, 0, 1): the neuron's input is a new tensor, its output the
    ANN's. The total is still measured, not split. Fed a constant current (the Gemm reads the input), the IF
    neuron with phi = 1/2 is the ideal quantiser: |a - r| <= theta / (2T), theta <= 1 (the calibrated max
    of the clipped output, measured on these samples)."""
    b = ModelBuilder(seed=3)
    y = b.gemm(b.node("HardSigmoid", [b.gemm("input", 6, 5)]), 5, 3)
    model = b.build({"input": [6]}, [y])
    x = np.random.default_rng(2).normal(0, 2, (24, 6)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path, "max")
    np.savez(tmp_path / "d.npz", x=x)
    T = 16
    for engine in ("numpy", "onnxruntime"):
        [row] = simulate(snn, tmp_path / "d.npz", T, engine=engine, ann_path=tmp_path / "model.onnx",
                         analyses=Analyses(layer_error=True)).layer_error["layers"]
        assert "skipped" not in row and "clipping" not in row and "made by a normalising pass" in row["undivided"]
        assert 0 < row["rms_error"] <= 1 / (2 * T) + 1e-6

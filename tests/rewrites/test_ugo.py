"""UGO fits (rewrites/ugo.py) against the functions they replace, and the spiking UGO subnet against the float
function as T grows."""
import math

import numpy as np
import onnx
import pytest

from builders import ModelBuilder
from rewrites import ugo
from rewrites.config import ConvertOptions
from sim.metrics import running_mean
from spiking_helpers import both_engines, convert_with_data

erf = np.vectorize(math.erf)
SAMPLES = np.random.default_rng(0).normal(0.0, 2.0, 20000)


@pytest.mark.parametrize("name, f", [
    ("leaky_relu", lambda x: np.where(x > 0, x, 0.1 * x)),
    ("abs", np.abs),
    ("clip", lambda x: np.clip(x, -1.0, 2.0)),
    ("hard_sigmoid", lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0)),
])
@pytest.mark.parametrize("size", [4, 16])
def test_piecewise_linear_functions_come_out_exact(name, f, size):
    """Their kinks become knots, so the fit is the function itself on the range (float64 rounding only)."""
    fit = ugo.fit(f, SAMPLES, size)
    x = np.linspace(SAMPLES.min(), SAMPLES.max(), 10001)
    assert fit.size <= size
    assert np.abs(fit(x) - f(x)).max() < 1e-9
    assert fit.max_error < 1e-9


@pytest.mark.parametrize("name, f, d2max", [
    ("gelu", lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))), 0.8),  # |GELU''| <= 2 phi(0) < 0.8
    ("tanh", np.tanh, 0.77),  # |tanh''| <= 4 / (3 sqrt 3)
    ("exp", np.exp, None),
])
def test_smooth_functions_within_the_interpolation_bound(name, f, d2max):
    """Linear interpolation errs by at most h^2/8 max|f''| on a piece of width h; the least-squares knot values
    may trade up to that much again for a smaller mean error, hence the factor 2."""
    for size in (8, 64):
        fit = ugo.fit(f, SAMPLES, size)
        h = np.diff(fit.knots)
        curvature = d2max if d2max is not None else float(np.exp(fit.knots[1:]).max())
        assert fit.max_error <= 2 * float((h ** 2).max()) / 8 * curvature + 1e-12
    assert ugo.fit(f, SAMPLES, 64).max_error < ugo.fit(f, SAMPLES, 8).max_error


def test_hidden_units_sum_to_the_piecewise_linear_function_everywhere():
    """The network form (clipped hidden units, slopes, offset) equals the interpolant inside the range and
    holds the end values outside it."""
    fit = ugo.fit(np.tanh, SAMPLES, 16)
    x = np.linspace(SAMPLES.min() - 5, SAMPLES.max() + 5, 5001)
    np.testing.assert_allclose(fit.hidden_sum(x), fit(x), atol=1e-12)


def test_default_sizes_follow_sta():
    assert ugo.default_size(["Gelu"]) == 64
    assert ugo.default_size(["Sub", "Exp"]) == 32
    assert ugo.default_size(["Reciprocal"]) == 64
    assert ugo.default_size(["Add", "Sqrt", "Reciprocal"]) == 8


def _unary_model(op: str, **attrs) -> onnx.ModelProto:
    """input [N, 16] -> Gemm -> op -> Gemm -> output."""
    b = ModelBuilder(opset=20)
    h = b.node(op, [b.gemm("input", 16, 16)], **attrs)
    return b.build({"input": [16]}, [b.gemm(h, 16, 4)])


def _decoded_error(result, out: str, ann: np.ndarray) -> np.ndarray:
    mean = running_mean(result.outputs[out])
    return np.abs(mean - ann).reshape(len(mean), -1).max(axis=1) / np.abs(ann).max()


@pytest.mark.parametrize("op, attrs", [("Gelu", {}), ("Tanh", {}), ("LeakyRelu", {"alpha": 0.1}),
                                       ("Sigmoid", {})])
def test_spiking_ugo_converges_to_the_function(tmp_path, op, attrs):
    """The signed hidden neurons' rates approach clip(x - k, 0, theta) at about theta/(2t): the decoded error
    must fall as T grows, to within the fit error plus a quantisation term at T = 256."""
    from ground.sessions import Session
    model = _unary_model(op, **attrs)
    x = np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)
    snn, result = convert_with_data(model, x, tmp_path)
    (fit,) = result.ugo_fits
    ann = Session(model, "ann").run(None, {"input": x})[0]
    numpy_run, ort_run, out = both_engines(snn, x, 256)
    err = _decoded_error(numpy_run, out, ann)
    assert err[255] < err[15] < err[3]
    assert err[255] < 0.02
    # the engines agree up to spikes moved by one step where float rounding differs at a threshold
    assert _decoded_error(ort_run, out, running_mean(numpy_run.outputs[out])[-1])[-1] < 1e-3


@pytest.mark.parametrize("name, f, samples", [
    ("reciprocal", lambda x: 1.0 / x, np.exp(np.random.default_rng(2).uniform(np.log(1e-5), np.log(10.0), 20000))),
    ("exp", np.exp, np.random.default_rng(3).uniform(-25.0, 0.0, 20000)),
])
def test_functions_spanning_decades_are_fitted_for_relative_error(name, f, samples):
    """Softmax multiplies exp by 1/sum: both span decades and only relative error matters. With log-even
    knots a piece of ratio r errs by about (r - 1)^2 / 8 relative: 1/x over 6 decades with 64 pieces,
    r = 1.24, about 0.7%; exp over 25 units, pieces of 0.39, about 1.9%. 5% bounds both."""
    fit = ugo.fit(f, samples, 64)
    assert fit.relative
    assert fit.max_relative_error < 0.05
    assert np.all(np.abs(fit(samples) - f(samples)) <= 0.05 * np.abs(f(samples)))


def test_ugo_output_sum_counts_as_synops_not_as_ann_macs(tmp_path):
    """input [N, 16] -> Gemm 16x16 -> Gelu -> Gemm 16x4: the ANN's MACs are 16*16 + 16*4 whatever the UGO adds;
    its output sum (hidden spikes times slopes) is fed by spikes."""
    from sim.energy import estimate
    from sim.engine import NumpyEngine
    from sim.model import load_spiking
    x = np.random.default_rng(1).normal(size=(16, 16)).astype(np.float32)
    snn_path, result = convert_with_data(_unary_model("Gelu"), x, tmp_path)
    (fit,) = result.ugo_fits
    snn = load_spiking(snn_path)
    run = NumpyEngine(snn).run({"input": x}, 4)
    report = estimate(snn, {n: (s.spikes, s.neurons) for n, s in run.spikes.items()}, len(x), 4)
    assert report.ann_macs == 16 * 16 + 16 * 4
    (row,) = [r for r in report.layers if r["node"] == fit["sum_node"]]
    assert not row["in_ann"] and row["input"] == "spikes" and row["synops"] > 0


def test_exp_of_masked_scores_is_fitted_where_it_does_not_vanish():
    """An additive attention mask puts -3.4e38 among the scores: spread over that range the 64 knots would
    miss every real score. Below exp = 1e-12 of its peak (x < -27.6) the fit holds about 0 instead."""
    rng = np.random.default_rng(4)
    samples = np.concatenate([rng.uniform(-10.0, 0.0, 5000), np.full(500, -3.4e38), [0.0]])
    fit = ugo.fit(np.exp, samples, 64)
    assert -28.0 < fit.knots[0] < -27.0 and fit.knots[-1] == 0.0
    assert fit.max_relative_error < 0.05
    assert fit(np.array([-3.4e38]))[0] < 1e-11

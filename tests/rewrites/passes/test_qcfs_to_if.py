"""qcfs_to_if: every exported spelling of the QCFS activation becomes one IF neuron, and the spiking model at
T = L reproduces the QCFS network.

Closed form (seed 004). An IF neuron with soft reset, threshold theta and v(0) = phi * theta receives the
constant input z at every step; N_t spikes by step t. Claim: N_t = clip(floor(t z / theta + phi), 0, t).
- 0 <= z <= theta: by induction the membrane after step t is v_t = phi theta + t z - theta N_t and lies in
  [0, theta): true at t = 0 (phi < 1); at step t + 1, m = v_t + z lies in [0, 2 theta), the neuron fires iff
  m >= theta, and v_{t+1} = m - theta s lies in [0, theta) again, so N_{t+1} = floor((phi theta + (t+1) z) /
  theta).
- z < 0: the membrane only falls, no spike; floor(t z / theta + phi) <= 0, clipped to 0.
- z > theta: m >= phi theta + z > theta at every step, a spike every step; floor(...) >= t, clipped to t.
The mean output after t steps is theta N_t / t; at t = L with theta = lambda and phi = 1/2 (or 0) it is
lambda / L * clip(floor(L z / lambda + 1/2), 0, L) = h(z), the QCFS activation (clip-floor for phi = 0).
Inputs are kept away from the quantisation boundaries (fractional part of z L / lambda + phi in [0.1, 0.9])
so that float rounding cannot flip a floor.
"""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from builders import ModelBuilder, small_cnn
from conftest import REPO, run_ort
from rewrites.config import ConvertOptions, Neuron
from rewrites.convert import normalise
from rewrites.export import export_spiking
from ground.protos import fingerprint
from ground.save import save_model
from snnfile import DOMAIN
from rewrites.passes import PassContext, run_passes
from rewrites.passes import qcfs_to_if
from rewrites.patterns.qcfs import qcfs_levels
from spiking_helpers import both_engines


# ------------------------------------------------------------------------------------------------------
# the spellings of h(x) = lam * clip(floor(x * L / lam + shift) / L, 0, 1)
# ------------------------------------------------------------------------------------------------------
def _const_node(b: ModelBuilder, value) -> str:
    """A Constant node (as the classic exporter writes scalars) rather than an initializer."""
    return b.node("Constant", [], value=numpy_helper.from_array(np.array(value, np.float32)))


def _shift(b, x, shift, use_sub=False):
    if not shift:
        return x
    if use_sub:
        return b.node("Sub", [x, b.const(-0.5)])
    return b.node("Add", [x, _const_node(b, 0.5)])


def classic(b, x, lam, L, shift):
    """torch.onnx classic exporter of QCFS/MyFloor: lambda is an initializer of shape [1], the rest Constant nodes."""
    up = b.const([lam], "up")
    x = b.node("Mul", [b.node("Div", [x, up]), _const_node(b, float(L))])
    x = b.node("Floor", [_shift(b, x, shift)])
    x = b.node("Clip", [b.node("Div", [x, _const_node(b, float(L))]), _const_node(b, 0.0), _const_node(b, 1.0)])
    return b.node("Mul", [x, up])


def dynamo(b, x, lam, L, shift):
    """dynamo exporter (onnxscript's aten_clamp is Max then Min; constants are initializers)."""
    up = b.const([lam], "up")
    x = b.node("Mul", [b.node("Div", [x, up]), b.const(float(L))])
    x = b.node("Floor", [b.node("Add", [x, b.const(0.5)]) if shift else x])
    x = b.node("Div", [x, b.const(float(L))])
    x = b.node("Min", [b.node("Max", [x, b.const(0.0)]), b.const(1.0)])
    return b.node("Mul", [x, up])


def reciprocal(b, x, lam, L, shift):
    """multiplications by reciprocals instead of divisions, scalar operands first."""
    x = b.node("Mul", [b.const(L), b.node("Mul", [b.const(1.0 / lam), x])])
    x = b.node("Floor", [_shift(b, x, shift, use_sub=True)])
    x = b.node("Clip", [b.node("Mul", [x, b.const(1.0 / L)]), b.const(0.0), b.const(1.0)])
    return b.node("Mul", [b.const(lam), x])


def folded(b, x, lam, L, shift):
    """the scales folded into one constant each side; the clamp in output units, Min before Max."""
    x = b.node("Floor", [_shift(b, b.node("Mul", [x, b.const(L / lam)]), shift)])
    x = b.node("Mul", [x, b.const(lam / L)])
    return b.node("Max", [b.node("Min", [x, b.const(lam)]), b.const(0.0)])


def relu_min(b, x, lam, L, shift):
    """lower clamp as Relu, upper as Min."""
    x = b.node("Floor", [_shift(b, b.node("Mul", [b.node("Div", [x, b.const(lam)]), b.const(L)]), shift)])
    x = b.node("Min", [b.node("Relu", [b.node("Div", [x, b.const(L)])]), b.const(1.0)])
    return b.node("Mul", [x, b.const(lam)])


def preclamp(b, x, lam, L, shift):
    """clamp before the floor: lam * floor(clip(x / lam, 0, 1) * L + shift) / L."""
    x = b.node("Clip", [b.node("Div", [x, b.const(lam)]), b.const(0.0), b.const(1.0)])
    x = b.node("Floor", [_shift(b, b.node("Mul", [x, b.const(L)]), shift)])
    return b.node("Mul", [b.node("Div", [x, b.const(L)]), b.const(lam)])


def preclamp_folded(b, x, lam, L, shift):
    """clamp in input units before the floor, one constant each side: floor(clip(x, 0, lam) * (L / lam) + shift)
    * (lam / L). lam * float32(L / lam) is L only up to rounding: the floor of the bound must tolerate it."""
    x = b.node("Mul", [b.node("Clip", [x, b.const(0.0), b.const(lam)]), b.const(L / lam)])
    return b.node("Mul", [b.node("Floor", [_shift(b, x, shift)]), b.const(lam / L)])


def ste(b, x, lam, L, shift):
    """straight-through floor x + (floor(x) - x).detach() exported as Floor, Sub, Add."""
    u = _shift(b, b.node("Mul", [b.node("Div", [x, b.const(lam)]), b.const(L)]), shift)
    w = b.node("Add", [u, b.node("Sub", [b.node("Floor", [u]), u])])
    w = b.node("Clip", [b.node("Div", [w, b.const(L)]), b.const(0.0), b.const(1.0)])
    return b.node("Mul", [w, b.const(lam)])


FORMS = {"classic": classic, "dynamo": dynamo, "reciprocal": reciprocal, "folded": folded,
         "relu_min": relu_min, "preclamp": preclamp, "preclamp_folded": preclamp_folded, "ste": ste}
CASES = [(form, shift) for form in FORMS for shift in (True, False)]


def direct_model(form, lam, L, shift, k=(2, 3, 3), opset=17):
    """input [N, *k] -> QCFS -> output: the output layer is the IF neuron itself."""
    b = ModelBuilder(opset=opset)
    return b.build({"input": list(k)}, [FORMS[form](b, "input", lam, L, shift)])


def gemm_model(form, lam, L, shift, seed=0):
    """input [N, 6] -> Gemm(8) -> QCFS -> Gemm(5) -> output."""
    b = ModelBuilder(seed)
    x = FORMS[form](b, b.gemm("input", 6, 8), lam, L, shift)
    return b.build({"input": [6]}, [b.gemm(x, 8, 5)])


def convert(model, options=None):
    graph, _ = normalise(model)
    reports = run_passes(graph, (qcfs_to_if.PASS,), PassContext(options or ConvertOptions()))
    return graph, reports[0]


def to_spiking(model, tmp_path, T, neuron=Neuron.IF):
    options = ConvertOptions(default_T=T, neuron=neuron)
    graph, report = convert(model, options)
    snn = export_spiking(graph, model, options, report.layers, fingerprint(model))
    path = tmp_path / "model.snn.onnx"
    save_model(snn, path)
    return path, report


def off_boundary(rng, shape, lam, L, shift):
    """Inputs whose z L / lam + shift has fractional part in [0.1, 0.9], below, inside and above [0, lam]."""
    k = rng.integers(-2, L + 3, size=shape)
    return ((k + rng.uniform(0.1, 0.9, size=shape) - (0.5 if shift else 0.0)) * lam / L).astype(np.float32)


def qcfs_reference(z, lam, L, shift):
    return lam / L * np.clip(np.floor(z.astype(np.float64) * L / lam + (0.5 if shift else 0.0)), 0, L)


# ------------------------------------------------------------------------------------------------------
# structure
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form, shift", CASES)
def test_each_form_becomes_one_if_neuron(form, shift):
    graph, report = convert(gemm_model(form, 2.5, 4, shift))
    assert [n.op for n in graph.nodes] == ["Gemm", "IFNeuron", "Gemm"]
    neuron = graph.nodes[1]
    assert neuron.domain == DOMAIN
    assert float(neuron.inputs[1].values) == pytest.approx(2.5, rel=1e-6)  # threshold = lambda
    assert float(neuron.inputs[2].values) == pytest.approx(2.5 * (0.5 if shift else 1.0), rel=1e-6)
    assert not report.skipped and len(report.layers) == 1
    layer = report.layers[0]
    assert (layer["from"], layer["L"], layer["shift"], layer["phi"]) == ("QCFS", 4, shift, 0.5 if shift else 0.0)
    assert layer["threshold"] == pytest.approx(2.5, rel=1e-6) and "Floor" in layer["form"]


def test_relu_graph_is_left_alone():
    model = small_cnn()
    graph, _ = normalise(model)
    before = [n.op for n in graph.nodes]
    graph, report = convert(model)
    assert [n.op for n in graph.nodes] == before
    assert not report.converted and not report.skipped and not report.layers
    assert qcfs_levels(graph) is None


def _skipped(model):
    graph, report = convert(model)
    assert "Floor" in [n.op for n in graph.nodes] and "IFNeuron" not in [n.op for n in graph.nodes]
    assert not report.converted and len(report.skipped) == 1
    return report.skipped[0][1]


def test_inconsistent_scales_are_skipped_with_the_reason():
    """x / 2 * 4 + 1/2 -> floor -> / 3 -> clip(0, 1) * 2: 4 steps of lambda 2 going in, 3 steps coming out.
    No sub-chain is QCFS either (the input scale of any prefix is 1, 4 or 2; the output needs 3 or 3/2)."""
    b = ModelBuilder()
    x = b.node("Floor", [b.node("Add", [b.node("Mul", [b.node("Div", ["input", b.const(2.0)]), b.const(4.0)]),
                                       b.const(0.5)])])
    x = b.node("Mul", [b.node("Clip", [b.node("Div", [x, b.const(3.0)]), b.const(0.0), b.const(1.0)]),
                       b.const(2.0)])
    reason = _skipped(b.build({"input": [4]}, [x]))
    assert "not inverse" in reason and "Div Mul Add Floor Div Clip Mul" in reason


def test_scaled_qcfs_keeps_the_outer_scalings(tmp_path):
    """x / 2 * 4 + 1/2 -> floor -> / 4 -> clip(0, 1) * 3 is 3 * QCFS(x / 2) with lambda 1, L 4: the inner
    chain becomes the neuron, Div(2) and Mul(3) stay as linear ops, and T = L is still exact."""
    b = ModelBuilder()
    x = b.node("Floor", [b.node("Add", [b.node("Mul", [b.node("Div", ["input", b.const(2.0)]), b.const(4.0)]),
                                       b.const(0.5)])])
    x = b.node("Mul", [b.node("Clip", [b.node("Div", [x, b.const(4.0)]), b.const(0.0), b.const(1.0)]),
                       b.const(3.0)])
    model = b.build({"input": [2, 3, 3]}, [x])
    graph, report = convert(model)
    assert [n.op for n in graph.nodes] == ["Div", "IFNeuron", "Mul"]
    assert (report.layers[0]["L"], report.layers[0]["threshold"]) == (4, 1.0)
    x = 2 * off_boundary(np.random.default_rng(0), (16, 2, 3, 3), 1.0, 4, True)
    (ann,) = run_ort(model, {"input": x})
    snn, _ = to_spiking(model, tmp_path, 4)
    for run in both_engines(snn, x, 4)[:2]:
        np.testing.assert_allclose(next(iter(run.outputs.values())).mean(axis=0), ann, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("what, expected", [("shift", "neither 1/2"), ("no_upper", "no upper clamp"),
                                            ("no_lower", "no lower clamp"), ("fraction", "not a whole number"),
                                            ("offset", "offset")])
def test_other_floor_chains_are_skipped_with_the_reason(what, expected):
    b = ModelBuilder()
    u = b.node("Mul", [b.node("Div", ["input", b.const(2.0)]), b.const(4.0)])
    k = b.node("Floor", [b.node("Add", [u, b.const(0.3 if what == "shift" else 0.5)])])
    if what == "offset":  # floor + 1: the output starts at lambda / L, not 0
        k = b.node("Add", [k, b.const(1.0)])
    x = b.node("Div", [k, b.const(4.0)])
    if what == "no_upper":
        x = b.node("Relu", [x])
    elif what == "no_lower":
        x = b.node("Min", [x, b.const(1.0)])
    else:
        x = b.node("Clip", [x, b.const(0.0), b.const(0.9 if what == "fraction" else 1.0)])
    x = b.node("Mul", [x, b.const(2.0)])
    assert expected in _skipped(b.build({"input": [4]}, [x]))


def test_unrelated_scaling_before_and_after_is_left_alone():
    """Gemm -> Mul(0.5) -> QCFS -> Add(1) -> Gemm: the walk sees Mul and Add but replaces only the QCFS part."""
    b = ModelBuilder()
    x = b.node("Mul", [b.gemm("input", 6, 8), b.const(0.5)])
    x = b.node("Add", [classic(b, x, 2.0, 4, True), b.const(1.0)])
    graph, report = convert(b.build({"input": [6]}, [b.gemm(x, 8, 5)]))
    assert [n.op for n in graph.nodes] == ["Gemm", "Mul", "IFNeuron", "Add", "Gemm"]
    assert report.layers[0]["form"] == "Div Mul Add Floor Div Clip Mul"


def test_shared_intermediate_tensor_stops_the_chain():
    """The Floor's input is also a graph output: nothing can be removed, the Floor is skipped."""
    b = ModelBuilder()
    u = b.node("Add", [b.node("Mul", [b.node("Div", ["input", b.const(2.0)]), b.const(4.0)]), b.const(0.5)])
    x = b.node("Mul", [b.node("Clip", [b.node("Div", [b.node("Floor", [u]), b.const(4.0)]), b.const(0.0),
                                       b.const(1.0)]), b.const(2.0)])
    # u has a second reader: the walk back stops at Floor, and floor(u) alone is not QCFS of u's producer
    y = b.node("Mul", [u, b.const(3.0)])
    reason = _skipped(b.build({"input": [4]}, [x, y]))
    assert "not inverse" in reason or "not a whole number" in reason


def test_back_to_back_chains_and_levels():
    """Two QCFS activations in a row (L = 4 then L = 8): two neurons; qcfs_levels is None when L differ."""
    b = ModelBuilder()
    x = dynamo(b, classic(b, b.gemm("input", 6, 8), 2.0, 4, True), 3.0, 8, False)
    model = b.build({"input": [6]}, [b.gemm(x, 8, 5)])
    graph, _ = normalise(model)
    assert qcfs_levels(graph) is None
    graph, report = convert(model)
    assert [n.op for n in graph.nodes] == ["Gemm", "IFNeuron", "IFNeuron", "Gemm"]
    assert [(l["L"], l["shift"], round(l["threshold"], 5)) for l in report.layers] == [(4, True, 2.0),
                                                                                     (8, False, 3.0)]
    graph, _ = normalise(gemm_model("classic", 2.0, 8, True))
    assert qcfs_levels(graph) == 8


# ------------------------------------------------------------------------------------------------------
# function: the spiking model at T = L against onnxruntime on the QCFS graph
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form, shift", CASES)
@pytest.mark.parametrize("lam, L", [(2.5, 4), (0.75, 8), (1.3, 4)])  # 1.3 * float32(4 / 1.3) < 4 in float64
def test_decoded_output_at_T_equals_L_is_the_qcfs_output(tmp_path, form, shift, lam, L):
    model = direct_model(form, lam, L, shift)
    x = off_boundary(np.random.default_rng(L), (32, 2, 3, 3), lam, L, shift)
    (ann,) = run_ort(model, {"input": x})
    np.testing.assert_allclose(ann, qcfs_reference(x, lam, L, shift), rtol=1e-6, atol=1e-6)
    snn, _ = to_spiking(model, tmp_path, L)
    numpy_run, ort_run, out = both_engines(snn, x, L)
    for run in (numpy_run, ort_run):
        np.testing.assert_allclose(run.outputs[out].mean(axis=0), ann, rtol=1e-6, atol=1e-6 * lam)
    np.testing.assert_array_equal(numpy_run.outputs[out], ort_run.outputs[out])


@pytest.mark.parametrize("shift", [True, False])
def test_signed_neuron_option(tmp_path, shift):
    """options.neuron = signed: one SignedIFNeuron per chain (tmax = T); with a constant input it fires no
    negative spike, so T = L still gives the QCFS output."""
    lam, L = 1.3, 4
    graph, report = convert(gemm_model("classic", lam, L, shift), ConvertOptions(default_T=L, neuron=Neuron.SIGNED))
    assert [n.op for n in graph.nodes] == ["Gemm", "SignedIFNeuron", "Gemm"]
    assert (report.layers[0]["neuron"], report.layers[0]["tmax"]) == ("signed", L)
    model = direct_model("dynamo", lam, L, shift)
    x = off_boundary(np.random.default_rng(1), (32, 2, 3, 3), lam, L, shift)
    (ann,) = run_ort(model, {"input": x})
    snn, _ = to_spiking(model, tmp_path, L, Neuron.SIGNED)
    for run in both_engines(snn, x, L)[:2]:
        np.testing.assert_allclose(next(iter(run.outputs.values())).mean(axis=0), ann, rtol=1e-6, atol=1e-6 * lam)


@pytest.mark.parametrize("shift, opset", [(True, 17), (False, 17), (True, 11)])
def test_spike_count_closed_form_at_every_t(tmp_path, shift, opset):
    """N_t = clip(floor(t z / lambda + phi), 0, t) for t = 1 .. 3L (the derivation above), exact. Opset 11:
    Clip bounds as inputs, the IF body without GreaterOrEqual."""
    lam, L = 2.0, 4  # z multiples of 1/64 and lambda a power of two: float32 is exact here
    rng = np.random.default_rng(3)
    x = (rng.integers(-64, 192, size=(16, 2, 3, 3)) / 64.0).astype(np.float32)
    snn, _ = to_spiking(direct_model("classic", lam, L, shift, opset=opset), tmp_path, L)
    T = 3 * L
    steps = np.arange(1, T + 1, dtype=np.float64).reshape(-1, 1, 1, 1, 1)
    expected = np.clip(np.floor(steps * x[None] / lam + (0.5 if shift else 0.0)), 0, steps)
    numpy_run, ort_run, out = both_engines(snn, x, T)
    for run in (numpy_run, ort_run):
        np.testing.assert_array_equal(np.cumsum(run.outputs[out], axis=0) / lam, expected)


def test_gemm_network_at_T_equals_L(tmp_path):
    """Gemm -> QCFS -> Gemm: the first layer's input is the same at every step, so the decoded logits at T = L
    are the ANN's up to float rounding of the second Gemm."""
    lam, L = 1.5, 4
    model = gemm_model("dynamo", lam, L, True, seed=2)
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    gemm = model.graph.node[0]
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (200, 6)).astype(np.float32)
    z = x.astype(np.float64) @ w[gemm.input[1]].T.astype(np.float64) + w[gemm.input[2]]
    u = z * L / lam + 0.5
    x = x[np.all(np.abs(u - np.round(u)) > 1e-3, axis=1)][:64]
    assert len(x) >= 32
    (ann,) = run_ort(model, {"input": x})
    snn, _ = to_spiking(model, tmp_path, L)
    numpy_run, ort_run, out = both_engines(snn, x, L)
    for run in (numpy_run, ort_run):
        np.testing.assert_allclose(run.outputs[out].mean(axis=0), ann, rtol=1e-5, atol=1e-5 * np.abs(ann).max())


# ------------------------------------------------------------------------------------------------------
# the committed QCFS examples (examples/make_qcfs_example.py)
# ------------------------------------------------------------------------------------------------------
EXAMPLES = [REPO / "examples" / f"fmnist_qcfs_L{L}" for L in (4, 8)]


@pytest.mark.parametrize("folder", EXAMPLES, ids=lambda p: p.name)
def test_example_chains_become_if_neurons(folder: Path):
    """Every exported form in the folder (model.onnx: classic exporter; model_dynamo.onnx: dynamo, where the
    environment that made it had onnxscript): five QCFS chains -> five IF neurons, no Floor left."""
    paths = sorted(folder.glob("model*.onnx"))
    if not paths:
        pytest.skip(f"{folder.relative_to(REPO)} has no model")
    for path in paths:
        model = onnx.load(path)
        meta = {p.key: p.value for p in model.metadata_props}
        L = int(meta["qcfs_L"])
        n_floor = sum(n.op_type == "Floor" for n in model.graph.node)
        graph, _ = normalise(model)
        assert qcfs_levels(graph) == L, path.name
        graph, report = convert(model)
        ops = [n.op for n in graph.nodes]
        assert "Floor" not in ops and not report.skipped, path.name
        assert ops.count("IFNeuron") == n_floor == len(report.layers) == 5, path.name
        assert "Clip" not in ops and "Div" not in ops and "Max" not in ops and "Min" not in ops, path.name
        assert all(l["L"] == L and l["shift"] and l["threshold"] > 0 for l in report.layers), path.name

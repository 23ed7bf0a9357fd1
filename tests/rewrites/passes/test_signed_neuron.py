"""The signed (two-type) IF neuron, SignedIFNeuron: its exact rounding property through the NumPy kernel and
through onnxruntime running the exported function body, spikes taken back, and end to end (`convert --neuron
signed`: both engines agree, the file passes the full ONNX check, the metadata records neuron and tmax)."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from builders import ModelBuilder, small_cnn
from rewrites.calibration.collect import calibrate
from ground.save import save_model
from snnfile.bodies import function_body
from snnfile.operators import SIGNED_IF_NEURON
from sim.neurons import if_neuron, signed_if_neuron
from spiking_helpers import both_engines, convert_with_data

LEVELS = ("threshold", "fire_level", "unfire_level", "tmax")


def levels(theta: float, phi: float, tmax: int) -> list[np.ndarray]:
    """threshold, fire_level = theta - v_init, unfire_level = -v_init, tmax; v_init = phi * theta."""
    return [np.array(v, np.float32) for v in (theta, theta * (1 - phi), -theta * phi, tmax)]


class BodyStepper:
    """onnxruntime running the SignedIFNeuron function body alone, one step per call, state fed back."""

    def __init__(self, shape: list[int], opset: int):
        node = helper.make_node("SignedIFNeuron", ["x", *LEVELS, "v", "count"], ["y", "v_next", "count_next"],
                                domain="ai.ann2snn")
        value = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
        graph = helper.make_graph(
            [node], "g", [value("x", shape), *(value(n, []) for n in LEVELS), value("v", shape), value("count", shape)],
            [value("y", shape), value("v_next", shape), value("count_next", shape)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                        helper.make_opsetid("ai.ann2snn", 1)],
                                  functions=[function_body(SIGNED_IF_NEURON, opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        self.shape = shape

    def run(self, xs: np.ndarray, consts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """xs [T, ...] -> outputs [T, ...] and the final net count."""
        v, count = np.zeros(self.shape, np.float32), np.zeros(self.shape, np.float32)
        ys = []
        for x in xs:
            y, v, count = self.session.run(None, {"x": x, **dict(zip(LEVELS, consts)), "v": v, "count": count})
            ys.append(y)
        return np.stack(ys), count


@pytest.mark.parametrize("theta, tmax, opset", [(1.0, 4, 17), (0.5, 6, 11), (2.0, 3, 13)])
def test_final_count_is_rounded_total_clamped_whatever_the_order(theta, tmax, opset):
    """With phi = 1/2 and enough silent steps, the net count is clamp(floor(total/theta + 1/2), 0, tmax) for
    any order of the same per-step inputs.

    Why, and how many silent steps: the membrane u and the count S keep u + S*theta = theta/2 + (inputs so far).
    With zero input, a step fires +1 iff u >= theta and S < tmax, which implies S + 1 <= target; it fires -1
    iff u < 0 and S > 0, which implies S - 1 >= target; and it is idle iff S = target (0 <= u < theta gives
    S = floor(total/theta + 1/2) exactly; u >= theta with S = tmax, or u < 0 with S = 0, are the clamped
    cases). So each silent step moves S one unit towards the target; S and the target both lie in [0, tmax],
    hence tmax silent steps always suffice. Inputs are multiples of theta/8 with theta a power of two, so
    float32 is exact and the match must be exact (including totals at k + 1/2, which round up)."""
    rng = np.random.default_rng(int(theta * 10) + tmax)
    n_in, neurons, orders = 7, 48, 5
    base = rng.integers(-12, 13, size=(n_in, neurons))  # in units of theta/8; totals range over +-10.5 theta
    base[:, 0] = [4, 0, 0, 0, 0, 0, 0]  # total theta/2: rounds up to 1
    base[:, 1] = [12, -8, 0, 0, 0, 0, 0]  # total theta/2 after a spike taken back
    perms = np.stack([rng.permuted(base, axis=0) for _ in range(orders)], axis=1)  # [n_in, orders, neurons]
    xs = np.zeros((n_in + tmax,) + perms.shape[1:], np.float32)
    xs[:n_in] = perms * (theta / 8)
    total = base.sum(0) / 8.0  # in units of theta
    expected = np.broadcast_to(np.clip(np.floor(total + 0.5), 0, tmax), perms.shape[1:])
    consts = levels(theta, 0.5, tmax)

    out, events = signed_if_neuron([xs, *consts], {}, len(xs))
    np.testing.assert_array_equal(out.sum(0) / theta, expected)
    np.testing.assert_array_equal(events, np.count_nonzero(out, axis=0))
    assert set(np.unique(out)) <= {-theta, 0.0, theta}

    stepped, count = BodyStepper(list(xs.shape[1:]), opset).run(xs, consts)
    np.testing.assert_array_equal(stepped, out)
    np.testing.assert_array_equal(count, expected)
    assert (expected == 0).any() and (expected == tmax).any() and ((expected > 0) & (expected < tmax)).any()


@pytest.mark.parametrize("opset", [11, 17])
def test_an_early_spike_is_taken_back(opset):
    """x = theta then -theta: v(0) = theta/2, step 1 reaches 3/2 theta and fires +1 (back to theta/2); step 2
    falls to -theta/2 < 0 with one spike held, so it fires -1: net count 0, two spike events. The IF neuron
    cannot take its spike back and ends at 1. A neuron that holds no spike never fires -1."""
    theta = 0.5
    xs = np.array([[theta, 0.0], [-theta, -theta], [0.0, 0.0], [0.0, 0.0]], np.float32)
    consts = levels(theta, 0.5, 8)
    out, events = signed_if_neuron([xs, *consts], {}, len(xs))
    np.testing.assert_array_equal(out / theta, [[1, 0], [-1, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(events, [2, 0])
    stepped, count = BodyStepper([2], opset).run(xs, consts)
    np.testing.assert_array_equal(stepped, out)
    np.testing.assert_array_equal(count, [0, 0])
    if_out, _ = if_neuron([xs, consts[0], consts[1]], {}, len(xs))
    assert if_out[:, 0].sum() / theta == 1


def images(n=16, seed=0):
    return np.random.default_rng(seed).random((n, 1, 12, 12)).astype(np.float32)


@pytest.mark.parametrize("extra_t", [0, 6])
def test_signed_small_cnn_engines_agree(tmp_path, extra_t):
    x = images()
    snn_path, _ = convert_with_data(small_cnn(), x, tmp_path, "percentile:99.9", neuron="signed", T=12)
    numpy_run, ort_run, out = both_engines(snn_path, x, 12, extra_t)
    np.testing.assert_allclose(numpy_run.outputs[out], ort_run.outputs[out], rtol=1e-5, atol=1e-5)
    spikes = {k: v.spikes for k, v in numpy_run.spikes.items()}
    assert spikes == {k: v.spikes for k, v in ort_run.spikes.items()}
    assert len(spikes) == 4 and all(s > 0 for s in spikes.values())


def test_signed_export_passes_full_check_and_records_neuron(tmp_path):
    x = images()
    snn_path, result = convert_with_data(small_cnn(), x, tmp_path, neuron="signed", tmax=5, T=12)
    snn = onnx.load(snn_path)
    onnx.checker.check_model(snn, full_check=True)
    assert {f.name for f in snn.functions} == {"SignedIFNeuron", "MaxPoolNeuron"}
    ops = [n.op_type for n in snn.graph.node]
    assert ops.count("SignedIFNeuron") == 4 and "IFNeuron" not in ops and "Relu" not in ops
    states = [i.name for i in snn.graph.input[1:]]
    assert sum(s.endswith(".count") for s in states) == 4
    layers = json.loads({p.key: p.value for p in snn.metadata_props}["ann2snn.layers"])
    neurons = [l for l in layers if l["op"] == "SignedIFNeuron"]
    assert len(neurons) == 4 and all(l["neuron"] == "signed" and l["tmax"] == 5 for l in neurons)
    tmax = {t.name: onnx.numpy_helper.to_array(t) for t in snn.graph.initializer if t.name.endswith(".tmax")}
    assert len(tmax) == 4 and all(v == 5 for v in tmax.values())


def test_signed_tmax_defaults_to_T_and_opset_11(tmp_path):
    """input -> Gemm -> Relu -> Gemm at opset 11 (Less/Not instead of GreaterOrEqual in the body)."""
    b = ModelBuilder(4, opset=11)
    model = b.build({"input": [6]}, [b.gemm(b.node("Relu", [b.gemm("input", 6, 16)]), 16, 3)])
    x = np.random.default_rng(5).normal(size=(20, 6)).astype(np.float32)
    snn_path, result = convert_with_data(model, x, tmp_path, neuron="signed", T=7)
    assert [l["tmax"] for l in result.layers] == [7]
    onnx.checker.check_model(onnx.load(snn_path), full_check=True)
    numpy_run, ort_run, out = both_engines(snn_path, x, 10, 4)
    np.testing.assert_allclose(numpy_run.outputs[out], ort_run.outputs[out], rtol=1e-5, atol=1e-5)
    assert {k: v.spikes for k, v in numpy_run.spikes.items()} == {k: v.spikes for k, v in ort_run.spikes.items()}


def test_cli_convert_signed(tmp_path):
    from ann2snn_cli.app import app
    model, data, calib = tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "m.calib.json"
    save_model(small_cnn(), model)
    np.savez(data, x=images())
    calib.write_text(calibrate(model, data, method="max").to_json())
    runner = CliRunner()
    result = runner.invoke(app, ["convert", str(model), "--calib", str(calib), "-o", str(tmp_path / "s.onnx"),
                                 "--neuron", "signed", "--tmax", "6", "--json", "-"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["neuron"] == "signed" and summary["tmax"] == 6
    assert summary["ops_after"]["SignedIFNeuron"] == 4
    for bad in (["--tmax", "6"], ["--neuron", "lif"]):
        result = runner.invoke(app, ["convert", str(model), "--calib", str(calib), "-o", str(tmp_path / "b.onnx"),
                                     *bad])
        assert result.exit_code == 2 and not (tmp_path / "b.onnx").exists()

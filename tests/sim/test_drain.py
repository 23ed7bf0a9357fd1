"""Drain steps (sim/drain.py): silent steps without input and without biases.

Closed form. In a QCFS network (lambda_l, L levels, shift 1/2) converted to signed IF neurons with threshold
lambda_l, v(0) = lambda_l / 2 and a budget of L spikes, layer 1 integrates L z_1 over the T = L input steps
(z_1 its ANN pre-activation). Drain steps add no charge, so with enough of them the signed neuron's net count
settles at clamp(floor(L z_1 / lambda + 1/2), 0, L) (tests/rewrites/passes/test_signed_neuron.py), its output summed over the
window is lambda times that, L h(z_1), and layer 2 integrates W_2 L h(z_1) + L b_2 = L z_2, and so on: the
output summed over the window is L times the QCFS ANN's output, decoded exactly as sum / T. Seed 000's extra
steps add every bias again at each silent step, which breaks the chain at the first layer."""
import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from builders import ModelBuilder, small_cnn
from conftest import REPO, run_ort
from rewrites import drive
from rewrites.config import Neuron
from sim.drain import bias_terms, without_biases
from sim.metrics import running_mean
from sim.model import fold_drive, SpikingModel
from spiking_helpers import both_engines, convert_with_data, step_by_contract
from test_cli import invoke as cli
from test_qcfs_to_if import classic, to_spiking

L = 4


def deep_qcfs(seed=3, levels=L):
    """input [N, 6] -> Gemm(10) -> QCFS(1.5) -> Gemm(8) -> QCFS(2.0) -> Gemm(5), every bias nonzero."""
    b = ModelBuilder(seed)
    x = classic(b, b.gemm("input", 6, 10), 1.5, levels, True)
    x = classic(b, b.gemm(x, 10, 8), 2.0, levels, True)
    return b.build({"input": [6]}, [b.gemm(x, 8, 5)])


def test_qcfs_network_at_T_equal_L_plus_drain_is_the_ann(tmp_path):
    model = deep_qcfs()
    x = np.random.default_rng(0).normal(0, 1.5, (64, 6)).astype(np.float32)
    (ann,) = run_ort(model, {"input": x})
    snn, _ = to_spiking(model, tmp_path, L, neuron=Neuron.SIGNED)
    extra = 4 * L  # each layer settles within L + 1 steps of the one before it
    numpy_run, ort_run, name = both_engines(snn, x, L, extra, drain=True)
    for run in (numpy_run, ort_run):
        decoded = running_mean(run.outputs[name], input_steps=L)[-1]
        np.testing.assert_allclose(decoded, ann, atol=1e-4)  # float32 sums of L steps against one product
    np.testing.assert_allclose(numpy_run.outputs[name], ort_run.outputs[name], atol=1e-5)
    # seed 000's silent steps keep adding the biases: the same window no longer gives the ANN
    _, biased, _ = both_engines(snn, x, L, extra, drain=False)
    decoded = running_mean(biased.outputs[name], input_steps=L)[-1]
    assert np.abs(decoded - ann).max() > 0.1


def test_the_file_drains_by_its_own_gate(tmp_path):
    """Stepped by the contract alone (snn.drive fed 0 after T steps), the exported file is the QCFS ANN at
    T = L, as the simulator finds it. Run for 2L input steps, its signed neurons' budget (the steps with
    drive) grows with it: the same closed form gives the QCFS network of 2L levels, not a collapse."""
    model = deep_qcfs()
    x = np.random.default_rng(0).normal(0, 1.5, (64, 6)).astype(np.float32)
    (ann,) = run_ort(model, {"input": x})
    snn, _ = to_spiking(model, tmp_path, L, neuron=Neuron.SIGNED)
    extra = 4 * L
    np.testing.assert_allclose(step_by_contract(snn, {"input": x}, L, extra), ann, atol=1e-4)
    numpy_run, _, name = both_engines(snn, x, L, extra, drain=True)
    np.testing.assert_allclose(running_mean(numpy_run.outputs[name], input_steps=L)[-1],
                               step_by_contract(snn, {"input": x}, L, extra), atol=1e-5)
    (finer,) = run_ort(deep_qcfs(levels=2 * L), {"input": x})
    np.testing.assert_allclose(step_by_contract(snn, {"input": x}, 2 * L, 2 * extra), finer, atol=1e-4)
    for run in both_engines(snn, x, 2 * L, 2 * extra, drain=True)[:2]:
        np.testing.assert_allclose(running_mean(run.outputs[name], input_steps=2 * L)[-1], finer, atol=1e-4)


def test_engines_agree_under_drain_on_a_residual_cnn(tmp_path):
    x = np.random.default_rng(1).uniform(0, 1, (12, 1, 12, 12)).astype(np.float32)
    snn, _ = convert_with_data(small_cnn(), x, tmp_path, neuron="signed", T=8)
    a, b, name = both_engines(snn, x, 8, 6, drain=True)
    np.testing.assert_allclose(a.outputs[name], b.outputs[name], atol=1e-5)
    plain, _, _ = both_engines(snn, x, 8, 6)
    np.testing.assert_allclose(a.outputs[name][:8], plain.outputs[name][:8], atol=1e-5)  # input steps unchanged
    assert np.abs(a.outputs[name][8:] - plain.outputs[name][8:]).max() > 1e-3


def _affine_model():
    """x [N, 1, 4, 4] -> Sub(x, m) -> Conv(+b) -> Mul(2) -> Add(c, .) -> BatchNormalization -> Flatten
    -> Gemm(beta 0.5) -> Sub(k, .) -> Add(., same signal) ; plus an int64 Add on the shape path."""
    rng = np.random.default_rng(0)
    inits = {
        "m": rng.normal(size=(1, 4, 4)), "w": rng.normal(size=(2, 1, 3, 3)), "b": rng.normal(size=2),
        "two": np.array(2.0), "c": rng.normal(size=(2, 1, 1)), "g": rng.normal(size=(32, 3)),
        "gc": rng.normal(size=3), "k": rng.normal(size=3),
        "gamma": rng.uniform(0.5, 1.5, 2), "beta": rng.normal(size=2), "mu": rng.normal(size=2),
        "var": rng.uniform(0.5, 1.5, 2),
    }
    tensors = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()]
    tensors.append(numpy_helper.from_array(np.array([0, 0], np.int64), "zero_shape"))
    nodes = [
        helper.make_node("Sub", ["x", "m"], ["centred"], name="centre"),
        helper.make_node("Conv", ["centred", "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["conv", "two"], ["scaled"], name="scale"),
        helper.make_node("Add", ["c", "scaled"], ["shifted"], name="shift"),
        helper.make_node("Shape", ["shifted"], ["shape"], name="shape"),
        helper.make_node("Slice", ["shape", "zero_start", "two_end"], ["head"], name="head"),
        helper.make_node("Add", ["head", "zero_shape"], ["same_head"], name="int_add"),
        helper.make_node("BatchNormalization", ["shifted", "gamma", "beta", "mu", "var"], ["normed"], name="bn"),
        helper.make_node("Flatten", ["normed"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "g", "gc"], ["gemm"], name="gemm", beta=0.5),
        helper.make_node("Sub", ["k", "gemm"], ["flipped"], name="flip"),
        helper.make_node("Add", ["flipped", "gemm"], ["y"], name="two_signals"),
    ]
    tensors += [numpy_helper.from_array(np.array([0], np.int64), "zero_start"),
                numpy_helper.from_array(np.array([2], np.int64), "two_end")]
    graph = helper.make_graph(nodes, "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
                               helper.make_tensor_value_info("same_head", TensorProto.INT64, [2])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _gated(proto):
    """`proto` with the converter's drain gate (rewrites/drive.py), as export_spiking adds it."""
    graph = gs.import_onnx(proto)
    report = drive.gate(graph, default_budget=False)
    graph.inputs.append(report.drive)
    model = gs.export_onnx(graph)
    model.graph.initializer.append(helper.make_tensor(drive.DRIVE, TensorProto.FLOAT, [], [1.0]))
    return model, report


def test_the_gate_covers_the_constant_additive_terms_of_signals(tmp_path):
    proto = _affine_model()
    gated, report = _gated(proto)
    # not int_add (integers on the shape path), not two_signals (no constant)
    assert sorted(report.gated) == ["bn.2", "bn.3", "centre.1", "conv.2", "flip.0", "gemm.2", "shift.0"]
    assert report.inputs == ["x"] and report.reason == ""
    model = _as_model(gated, tmp_path)
    assert [n.name for n in model.proto.graph.node] == [n.name for n in proto.graph.node]  # folded at drive 1
    terms = bias_terms(model)
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    found = {model.nodes[i].name: (t.inputs, t.offset_for(4)) for i, t in terms.items()}
    assert sorted(found) == ["bn", "centre", "conv", "flip", "gemm", "shift"]
    np.testing.assert_array_equal(found["centre"][1], -constants["m"])  # Sub(x, m) adds -m
    np.testing.assert_array_equal(found["flip"][1], constants["k"])  # Sub(k, x) adds k
    np.testing.assert_allclose(found["gemm"][1], 0.5 * constants["gc"])
    assert found["conv"][1].shape == (2, 1, 1) and found["bn"][0] == (2, 3)  # BN: its bias and mean zeroed
    # an affine graph without its constant terms is its linear part: f(x) - f(0)
    drained = without_biases(model.proto, terms)
    x = np.random.default_rng(2).normal(size=(5, 1, 4, 4)).astype(np.float32)
    y, head = run_ort(drained, {"x": x})
    y_full, _ = run_ort(proto, {"x": x})
    y_zero, _ = run_ort(proto, {"x": np.zeros_like(x)})
    np.testing.assert_allclose(y, y_full - y_zero, atol=1e-4)
    np.testing.assert_array_equal(head, [5, 2])
    # the file itself, fed drive 0: every term and the input gated, so the output is f(0) - f(0) = 0
    y_gated, _ = run_ort(gated, {"x": x, drive.DRIVE: np.array(0.0, np.float32)})
    np.testing.assert_allclose(y_gated, 0.0, atol=1e-5)
    y_open, _ = run_ort(gated, {"x": x})  # not fed: its initializer, 1
    np.testing.assert_array_equal(y_open, y_full)


def _as_model(proto, tmp_path):
    """The gated plain model read as the simulator reads a file: gate folded, gated pairs kept."""
    folded, gated = fold_drive(proto)
    constants = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    return SpikingModel(tmp_path / "m.onnx", folded, [], ["y"], [], constants, {}, gated, True)


def test_decoding_after_drain_divides_by_the_input_steps():
    per_step = np.array([[2.0], [4.0], [0.0], [6.0]])[:, None]  # [T, B=1, 1]
    np.testing.assert_allclose(running_mean(per_step)[:, 0, 0], [2, 3, 2, 3])
    np.testing.assert_allclose(running_mean(per_step, input_steps=2)[:, 0, 0], [2, 3, 3, 6])


def test_cli_drain_reaches_the_report_and_the_sweep(tmp_path):
    model = deep_qcfs()
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1.5, (40, 6)).astype(np.float32)
    (ann,) = run_ort(model, {"input": x})
    ann_path, data = tmp_path / "qcfs.onnx", tmp_path / "data.npz"
    onnx.save(model, ann_path)
    np.savez(data, input=x, y=ann.argmax(1))
    assert cli("calibrate", str(ann_path), "--data", str(data), "-o", str(tmp_path / "c.json")).exit_code == 0
    snn = tmp_path / "snn.onnx"
    assert cli("convert", str(ann_path), "--calib", str(tmp_path / "c.json"), "--neuron", "signed",
               "-o", str(snn)).exit_code == 0
    result = cli("simulate", str(snn), "--data", str(data), "--extra-t", str(4 * L), "--drain", "--ann",
                 str(ann_path), "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["drain"] is True and report["T"] == L  # QCFS sets the default T to L
    assert report["relative_error"][-1] < 1e-4 and report["accuracy"][-1] == 1.0
    result = cli("simulate", str(snn), "--data", str(data), "--sweep-extra-t", "3", "--drain",
                 "--json", str(tmp_path / "s.json"))
    assert result.exit_code == 0, result.output
    sweep = json.loads((tmp_path / "s.json").read_text())["sweep_extra_t"]
    assert sweep["drain"] is True and len(sweep["accuracy"]) == L and len(sweep["accuracy"][0]) == 4


def test_layer_error_after_drain_is_zero_for_every_qcfs_layer(tmp_path):
    """The layer-error report reads rates as sum / T after drain steps: each QCFS layer's signed neurons
    settle at the ANN's activation, so every layer's error is zero up to float32 rounding; seed 000's silent
    steps in the same window keep adding the biases, which the report books against the layers."""
    from sim.simulate import Analyses, simulate
    model = deep_qcfs()
    x = np.random.default_rng(5).normal(0, 1.5, (32, 6)).astype(np.float32)
    ann_path, data = tmp_path / "qcfs.onnx", tmp_path / "data.npz"
    onnx.save(model, ann_path)
    np.savez(data, input=x)
    snn, _ = to_spiking(model, tmp_path, L, neuron=Neuron.SIGNED)
    drained = simulate(snn, data, L, 4 * L, ann_path=ann_path, analyses=Analyses(layer_error=True), drain=True)
    rows = drained.layer_error["layers"]
    assert len(rows) == 2 and drained.layer_error["input_steps"] == L
    assert all(r["relative_rms_error"] < 1e-5 for r in rows), rows
    plain = simulate(snn, data, L, 4 * L, ann_path=ann_path, analyses=Analyses(layer_error=True))
    assert max(r["relative_rms_error"] for r in plain.layer_error["layers"]) > 0.05


def test_densenet_batchnorm_left_unfolded_drains_on_both_engines(tmp_path):
    """The torch DenseNet's pre-activation BatchNormalizations after a Concat stay unfolded: their offsets
    are bias terms too (the NumPy engine subtracts them, the onnxruntime engine zeroes their bias and mean)."""
    fixture = REPO / "tests" / "fixtures" / "torch" / "densenet_classic_op17.onnx"
    model = onnx.load(fixture)
    with np.load(fixture.parent / "image.calib.npz") as z:
        x = z["x"][:12]
    snn, _ = convert_with_data(model, x, tmp_path, neuron="signed", T=8)
    from sim.model import load_spiking
    spiking = load_spiking(snn)
    ops = {spiking.nodes[i].op_type for i in bias_terms(spiking)}
    assert "BatchNormalization" in ops
    a, b, name = both_engines(snn, x, 8, 6, drain=True)
    np.testing.assert_allclose(a.outputs[name], b.outputs[name], atol=1e-5)


def test_drain_refuses_operators_that_divide_by_the_step_count(tmp_path):
    """A product of two signals becomes SpikeMul, whose decoded value is A_t B_t / t: steps without charge
    would shrink it, so --drain is refused with a one-line error naming the node."""
    b = ModelBuilder(2)
    left, right = b.gemm("input", 6, 8), b.gemm("input", 6, 8)
    model = b.build({"input": [6]}, [b.gemm(b.node("Mul", [left, right]), 8, 3)])
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path, T=8)
    np.savez(tmp_path / "data.npz", input=x)
    result = cli("simulate", snn, "--data", tmp_path / "data.npz", "--extra-t", 4, "--drain")
    assert result.exit_code == 2
    assert "SpikeMul" in result.stderr and "divides by the step count" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) <= 2
    assert cli("simulate", snn, "--data", tmp_path / "data.npz", "--extra-t", 4).exit_code == 0


def test_ugo_subnets_drain_by_the_step_count(tmp_path):
    """input -> Gemm -> Tanh -> Gemm -> Sigmoid -> Gemm: two UGO subnets in a file that drains. Their knots
    charge through the file's StepCount, which drain steps hold at T, so the two engines and a runtime
    stepping the file by the contract alone agree through the drain steps. A UGO hidden neuron's count is a
    function of its input's sum and the step count, so it is settled at every step: with no other neuron in
    the file, drain steps change nothing (a SignedIFNeuron would still fire on what its membrane holds)."""
    b = ModelBuilder(4)
    h = b.node("Sigmoid", [b.gemm(b.node("Tanh", [b.gemm("input", 6, 12)]), 12, 12)])
    model = b.build({"input": [6]}, [b.gemm(h, 12, 3)])
    x = np.random.default_rng(2).normal(0, 1.0, (48, 6)).astype(np.float32)
    (ann,) = run_ort(model, {"input": x})
    snn, result = convert_with_data(model, x, tmp_path, T=8)
    assert len(result.ugo_fits) == 2
    assert "UGOHidden" in {n.op_type for n in onnx.load(str(snn)).graph.node}
    T, extra = 8, 8
    numpy_run, ort_run, name = both_engines(snn, x, T, extra, drain=True)
    np.testing.assert_allclose(numpy_run.outputs[name], ort_run.outputs[name], atol=1e-5)
    drained = step_by_contract(snn, {"input": x}, T, extra)
    np.testing.assert_allclose(running_mean(numpy_run.outputs[name], input_steps=T)[-1], drained, atol=1e-5)
    np.testing.assert_array_equal(drained, step_by_contract(snn, {"input": x}, T))
    assert np.abs(drained - ann).max() < 0.05 * np.abs(ann).max()  # the fits' error and T = 8's

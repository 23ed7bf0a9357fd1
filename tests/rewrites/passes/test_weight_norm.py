"""weight_norm (`convert --weight-norm`): thresholds folded into the weights give the same spikes as threshold
balancing, and neurons where the fold is not exact are left alone with the reason.

Exactness: the weight-normalised network computes every tensor divided by a product of thresholds
(conv outputs by the threshold of the neuron they feed, spikes are 1 instead of theta). When every threshold
is a power of two, each of those divisions and multiplications is exact in float32 and commutes with every
rounding of the convolutions, sums and pools (same shapes, hence the same order of operations), so the
membranes are the originals divided by theta bit for bit: the same spikes at every step, and the last
layer, fed unit spikes with weights W*theta (exact), computes exactly the original products. The tests
therefore round the calibrated maxima up to powers of two and require EQUAL spike counts and EQUAL outputs.
(With other thresholds W*theta_prev/theta rounds once per weight, ~6e-8 relative, which can flip a spike
whose membrane is within that of its threshold; the fold is then exact only in real arithmetic.)"""
import math

import numpy as np
import onnx
import pytest

from builders import ModelBuilder, small_cnn
from rewrites.calibration.collect import calibrate
from rewrites.config import ConvertOptions, Neuron, NormSpec
from rewrites.convert import convert_model
from ground.save import save_model
from spiking_helpers import both_engines


def pow2_calibration(model, x, tmp_path, scale=None):
    """Calibrate on x, then round every maximum up to a power of two (times scale[tensor] if given)."""
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x)
    calibration = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz", batch_size=8, method="max")
    for name, stats in calibration.tensors.items():
        if stats.maximum > 0:
            stats.maximum = 2.0 ** math.ceil(math.log2(stats.maximum)) * (scale or {}).get(name, 1)
    return calibration


def convert_both(model, calibration, tmp_path, neuron="if"):
    """(threshold-balanced, weight-normalised) paths and results."""
    out = []
    for weight_norm in (False, True):
        options = ConvertOptions(NormSpec.parse("max"), 0.5, 16, neuron=Neuron(neuron), weight_norm=weight_norm)
        result = convert_model(model, calibration, options)
        path = tmp_path / f"wn{int(weight_norm)}.snn.onnx"
        save_model(result.model, path)
        out.append((path, result))
    return out


def assert_same_spikes_and_outputs(tb_path, wn_path, x, T=16, extra_t=4):
    tb, wn = both_engines(tb_path, x, T, extra_t), both_engines(wn_path, x, T, extra_t)
    out = tb[2]
    for a, b in ((tb[0], wn[0]), (tb[1], wn[1])):  # numpy engine, then onnxruntime
        assert {k: v.spikes for k, v in a.spikes.items()} == {k: v.spikes for k, v in b.spikes.items()}
        assert all(v.spikes > 0 for v in a.spikes.values())
        np.testing.assert_array_equal(a.outputs[out], b.outputs[out])


def initializers(path):
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def chain_net():
    """input [N,2,8,8] -> Conv -> Relu -> Conv -> Relu -> MaxPool(2) -> Flatten -> Gemm(5)"""
    b = ModelBuilder(7)
    x = b.node("Relu", [b.conv("input", 2, 4)])
    x = b.node("Relu", [b.conv(x, 4, 4)])
    x = b.node("Flatten", [b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])])
    return b.build({"input": [2, 8, 8]}, [b.gemm(x, 4 * 4 * 4, 5)])


@pytest.mark.parametrize("neuron", ["if", "signed"])
def test_chain_weight_norm_gives_identical_spikes(tmp_path, neuron):
    model = chain_net()
    x = np.random.default_rng(8).random((12, 2, 8, 8)).astype(np.float32)
    (tb_path, tb), (wn_path, wn) = convert_both(model, pow2_calibration(model, x, tmp_path), tmp_path, neuron)
    report = next(r for r in wn.reports if r.name == "weight_norm")
    neurons = [l["node"] for l in tb.layers if "threshold" in l]
    weighted = [n.name for n in onnx.load(tb_path).graph.node if n.op_type in ("Conv", "Gemm")]
    assert not report.skipped and sorted(report.converted) == sorted(neurons + weighted)
    assert [n.op_type for n in onnx.load(wn_path).graph.node] == [n.op_type for n in onnx.load(tb_path).graph.node]
    thetas = {l["node"]: l["threshold"] for l in tb.layers if "threshold" in l}
    assert len(set(thetas.values())) > 1 or min(thetas.values()) != 1.0  # the fold really rescales
    consts = initializers(wn_path)
    for node in neurons:
        assert consts[f"{node}.threshold"] == 1.0 and consts[f"{node}.fire_level"] == 0.5
        layer = next(l for l in wn.layers if l["node"] == node)
        assert layer["weight_norm"] and layer["scale"] == thetas[node] == layer["threshold"]
    assert_same_spikes_and_outputs(tb_path, wn_path, x)


def test_small_cnn_weight_norm_gives_identical_spikes(tmp_path):
    """small_cnn has a residual Add joining the MaxPool neuron's spikes with a Conv branch before a Relu:
    folded when the two thresholds agree (the Conv branch is divided by that threshold)."""
    model = small_cnn()
    x = np.random.default_rng(9).random((12, 1, 12, 12)).astype(np.float32)
    calibration = pow2_calibration(model, x, tmp_path)
    (tb_path, tb), (wn_path, wn) = convert_both(model, calibration, tmp_path)
    thetas = [l["threshold"] for l in tb.layers if "threshold" in l]
    assert len(set(thetas)) == 1 and thetas[0] != 1.0  # all maxima round to the same power of two
    report = next(r for r in wn.reports if r.name == "weight_norm")
    assert not report.skipped and len(report.converted) == 4 + 5  # 4 neurons, 4 Conv + 1 Gemm
    assert_same_spikes_and_outputs(tb_path, wn_path, x)


def residual_net():
    """input -> Conv -> Relu(a) --------------+--> Add -> Relu(b) -> GlobalAveragePool -> Flatten -> Gemm
                           \\-> Conv ---------/"""
    b = ModelBuilder(10)
    a = b.node("Relu", [b.conv("input", 1, 4)])
    y = b.node("Relu", [b.node("Add", [a, b.conv(a, 4, 4)])])
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    return b.build({"input": [1, 6, 6]}, [b.gemm(y, 4, 3)])


def concat_net():
    """input -> Conv -> Relu(a) --+--> Concat -> AveragePool(2) -> Flatten -> Gemm
         \\-> Conv -> Relu(b) ----/"""
    b = ModelBuilder(14)
    a, c = (b.node("Relu", [b.conv("input", 1, 3)]) for _ in range(2))
    y = b.node("AveragePool", [b.node("Concat", [a, c], axis=1)], kernel_shape=[2, 2], strides=[2, 2])
    return b.build({"input": [1, 6, 6]}, [b.gemm(b.node("Flatten", [y]), 6 * 3 * 3, 3)])


@pytest.mark.parametrize("make, join", [(residual_net, "Add"), (concat_net, "Concat")])
@pytest.mark.parametrize("same", [True, False])
def test_join_folds_only_when_thresholds_agree(tmp_path, make, join, same):
    """Relu(a) and Relu(b) meet at an Add (residual) or a Concat: one scale for both, so they fold when their
    thresholds are equal and are both left threshold-balanced, with the reason, when they differ."""
    model = make()
    x = np.random.default_rng(11).random((12, 1, 6, 6)).astype(np.float32)
    relu_inputs = [n.input[0] for n in model.graph.node if n.op_type == "Relu"]
    probe = pow2_calibration(model, x, tmp_path)
    a, b = (probe.tensors[t].maximum for t in relu_inputs)
    # scale the second threshold so that it equals the first (same) or is twice it (different)
    target = a if same else 2 * a
    calibration = pow2_calibration(model, x, tmp_path, {relu_inputs[1]: target / b})
    (tb_path, tb), (wn_path, wn) = convert_both(model, calibration, tmp_path)
    report = next(r for r in wn.reports if r.name == "weight_norm")
    names = [l["node"] for l in tb.layers if "threshold" in l]
    if same:
        assert not report.skipped and set(names) <= set(report.converted)
    else:
        assert [n for n, _ in report.skipped] == names and not report.converted
        for node, why in report.skipped:
            assert f"{join} '{join.lower()}" in why and "meets another scale" in why, why
        assert all(not l["weight_norm"] and join in l["weight_norm_skipped"] for l in wn.layers
                   if "threshold" in l)
        consts = initializers(wn_path)
        assert [float(consts[f"{n}.threshold"]) for n in names] == [a, 2 * a]
    assert_same_spikes_and_outputs(tb_path, wn_path, x)


def test_neuron_at_graph_output_or_on_graph_input_is_left_alone(tmp_path):
    """input -> Relu(a) -> Conv -> Relu(b) -> output: a is fed by the graph input (cannot be rescaled), b feeds
    the graph output (must keep its scale); neither folds, and the Conv between them is unchanged."""
    b = ModelBuilder(12)
    model = b.build({"input": [1, 6, 6]}, [b.node("Relu", [b.conv(b.node("Relu", ["input"]), 1, 2)])])
    x = np.random.default_rng(13).normal(size=(12, 1, 6, 6)).astype(np.float32)
    (tb_path, _), (wn_path, wn) = convert_both(model, pow2_calibration(model, x, tmp_path), tmp_path)
    report = next(r for r in wn.reports if r.name == "weight_norm")
    reasons = dict(report.skipped)
    assert len(reasons) == 2 and not report.converted
    first, second = (n.name for n in onnx.load(tb_path).graph.node if n.op_type == "IFNeuron")
    assert "graph input 'input'" in reasons[first] and "graph output" in reasons[second]
    assert_same_spikes_and_outputs(tb_path, wn_path, x)


def test_weight_norm_off_by_default_changes_nothing(tmp_path):
    model = chain_net()
    x = np.random.default_rng(8).random((6, 2, 8, 8)).astype(np.float32)
    calibration = pow2_calibration(model, x, tmp_path)
    result = convert_model(model, calibration, ConvertOptions(NormSpec.parse("max")))
    report = next(r for r in result.reports if r.name == "weight_norm")
    assert not report.converted and not report.skipped and not report.layers
    assert all("weight_norm" not in l for l in result.layers)

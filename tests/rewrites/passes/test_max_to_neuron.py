"""The max family (rewrites/passes/max_to_neuron.py): Max / Min of signals and constants, ReduceMax /
ReduceMin, GlobalMaxPool -> spiking max operators; Max(x, 0) -> Relu (max_to_relu).

Closed form. Each spiking max operator emits the increase of op(sum of its inputs over steps 1..t), and the
max of sums is t times the max of means, so with the analog input presented at every step (direct coding,
nothing but linear ops before it) the running mean of its output is the ANN's value at EVERY t, to float
rounding. Behind IF neurons it converges as they do: agreement with the ANN grows with T."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from builders import ModelBuilder
from conftest import run_ort
from rewrites.config import ConvertOptions
from rewrites.convert import convert_model, normalise, summarize
from rewrites.optable import Conversion
from rewrites.passes.max_to_neuron import MAX_OPS
from ground.save import save_model
from sim.metrics import running_mean
from spiking_helpers import both_engines, convert_with_data, step_by_contract
from rewrites.calibration.stats import Calibration
from ground.protos import fingerprint

def _reduce(b, op, x, axes, keepdims):
    """axes as the attribute before opset 18, as a constant input from it."""
    if b.opset >= 18:
        name = b.name("axes")
        b.inits.append(numpy_helper.from_array(np.array(axes, np.int64), name))
        return b.node(op, [x, name], keepdims=keepdims)
    return b.node(op, [x], axes=axes, keepdims=keepdims)


FORMS = {
    # input [N, 4, 5, 5] -> Conv(6) -> <form> -> Flatten -> Gemm(3)
    "max_two_signals": lambda b, x: b.node("Max", [x, b.conv(x, 6, 6)]),
    "max_with_channel_constant": lambda b, x: b.node("Max", [x, b.const(b.rng.normal(0, 0.3, (6, 1, 1)), "c")]),
    "min_variadic": lambda b, x: b.node("Min", [x, b.const(np.array(0.4, np.float32), "c"), b.conv(x, 6, 6),
                                               b.const(np.array(0.7, np.float32), "d")]),
    "reduce_max_keepdims": lambda b, x: _reduce(b, "ReduceMax", x, [2, 3], 1),
    "reduce_min_axis": lambda b, x: _reduce(b, "ReduceMin", x, [-1], 0),
    "global_max_pool": lambda b, x: b.node("GlobalMaxPool", [x]),
}
SPIKING = {"max_two_signals": ["SpikeMax"], "max_with_channel_constant": ["SpikeMax"],
           "min_variadic": ["SpikeMin", "SpikeMin"], "reduce_max_keepdims": ["SpikeReduceMax"],
           "reduce_min_axis": ["SpikeReduceMin"], "global_max_pool": ["SpikeReduceMax"]}


def form_model(form: str, opset: int = 17) -> onnx.ModelProto:
    b = ModelBuilder(seed=1, opset=opset)
    x = b.conv("input", 4, 6)
    y = b.node("Flatten", [FORMS[form](b, x)])
    width = {"reduce_max_keepdims": 6, "global_max_pool": 6, "reduce_min_axis": 30}.get(form, 150)
    return b.build({"input": [4, 5, 5]}, [b.gemm(y, width, 3)])


def convert_direct(model: onnx.ModelProto, tmp_path, T: int = 6):
    """No neuron in these graphs: no calibration is read."""
    options = ConvertOptions(default_T=T)
    result = convert_model(model, Calibration(fingerprint(model), "m", 0, {}), options)
    path = tmp_path / "m.snn.onnx"
    save_model(result.model, path)
    return path, result


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_form_is_exact_at_every_step(tmp_path, form, opset):
    if opset == 13 and form == "min_variadic":
        pytest.skip("the form is the same at every opset")
    model = form_model(form, opset)
    x = np.random.default_rng(0).normal(0, 1, (16, 4, 5, 5)).astype(np.float32)
    (ann,) = run_ort(model, {"input": x})
    verdicts = [n.conversion for n in summarize(model).nodes if n.op_type in MAX_OPS]  # what inspect says
    assert verdicts == [Conversion.MAX_NEURON]
    path, result = convert_direct(model, tmp_path)
    ops = [n.op_type for n in result.model.graph.node if n.domain == "ai.ann2snn"]
    assert ops == SPIKING[form]
    onnx.checker.check_model(result.model, full_check=True)
    numpy_run, ort_run, name = both_engines(path, x, 6)
    np.testing.assert_allclose(numpy_run.outputs[name], ort_run.outputs[name], rtol=1e-5, atol=1e-5)
    decoded = running_mean(numpy_run.outputs[name])
    scale = np.abs(ann).max()
    for t in range(6):  # float32 sums of t + 1 steps against one evaluation: a few ulps of the sum
        np.testing.assert_allclose(decoded[t], ann, atol=2e-5 * scale * (t + 1))


def test_drain_keeps_the_max_and_its_constant(tmp_path):
    """Drain steps present neither the input nor the constant: every sum stays, the max emits nothing more."""
    model = form_model("max_with_channel_constant")
    x = np.random.default_rng(1).normal(0, 1, (8, 4, 5, 5)).astype(np.float32)
    (ann,) = run_ort(model, {"input": x})
    path, _ = convert_direct(model, tmp_path)
    np.testing.assert_allclose(step_by_contract(path, {"input": x}, 4, 3), ann, atol=1e-4)


def test_behind_neurons_agreement_grows_with_T(tmp_path):
    """Conv-Relu -> Max(a, b) of two branches and GlobalMaxPool: the max neurons add no error of their own."""
    b = ModelBuilder(seed=2)
    x = b.node("Relu", [b.conv("input", 1, 6)])
    y = b.node("Max", [b.node("Relu", [b.conv(x, 6, 6)]), x])
    y = b.node("Flatten", [b.node("GlobalMaxPool", [y])])
    model = b.build({"input": [1, 10, 10]}, [b.gemm(y, 6, 4)])
    data = np.random.default_rng(3).random((64, 1, 10, 10)).astype(np.float32)
    path, _ = convert_with_data(model, data, tmp_path, norm="max", T=64)
    (ann,) = run_ort(model, {"input": data})
    run, _, name = both_engines(path, data, 64)
    decoded = running_mean(run.outputs[name])
    errors = [np.linalg.norm(decoded[t - 1] - ann) / np.linalg.norm(ann) for t in (8, 64)]
    # thresholds at the max: no clipping, and the IF neurons' quantisation error falls as theta / t, 8x from
    # t = 8 to 64 (measured 7x); half of that leaves room for the unevenness of spike trains
    assert errors[1] < errors[0] / 4


def test_max_with_zero_is_a_relu():
    b = ModelBuilder(seed=4)
    x = b.conv("input", 1, 4)
    y = b.node("Max", [b.const(np.array(0.0, np.float32), "zero"), x])
    model = b.build({"input": [1, 6, 6]}, [b.gemm(b.node("Flatten", [y]), 144, 2)])
    graph, reports = normalise(model)
    assert [r.converted for r in reports if r.name == "max_to_relu"] == [[n.name for n in model.graph.node
                                                                        if n.op_type == "Max"]]
    assert "Max" not in [n.op for n in graph.nodes] and "Relu" in [n.op for n in graph.nodes]
    from rewrites.convert import self_check
    assert self_check(model, graph, "normalising passes") == 0.0
    assert {n.op_type: n.conversion for n in summarize(model).nodes}["Relu"] is Conversion.IF_NEURON  # inspect

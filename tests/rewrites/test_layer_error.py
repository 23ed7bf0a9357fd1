"""Each UGO subnet's share of the output error (rewrites/layer_error.py), against the subnets read back from the
exported file and against the file stepped for many steps."""
import numpy as np
import onnx
import pytest

from builders import ModelBuilder
from ground.data import load_dataset, input_specs, Arrays
from ground.sessions import Session
from rewrites.config import ConvertOptions, NormSpec
from rewrites.layer_error import layer_errors, relative_error
from spiking_helpers import step_by_contract


def _two_functions(first: str, second: str) -> onnx.ModelProto:
    """input [N, 16] -> Gemm -> first -> Gemm -> second -> Gemm -> output [N, 4]."""
    b = ModelBuilder(opset=17)
    h = b.node(first, [b.gemm("input", 16, 16)])
    h = b.node(second, [b.gemm(h, 16, 16)])
    return b.build({"input": [16]}, [b.gemm(h, 16, 4)])


def _data(n: int = 48) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 16)).astype(np.float32)


def _convert(model, x, tmp_path, ugo_size=None):
    """(layer errors, conversion result) from one calibration on x; the file is saved as m.snn.onnx."""
    from ground.save import save_model
    from rewrites.calibration.collect import calibrate
    from rewrites.convert import convert_model
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "m.npz", x=x)
    calibration = calibrate(tmp_path / "m.onnx", tmp_path / "m.npz")
    options = ConvertOptions(NormSpec.parse("max"), 0.5, 32, ugo_size=ugo_size)
    data = load_dataset(Arrays({"input": x}), input_specs(model))
    result = convert_model(model, calibration, options)
    save_model(result.model, tmp_path / "m.snn.onnx")
    return layer_errors(model, calibration, options, data, limit=len(x), batch=16), result


def _ugo_from_file(snn: onnx.ModelProto, name: str):
    """(knots, thresholds, slopes, offset) of the UGO `name` as the exported file holds them."""
    values = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in snn.graph.initializer}
    nodes = {n.name: n for n in snn.graph.node}
    producers = {o: n for n in snn.graph.node for o in n.output}

    def constant(tensor: str) -> np.ndarray:  # through the drain gate: constant * snn.drive
        if tensor in values:
            return values[tensor]
        return next(values[i] for i in producers[tensor].input if i in values and i != "snn.drive")

    hidden = nodes[f"{name}.hidden"]  # UGOHidden: X, threshold, fire_level, knots, steps
    return (constant(hidden.input[3]), constant(hidden.input[1]), constant(nodes[f"{name}.output"].input[1]),
            constant(nodes[f"{name}.offset"].input[1]))


def test_a_subnets_own_error_is_its_fit_carried_to_the_output(tmp_path):
    """Only the Tanh's subnet in place: the output is the ANN's with tanh replaced by the piecewise-linear
    function the exported file's hidden units converge to, computed here in NumPy from the file's constants;
    the exact LeakyRelu's subnet adds nothing."""
    model = _two_functions("Tanh", "LeakyRelu")
    x = _data()
    errors, result = _convert(model, x, tmp_path)
    by_function = {e.function: e for e in errors.subnets}
    assert set(by_function) == {"Tanh", "LeakyRelu"}
    tanh = next(f for f in result.ugo_fits if f["op"] == "Tanh")
    knots, thresholds, slopes, offset = _ugo_from_file(result.model, tanh["node"])
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]

    def gemm(h, node):
        return h @ weights[node.input[1]].T + weights[node.input[2]]

    a = gemm(x.astype(np.float64), gemms[0])
    limit = offset + np.clip(a[..., None] - knots, 0.0, thresholds) @ slopes
    leaky = lambda v: np.where(v > 0, v, 0.01 * v)  # noqa: E731  (LeakyRelu's default alpha)
    want = gemm(leaky(gemm(np.tanh(a), gemms[1])), gemms[2])
    got = gemm(leaky(gemm(limit, gemms[1])), gemms[2])
    assert by_function["Tanh"].output_error == pytest.approx(relative_error(got, want), rel=1e-3)
    assert by_function["Tanh"].output_error > 1e-5
    assert by_function["LeakyRelu"].output_error < 1e-6  # its kink is a knot: the fit is the function
    assert sum(errors.share(e) for e in errors.subnets) == pytest.approx(1.0)


def test_the_file_stepped_long_approaches_every_subnet_in_place(tmp_path):
    """With 4 hidden units per subnet the fits err by a few percent, far above what 512 steps leave of the
    time error (about theta / 1024 per unit): the file's output error then equals the limit's `together`
    to within a fifth."""
    model = _two_functions("Tanh", "Sigmoid")
    x = _data()
    errors, _ = _convert(model, x, tmp_path, ugo_size=4)
    ann = Session(model, "ann").run(None, {"input": x})[0]
    stepped = step_by_contract(tmp_path / "m.snn.onnx", {"input": x}, 512)
    assert relative_error(stepped, ann) == pytest.approx(errors.together, rel=0.2)
    assert errors.together > 0.01  # the fits' error, not the time error, is what is compared


def test_a_model_without_subnets_has_nothing_to_measure(tmp_path):
    b = ModelBuilder(opset=17)
    model = b.build({"input": [16]}, [b.gemm(b.node("Relu", [b.gemm("input", 16, 16)]), 16, 4)])
    errors, _ = _convert(model, _data(), tmp_path)
    assert errors is None

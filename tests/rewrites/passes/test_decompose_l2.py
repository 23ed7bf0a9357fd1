"""decompose_l2: ReduceL2 / ReduceSumSquare -> square, sum (and sqrt), the same function; an L2-normalised
output (a sentence encoder's) then converts and its file converges to it. Also a padding mask reshaped by
the shape of the activations, as text encoders' exports compute it."""
import numpy as np
import onnx
import pytest

from builders import ModelBuilder
from ground.sessions import Session
from rewrites.convert import normalise, to_model
from rewrites.layer_error import relative_error
from spiking_helpers import convert_with_data, step_by_contract


def _normalised(op: str, axes=(1,)) -> onnx.ModelProto:
    """input [N, 16] -> Gemm -> y / max(ReduceL2(y), 1e-12) -> Gemm (or the sum of squares added back)."""
    b = ModelBuilder(opset=17)
    y = b.gemm("input", 16, 16)
    norm = b.node(op, [y], axes=list(axes), keepdims=1)
    if op == "ReduceL2":
        out = b.node("Div", [y, b.node("Clip", [norm, b.const(np.float32(1e-12)), ""])])
    else:
        out = b.node("Add", [y, norm])
    return b.build({"input": [16]}, [b.gemm(out, 16, 4)])


@pytest.mark.parametrize("op", ["ReduceL2", "ReduceSumSquare"])
def test_the_decomposed_norm_computes_the_same(op):
    model = _normalised(op)
    graph, reports = normalise(model)
    assert op not in {n.op for n in graph.nodes}
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    want = Session(model, "ann").run(None, {"input": x})[0]
    got = Session(to_model(graph, model), "normalised").run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_norm_over_the_batch_axis_is_left_alone_with_the_reason():
    graph, reports = normalise(_normalised("ReduceL2", axes=(0, 1)))
    (report,) = [r for r in reports if r.name == "decompose_l2"]
    assert report.converted == [] and "batch axis" in report.skipped[0][1]


def test_an_l2_normalised_output_converges(tmp_path):
    model = _normalised("ReduceL2")
    x = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path)
    test = np.random.default_rng(1).normal(size=(32, 16)).astype(np.float32)
    ann = Session(model, "ann").run(None, {"input": test})[0]
    errors = [relative_error(step_by_contract(snn, {"input": test}, T), ann) for T in (4, 64)]
    assert errors[1] < errors[0] and errors[1] < 0.05


def test_a_mask_reshaped_by_a_spiking_tensors_shape_converts_without_allow_float(tmp_path):
    """mask (0 / 1) -> bool -> Reshape to [Shape(relu)[0], -1] -> Where(mask, 0, -5) added to the activations:
    the mask path is the same at every step and is kept as it is, without --allow-float, and the file
    converges to the ANN."""
    b = ModelBuilder(opset=17)

    def ints(values, name):
        b.inits.append(onnx.numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    h = b.node("Relu", [b.gemm("input", 8, 8)])
    batch = b.node("Gather", [b.node("Shape", [h]), ints([0], "first")], axis=0)  # not foldable
    target = b.node("Concat", [batch, ints([-1], "rest")], axis=0)
    mask = b.node("Reshape", [b.node("Cast", ["mask"], to=onnx.TensorProto.BOOL), target])
    addend = b.node("Where", [mask, b.const(np.float32(0.0)), b.const(np.float32(-5.0))])
    model = b.build({"input": [8], "mask": [8]}, [b.gemm(b.node("Add", [h, addend]), 8, 3)])
    rng = np.random.default_rng(0)
    feeds = {"input": rng.normal(size=(32, 8)).astype(np.float32),
             "mask": rng.integers(0, 2, (32, 8)).astype(np.float32)}
    from ground.save import save_model
    from rewrites.calibration.collect import calibrate
    from rewrites.config import ConvertOptions, NormSpec
    from rewrites.convert import convert_model
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "m.npz", **feeds)
    calibration = calibrate(tmp_path / "m.onnx", tmp_path / "m.npz")
    result = convert_model(model, calibration, ConvertOptions(NormSpec.parse("max"), 0.5, 32))
    save_model(result.model, tmp_path / "m.snn.onnx")
    ann = Session(model, "ann").run(None, feeds)[0]
    assert relative_error(step_by_contract(tmp_path / "m.snn.onnx", feeds, 64), ann) < 0.1

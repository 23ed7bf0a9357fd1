"""Transformer graphs end to end: the normalising passes for softmax / LayerNorm / products keep the function,
elementwise functions are found whatever their spelling, and the converted BERT-style encoder converges to the
ANN: exactly with --nonlinear exact, as T grows with UGO."""
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from bert_builder import bert_input, build_bert
from builders import ModelBuilder
from rewrites.calibration.collect import calibrate
from rewrites.config import ConvertOptions, Nonlinear
from rewrites.convert import convert_model, normalise, to_model
from ground.errors import UnsupportedNodesError
from ground.save import save_model
from rewrites.patterns.regions import find_regions
from ground.sessions import Session
from sim.engine import NumpyEngine
from sim.metrics import running_mean
from sim.model import load_spiking
from sim.ort import OrtEngine


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return Session(model, "model", optimize=False).run(None, feeds)[0]


@pytest.mark.parametrize("form, opset", [("fused", 20), ("decomposed", 17), ("decomposed", 18), ("decomposed", 13)])
def test_normalised_transformer_is_the_same_function_in_canonical_form(form, opset):
    """After normalising: one Softmax per attention, no LayerNormalization / Pow / Div by a signal / ReduceMax,
    and onnxruntime gives the original outputs (float32 reassociation only: 1e-5 of the output range)."""
    model = build_bert(layers=2, dim=16, heads=2, seq=4, form=form, opset=opset, eps=1e-5)
    graph, _ = normalise(model)
    ops = [n.op for n in graph.nodes]
    assert ops.count("Softmax") == 2
    for gone in ("LayerNormalization", "Pow", "ReduceMax", "Div"):
        if gone == "Div":  # only the division by the constant sqrt(head dim) may stay
            assert all(isinstance(n.inputs[1], __import__("onnx_graphsurgeon").Constant)
                       for n in graph.nodes if n.op == "Div")
        else:
            assert gone not in ops
    feeds = bert_input(model, 5)
    want = _run(model, feeds)
    got = _run(to_model(graph, model), feeds)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def _regions_of(op_chain) -> list:
    b = ModelBuilder(opset=17)
    y = op_chain(b, b.gemm("input", 8, 8))
    model = b.build({"input": [8]}, [b.gemm(y, 8, 2)])
    graph, _ = normalise(model)
    return find_regions(graph)


@pytest.mark.parametrize("name, chain, ops", [
    ("gelu_erf", lambda b, x: b.node("Mul", [b.node("Mul", [x, b.node("Add", [b.node("Erf", [b.node(
        "Div", [x, b.const(np.float32(1.4142135))])]), b.const(np.float32(1.0))])]), b.const(np.float32(0.5))]),
     ["Div", "Erf", "Add", "Mul", "Mul"]),
    ("silu", lambda b, x: b.node("Mul", [x, b.node("Sigmoid", [x])]), ["Sigmoid", "Mul"]),
    ("gelu_tanh", lambda b, x: b.node("Mul", [b.node("Mul", [x, b.node("Add", [b.node("Tanh", [b.node("Mul", [
        b.node("Add", [x, b.node("Mul", [b.node("Pow", [x, b.const(np.float32(3.0))]), b.const(np.float32(0.044715))])]),
        b.const(np.float32(0.7978846))])]), b.const(np.float32(1.0))])]), b.const(np.float32(0.5))]),
     ["Pow", "Mul", "Add", "Mul", "Tanh", "Add", "Mul", "Mul"]),
])
def test_an_elementwise_function_is_one_region_whatever_its_spelling(name, chain, ops):
    (region,) = _regions_of(chain)
    assert sorted(region.ops) == sorted(ops)
    assert len(region.outputs) == 1


def test_squares_and_plain_linear_chains_are_not_regions():
    """x*x is an exact spiking product; 2x+1 is linear; a lone Relu is an IF neuron; HardSwish as paddle2onnx
    writes it, x * Clip(x + 3, 0, 6) / 6, is a clipped IF neuron and a spiking product."""
    assert _regions_of(lambda b, x: b.node("Div", [b.node("Mul", [x, b.node("Clip", [b.node(
        "Add", [x, b.const(np.float32(3))]), b.const(np.float32(0)), b.const(np.float32(6))])]),
        b.const(np.float32(6))])) == []
    assert _regions_of(lambda b, x: b.node("Mul", [x, x])) == []
    assert _regions_of(lambda b, x: b.node("Add", [b.node("Mul", [x, b.const(np.float32(2))]),
                                                   b.const(np.float32(1))])) == []
    assert _regions_of(lambda b, x: b.node("Relu", [x])) == []


def _convert(model, x, tmp_path, **options):
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x)
    calibration = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz")
    result = convert_model(model, calibration, ConvertOptions(**options))
    save_model(result.model, tmp_path / "s.onnx")
    return load_spiking(tmp_path / "s.onnx"), result


def _errors(outputs: np.ndarray, ann: np.ndarray) -> np.ndarray:
    mean = running_mean(outputs)
    return np.abs(mean - ann).reshape(len(mean), -1).max(axis=1) / np.abs(ann).max()


@pytest.mark.parametrize("form", ["fused", "decomposed"])
def test_exact_nonlinearities_reproduce_the_ann_at_every_step(tmp_path, form):
    """No IF neuron in this encoder and the input repeats every step: every estimate is the ANN value from
    t = 1, and the spiking products and corrections keep it so (float32 rounding of O(T) sums: 1e-4)."""
    model = build_bert(layers=1, dim=16, heads=2, seq=4, form=form, eps=1e-5)
    x = bert_input(model, 48)["input"]
    snn, result = _convert(model, x, tmp_path, nonlinear=Nonlinear.EXACT)
    assert result.kept_float and not result.ugo_fits
    ops = {n.op_type for n in snn.nodes}
    assert {"SpikeMatMul", "SpikeMul", "RunningMean", "RateCorrect"} <= ops
    ann = _run(model, {"input": x[:8]})
    for engine in (NumpyEngine(snn), OrtEngine(snn)):
        out = engine.run({"input": x[:8]}, 32).outputs["output"]
        assert _errors(out, ann).max() < 1e-4


@pytest.mark.parametrize("form", ["fused", "decomposed"])
def test_ugo_transformer_converges_to_the_ann(tmp_path, form):
    """Every nonlinearity becomes signed IF neurons. The decoded error must shrink as T grows (quantisation
    ~ 1/T) down to the UGO fit error (a few 1e-3 of the output range here, from the convert report): from
    T = 4, where quantisation dominates, to T = 128 it at least halves (by T = 8 it is within 2.5x the floor)."""
    model = build_bert(layers=1, dim=16, heads=2, seq=4, form=form, eps=1e-5)
    x = bert_input(model, 48)["input"]
    snn, result = _convert(model, x, tmp_path)
    assert not result.kept_float
    ops = {n.op_type for n in snn.nodes}
    assert "UGOHidden" in ops and not ops & {"Gelu", "Erf", "Exp", "Sqrt", "Reciprocal", "Softmax"}
    assert {f["op"] for f in result.ugo_fits} >= {"Add+Sqrt+Reciprocal", "Reciprocal"}
    ann = _run(model, {"input": x[:8]})
    err = _errors(NumpyEngine(snn).run({"input": x[:8]}, 128).outputs["output"], ann)
    assert err[127] < 0.5 * err[3]
    assert err[127] < 0.03
    stepped = OrtEngine(snn).run({"input": x[:8]}, 128).outputs["output"]
    assert _errors(stepped, ann)[127] < 0.03


def _floor_model() -> onnx.ModelProto:
    b = ModelBuilder(opset=17)
    return b.build({"input": [8]}, [b.gemm(b.node("Floor", [b.gemm("input", 8, 8)]), 8, 3)])


def test_unmapped_ops_are_refused_with_the_list_then_kept_float_when_allowed(tmp_path):
    model = _floor_model()
    x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32) * 3
    with pytest.raises(UnsupportedNodesError) as info:
        _convert(model, x, tmp_path)
    assert "Floor" in str(info.value) and "--allow-float Floor" in info.value.hint
    snn, result = _convert(model, x, tmp_path, allow_float=("Floor",))
    assert [n.node for n in result.kept_float] == [n.name for n in snn.nodes if n.op_type == "Floor"]
    ann = _run(model, {"input": x})
    out = NumpyEngine(snn).run({"input": x}, 8).outputs[snn.outputs[0]]
    assert _errors(out, ann).max() < 1e-5  # constant input: the estimate is exact from t = 1


def test_energy_counts_spiking_products_as_dense_macs(tmp_path):
    """x [N, 4, 8] -> q = x Wq, k = x Wk -> q k^T: ANN MACs 2*4*8*8 + 4*4*8. Over T steps the input layers are
    dense (direct coding) and the spiking product does one product per step, of the running sums."""
    from sim.energy import estimate
    b = ModelBuilder(opset=17)
    q = b.node("MatMul", ["input", b.const(np.ones((8, 8), np.float32))])
    k = b.node("MatMul", ["input", b.const(np.ones((8, 8), np.float32))])
    model = b.build({"input": [4, 8]}, [b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 2, 1])])])
    x = np.random.default_rng(0).normal(size=(8, 4, 8)).astype(np.float32)
    snn, _ = _convert(model, x, tmp_path)
    report = estimate(snn, {}, samples=8, steps=10)
    assert report.ann_macs == 2 * 4 * 8 * 8 + 4 * 4 * 8
    assert report.snn_macs == 10 * (2 * 4 * 8 * 8 + 4 * 4 * 8)
    assert report.synops == 0


@pytest.mark.parametrize("name", ["model.onnx", "model_opset13.onnx", "model_dynamo.onnx"])
def test_bundled_vit_exports_convert_and_match_the_ann_in_exact_mode(tmp_path, name):
    """The ViT has no ReLU: with --nonlinear exact every estimate is the ANN value from t = 1 on, whichever
    exporter wrote it (Constant nodes, opset-13 LayerNorm spelling, dynamo's opset 18)."""
    from pathlib import Path
    from ground.load import load_model
    folder = Path(__file__).resolve().parents[1] / "examples"
    model = load_model(folder / "fmnist_vit" / name)
    x = np.load(folder / "fmnist_cnn" / "calib.npz", allow_pickle=False)["x"][:16]
    snn, result = _convert(model, x, tmp_path, nonlinear=Nonlinear.EXACT)
    ann = _run(model, {snn.inputs[0].name: x[:4]})
    out = NumpyEngine(snn).run({snn.inputs[0].name: x[:4]}, 6).outputs[snn.outputs[0]]
    assert _errors(out, ann).max() < 1e-4


def test_converting_the_same_model_twice_accepts_its_calibration(tmp_path):
    """Normalising must not change the model's fingerprint (the ViT holds Constant nodes, whose value names
    onnx-graphsurgeon writes in place)."""
    from pathlib import Path
    from ground.load import load_model
    from ground.protos import fingerprint
    folder = Path(__file__).resolve().parents[1] / "examples"
    model = load_model(folder / "fmnist_vit" / "model.onnx")
    before = fingerprint(model)
    x = np.load(folder / "fmnist_cnn" / "calib.npz", allow_pickle=False)["x"][:8]
    _convert(model, x, tmp_path, nonlinear=Nonlinear.EXACT)
    assert fingerprint(model) == before
    calibration = calibrate(tmp_path / "m.onnx", tmp_path / "d.npz")
    convert_model(model, calibration, ConvertOptions(nonlinear=Nonlinear.EXACT))


def _single(op_chain, opset: int) -> onnx.ModelProto:
    b = ModelBuilder(opset=opset)
    return b.build({"input": [4, 8]}, [op_chain(b, b.node("MatMul", ["input", b.const(
        np.random.default_rng(5).normal(size=(8, 8)).astype(np.float32))]))])


def _inner_softmax(b, x):
    """A Softmax that is no head (a linear layer reads it), so it becomes spiking subnets."""
    mix = np.random.default_rng(7).normal(size=(8, 8)).astype(np.float32)
    return b.node("MatMul", [b.node("Softmax", [x], axis=-1), b.const(mix)])


@pytest.mark.parametrize("name, chain, opset", [
    ("softmax", _inner_softmax, 11),
    ("softmax", _inner_softmax, 17),
    ("layernorm", lambda b, x: b.node("LayerNormalization", [x, b.const(np.linspace(0.5, 2, 8).astype(np.float32)),
                                                               b.const(np.linspace(-1, 1, 8).astype(np.float32))],
                                      axis=-1, epsilon=1e-5), 17),
])
def test_softmax_and_layernorm_alone_converge_to_the_float_op(tmp_path, name, chain, opset):
    """Under UGO the decoded error must fall as T grows (spiking quantisation ~ 1/T) to the fit floor: below
    2% of the output range at T = 128 and at most a third of the error at T = 2."""
    model = _single(chain, opset)
    x = np.random.default_rng(6).normal(size=(64, 4, 8)).astype(np.float32)
    snn, result = _convert(model, x, tmp_path)
    assert not ({n.op_type for n in snn.nodes} & {"Softmax", "LayerNormalization", "Exp", "Sqrt", "Reciprocal"})
    ann = _run(model, {"input": x[:16]})
    err = _errors(NumpyEngine(snn).run({"input": x[:16]}, 128).outputs[snn.outputs[0]], ann)
    assert err[127] < 0.02 and err[127] <= err[1] / 3, (err[1], err[127])


def test_softmax_axes_of_an_input_of_unknown_rank():
    """A last-axis Softmax needs no rank; any other axis of an unknown-rank input is a clear ModelError."""
    from ground.errors import ModelError
    from rewrites.patterns.softmax import softmax_axes
    x = gs.Variable("x", dtype=np.float32, shape=None)
    last = gs.Node("Softmax", "sm_last", attrs={"axis": -1}, inputs=[x], outputs=[gs.Variable("y1")])
    assert softmax_axes(last, None, 11) == [-1] and softmax_axes(last, None, 13) == [-1]
    default13 = gs.Node("Softmax", "sm13", inputs=[x], outputs=[gs.Variable("y2")])
    assert softmax_axes(default13, None, 13) == [-1] and softmax_axes(default13, 3, 13) == [2]
    default11 = gs.Node("Softmax", "sm11", inputs=[x], outputs=[gs.Variable("y3")])  # axis 1: flattens 1..rank-1
    assert softmax_axes(default11, 4, 11) == [1, 2, 3]
    with pytest.raises(ModelError, match="sm11.*rank of its input is unknown"):
        softmax_axes(default11, None, 11)

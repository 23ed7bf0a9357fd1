"""HardSigmoid and HardSwish (MobileNetV3's activations) as clipped IF neurons and spiking products
(rewrites/passes/hard_activations.py): the same function after normalising, no UGO subnet in the file, one
state tensor per element, and the spiking file converging to the ANN as T grows."""
import numpy as np
import onnx
import pytest

from builders import ModelBuilder
from rewrites.convert import normalise, to_model
from ground.sessions import Session
from sim.metrics import running_mean
from spiking_helpers import both_engines, convert_with_data


def _mobilenet_block(form: str, opset: int = 17) -> onnx.ModelProto:
    """input [N, 4, 8, 8] -> Conv -> BN -> HardSwish -> depthwise Conv -> squeeze-excite gated by a
    HardSigmoid -> Conv -> GlobalAveragePool -> Gemm. `form`: "ops" (HardSwish, HardSigmoid nodes, as torch
    writes them from opset 14) or "paddle" (x * Clip(x + 3, 0, 6) / 6 and HardSigmoid(alpha=1/6), as
    paddle2onnx writes them)."""
    b = ModelBuilder(seed=4, opset=opset)

    def hard_swish(x):
        if form == "ops":
            return b.node("HardSwish", [x])
        gate = b.node("Clip", [b.node("Add", [x, b.const(3.0)]), b.const(0.0), b.const(6.0)])
        return b.node("Div", [b.node("Mul", [x, gate]), b.const(6.0)])

    h = hard_swish(b.bn(b.conv("input", 4, 8), 8))
    h = hard_swish(b.conv(h, 8, 8, group=8))
    squeezed = b.node("Relu", [b.conv(b.node("GlobalAveragePool", [h]), 8, 4, k=1, pad=0)])
    attrs = {} if form == "ops" else {"alpha": 1.0 / 6.0, "beta": 0.5}
    gate = b.node("HardSigmoid", [b.conv(squeezed, 4, 8, k=1, pad=0)], **attrs)
    h = b.node("Relu", [b.conv(b.node("Mul", [h, gate]), 8, 8, k=1, pad=0)])
    pooled = b.node("Flatten", [b.node("GlobalAveragePool", [h])])
    return b.build({"input": [4, 8, 8]}, [b.gemm(pooled, 8, 5)])


def _data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.5, (n, 4, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("form", ["ops", "paddle"])
@pytest.mark.parametrize("opset", [11, 17])
def test_normalised_graph_computes_the_same_function(form, opset):
    if form == "ops" and opset < 14:
        opset = 14  # HardSwish is an operator from opset 14
    model = _mobilenet_block(form, opset)
    x = _data(16, 1)
    normalised = to_model(normalise(model)[0], model)
    graph_ops = {n.op_type for n in normalised.graph.node}
    assert not graph_ops & {"HardSwish", "HardSigmoid"}
    want = Session(model, "ann").run(None, {"input": x})[0]
    got = Session(normalised, "normalised").run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("form", ["ops", "paddle"])
def test_spiking_file_has_no_subnet_and_converges(tmp_path, form):
    """Each hard activation is one clipped IF neuron (its state: the input's shape) and HardSwish's product a
    spiking product. The decoded output's error must fall as T grows: at T = 256 below 5% of the output
    range (rate quantisation of about theta / (2T) per neuron through four spiking layers), and the two
    engines agree."""
    model = _mobilenet_block(form)
    calib, test = _data(64, 2), _data(32, 3)
    snn, result = convert_with_data(model, calib, tmp_path, norm="max")
    assert result.ugo_fits == []
    ops = {n.op_type for n in onnx.load(str(snn)).graph.node}
    assert "SpikeMul" in ops and "IFNeuron" in ops
    ann = Session(model, "ann").run(None, {"input": test})[0]
    numpy_run, ort_run, out = both_engines(snn, test, 256)
    mean = running_mean(numpy_run.outputs[out])
    scale = np.abs(ann).max()
    err = np.abs(mean - ann).reshape(len(mean), -1).max(axis=1) / scale
    assert err[255] < err[31] < err[3]
    assert err[255] < 0.05
    ort_mean = running_mean(ort_run.outputs[out])
    assert np.abs(ort_mean[-1] - mean[-1]).max() / scale < 1e-3


def test_state_is_one_tensor_per_element_not_per_hidden_neuron(tmp_path):
    """A UGO subnet keeps [.., hidden] state for every element; the hard activations keep at most a few
    tensors of the activation's shape: the file's state per sample stays within 12 times the activations
    the ANN computes (two hard-swished maps of 8 x 8 x 8, a handful of neurons and products)."""
    model = _mobilenet_block("ops")
    snn, _ = convert_with_data(model, _data(32, 2), tmp_path)
    state = [i for i in onnx.load(str(snn)).graph.input if i.name.startswith("state.")]
    elements = sum(int(np.prod([d.dim_value for d in i.type.tensor_type.shape.dim[1:]])) for i in state)
    assert elements <= 12 * 2 * 8 * 8 * 8


def test_a_hard_sigmoid_head_stays_for_decoded_head(tmp_path):
    """HardSigmoid before the graph output is the model's head: kept as the op in normalising, then applied
    exactly to the decoded value, so the file's decoded output equals HardSigmoid of the decoded logits."""
    b = ModelBuilder(seed=2)
    logits = b.gemm(b.node("Relu", [b.gemm("input", 8, 8)]), 8, 3)
    model = b.build({"input": [8]}, [b.node("HardSigmoid", [logits], alpha=0.3)])
    graph, reports = normalise(model)
    assert [n.op for n in graph.nodes].count("HardSigmoid") == 1
    (report,) = [r for r in reports if r.name == "hard_activations"]
    assert report.converted == [] and len(report.skipped) == 1
    x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    snn, result = convert_with_data(model, x, tmp_path)
    (head,) = [r for r in result.reports if r.name == "decoded_head"]
    assert any("hardsigmoid" in n.lower() for n in head.converted)


def test_inspect_says_what_convert_does_with_them():
    """The op table gives HardSwish and HardSigmoid the verdict of hard_activations, not a UGO subnet: the
    conversion rewrites them before any subnet is fitted (test_spiking_file_has_no_subnet_and_converges)."""
    import ann2snn
    from rewrites.optable import Conversion
    rows = {r["op"]: (r["conversion"], r["pass"]) for r in ann2snn.inspect(_mobilenet_block("ops")).op_table()}
    assert rows["HardSwish"] == rows["HardSigmoid"] == (Conversion.HARD.value, "hard_activations")

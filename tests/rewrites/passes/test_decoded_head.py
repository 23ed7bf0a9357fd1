"""A head before the graph outputs (Softmax, Sigmoid, ...; rewrites/passes/decoded_head.py) is applied exactly to
the decoded value of its input: the running mean of the file's output is the head of the running mean of the
logits at every step. Checked against that closed form on the same spiking network without its head (the
head's counters are float32: 1e-5 relative), by both engines and by stepping the file by the contract."""
from __future__ import annotations

import numpy as np
import pytest

from builders import ModelBuilder
from rewrites.convert import inspect_model
from ground.save import save_model
from rewrites.optable import Conversion
from sim.engine import NumpyEngine
from sim.metrics import running_mean
from sim.model import load_spiking
from sim.ort import OrtEngine
from spiking_helpers import convert_with_data, step_by_contract
from test_cli import invoke, ok

T = 16


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _mlp(head: str | None):
    """Gemm-Relu-Gemm logits, and the head on them (with the Reshape tf2onnx writes after a Softmax)."""
    b = ModelBuilder(seed=3)
    logits = b.gemm(b.node("Relu", [b.gemm("x", 12, 16)]), 16, 5)
    if head == "softmax":
        out = b.node("Reshape", [b.node("Softmax", [logits], axis=-1), b.const(np.array([-1, 5]))])
        b.inits[-1].data_type = 7  # the shape is int64
        b.inits[-1].ClearField("float_data")
        b.inits[-1].raw_data = np.array([-1, 5], np.int64).tobytes()
    elif head == "sigmoid":
        out = b.node("Sigmoid", [logits])
    else:
        out = logits
    return b.build({"x": [12]}, [out])


def _decoded(snn_path, x):
    model = load_spiking(snn_path)
    feeds = {model.inputs[0].name: x}
    numpy = running_mean(NumpyEngine(model).run(feeds, T).outputs[model.outputs[0]])
    ort = running_mean(OrtEngine(model).run(feeds, T).outputs[model.outputs[0]])
    return numpy, ort


@pytest.mark.parametrize("head, f", [("softmax", _softmax), ("sigmoid", _sigmoid)])
def test_the_head_is_exact_on_the_decoded_logits_at_every_step(tmp_path, head, f):
    x = np.random.default_rng(0).normal(size=(48, 12)).astype(np.float32)
    plain, _ = convert_with_data(_mlp(None), x, tmp_path, name="plain", T=T)
    headed, result = convert_with_data(_mlp(head), x, tmp_path, name="headed", T=T)
    assert {"RunningMean", "RateCorrect"} <= {n.op_type for n in result.model.graph.node}
    assert not {"Exp", "Reciprocal"} & {n.op_type for n in result.model.graph.node}  # no spiking subnets
    logits, _ = _decoded(plain, x)
    assert np.abs(logits[-1] - logits[0]).max() > 0.05  # the logits do change with t: the check is informative
    expected = f(logits)
    for decoded in _decoded(headed, x):
        assert np.abs(decoded - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    by_contract = step_by_contract(headed, {"x": x}, T)
    assert np.abs(by_contract - expected[-1]).max() <= 1e-5


def test_inspect_and_convert_name_the_head(tmp_path):
    path = tmp_path / "m.onnx"
    save_model(_mlp("softmax"), path)
    rows = {row["op"]: row for row in inspect_model(path).op_table()}
    assert rows["Softmax"]["conversion"] == Conversion.HEAD.value
    x = np.random.default_rng(1).normal(size=(24, 12)).astype(np.float32)
    _, result = convert_with_data(_mlp("softmax"), x, tmp_path, T=T)
    heads = [layer for layer in result.layers if "head" in str(layer.get("nonlinear", ""))]
    assert [layer["op"] for layer in heads] == ["Softmax", "Reshape"]
    data = tmp_path / "d.npz"
    np.savez(data, x=x)
    printed = ok(invoke("convert", path, "--data", data, "-o", tmp_path / "s.onnx", "--T", "4")).output
    assert "head, exact on the decoded value of its input: reshape10, softmax8" in " ".join(printed.split())


def test_a_sigmoid_inside_the_network_is_no_head(tmp_path):
    """x * sigmoid(x) before the output (SiLU): the Sigmoid feeds a product, so it stays a spiking subnet."""
    b = ModelBuilder(seed=4)
    z = b.gemm("x", 12, 5)
    model = b.build({"x": [12]}, [b.node("Mul", [z, b.node("Sigmoid", [z])])])
    x = np.random.default_rng(2).normal(size=(24, 12)).astype(np.float32)
    _, result = convert_with_data(model, x, tmp_path, T=T)
    assert "RateCorrect" not in {n.op_type for n in result.model.graph.node}


def test_a_file_converted_for_drain_steps_keeps_an_elementwise_head_spiking(tmp_path):
    """The head's running mean would count the drain steps: a Sigmoid head stays spiking, the file keeps its
    gate and says why. A Softmax head is exact either way (its spiking form cannot drain: products)."""
    import ann2snn
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(3).normal(size=(32, 12)).astype(np.float32))
    for head, exact in (("sigmoid", False), ("softmax", True)):
        path = tmp_path / f"{head}.onnx"
        save_model(_mlp(head), path)
        converted = ann2snn.convert(path, data=data, drain_steps=2, norm="max")
        ops = {n.op_type for n in converted.result.model.graph.node}
        assert ("RateCorrect" in ops) == exact
        gated = "snn.drive" in {i.name for i in converted.result.model.graph.input}
        assert gated != exact
        skipped = [s for r in converted.result.reports if r.name == "decoded_head" for s in r.skipped]
        assert bool(skipped) != exact and all("drain" in why for _, why in skipped)

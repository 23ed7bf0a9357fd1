"""The BERT-style encoder of bert_builder: both forms are valid ONNX with the expected ops, and compute the
same function under onnxruntime.

Tolerance of the fused-vs-decomposed comparison: the output is that of a LayerNorm, so its elements are O(1)
(unit variance times gains 1 +- 0.1; |y| < 5 here). The two forms round differently at every LayerNorm (ORT's
kernel accumulates mean and variance in its own order), GELU (one kernel vs Div/Erf/Add/Mul/Mul) and softmax,
a few float32 ulps (2^-23 ~ 1.2e-7) each, carried through up to 3 layers: measured at most 1.7e-6 over the
shapes below. atol = rtol = 1e-5 (~80 ulps at 1.0) leaves a margin of ~6x and is still far below a real
change of function: the tanh approximation of GELU in place of the erf form moves the output by 7e-4, 70x the
tolerance (the negative control below asserts more than 10x)."""
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bert_builder import build_bert, bert_input
from conftest import run_ort

TOL = dict(rtol=1e-5, atol=1e-5)
LAYERS = 2


def ops(model):
    return Counter(n.op_type for n in model.graph.node)


def dynamic_matmuls(model):
    """MatMul nodes whose two operands both depend on the input (neither is an initializer)."""
    inits = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and not inits & set(n.input)]


def opset(model):
    return next(o.version for o in model.opset_import if o.domain == "")


@pytest.mark.parametrize("inputs", ["embeddings", "ids"])
def test_fused_form_ops(inputs):
    model = build_bert(LAYERS, form="fused", inputs=inputs)
    c = ops(model)
    assert opset(model) == 20
    assert c["LayerNormalization"] == 1 + 2 * LAYERS  # embedding LN + two per layer
    assert c["Gelu"] == LAYERS and c["Softmax"] == LAYERS
    assert c["MatMul"] == 8 * LAYERS  # q, k, v, o, fc1, fc2 + Q.K^T, P.V
    assert len(dynamic_matmuls(model)) == 2 * LAYERS
    assert not {"Erf", "Exp", "Pow", "Sqrt", "ReduceMean", "ReduceMax", "ReduceSum"} & set(c)
    assert c["Gather"] == (1 if inputs == "ids" else 0)


@pytest.mark.parametrize("version", [13, 17, 18])
def test_decomposed_form_ops(version):
    model = build_bert(LAYERS, form="decomposed", opset=version)
    c = ops(model)
    assert opset(model) == version
    assert not {"LayerNormalization", "Gelu", "Softmax"} & set(c)
    n_ln = 1 + 2 * LAYERS
    assert (c["ReduceMean"], c["Pow"], c["Sqrt"]) == (2 * n_ln, n_ln, n_ln)
    assert (c["Erf"], c["Exp"], c["ReduceMax"], c["ReduceSum"]) == (LAYERS,) * 4
    assert len(dynamic_matmuls(model)) == 2 * LAYERS
    # axes: an input for ReduceSum (since 13) and for every Reduce* from 18, else an attribute
    for node in model.graph.node:
        if node.op_type in ("ReduceMean", "ReduceMax"):
            assert len(node.input) == (2 if version >= 18 else 1)
            assert any(a.name == "axes" for a in node.attribute) == (version < 18)
        if node.op_type == "ReduceSum":
            assert len(node.input) == 2


@pytest.mark.parametrize("inputs", ["embeddings", "ids"])
@pytest.mark.parametrize("shape", [(2, 32, 2, 8), (1, 48, 4, 5), (3, 16, 1, 12)])
def test_fused_and_decomposed_compute_the_same_function(inputs, shape):
    layers, dim, heads, seq = shape
    fused = build_bert(layers, dim, heads, seq, seed=3, form="fused", inputs=inputs)
    feeds = bert_input(fused, 16, seed=1)
    (ref,) = run_ort(fused, feeds)
    assert ref.shape == (16, seq, dim) and np.isfinite(ref).all()
    for version in (13, 17, 18):
        (out,) = run_ort(build_bert(layers, dim, heads, seq, seed=3, form="decomposed", inputs=inputs,
                                    opset=version), feeds)
        np.testing.assert_allclose(out, ref, **TOL, err_msg=f"decomposed opset {version}")


def test_tolerance_catches_tanh_gelu():
    """Negative control for TOL: the tanh approximation of GELU is a different function, and the comparison
    must see it."""
    exact = build_bert(LAYERS, seed=0)
    tanh = build_bert(LAYERS, seed=0)
    for node in tanh.graph.node:
        if node.op_type == "Gelu":
            node.attribute[0].s = b"tanh"
    feeds = bert_input(exact, 16, seed=1)
    diff = np.abs(run_ort(exact, feeds)[0] - run_ort(tanh, feeds)[0]).max()
    assert diff > 10 * TOL["atol"]


def test_ids_model_equals_embeddings_model_fed_the_looked_up_rows():
    ids_model = build_bert(LAYERS, seed=5, inputs="ids")
    emb_model = build_bert(LAYERS, seed=5, inputs="embeddings")
    table = next(numpy_helper.to_array(t) for t in ids_model.graph.initializer if t.name == "token_embedding")
    feeds = bert_input(ids_model, 8, seed=2)
    (a,) = run_ort(ids_model, feeds)
    (b,) = run_ort(emb_model, {"input": table[feeds["input_ids"]]})
    np.testing.assert_array_equal(a, b)


def test_attention_is_not_trivial():
    """The weights scale keeps the softmax away from uniform and from one-hot, so the attention products
    matter: the row maxima of the first softmax spread over (1/S, 1)."""
    model = build_bert(LAYERS, dim=32, heads=2, seq=8, seed=0)
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.output.append(onnx.helper.make_tensor_value_info(softmax.output[0], onnx.TensorProto.FLOAT, None))
    _, p = run_ort(model, bert_input(model, 16, seed=1))
    row_max = p.max(-1)
    assert 1 / 8 + 0.05 < row_max.mean() < 0.95
    np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-6)


def test_deterministic_and_seeded():
    assert build_bert(seed=7).SerializeToString() == build_bert(seed=7).SerializeToString()
    feeds = bert_input(build_bert(seed=7), 4)
    assert not np.allclose(run_ort(build_bert(seed=7), feeds)[0], run_ort(build_bert(seed=8), feeds)[0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(form="tanh"), "form"),
    (dict(inputs="tokens"), "inputs"),
    (dict(dim=30, heads=4), "multiple"),
    (dict(form="fused", opset=17), "opset"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_bert(**kwargs)

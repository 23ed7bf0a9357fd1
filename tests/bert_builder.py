"""A BERT-style encoder built with onnx.helper (random, seeded weights; no torch), for the transformer passes.

    input_ids int64[N,S] --Gather(token_embedding)--+        (inputs="ids")
    input float32[N,S,D] ---------------------------+        (inputs="embeddings")
                                                    v
                               Add(position_embedding) -> LayerNorm
    layers x (post-LN, as BERT):
        q, k, v = MatMul+Add each -> Reshape [-1,S,H,D/H] -> Transpose (k to [N,H,D/H,S])
        p = Softmax(MatMul(q, k^T) / sqrt(D/H))        (two input-dependent MatMul operands)
        a = MatMul+Add(Reshape(Transpose(MatMul(p, v))))
        x = LayerNorm(x + a)
        x = LayerNorm(x + MatMul+Add(GELU(MatMul+Add(x))))
    output float32[N,S,D]

Two forms of the same function, from the same weights for a given seed:

- ``fused``: LayerNormalization (opset 17), Gelu (opset 20), Softmax; the model is opset 20.
- ``decomposed``: LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div then Mul/Add (torch's opset-13
  export), GELU as Div/Erf/Add/Mul/Mul, i.e. x * 0.5 * (1 + erf(x / sqrt 2)) (torch's classic export),
  softmax as ReduceMax/Sub/Exp/ReduceSum/Div. Opset 17 by default (Reduce* axes as attributes, except
  ReduceSum whose axes are an input since 13); opset 18 puts every Reduce*'s axes in an input.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FORMS = ("fused", "decomposed")
INPUTS = ("embeddings", "ids")
FUSED_OPSET = 20  # Gelu is opset 20; LayerNormalization 17


def bert_weights(layers: int, dim: int, seq: int, seed: int, vocab: int, mlp_ratio: int) -> dict[str, np.ndarray]:
    """Every weight of the encoder, drawn in one fixed order so both forms and both input kinds share them.

    Linear weights ~ N(0, 1/fan_in) so activations stay O(1) and the attention scores (after 1/sqrt(D/H)) are
    O(1): the softmax is neither uniform nor one-hot. LayerNorm gains 1 + N(0, 0.1^2), biases N(0, 0.1^2)."""
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}

    def linear(name: str, cin: int, cout: int) -> None:
        w[f"{name}.weight"] = rng.normal(0, 1 / math.sqrt(cin), (cin, cout))
        w[f"{name}.bias"] = rng.normal(0, 0.1, cout)

    def norm(name: str) -> None:
        w[f"{name}.gamma"] = 1 + rng.normal(0, 0.1, dim)
        w[f"{name}.beta"] = rng.normal(0, 0.1, dim)

    w["token_embedding"] = rng.normal(0, 1, (vocab, dim))
    w["position_embedding"] = rng.normal(0, 0.5, (1, seq, dim))
    norm("embedding_ln")
    for i in range(layers):
        for proj in ("q", "k", "v", "o"):
            linear(f"l{i}.attn.{proj}", dim, dim)
        norm(f"l{i}.ln1")
        linear(f"l{i}.mlp.fc1", dim, mlp_ratio * dim)
        linear(f"l{i}.mlp.fc2", mlp_ratio * dim, dim)
        norm(f"l{i}.ln2")
    return {k: v.astype(np.float32) for k, v in w.items()}


class _Graph:
    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def init(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        self._n += 1
        return self.init(f"const{self._n}", np.asarray(value, dtype))

    def node(self, op: str, inputs: list[str], prefix: str, **attrs) -> str:
        self._n += 1
        name = f"{prefix}/{op}_{self._n}"
        self.nodes.append(helper.make_node(op, inputs, [name + "_out"], name=name, **attrs))
        return name + "_out"

    def reduce(self, op: str, x: str, prefix: str) -> str:
        """Reduce over the last axis with keepdims; axes an input where the opset says so."""
        axes_input = self.opset >= 18 or op == "ReduceSum"
        if axes_input:
            return self.node(op, [x, self.const([-1], np.int64)], prefix, keepdims=1)
        return self.node(op, [x], prefix, axes=[-1], keepdims=1)


def _layer_norm(g: _Graph, x: str, name: str, form: str, eps: float) -> str:
    gamma, beta = f"{name}.gamma", f"{name}.beta"
    if form == "fused":
        return g.node("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=eps)
    mean = g.reduce("ReduceMean", x, name)
    d = g.node("Sub", [x, mean], name)
    var = g.reduce("ReduceMean", g.node("Pow", [d, g.const(2.0)], name), name)
    std = g.node("Sqrt", [g.node("Add", [var, g.const(eps)], name)], name)
    y = g.node("Div", [d, std], name)
    return g.node("Add", [g.node("Mul", [y, gamma], name), beta], name)


def _gelu(g: _Graph, x: str, name: str, form: str) -> str:
    if form == "fused":
        return g.node("Gelu", [x], name, approximate="none")
    erf = g.node("Erf", [g.node("Div", [x, g.const(math.sqrt(2.0))], name)], name)
    return g.node("Mul", [g.node("Mul", [x, g.node("Add", [erf, g.const(1.0)], name)], name), g.const(0.5)], name)


def _softmax(g: _Graph, x: str, name: str, form: str) -> str:
    if form == "fused":
        return g.node("Softmax", [x], name, axis=-1)
    e = g.node("Exp", [g.node("Sub", [x, g.reduce("ReduceMax", x, name)], name)], name)
    return g.node("Div", [e, g.reduce("ReduceSum", e, name)], name)


def _linear(g: _Graph, x: str, name: str) -> str:
    return g.node("Add", [g.node("MatMul", [x, f"{name}.weight"], name), f"{name}.bias"], name)


def build_bert(layers: int = 2, dim: int = 32, heads: int = 2, seq: int = 8, seed: int = 0, *,
               form: str = "fused", inputs: str = "embeddings", vocab: int = 64, mlp_ratio: int = 4,
               eps: float = 1e-12, opset: int | None = None) -> onnx.ModelProto:
    """A checked BERT-style encoder; batch axis ``N`` dynamic, sequence length static.

    ``inputs="embeddings"``: input ``input`` float32[N, seq, dim] (already token embeddings; no integer
    input). ``inputs="ids"``: input ``input_ids`` int64[N, seq], looked up by Gather in the initializer
    ``token_embedding`` [vocab, dim]. Output ``output`` float32[N, seq, dim] (the last hidden states).
    ``opset``: fused form 20 (the default and the minimum, for Gelu); decomposed form 17 by default (13 or
    more)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, not {inputs!r}")
    if dim % heads:
        raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
    opset = opset or (FUSED_OPSET if form == "fused" else 17)
    if opset < (FUSED_OPSET if form == "fused" else 13):
        raise ValueError(f"opset {opset} is too old for the {form} form")
    hd = dim // heads
    weights = bert_weights(layers, dim, seq, seed, vocab, mlp_ratio)
    g = _Graph(opset)
    for name, value in weights.items():
        if name != "token_embedding" or inputs == "ids":
            g.init(name, value)

    if inputs == "ids":
        graph_input = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", seq])
        x = g.node("Gather", ["token_embedding", "input_ids"], "embedding", axis=0)
    else:
        graph_input = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", seq, dim])
        x = "input"
    x = g.node("Add", [x, "position_embedding"], "embedding")
    x = _layer_norm(g, x, "embedding_ln", form, eps)

    split_heads = g.const([-1, seq, heads, hd], np.int64)
    merge_heads = g.const([-1, seq, dim], np.int64)
    for i in range(layers):
        p = f"l{i}.attn"
        q, k, v = (g.node("Reshape", [_linear(g, x, f"{p}.{proj}"), split_heads], p) for proj in "qkv")
        q = g.node("Transpose", [q], p, perm=[0, 2, 1, 3])  # [N, H, S, hd]
        k = g.node("Transpose", [k], p, perm=[0, 2, 3, 1])  # [N, H, hd, S]
        v = g.node("Transpose", [v], p, perm=[0, 2, 1, 3])  # [N, H, S, hd]
        scores = g.node("Div", [g.node("MatMul", [q, k], p), g.const(math.sqrt(hd))], p)
        ctx = g.node("MatMul", [_softmax(g, scores, p, form), v], p)  # [N, H, S, hd]
        ctx = g.node("Reshape", [g.node("Transpose", [ctx], p, perm=[0, 2, 1, 3]), merge_heads], p)
        x = _layer_norm(g, g.node("Add", [x, _linear(g, ctx, f"{p}.o")], p), f"l{i}.ln1", form, eps)
        h = _linear(g, _gelu(g, _linear(g, x, f"l{i}.mlp.fc1"), f"l{i}.mlp", form), f"l{i}.mlp.fc2")
        x = _layer_norm(g, g.node("Add", [x, h], f"l{i}.mlp"), f"l{i}.ln2", form, eps)
    g.nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))

    graph = helper.make_graph(g.nodes, f"bert_{form}_{inputs}", [graph_input],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", seq, dim])],
                              initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="bert_builder")
    model.ir_version = 9  # onnx 1.23 writes 11 by default; 9 is what every supported onnxruntime reads
    onnx.checker.check_model(model, full_check=True)
    return model


def bert_input(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A feed for ``model``: ids uniform over the vocabulary, or embeddings ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    (inp,) = model.graph.input
    seq = inp.type.tensor_type.shape.dim[1].dim_value
    if inp.name == "input_ids":
        vocab = next(t.dims[0] for t in model.graph.initializer if t.name == "token_embedding")
        return {"input_ids": rng.integers(0, vocab, (batch, seq), dtype=np.int64)}
    dim = inp.type.tensor_type.shape.dim[2].dim_value
    return {"input": rng.normal(0, 1, (batch, seq, dim)).astype(np.float32)}

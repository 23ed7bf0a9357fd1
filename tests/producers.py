"""Small graphs written the way other producers than torch write them (issue 14), built with onnx.helper
(paddle2onnx and tf2onnx are not installed here). Each keeps the conventions that broke the tool, not the
producers' exact node names:

- `paddle_classifier`: paddle2onnx. Input and output dims written as -1 (the batch and nothing else), every
  weight in a Constant node instead of an initializer, `p2o.<Op>.<k>` node and tensor names, MatMul + Add
  for the classifier layer.
- `keras_classifier`: tf2onnx from TF/Keras. An NHWC input (`unk__` dim_param batch) and a Transpose to
  NCHW in front of the first Conv, and a softmax head written as a max-stabilised exp/sum/divide whose
  maximum starts at -inf: ReduceMax -> Max(., -inf) -> Sub -> Exp -> ReduceSum -> Div.
- `jax_classifier`: tf2onnx from JAX (jax2tf). An int32 input of token ids one-hot encoded in the graph
  (Unsqueeze -> Equal with a constant range -> Cast to float), value_info dims written as 0, and the same
  -inf-stabilised softmax head.
- `jax_cnn`: tf2onnx from JAX with a polymorphic batch, as benchmarks/make_producer_models.py's real export
  writes it: ReLU as Max(x, 0), lax.reduce_window as MaxPool, jnp.max over H and W as GlobalMaxPool ->
  Squeeze, and jax.nn.softmax with keepdims=0 reductions whose axis comes back by a Reshape to a target
  computed from Shape (batch, 1), then an Expand to it.

    paddle:  x[-1,3,8,8] -> Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> MatMul -> Add
    keras:   x[unk,8,8,3] -> Transpose -> Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten
             -> MatMul -> Add -> softmax head
    jax:     ids[unk,8] int32 -> Unsqueeze -> Equal(range) -> Cast -> Reshape -> MatMul -> Add -> Relu
             -> MatMul -> Add -> softmax head
    jax_cnn: x[unk,8,8,3] -> Transpose -> Conv -> Add -> Max(0) -> MaxPool -> Conv -> Add -> Max(0)
             -> GlobalMaxPool -> Squeeze -> MatMul -> Add -> keepdims=0 softmax
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, LENGTH, CLASSES = 6, 8, 5


def _constant(nodes: list, name: str, value: np.ndarray) -> str:
    """A weight in a Constant node (paddle2onnx style): the tensor `name` is the node's output."""
    nodes.append(helper.make_node("Constant", [], [name], name=f"{name}.node",
                                  value=numpy_helper.from_array(np.asarray(value), name)))
    return name


def _softmax_head(nodes: list, inits: list, logits: str, out: str, opset: int) -> None:
    """jax.nn.softmax as jax2tf writes it: the maximum starts at -inf (`initial=-inf`)."""
    inits.append(numpy_helper.from_array(np.array(-np.inf, np.float32), "head/max_init"))
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "head/axes"))
        nodes.append(helper.make_node("ReduceMax", [logits, "head/axes"], ["head/rmax"], name="head/ReduceMax",
                                      keepdims=1))
    else:
        nodes.append(helper.make_node("ReduceMax", [logits], ["head/rmax"], name="head/ReduceMax", axes=[1],
                                      keepdims=1))
    nodes += [
        helper.make_node("Max", ["head/rmax", "head/max_init"], ["head/max"], name="head/Max"),
        helper.make_node("Sub", [logits, "head/max"], ["head/shifted"], name="head/Sub"),
        helper.make_node("Exp", ["head/shifted"], ["head/exp"], name="head/Exp"),
    ]
    if opset >= 13:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "head/sum_axes"))
        nodes.append(helper.make_node("ReduceSum", ["head/exp", "head/sum_axes"], ["head/sum"], name="head/ReduceSum",
                                      keepdims=1))
    else:
        nodes.append(helper.make_node("ReduceSum", ["head/exp"], ["head/sum"], name="head/ReduceSum", axes=[1],
                                      keepdims=1))
    nodes.append(helper.make_node("Div", ["head/exp", "head/sum"], [out], name="head/Div"))


def _conv_weights(rng: np.random.Generator, cin: int) -> dict[str, np.ndarray]:
    return {"w1": (rng.standard_normal((8, cin, 3, 3)) * 0.4).astype(np.float32),
            "b1": (rng.standard_normal(8) * 0.1).astype(np.float32),
            "w2": (rng.standard_normal((8, 8, 3, 3)) * 0.25).astype(np.float32),
            "b2": (rng.standard_normal(8) * 0.1).astype(np.float32),
            "fc": (rng.standard_normal((8, CLASSES)) * 0.8).astype(np.float32),
            "fcb": (rng.standard_normal(CLASSES) * 0.1).astype(np.float32)}


def paddle_classifier(seed: int = 5, opset: int = 13) -> onnx.ModelProto:
    w = _conv_weights(np.random.default_rng(seed), 3)
    nodes: list = []
    c = {k: _constant(nodes, f"p2o.Constant.{i}", v) for i, (k, v) in enumerate(w.items())}
    nodes += [
        helper.make_node("Conv", ["x", c["w1"], c["b1"]], ["p2o.Conv.0"], name="p2o.Conv.0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["p2o.Conv.0"], ["p2o.Relu.0"], name="p2o.Relu.0"),
        helper.make_node("Conv", ["p2o.Relu.0", c["w2"], c["b2"]], ["p2o.Conv.1"], name="p2o.Conv.1",
                         pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["p2o.Conv.1"], ["p2o.Relu.1"], name="p2o.Relu.1"),
        helper.make_node("GlobalAveragePool", ["p2o.Relu.1"], ["p2o.GlobalAveragePool.0"],
                         name="p2o.GlobalAveragePool.0"),
        helper.make_node("Flatten", ["p2o.GlobalAveragePool.0"], ["p2o.Flatten.0"], name="p2o.Flatten.0"),
        helper.make_node("MatMul", ["p2o.Flatten.0", c["fc"]], ["p2o.MatMul.0"], name="p2o.MatMul.0"),
        helper.make_node("Add", ["p2o.MatMul.0", c["fcb"]], ["save_infer_model/scale_0.tmp_0"], name="p2o.Add.0"),
    ]
    graph = helper.make_graph(
        nodes, "paddle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 8, 8])],
        [helper.make_tensor_value_info("save_infer_model/scale_0.tmp_0", TensorProto.FLOAT, [-1, CLASSES])],
        value_info=[helper.make_tensor_value_info("p2o.Relu.0", TensorProto.FLOAT, [-1, 8, 8, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="PaddlePaddle")


def keras_classifier(seed: int = 4, opset: int = 13) -> onnx.ModelProto:
    w = _conv_weights(np.random.default_rng(seed), 3)
    inits = [numpy_helper.from_array(v, f"sequential/{k}") for k, v in w.items()]
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["sequential/conv2d/Conv2D__6:0"], name="sequential/conv2d/Conv2D__6",
                         perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["sequential/conv2d/Conv2D__6:0", "sequential/w1", "sequential/b1"],
                         ["sequential/conv2d/BiasAdd:0"], name="sequential/conv2d/BiasAdd", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["sequential/conv2d/BiasAdd:0"], ["sequential/conv2d/Relu:0"], name="sequential/conv2d/Relu"),
        helper.make_node("Conv", ["sequential/conv2d/Relu:0", "sequential/w2", "sequential/b2"],
                         ["sequential/conv2d_1/BiasAdd:0"], name="sequential/conv2d_1/BiasAdd", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["sequential/conv2d_1/BiasAdd:0"], ["sequential/conv2d_1/Relu:0"],
                         name="sequential/conv2d_1/Relu"),
        helper.make_node("GlobalAveragePool", ["sequential/conv2d_1/Relu:0"], ["sequential/gap:0"], name="sequential/gap"),
        helper.make_node("Flatten", ["sequential/gap:0"], ["sequential/flatten:0"], name="sequential/flatten"),
        helper.make_node("MatMul", ["sequential/flatten:0", "sequential/fc"], ["sequential/dense/MatMul:0"],
                         name="sequential/dense/MatMul"),
        helper.make_node("Add", ["sequential/dense/MatMul:0", "sequential/fcb"], ["sequential/dense/BiasAdd:0"],
                         name="sequential/dense/BiasAdd"),
    ]
    _softmax_head(nodes, inits, "sequential/dense/BiasAdd:0", "dense", opset)
    graph = helper.make_graph(
        nodes, "tf2onnx", [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__12", 8, 8, 3])],
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["unk__13", CLASSES])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tf2onnx")


def jax_classifier(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    hidden = 16
    inits = [
        numpy_helper.from_array(np.arange(VOCAB, dtype=np.int32), "jax2tf/range"),
        numpy_helper.from_array(np.array([-1], np.int64), "jax2tf/last_axis"),
        numpy_helper.from_array(np.array([-1, LENGTH * VOCAB], np.int64), "jax2tf/flat_shape"),
        numpy_helper.from_array((rng.standard_normal((LENGTH * VOCAB, hidden)) * 0.4).astype(np.float32), "params/w1"),
        numpy_helper.from_array((rng.standard_normal(hidden) * 0.1).astype(np.float32), "params/b1"),
        numpy_helper.from_array((rng.standard_normal((hidden, CLASSES)) * 0.6).astype(np.float32), "params/w2"),
        numpy_helper.from_array((rng.standard_normal(CLASSES) * 0.1).astype(np.float32), "params/b2"),
    ]
    unsqueeze = helper.make_node("Unsqueeze", ["ids", "jax2tf/last_axis"], ["jax2tf/ids_1"], name="jax2tf/Unsqueeze") \
        if opset >= 13 else helper.make_node("Unsqueeze", ["ids"], ["jax2tf/ids_1"], name="jax2tf/Unsqueeze", axes=[-1])
    nodes = [
        unsqueeze,
        helper.make_node("Equal", ["jax2tf/ids_1", "jax2tf/range"], ["jax2tf/eq"], name="jax2tf/Equal"),
        helper.make_node("Cast", ["jax2tf/eq"], ["jax2tf/onehot"], name="jax2tf/Cast", to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["jax2tf/onehot", "jax2tf/flat_shape"], ["jax2tf/flat"], name="jax2tf/Reshape"),
        helper.make_node("MatMul", ["jax2tf/flat", "params/w1"], ["jax2tf/h"], name="jax2tf/dot_general"),
        helper.make_node("Add", ["jax2tf/h", "params/b1"], ["jax2tf/hb"], name="jax2tf/add"),
        helper.make_node("Relu", ["jax2tf/hb"], ["jax2tf/relu"], name="jax2tf/relu"),
        helper.make_node("MatMul", ["jax2tf/relu", "params/w2"], ["jax2tf/l"], name="jax2tf/dot_general_1"),
        helper.make_node("Add", ["jax2tf/l", "params/b2"], ["jax2tf/logits"], name="jax2tf/add_1"),
    ]
    _softmax_head(nodes, inits, "jax2tf/logits", "output_0", opset)
    graph = helper.make_graph(
        nodes, "jax2tf", [helper.make_tensor_value_info("ids", TensorProto.INT32, ["unk__3", LENGTH])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["unk__4", CLASSES])], inits,
        value_info=[helper.make_tensor_value_info("jax2tf/onehot", TensorProto.FLOAT, [0, LENGTH, VOCAB])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tf2onnx")


def _keepdims0_softmax(nodes: list, inits: list, x: str, logits: str, out: str, opset: int) -> None:
    """jax.nn.softmax under jax2tf with a polymorphic batch: ReduceMax / ReduceSum with keepdims=0, each
    brought back to [batch, 1] by a Reshape to Concat(Shape(x)[0:1], [1]) and an Expand to the same shape."""
    inits += [numpy_helper.from_array(np.array([0], np.int64), "sm/start"),
              numpy_helper.from_array(np.array([1], np.int64), "sm/one")]
    nodes += [helper.make_node("Shape", [x], ["sm/shape"], name="sm/Shape"),
              helper.make_node("Slice", ["sm/shape", "sm/start", "sm/one", "sm/start"], ["sm/batch"], name="sm/Slice"),
              helper.make_node("Concat", ["sm/batch", "sm/one"], ["sm/kept"], name="sm/Concat", axis=0)]

    def reduce(op: str, x: str, name: str) -> str:
        if op == "ReduceSum" and opset >= 13 or opset >= 18:
            nodes.append(helper.make_node(op, [x, "sm/one"], [f"sm/{name}"], name=f"sm/{name}", keepdims=0))
        else:
            nodes.append(helper.make_node(op, [x], [f"sm/{name}"], name=f"sm/{name}", axes=[1], keepdims=0))
        nodes.append(helper.make_node("Reshape", [f"sm/{name}", "sm/kept"], [f"sm/{name}_r"], name=f"sm/{name}_r"))
        nodes.append(helper.make_node("Expand", [f"sm/{name}_r", "sm/kept"], [f"sm/{name}_e"], name=f"sm/{name}_e"))
        return f"sm/{name}_e"

    nodes.append(helper.make_node("Sub", [logits, reduce("ReduceMax", logits, "max")], ["sm/shifted"], name="sm/Sub"))
    nodes.append(helper.make_node("Exp", ["sm/shifted"], ["sm/exp"], name="sm/Exp"))
    nodes.append(helper.make_node("Div", ["sm/exp", reduce("ReduceSum", "sm/exp", "sum")], [out], name="sm/Div"))


def jax_cnn(seed: int = 3, opset: int = 13) -> onnx.ModelProto:
    w = _conv_weights(np.random.default_rng(seed), 3)
    inits = [numpy_helper.from_array(v, f"jax/{k}") for k, v in w.items() if not k.startswith("b")]
    inits += [numpy_helper.from_array(w[k].reshape(1, -1, 1, 1), f"jax/{k}") for k in ("b1", "b2")]
    inits += [numpy_helper.from_array(np.array(0, np.float32), "jax/zero"),
              numpy_helper.from_array(np.array([2, 3], np.int64), "jax/hw")]
    squeeze = helper.make_node("Squeeze", ["jax/gmax", "jax/hw"], ["jax/pooled"], name="jax/Squeeze") if opset >= 13 \
        else helper.make_node("Squeeze", ["jax/gmax"], ["jax/pooled"], name="jax/Squeeze", axes=[2, 3])
    nodes = [
        helper.make_node("Transpose", ["image"], ["jax/nchw"], name="jax/Transpose", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["jax/nchw", "jax/w1"], ["jax/c1"], name="jax/Conv2D", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["jax/c1", "jax/b1"], ["jax/a1"], name="jax/AddV2"),
        helper.make_node("Max", ["jax/a1", "jax/zero"], ["jax/r1"], name="jax/pjit_relu_/Maximum"),
        helper.make_node("MaxPool", ["jax/r1"], ["jax/p1"], name="jax/max_pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["jax/p1", "jax/w2"], ["jax/c2"], name="jax/Conv2D_1", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["jax/c2", "jax/b2"], ["jax/a2"], name="jax/AddV2_1"),
        helper.make_node("Max", ["jax/a2", "jax/zero"], ["jax/r2"], name="jax/pjit_relu_/Maximum_1"),
        helper.make_node("GlobalMaxPool", ["jax/r2"], ["jax/gmax"], name="jax/reduce_max"),
        squeeze,
        helper.make_node("MatMul", ["jax/pooled", "jax/fc"], ["jax/mm"], name="jax/MatMul"),
        helper.make_node("Add", ["jax/mm", "jax/fcb"], ["jax/logits"], name="jax/AddV2_2"),
    ]
    _keepdims0_softmax(nodes, inits, "image", "jax/logits", "Identity_1:0", opset)
    graph = helper.make_graph(
        nodes, "tf2onnx", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["unk__33", 8, 8, 3])],
        [helper.make_tensor_value_info("Identity_1:0", TensorProto.FLOAT, ["unk__96", CLASSES])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tf2onnx")


def image_data(n: int, seed: int, nhwc: bool = False) -> np.ndarray:
    """Smooth images in [-1, 1.1]: a random 2x2 pattern upsampled, plus a little noise."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, 3, 2, 2)).astype(np.float32)
    x = 2 * np.repeat(np.repeat(base, 4, axis=2), 4, axis=3) - 1 + 0.1 * rng.random((n, 3, 8, 8)).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if nhwc else x


def token_data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (n, LENGTH)).astype(np.int32)

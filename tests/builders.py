"""Small ONNX models built with onnx.helper for tests (no torch). Weights are seeded and scaled so that
activations stay O(1)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class ModelBuilder:
    """Appends nodes and seeded initializers; `build` returns a checked model with a dynamic batch."""

    def __init__(self, seed: int = 0, opset: int = 17):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.opset = opset
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}{self._n}"

    def const(self, value, base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        name = self.name(op.lower())
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1, bias: bool = True,
             group: int = 1) -> str:
        fan_in = cin // group * k * k
        w = self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // group, k, k))
        ins = [x, self.const(w, "w")] + ([self.const(self.rng.normal(0, 0.1, cout), "b")] if bias else [])
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        return self.node("BatchNormalization", [
            x, self.const(self.rng.uniform(0.5, 1.5, c), "gamma"), self.const(self.rng.normal(0, 0.1, c), "beta"),
            self.const(self.rng.normal(0, 0.1, c), "mean"), self.const(self.rng.uniform(0.5, 1.5, c), "var")],
            epsilon=1e-5)

    def gemm(self, x: str, cin: int, cout: int, trans_b: int = 1) -> str:
        w = self.rng.normal(0, np.sqrt(1.0 / cin), (cout, cin) if trans_b else (cin, cout))
        return self.node("Gemm", [x, self.const(w, "w"), self.const(self.rng.normal(0, 0.1, cout), "b")],
                         transB=trans_b)

    def build(self, inputs: dict[str, list], outputs: list[str], name: str = "test") -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["N"] + list(v)) for k, v in inputs.items()],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model, full_check=True)
        return model


def small_cnn(seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    """input [N,1,12,12]
    Conv-BN-Relu(8) -> Conv-BN-Relu(8) -> MaxPool2 -> [Conv-BN-Relu -> Conv-BN] + skip -> Relu
    -> GlobalAveragePool -> Flatten -> Gemm(10)"""
    b = ModelBuilder(seed)
    x = b.node("Relu", [b.bn(b.conv("input", 1, 8), 8)])
    x = b.node("Relu", [b.bn(b.conv(x, 8, 8), 8)])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    y = b.node("Relu", [b.bn(b.conv(x, 8, 8), 8)])
    y = b.bn(b.conv(y, 8, 8), 8)
    x = b.node("Relu", [b.node("Add", [x, y])])
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    out = b.gemm(x, 8, classes)
    return b.build({"input": [1, 12, 12]}, [out])


def resnet_model(seed: int = 0, widths: tuple[int, ...] = (16, 32, 64), classes: int = 10) -> onnx.ModelProto:
    """The benchmarks' ResNet-style graph: input [N,3,32,32] -> Conv-BN-ReLU(16) -> one basic residual block
    per width (the first at stride 1 with an identity skip, the others at stride 2 with a strided 3x3 conv and
    a 1x1 strided projection on the skip) -> GlobalAveragePool -> Flatten -> Gemm(classes). onnxruntime fuses
    the projection's Add into a convolution (NCHWc) only where it knows the shapes."""
    b = ModelBuilder(seed)
    x = b.node("Relu", [b.bn(b.conv("input", 3, widths[0]), widths[0])])
    cin = widths[0]
    for i, cout in enumerate(widths):
        stride = 1 if i == 0 else 2
        y = b.node("Relu", [b.bn(b.conv(x, cin, cout, stride=stride), cout)])
        y = b.bn(b.conv(y, cout, cout), cout)
        skip = x if stride == 1 and cin == cout else b.bn(b.conv(x, cin, cout, k=1, stride=stride, pad=0), cout)
        x = b.node("Relu", [b.node("Add", [y, skip])])
        cin = cout
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    return b.build({"input": [3, 32, 32]}, [b.gemm(x, cin, classes)], name="resnet_bench")

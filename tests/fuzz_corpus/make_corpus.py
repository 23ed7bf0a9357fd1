"""Writes the fuzz seed corpus (small valid models, a few KB each) beside this file:
python tests/fuzz_corpus/make_corpus.py. The files are committed; the mutations are made from them."""
from __future__ import annotations

import sys
from pathlib import Path

import onnx

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from builders import ModelBuilder, small_cnn  # noqa: E402


def mlp_clip_concat() -> onnx.ModelProto:
    """x [N,6] -> Gemm(8) -> Clip(0,6) -+-> Concat -> Reshape [N,16] -> Gemm(3)
                          -> Gemm(8) -> Relu -+"""
    b = ModelBuilder(seed=3, opset=13)
    h = b.node("Clip", [b.gemm("x", 6, 8), b.const(0.0, "lo"), b.const(6.0, "hi")])
    g = b.node("Relu", [b.gemm("x", 6, 8)])
    c = b.node("Concat", [h, g], axis=1)
    shape = b.name("shape")
    b.inits.append(onnx.numpy_helper.from_array(__import__("numpy").array([-1, 16], "int64"), shape))
    return b.build({"x": [6]}, [b.gemm(b.node("Reshape", [c, shape]), 16, 3)])


def cnn_opset11() -> onnx.ModelProto:
    """x [N,2,8,8] -> Conv -> Relu -> MaxPool -> Conv(depthwise) -> Relu -> GlobalAveragePool -> Flatten -> Gemm"""
    b = ModelBuilder(seed=4, opset=11)
    x = b.node("Relu", [b.conv("x", 2, 4)])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Relu", [b.conv(x, 4, 4, group=4)])
    return b.build({"x": [2, 8, 8]}, [b.gemm(b.node("Flatten", [b.node("GlobalAveragePool", [x])]), 4, 5)])


def main() -> None:
    for name, model in (("small_cnn", small_cnn()), ("mlp_clip_concat", mlp_clip_concat()),
                        ("cnn_opset11", cnn_opset11())):
        onnx.save(model, HERE / f"{name}.onnx")


if __name__ == "__main__":
    main()

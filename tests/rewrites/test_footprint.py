"""Per-sample memory of one call (rewrites/footprint.py), against sizes counted by hand."""
import numpy as np
import onnx
from onnx import TensorProto, helper

from builders import ModelBuilder
from rewrites.footprint import footprint
from spiking_helpers import convert_with_data


def test_every_tensor_counts_once_per_sample_and_weights_not_at_all():
    """x [N, 3, 4] -> Relu -> Mul by a [3, 4] weight -> y: three float tensors of 12 elements per sample."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.ones(12, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Mul", ["h", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    got = footprint(model)
    assert (got.state_bytes, got.tensor_bytes, got.unknown) == (0, 3 * 12 * 4, 0)
    bound = footprint(model, {"x": ["N", 3, 4]})
    assert bound.tensor_bytes == got.tensor_bytes


def test_dynamic_dims_are_read_at_the_bound_shape():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, "H", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert footprint(model).unknown == 2
    assert footprint(model, {"x": ["N", 7, 5]}).tensor_bytes == 2 * 35 * 4


def test_state_is_the_state_inputs_of_the_exported_file(tmp_path):
    b = ModelBuilder(seed=1)
    model = b.build({"input": [16]}, [b.gemm(b.node("Relu", [b.gemm("input", 16, 16)]), 16, 4)])
    x = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path)
    file = onnx.load(str(snn))
    want = 0
    for value in file.graph.input:
        if value.name.startswith("state."):
            want += 4 * int(np.prod([d.dim_value for d in value.type.tensor_type.shape.dim[1:]]))
    assert want > 0 and footprint(file).state_bytes == want

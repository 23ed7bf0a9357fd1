"""batch_shapes: a Reshape target computed from tensor shapes (torch's classic `x.view(x.size(0), -1)` and
`B, N, C = x.shape`) becomes a constant, so shape inference gives later tensors a rank at opsets 11 and 13;
the function is unchanged at any batch size. Also: Shape on an input-dependent tensor reads only its shape
(kept, not unsupported)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import REPO, run_ort
from rewrites.config import ConvertOptions
from rewrites.convert import import_graph, summarize, to_model
from ground.load import load_model
from ground.protos import infer_shapes
from rewrites.optable import Conversion
from rewrites.passes import PassContext, batch_shapes, fold_constants, run_passes


def view_net(opset: int, dims=("N", 4, 2, 2), scale: int | None = None) -> onnx.ModelProto:
    """x [N,4,2,2] -> Relu ------------------------------------------+-> Reshape -> y -> Relu -> z [N, 16]
                   \\-> Shape -> Gather(0) -> Unsqueeze -> [Mul(s)] -> Concat(., [-1]) -/
    (`scale` multiplies the batch entry: a target that is another function of the batch)"""
    ints = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    inits = [ints("zero", 0), ints("minus1", [-1])]
    unsqueeze = helper.make_node("Unsqueeze", ["b", "axes"] if opset >= 13 else ["b"], ["b1"],
                                 name="unsqueeze", **({} if opset >= 13 else {"axes": [0]}))
    if opset >= 13:
        inits.append(ints("axes", [0]))
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["b"], name="gather", axis=0), unsqueeze]
    first = "b1"
    if scale:
        inits.append(ints("scale", [scale]))
        nodes.append(helper.make_node("Mul", ["b1", "scale"], ["bs"], name="mul"))
        first = "bs"
    nodes += [helper.make_node("Concat", [first, "minus1"], ["target"], name="concat", axis=0),
              helper.make_node("Reshape", ["r", "target"], ["y"], name="reshape"),
              helper.make_node("Relu", ["y"], ["z"], name="relu_after")]
    graph = helper.make_graph(nodes, "view", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 16])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def run_pass(model):
    graph = import_graph(model, infer=True)
    report = run_passes(graph, (fold_constants.PASS, batch_shapes.PASS), PassContext(ConvertOptions()))[-1]
    return graph, report


def rank(model, name):
    inferred = infer_shapes(model).graph
    vi = {v.name: v for v in list(inferred.value_info) + list(inferred.output)}
    if name not in vi:
        return None
    t = vi[name].type.tensor_type
    return len(t.shape.dim) if t.HasField("shape") else None


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_computed_target_becomes_constant(opset, rng):
    model = view_net(opset)
    graph, report = run_pass(model)
    assert rank(model, "y") == (None if opset < 14 else 2)  # onnx's Reshape-5/13 inference: no rank
    assert [n.op for n in graph.nodes] == ["Relu", "Reshape", "Relu"]
    assert report.converted == ["reshape"] and report.skipped == []
    target = graph.nodes[1].inputs[1]
    assert np.asarray(target.values).tolist() == [0, -1]  # batch: copied from the input's first axis
    after = to_model(graph, model)
    onnx.checker.check_model(after, full_check=True)
    assert rank(after, "y") == 2
    for n in (1, 5):  # any batch size, not only the probed 2 and 3
        x = rng.normal(size=(n, 4, 2, 2)).astype(np.float32)
        np.testing.assert_array_equal(run_ort(after, {"x": x})[0], run_ort(model, {"x": x})[0])


def test_other_function_of_the_batch_is_left_with_the_reason():
    graph, report = run_pass(view_net(13, scale=2))
    assert "Shape" in [n.op for n in graph.nodes]
    assert report.converted == [] and "another function of the batch size" in report.skipped[0][1]


def test_dynamic_axes_besides_the_batch_are_left_with_the_reason():
    graph, report = run_pass(view_net(13, dims=("N", 4, "H", 2)))
    assert "Shape" in [n.op for n in graph.nodes]
    assert report.converted == [] and "dynamic axes besides the first" in report.skipped[0][1]


def test_shape_of_an_input_dependent_tensor_is_kept():
    """inspect: Shape reads only the shape of the ReLU's output, so it converts (kept), as does the chain."""
    rows = {n.op_type: n.conversion for n in summarize(view_net(13, scale=2)).nodes}
    assert rows["Shape"] is Conversion.STATIC and rows["Reshape"] is Conversion.LINEAR


def test_large_models_are_probed_with_their_weights_as_inputs(monkeypatch, rng):
    """Above WEIGHTS_AS_INPUTS_ABOVE bytes of weights the probe feeds them from the graph. The torch ViT at
    opset 11 has five computed targets: the patch flatten and two per attention block (`B, N, C = x.shape`)."""
    monkeypatch.setattr(batch_shapes, "WEIGHTS_AS_INPUTS_ABOVE", 0)
    model = load_model(REPO / "tests" / "fixtures" / "torch" / "vit_classic_op11.onnx")
    graph, report = run_pass(model)
    assert len(report.converted) == 5 and report.skipped == []
    x = rng.random((3, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_ort(to_model(graph, model), {"x": x})[0], run_ort(model, {"x": x})[0],
                               rtol=1e-5, atol=1e-6)

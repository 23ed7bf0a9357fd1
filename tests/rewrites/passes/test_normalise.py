"""Normalising passes keep the function (onnxruntime before/after to 1e-5 relative); each pass's op list
and its reasons for leaving nodes alone."""
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from builders import ModelBuilder, small_cnn
from conftest import run_ort
from rewrites.config import ConvertOptions
from rewrites.convert import import_graph, normalise, to_model
from rewrites.passes import PassContext, eliminate_identity, fold_batchnorm, fold_constants, run_passes


def ops(model):
    return [n.op for n in import_graph(model).nodes] if isinstance(model, onnx.ModelProto) else \
        [n.op for n in model.nodes]


def assert_same_function(before, after, shape, rng, n=4):
    x = rng.normal(0, 1, (n,) + tuple(shape)).astype(np.float32)
    a = run_ort(before, {"input": x})
    b = run_ort(after, {"input": x})
    for u, v in zip(a, b):
        np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-5 * np.abs(u).max())


def concat_net():
    """input -> Conv -> BN -> Clip(0,6) --+--> Concat -> AveragePool -> Reshape -> Gemm(transB=0) -> BN(1d)
                  \\-> Conv -> Relu ------/"""
    b = ModelBuilder(1)
    a = b.node("Clip", [b.bn(b.conv("input", 3, 4), 4), b.const(0.0), b.const(6.0)])
    c = b.node("Relu", [b.conv("input", 3, 4)])
    x = b.node("Concat", [a, c], axis=1)
    x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Reshape", [x, b.const(np.array([0, -1]), "shape")])
    b.inits[-1] = onnx.numpy_helper.from_array(np.array([0, -1], np.int64), b.inits[-1].name)
    x = b.gemm(x, 8 * 4 * 4, 5, trans_b=0)
    x = b.bn(x, 5)
    return b.build({"input": [3, 8, 8]}, [x])


def identity_net():
    """input -> Identity -> Conv -> Dropout -> Relu -> Identity -> output (graph output through Identity)"""
    b = ModelBuilder(2)
    x = b.node("Identity", ["input"])
    x = b.node("Dropout", [b.conv(x, 1, 2)])
    x = b.node("Identity", [b.node("Relu", [x])])
    return b.build({"input": [1, 6, 6]}, [x])


@pytest.mark.parametrize("make, shape", [(small_cnn, (1, 12, 12)), (concat_net, (3, 8, 8)),
                                         (identity_net, (1, 6, 6))])
def test_normalise_keeps_function(make, shape, rng):
    model = make()
    graph, _ = normalise(model)
    after = to_model(graph, model)
    onnx.checker.check_model(after, full_check=True)
    assert_same_function(model, after, shape, rng)


def test_fold_batchnorm_removes_every_foldable_bn():
    graph, reports = normalise(small_cnn())
    assert ops(graph) == ["Conv", "Relu", "Conv", "Relu", "MaxPool", "Conv", "Relu", "Conv", "Add", "Relu",
                          "GlobalAveragePool", "Flatten", "Gemm"]
    bn = next(r for r in reports if r.name == "fold_batchnorm")
    assert len(bn.converted) == 4 and not bn.skipped


def test_fold_batchnorm_into_gemm_without_transpose(rng):
    model = concat_net()
    graph, _ = normalise(model)
    assert "BatchNormalization" not in ops(graph)
    assert_same_function(model, to_model(graph, model), (3, 8, 8), rng)


def test_fold_batchnorm_keeps_tensor_names():
    model = small_cnn()
    relu_inputs = {n.input[0] for n in model.graph.node if n.op_type == "Relu"}
    graph, _ = normalise(model)
    assert {n.inputs[0].name for n in graph.nodes if n.op == "Relu"} == relu_inputs


def test_fold_batchnorm_skips_shared_conv_output():
    """input -> Conv --+--> BN -> out1
                       \\--> Relu -> out2      (the Conv output is used twice: no fold)"""
    b = ModelBuilder(3)
    c = b.conv("input", 1, 2)
    out1, out2 = b.bn(c, 2), b.node("Relu", [c])
    model = b.build({"input": [1, 4, 4]}, [out1, out2])
    graph = import_graph(model)
    report = run_passes(graph, (fold_batchnorm.PASS,), PassContext(ConvertOptions()))[0]
    assert not report.converted
    assert report.skipped == [(model.graph.node[1].name, "Conv output is also used elsewhere")]


def test_fold_batchnorm_skips_bn_after_non_linear_producer():
    b = ModelBuilder(4)
    x = b.bn(b.node("Relu", ["input"]), 1)
    graph = import_graph(b.build({"input": [1, 4, 4]}, [x]))
    report = run_passes(graph, (fold_batchnorm.PASS,), PassContext(ConvertOptions()))[0]
    assert report.skipped[0][1] == "input comes from Relu, not Conv or Gemm"


def test_eliminate_identity_op_list_and_output_name(rng):
    model = identity_net()
    graph = import_graph(model)
    report = run_passes(graph, (eliminate_identity.PASS,), PassContext(ConvertOptions()))[0]
    assert ops(graph) == ["Conv", "Relu"]
    assert len(report.converted) == 3
    assert [t.name for t in graph.outputs] == [o.name for o in model.graph.output]
    assert_same_function(model, to_model(graph, model), (1, 6, 6), rng)


def test_fold_constants_evaluates_constant_subgraphs(rng):
    """input -> Mul(c) where c = Add(k1, k2) is computable at conversion time."""
    b = ModelBuilder(5)
    c = b.node("Add", [b.const(np.full((1, 1, 1), 2.0)), b.const(np.full((1, 1, 1), 3.0))])
    model = b.build({"input": [1, 3, 3]}, [b.node("Mul", ["input", c])])
    graph = import_graph(model)
    run_passes(graph, (fold_constants.PASS,), PassContext(ConvertOptions()))
    assert ops(graph) == ["Mul"]
    assert_same_function(model, to_model(graph, model), (1, 3, 3), rng)


def test_layout_operators_on_weights_fold_in_numpy(rng, monkeypatch):
    """MatMul(x, Transpose(W)), Gemm(Flatten-free Reshape(Unsqueeze(Squeeze(V)))): the layout chains on
    constants fold without onnx-graphsurgeon's folding (which serialises the weights and runs onnxruntime);
    the function is unchanged."""
    b = ModelBuilder(6)

    def ints(values):
        name = b.name("i")
        b.inits.append(onnx.numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    w = b.node("Transpose", [b.const(rng.normal(size=(5, 6)))], perm=[1, 0])
    v = b.node("Squeeze", [b.node("Unsqueeze", [b.const(rng.normal(size=(5, 4))), ints([0])]), ints([0])])
    v = b.node("Reshape", [v, ints([0, -1])])
    y = b.node("MatMul", [b.node("MatMul", ["input", w]), v])
    model = b.build({"input": [6]}, [y])
    graph = import_graph(model)
    general = []
    original = gs.Graph.fold_constants

    def spy(self, *args, **kwargs):
        general.append([n.op for n in self.nodes])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(gs.Graph, "fold_constants", spy)
    report = run_passes(graph, (fold_constants.PASS,), PassContext(ConvertOptions()))[0]
    assert ops(graph) == ["MatMul", "MatMul"] and len(report.converted) == 4
    assert general == [["MatMul", "MatMul"]]  # the layout chains were gone before the general folding ran
    assert_same_function(model, to_model(graph, model), (6,), rng)


def test_self_check_reads_outputs_near_zero_against_an_absolute_floor_and_still_catches_a_change():
    """A probability map that is ~1e-9 on random inputs (Sigmoid of Conv - 15): folding the BatchNormalization
    changes the float32 rounding, which is no change of function. Scaling a weight by 1.01 is one, caught on
    outputs of ordinary size (below 1e-6 in all, no change is resolved: the price of the floor)."""
    import onnx_graphsurgeon as gs

    from rewrites.convert import normalise, self_check
    from ground.errors import PassError
    b = ModelBuilder(seed=2)
    out = b.node("Sigmoid", [b.node("Add", [b.bn(b.conv("x", 3, 4), 4), b.const(np.array(-15.0))])])
    model = b.build({"x": [3, 8, 8]}, [out])
    graph, _ = normalise(model)
    conv = next(n for n in graph.nodes if n.op == "Conv")  # and a rounding-sized change of its weights
    conv.inputs[1] = gs.Constant("rounded", (conv.inputs[1].values * (1 + 2e-7)).astype(np.float32))
    assert self_check(model, graph, "normalising passes") < 1e-4
    model = b.build({"x": [3, 8, 8]}, [b.node("Sigmoid", [b.bn(b.conv("x", 3, 4), 4)])])  # outputs near 1/2
    graph, _ = normalise(model)
    conv = next(n for n in graph.nodes if n.op == "Conv")
    conv.inputs[1] = gs.Constant("scaled2", (conv.inputs[1].values * 1.01).astype(np.float32))
    with pytest.raises(PassError, match="changed output"):
        self_check(model, graph, "normalising passes")

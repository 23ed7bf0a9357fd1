"""The pipeline: the order the passes depend on, and a pass that breaks reported with its name and the
passes before it."""
import pytest

from builders import small_cnn
from ground.errors import DataError, PassError
from rewrites.convert import import_graph
from rewrites.passes import DEFAULT_PIPELINE, NORMALISE, PASSES, SPIKING, Pass, PassContext, PassReport, run_passes


def position(name: str) -> int:
    return [p.name for p in DEFAULT_PIPELINE].index(name)


@pytest.mark.parametrize("before, after", [
    ("fold_constants", "max_to_relu"),  # max_to_relu reads the zero as a constant
    ("hard_activations", "batch_shapes"),  # batch_shapes gives the new tensors their shapes
    ("fold_constants", "batch_shapes"),
    ("fuse_softmax", "canonical_products"),  # canonical_products would rewrite the softmax's Div
    ("qcfs_to_if", "relu_to_if"),  # a QCFS chain holds a ReLU-like Clip
    ("nonlinear_to_spiking", "relu_to_if"),  # a ReLU-like node inside a function is part of it
    ("relu_to_if", "weight_norm"),  # weight_norm reads the neurons' thresholds
    ("maxpool_to_neuron", "weight_norm"),
])
def test_the_order_the_passes_rely_on(before, after):
    assert position(before) < position(after)


def test_normalising_passes_come_first_and_the_head_leads_the_spiking_ones():
    assert not any(p.spiking for p in NORMALISE) and all(p.spiking for p in SPIKING)
    assert SPIKING[0].name == "decoded_head" and DEFAULT_PIPELINE == NORMALISE + SPIKING
    assert len(PASSES) == len(DEFAULT_PIPELINE) and all(p.doc for p in DEFAULT_PIPELINE)


def broken(graph, ctx):
    raise KeyError("a tensor the pass expected")


def test_a_pass_that_breaks_is_named_with_the_passes_before_it():
    fine = Pass("fine", lambda graph, ctx: PassReport("fine"))
    with pytest.raises(PassError, match=r"pass 'broken' failed: KeyError: .*\(passes before it: fine\)") as caught:
        run_passes(import_graph(small_cnn()), (fine, Pass("broken", broken)), PassContext())
    assert "--skip-pass" in caught.value.hint


def test_a_pass_that_refuses_bad_input_keeps_its_own_error():
    def refusing(graph, ctx):
        raise DataError("tensor 'x' is wrong", "fix it")
    with pytest.raises(DataError, match="tensor 'x' is wrong"):
        run_passes(import_graph(small_cnn()), (Pass("refusing", refusing),), PassContext())


def test_every_verdict_of_inspect_is_carried_out_by_one_pass():
    from rewrites.optable import Conversion
    from rewrites.passes import KEPT, converting_pass
    for verdict in Conversion:
        carriers = [p.name for p in DEFAULT_PIPELINE if verdict in p.converts]
        if verdict in KEPT or verdict is Conversion.UNSUPPORTED:
            assert carriers == [] and converting_pass(verdict) is None, verdict
        else:
            assert len(carriers) == 1 and converting_pass(verdict).name == carriers[0], (verdict, carriers)


def test_the_pipeline_table_in_the_docs_is_the_registry():
    from pathlib import Path
    from rewrites.passes import pass_list_markdown
    page = (Path(__file__).parents[3] / "docs" / "cli.md").read_text()
    assert pass_list_markdown() in page, ("docs/cli.md's pipeline table is stale: paste the output of "
                                          "rewrites.passes.pass_list_markdown() between its passes markers")


def mixed_graph():
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["m"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["m"], ["f"], name="flat"),
             helper.make_node("Sigmoid", ["f"], ["s"], name="sig"),
             helper.make_node("Softmax", ["s"], ["p"], name="soft", axis=-1),
             helper.make_node("Add", ["p", "c"], ["y"], name="shift")]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [onnx.numpy_helper.from_array(np.ones(4, np.float32), "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_calibration_plan_is_what_the_passes_declare(monkeypatch):
    """Softmax: its input, centred input and log-sum-exp; the Sigmoid's UGO: its input; the IF neuron and the
    MaxPool neuron: their inputs; in graph order, the tensors calibration adds last. A pass that stops
    declaring its tensors gets none."""
    import dataclasses
    import rewrites.passes as registry
    from rewrites.convert import normalise
    from rewrites.patterns.softmax import SHIFTED_SUFFIX, SUM_SUFFIX
    graph, _ = normalise(mixed_graph())
    assert registry.observed_tensors(graph) == ["x", "r", "f", "s", "soft" + SHIFTED_SUFFIX, "soft" + SUM_SUFFIX]
    blind = tuple(dataclasses.replace(p, observes=None) if p.name == "relu_to_if" else p for p in SPIKING)
    monkeypatch.setattr(registry, "SPIKING", blind)
    assert registry.observed_tensors(graph) == ["r", "f", "s", "soft" + SHIFTED_SUFFIX, "soft" + SUM_SUFFIX]


def test_inspect_names_the_pass_of_each_verdict():
    import ann2snn
    rows = {(r["op"], r["conversion"]): r["pass"] for r in ann2snn.inspect(mixed_graph()).op_table()}
    assert rows[("Relu", "IF neuron")] == "relu_to_if"
    assert rows[("MaxPool", "MaxPool neuron")] == "maxpool_to_neuron"
    assert rows[("Add", "kept (linear)")] is None
    assert [p for (op, _), p in rows.items() if op == "Sigmoid"] == ["nonlinear_to_spiking"]


def single_node_graphs():
    """One node of each op type the claims look at, with one and two input-dependent operands, with and
    without a constant operand, and with a second output."""
    import numpy as np
    import onnx_graphsurgeon as gs
    ops = ["Relu", "Clip", "Sigmoid", "Exp", "Gelu", "HardSwish", "LeakyRelu", "Sqrt", "Reciprocal", "Pow", "Softmax",
           "LayerNormalization", "MaxPool", "GlobalMaxPool", "Max", "Min", "ReduceMax", "ReduceMin", "ReduceL2",
           "ReduceSumSquare", "MatMul", "Mul", "Div", "Einsum", "Floor", "Where", "TopK"]
    for op in ops:
        for dynamic in (1, 2):
            for consts in ((), (np.float32(2.0),), (np.float32(0.0), np.float32(6.0))):
                for outputs in (1, 2):
                    xs = [gs.Variable(f"x{i}", np.float32, (2, 3, 4)) for i in range(dynamic)]
                    cs = [gs.Constant(f"c{i}", np.asarray(c)) for i, c in enumerate(consts)]
                    ys = [gs.Variable(f"y{i}", np.float32, None) for i in range(outputs)]
                    yield gs.Graph(nodes=[gs.Node(op, name="n", inputs=xs + cs, outputs=ys)], inputs=xs, outputs=ys)


def test_no_node_is_claimed_by_two_passes():
    """The verdict must not depend on the order the claims are asked in."""
    from rewrites.patterns.tensors import dynamic_tensors
    claimed = 0
    for graph in single_node_graphs():
        node, dynamic = graph.nodes[0], dynamic_tensors(graph)
        ins = [i for i in node.inputs if i.name]
        is_dynamic = [i.name in dynamic for i in ins]
        takers = [p.name for p in DEFAULT_PIPELINE if p.claims and p.claims(node, ins, is_dynamic) is not None]
        assert len(takers) <= 1, (node.op, len(ins), is_dynamic, takers)
        claimed += bool(takers)
    assert claimed > 100  # the sweep reaches the claims


def test_a_new_op_type_is_claimed_by_its_pass_alone():
    """The recipe of docs/architecture.md: a pass that claims an op type no other pass knows makes `inspect`
    give its verdict, with no table elsewhere to edit."""
    import dataclasses
    import numpy as np
    import onnx_graphsurgeon as gs
    import rewrites.passes as registry
    from rewrites.optable import Conversion, classify_graph
    x, y = gs.Variable("x", np.float32, (2, 3)), gs.Variable("y", np.float32, None)
    graph = gs.Graph(nodes=[gs.Node("Hardmax", name="hard", inputs=[x], outputs=[y])], inputs=[x], outputs=[y])
    assert [v.conversion for v in registry.verdicts(graph)] == [Conversion.UNSUPPORTED]

    def claim(node, ins, is_dynamic):
        return (Conversion.MAX_NEURON, "one-hot of the spiking max") if node.op == "Hardmax" else None
    taking = dataclasses.replace(registry.PASSES["max_to_neuron"], claims=claim)
    verdict, = classify_graph(graph, registry.CLAIMS + (taking.claims,))
    assert (verdict.conversion, verdict.reason) == (Conversion.MAX_NEURON, "one-hot of the spiking max")


def test_allow_float_refuses_a_context_without_the_claims():
    from rewrites.passes import allow_float
    with pytest.raises(PassError, match="claims"):
        run_passes(import_graph(small_cnn()), (allow_float.PASS,), PassContext())

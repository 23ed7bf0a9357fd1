"""batch_shapes: give a Reshape whose target is computed from tensor shapes a constant target.

Matches Reshape whose shape input is not a constant but depends on the graph inputs only through Shape
nodes: torch's classic exporter writes `x.view(x.size(0), -1)` and `B, N, C = x.shape; x.reshape(B, N, h,
C // h)` as Shape -> Gather / Slice -> Unsqueeze -> Concat -> Reshape, because the batch axis is dynamic.
Such a target only carries the batch size, but onnx's shape inference for Reshape before opset 14 gives its
output no rank, and every later Softmax, LayerNorm or product then has no shape to work with.

The graph is run with onnxruntime at two batch sizes (2 and 3). An entry of the target that is the same in
both runs is a constant; one that equals the batch size in both runs is the batch and becomes 0 (copy the
input's dimension, `allowzero` = 0) when the input's dimension at that position is the batch too, else -1
when the target holds no other -1. The Shape chain is then dead and removed. Constraints, each skipped with
its reason: every graph input has a dynamic first axis and static other axes (a target computed from a
dynamic sequence length would be frozen at the probed one); an entry that is another function of the batch
(B * 16) or a target that would need two -1 is left as it is."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from rewrites.export import graph_to_model, graph_weights, large_constants, weights_to_inputs
from rewrites.patterns.tensors import dynamic_tensors
from rewrites.passes.base import Pass, PassContext, PassReport
from ground.sessions import Session, WEIGHTS_AS_INPUTS_ABOVE

PROBE_BATCHES = (2, 3)


def _computed_targets(graph: gs.Graph) -> list[gs.Node]:
    dynamic = dynamic_tensors(graph)
    return [n for n in graph.nodes if n.op == "Reshape" and len(n.inputs) > 1
            and isinstance(n.inputs[1], gs.Variable) and n.inputs[1].name not in dynamic]


def _inputs_reason(graph: gs.Graph) -> str | None:
    for t in graph.inputs:
        shape = t.shape
        if shape is None or len(shape) == 0:
            return f"input '{t.name}' has no known rank"
        if isinstance(shape[0], int):
            return f"input '{t.name}' has a static first axis"
        if not all(isinstance(d, int) for d in shape[1:]):
            return f"input '{t.name}' has dynamic axes besides the first"
    return None


def _probe(graph: gs.Graph, nodes: list[gs.Node]) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """Per probe batch size: (target, shape of the data input) of every node, from onnxruntime. Above
    WEIGHTS_AS_INPUTS_ABOVE bytes of weights the session takes them as inputs read from the graph's constants
    (no serialised copy of the weights), as the self-check does."""
    if sum(t._values.nbytes for t in large_constants(graph).values()) <= WEIGHTS_AS_INPUTS_ABOVE:
        model, weights = graph_to_model(graph), {}
    else:  # feed what weights_to_inputs made inputs (its size rule is not large_constants' to the byte)
        model = weights_to_inputs(graph_to_model(graph, weights=False))
        tensors, fed = graph.tensors(), {t.name for t in graph.inputs}
        weights = graph_weights(graph, {i.name: tensors[i.name] for i in model.graph.input if i.name not in fed})
    del model.graph.output[:]
    for i, node in enumerate(nodes):
        shape_of = f"{node.name}.batch_shapes.input_shape"
        model.graph.node.append(onnx.helper.make_node("Shape", [node.inputs[0].name], [shape_of],
                                                      name=f"{node.name}.batch_shapes.{i}"))
        for name in (node.inputs[1].name, shape_of):
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None))
    session = Session(model, "the model with its shape computations exposed", optimize=False)
    rng = np.random.default_rng(0)
    results = {}
    for batch in PROBE_BATCHES:
        feeds = {}
        for t in graph.inputs:
            dims = (batch,) + tuple(t.shape[1:])
            dtype = np.dtype(t.dtype)
            feeds[t.name] = rng.random(dims).astype(dtype) if dtype.kind == "f" else np.zeros(dims, dtype)
        values = session.run(None, {**feeds, **weights})
        results[batch] = [(values[2 * i], values[2 * i + 1]) for i in range(len(nodes))]
    return results


def _constant_target(node: gs.Node, probes: list[tuple[int, np.ndarray, np.ndarray]]
                     ) -> tuple[list[int] | None, str]:
    """The constant target, or None and the reason. probes: (batch size, target, data input's shape)."""
    (b1, t1, d1), (b2, t2, d2) = probes
    if t1.shape != t2.shape:
        return None, "its target changes length with the batch size"
    allowzero = node.attrs.get("allowzero", 0)
    target, batch_at = [], []
    for i, (u, v) in enumerate(zip(t1.tolist(), t2.tolist())):
        if u == v:
            target.append(u)
        elif u == b1 and v == b2:
            batch_at.append(i)
            target.append(None)
        else:
            return None, (f"entry {i} of its target is another function of the batch size ({u} at batch {b1}, "
                          f"{v} at {b2})")
    for i in batch_at:
        if not allowzero and i < len(d1) and d1[i] == b1 and d2[i] == b2:
            target[i] = 0
        elif -1 not in target:
            target[i] = -1
        else:
            return None, "its target would need two -1"
    return target, ""


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("batch_shapes")
    nodes = _computed_targets(graph)
    if not nodes:
        return report
    reason = _inputs_reason(graph)
    if reason:
        report.skipped += [(n.name, reason) for n in nodes]
        return report
    results = _probe(graph, nodes)
    for i, node in enumerate(nodes):
        probes = [(b, results[b][i][0], results[b][i][1]) for b in PROBE_BATCHES]
        target, why = _constant_target(node, probes)
        if target is None:
            report.skipped.append((node.name, why))
            continue
        node.inputs[1] = gs.Constant(f"{node.name}.batch_shapes.target", np.asarray(target, np.int64))
        report.converted.append(node.name)
    return report


PASS = Pass("batch_shapes", run, doc="Constant Reshape targets where a computed one only carries the batch size.")

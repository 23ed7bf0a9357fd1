"""Run one pass on a model and compare the function before and after it under onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx

from conftest import run_ort
from rewrites.convert import import_graph, to_model
from rewrites.passes import PassContext, run_passes


def run_pass(model: onnx.ModelProto, pass_, ctx: PassContext | None = None):
    """(the rewritten model, the pass's report)."""
    graph = import_graph(model)
    report, = run_passes(graph, (pass_,), ctx or PassContext())
    after = to_model(graph, model)
    onnx.checker.check_model(after, full_check=True)
    return after, report


def assert_same_function(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    """Same outputs to float32 rounding: 1e-5 relative to each output's largest value."""
    for u, v in zip(run_ort(before, feeds), run_ort(after, feeds)):
        np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(u).max())))


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def int64_const(builder, values) -> str:
    """An int64 initializer (axes, shapes) in a ModelBuilder model, whose const() writes float32."""
    name = builder.name("i")
    builder.inits.append(onnx.numpy_helper.from_array(np.asarray(values, np.int64), name))
    return name

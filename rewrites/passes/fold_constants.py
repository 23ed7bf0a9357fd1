"""fold_constants: evaluate every node whose inputs are all constants (shape arithmetic included where the
shapes are static) and replace it by its value. Uses onnx-graphsurgeon's folding, which runs onnxruntime."""
from __future__ import annotations

import logging

import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from rewrites.passes.base import Pass, PassContext, PassReport

G_LOGGER.severity = G_LOGGER.ERROR
logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("fold_constants")
    before = {n.name for n in graph.nodes}
    graph.fold_constants(error_ok=True).cleanup()
    after = {n.name for n in graph.nodes}
    report.converted = sorted(before - after)
    return report


PASS = Pass("fold_constants", run, doc="Constant folding.")

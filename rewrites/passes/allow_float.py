"""allow_float: nodes of the op types named by --allow-float (`all`: every op type), which no other pass maps,
stay floating-point operators. Those on the signal path get estimate-and-correct semantics: they read the
running means of their float inputs and emit what makes the running mean of each float output equal their
value (DESIGN.md). Kept as they are, without wrapping, with the reason in the report:
- a node whose input-dependent operands are all computed from the graph inputs and constants by standard
  nodes: the input is presented unchanged at every step, so its value is the same at every step. Where it
  reads or writes a non-float tensor (the one-hot Equal/Cast of int ids, a Cast of an int input) it is the
  input encoder, kept without --allow-float too; a float one (Floor of a Gemm of the input) needs the flag,
  and is wrapped after all when the file is converted for drain steps (the gated input would charge f(0));
- a node whose input-dependent operands are not float32 (bool or int tensors have no running mean).
A non-float output of a wrapped node (ArgMax, Equal on activations) is its op on the running means, emitted
as is: the wrappers are float-only. Every node keeps its own types."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ground.errors import PassError
from rewrites.optable import classify_graph, Conversion, NodeConversion
from rewrites.patterns.tensors import SHAPE_ONLY_OPS, dynamic_tensors
from rewrites.passes.base import Pass, PassContext, PassReport
from rewrites.passes.spiking import wrap_exact

ALL = "all"  # --allow-float all: every op type nothing else maps


def presented_tensors(graph: gs.Graph) -> set[str]:
    """Tensors computed from the graph inputs and constants by standard-domain nodes only: the same at every
    step, since the input is presented unchanged (Shape and Size read only the shape, which never changes).
    The graph must be topologically sorted."""
    presented = {t.name for t in graph.inputs}
    for node in graph.nodes:
        if node.domain not in (None, "", "ai.onnx"):
            continue
        if node.op in SHAPE_ONLY_OPS or all(isinstance(t, gs.Constant) or not t.name or t.name in presented for t in node.inputs):
            presented.update(o.name for o in node.outputs if o.name)
    return presented


def _is_float(tensor: gs.Tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype) == np.float32


def _streams(node: gs.Node, dynamic: set[str], presented: set[str]) -> list[gs.Variable]:
    """The node's input-dependent operands that change from step to step."""
    return list({id(t): t for t in node.inputs if isinstance(t, gs.Variable) and t.name in dynamic
                 and t.name not in presented}.values())


ENCODER = "input encoder: computed from the presented input, the same at every step"


def _reads_or_writes_non_float(node: gs.Node, dynamic: set[str]) -> bool:
    return any(not _is_float(t) for t in node.inputs if isinstance(t, gs.Variable) and t.name in dynamic) \
        or any(not _is_float(t) for t in node.outputs if t.name)


def input_encoder(graph: gs.Graph, conversions: list[NodeConversion]) -> list[str]:
    """Nodes that no pass maps, that read only the presented input and constants, and read or write a
    non-float tensor (the one-hot Equal and Cast of int ids, a Cast of an int input): kept as they are with or
    without --allow-float (`inspect` and `convert` both call this). A float function of the presented input
    (Floor of a Gemm of it) still needs --allow-float: it is the user's choice to keep it float."""
    graph.toposort()
    dynamic, presented = dynamic_tensors(graph), presented_tensors(graph)
    by_name = {n.name: n for n in graph.nodes}
    return [c.node for c in conversions
            if not c.conversion.converts and c.node in by_name and not _streams(by_name[c.node], dynamic, presented)
            and _reads_or_writes_non_float(by_name[c.node], dynamic)]


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("allow_float")
    allowed = set(ctx.options.allow_float)
    by_name = {n.name: n for n in graph.nodes}
    if not ctx.claims:
        raise PassError("allow_float reads the verdicts of the pipeline's claims; none were given (PassContext.claims)",
                        "pass rewrites.passes.CLAIMS to the PassContext")
    conversions = classify_graph(graph, ctx.claims)
    encoder = set(input_encoder(graph, conversions))
    for conv in conversions:
        node = by_name[conv.node]
        if conv.conversion.converts or node.name in ctx.kept_float or not (
                node.name in encoder or ALL in allowed or node.op in allowed):
            continue
        graph.toposort()
        dynamic = dynamic_tensors(graph)
        streams = _streams(node, dynamic, presented_tensors(graph))
        if not streams and node.name not in encoder and (ctx.options.drain_steps or ctx.options.fs):
            # drain steps (and FS coding after its first step) gate the input: a float function of it kept as is
            # would see f(0) charge in; wrapped, a drained file has no drain gate and says why (rewrites/drive.py)
            streams = _streams(node, dynamic, set())
        means = [t for t in streams if _is_float(t)]
        if not streams:
            how = f"as is: {ENCODER}" if node.name in encoder else \
                "as is: computed from the presented input, the same at every step"
        elif not means:
            how = "as is: its input-dependent operands are not float32 (no running mean of bool or int)"
        else:
            outputs = [o for o in node.outputs if o.name and _is_float(o)]
            wrap_exact(graph, node.name, [node], means, outputs, summed=ctx.options.fs)
            how = "estimate-and-correct" if len(outputs) == len([o for o in node.outputs if o.name]) \
                else "on the running means; its non-float outputs as is"
        ctx.kept_float.append(node.name)
        report.converted.append(node.name)
        flag = "" if node.name in encoder else " (--allow-float)"
        report.layers.append({"node": node.name, "op": node.op, "nonlinear": f"float{flag}: {how}"})
    return report


PASS = Pass("allow_float", run, spiking=True, doc="--allow-float OP|all: keep those ops as exact float operators.",
            converts=frozenset({Conversion.FLOAT}))

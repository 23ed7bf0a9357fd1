"""max_to_neuron: the max family -> spiking max operators (the MaxPool neuron's rule, generalised).

Matches elementwise Max and Min of any number of inputs (signals and constants), ReduceMax and ReduceMin
with constant axes, and GlobalMaxPool, on tensors that depend on the input. Each becomes an operator that
accumulates its inputs and emits the increase of the max (min) of the sums: the max of sums is t times the
max of means, so the running mean of the output is the op of the inputs' running means at every t, exact.
- Variadic Max / Min: a chain of two-input SpikeMax / SpikeMin, constants folded into one. A constant
  operand is presented at every step like the input: it enters as the signal 0 * x + c (x the first
  signal), whose running sum is t * c; the drain gate (rewrites/drive.py) gates its c like any constant term.
- ReduceMax / ReduceMin (axes from the attribute, or the constant input from opset 18; none: every axis) and
  GlobalMaxPool (axes 2.., keepdims): SpikeReduceMax / SpikeReduceMin.
Left alone with the reason: axes that are not constant, a reduction over the batch axis (the state keeps
the batch first), a node whose tensors have no static shape."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from snnfile.operators import SPIKE_MAX, SPIKE_MIN, SPIKE_REDUCE_MAX, SPIKE_REDUCE_MIN
from rewrites.patterns.tensors import dynamic_tensors
from rewrites.passes.base import Pass, PassContext, PassReport
from rewrites.optable import Conversion, Verdict, constant_axes
from rewrites.passes.spiking import replace_node, shaped_like, spiking_node

ELEMENTWISE = {"Max": SPIKE_MAX, "Min": SPIKE_MIN}
REDUCE = {"ReduceMax": SPIKE_REDUCE_MAX, "ReduceMin": SPIKE_REDUCE_MIN, "GlobalMaxPool": SPIKE_REDUCE_MAX}


def reduce_axes(node: gs.Node, rank: int) -> list[int] | None:
    """The axes a reduction reads, non-negative and sorted; None when they are not constant."""
    if node.op == "GlobalMaxPool":
        return list(range(2, rank))
    if len(node.inputs) > 1 and node.inputs[1].name:
        if not isinstance(node.inputs[1], gs.Constant):
            return None
        axes = [int(a) for a in np.asarray(node.inputs[1].values).reshape(-1)]
    else:
        axes = list(node.attrs.get("axes", []))
    if not axes:
        return [] if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(a % rank for a in axes)


def _static(t) -> bool:
    return t.shape is not None and all(isinstance(d, int) and d > 0 for d in list(t.shape)[1:])


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("max_to_neuron")
    dynamic = dynamic_tensors(graph)
    for node in [n for n in graph.nodes if n.op in ELEMENTWISE or n.op in REDUCE]:
        signals = [t for t in node.inputs if t.name in dynamic and isinstance(t, gs.Variable)]
        if not signals:
            continue
        if not all(_static(t) for t in signals + node.outputs[:1]):
            report.skipped.append((node.name, "a tensor without a static shape"))
            continue
        if node.op in ELEMENTWISE:
            _elementwise(graph, node, signals, ELEMENTWISE[node.op])
        else:
            rank = len(signals[0].shape)
            axes = reduce_axes(node, rank)
            if axes is None:
                report.skipped.append((node.name, "axes that depend on the input"))
                continue
            if 0 in axes:
                report.skipped.append((node.name, "a reduction over the batch axis"))
                continue
            if not axes:  # noop_with_empty_axes: the identity
                continue
            keepdims = 1 if node.op == "GlobalMaxPool" else int(node.attrs.get("keepdims", 1))
            spec = REDUCE[node.op]
            x, y = signals[0], node.outputs[0]
            replace_node(graph, node, spiking_node(spec, node.name, [x], y, [x, y],
                                                   {"axes": axes, "keepdims": keepdims}))
        report.converted.append(node.name)
        report.layers.append({"node": node.name, "op": (ELEMENTWISE.get(node.op) or REDUCE[node.op]).op_type,
                              "from": node.op})
    return report


def _elementwise(graph: gs.Graph, node: gs.Node, signals: list[gs.Variable], spec) -> None:
    """A chain of two-input spiking nodes over the signals, then the constants folded into one signal."""
    constants = [np.asarray(t.values, np.float32) for t in node.inputs if isinstance(t, gs.Constant)]
    operands = list(signals)
    if constants:
        fold = np.maximum if node.op == "Max" else np.minimum
        value = np.asarray(fold.reduce(np.broadcast_arrays(*constants)) if len(constants) > 1 else constants[0],
                           np.float32)
        x = signals[0]
        shape = list(np.broadcast_shapes(tuple([1] + list(x.shape)[1:]), value.shape))
        shape[0] = x.shape[0] if len(shape) == len(x.shape) else shape[0]
        scaled = gs.Variable(f"{node.name}.zeroed", np.float32, list(x.shape))
        presented = gs.Variable(f"{node.name}.constant", np.float32, shape)
        graph.nodes.append(gs.Node("Mul", name=f"{node.name}.zeroed", outputs=[scaled],
                                   inputs=[x, gs.Constant(f"{node.name}.zero", np.array(0.0, np.float32))]))
        graph.nodes.append(gs.Node("Add", name=f"{node.name}.constant", outputs=[presented],
                                   inputs=[scaled, gs.Constant(f"{node.name}.value", value)]))
        operands.append(presented)
    y = node.outputs[0]
    if len(operands) == 1:  # the max of one tensor is that tensor
        graph.nodes.append(gs.Node("Identity", name=node.name, inputs=operands, outputs=[y]))
    acc = operands[0]
    for k, operand in enumerate(operands[1:], start=1):
        last = k == len(operands) - 1
        name = node.name if last else f"{node.name}.{k}"
        out = y if last else shaped_like(name, y)
        graph.nodes.append(spiking_node(spec, name, [acc, operand], out, [acc, operand, out]))
        acc = out
    node.inputs.clear()
    node.outputs.clear()


MAX_OPS = frozenset({"Max", "Min", "ReduceMax", "ReduceMin", "GlobalMaxPool"})


def claim(node: gs.Node, ins: list, is_dynamic: list[bool]) -> Verdict | None:
    """Every Max, Min and GlobalMaxPool, and the reductions whose axes are constant and leave the batch axis
    alone."""
    if node.op not in MAX_OPS:
        return None
    if node.op in ("ReduceMax", "ReduceMin"):
        x = next(t for t, d in zip(ins, is_dynamic) if d)
        if len(ins) > 1 and is_dynamic[1]:
            return Conversion.UNSUPPORTED, "reduction axes that depend on the input"
        axes = constant_axes(node, ins)
        if axes is None:
            return Conversion.UNSUPPORTED, "reduction axes that are not constant"
        rank = len(x.shape) if x.shape is not None else None
        if rank is not None and (not axes and not node.attrs.get("noop_with_empty_axes", 0) or
                                 0 in [int(a) % rank for a in axes]):
            return Conversion.UNSUPPORTED, f"{node.op} over the batch axis"
    return Conversion.MAX_NEURON, ""


PASS = Pass("max_to_neuron", run, spiking=True, doc="Max / Min / ReduceMax / ReduceMin / GlobalMaxPool -> "
            "spiking max operators.", converts=frozenset({Conversion.MAX_NEURON}), claims=claim)

"""fold_constants: evaluate every node whose inputs are all constants (shape arithmetic included where the
shapes are static) and replace it by its value. Then drop the operands that are the identity of their op:
an all -inf operand of Max (jax.nn.softmax starts its maximum at -inf), an all +inf one of Min, and an
infinite Clip bound; a Max or Min left with one operand is removed. An operand whose shape would broadcast
the others to a larger shape is kept (reason given). Layout operators on constants (a transposed or reshaped
weight) are folded here with NumPy, which moves the data once; the rest by onnx-graphsurgeon's folding, which
serialises the constant subgraph and runs onnxruntime on it (measured: 3.4 copies of a large weight)."""
from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from rewrites.passes.base import Pass, PassContext, PassReport, redirect_readers
from rewrites.patterns.tensors import is_graph_output

G_LOGGER.severity = G_LOGGER.ERROR
logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)


def _axes(node: gs.Node) -> list[int] | None:
    """Squeeze/Unsqueeze axes from the attribute (opset < 13) or a constant second input; None if unknown."""
    if len(node.inputs) > 1:
        return [int(a) for a in np.asarray(node.inputs[1].values).reshape(-1)] if node.inputs[1].name else None
    return list(node.attrs["axes"]) if "axes" in node.attrs else None


def _layout_value(node: gs.Node) -> np.ndarray | None:
    """The value of a layout operator on a constant, or None when it is not one this folds."""
    x = np.asarray(node.inputs[0].values)
    if node.op == "Identity":
        return x
    if node.op == "Transpose":
        return np.ascontiguousarray(np.transpose(x, node.attrs.get("perm")))
    if node.op == "Reshape" and len(node.inputs) == 2:
        shape = [int(d) for d in np.asarray(node.inputs[1].values).reshape(-1)]
        if not node.attrs.get("allowzero", 0):
            shape = [x.shape[i] if d == 0 and i < x.ndim else d for i, d in enumerate(shape)]
        return x.reshape(shape)
    axes = _axes(node)
    if node.op == "Unsqueeze" and axes is not None:
        rank = x.ndim + len(axes)
        return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))
    if node.op == "Squeeze" and axes is not None:
        return np.squeeze(x, tuple(a % x.ndim for a in axes)) if axes else np.squeeze(x)
    return None


LAYOUT_OPS = frozenset({"Identity", "Transpose", "Reshape", "Unsqueeze", "Squeeze"})


def fold_layout(graph: gs.Graph) -> list[str]:
    """Fold layout operators whose inputs are all constants, in graph order (a chain folds whole)."""
    folded = []
    for node in list(graph.nodes):
        if node.op not in LAYOUT_OPS or len(node.outputs) != 1 or not node.inputs or node.outputs[0] in graph.outputs:
            continue
        if not all(isinstance(t, gs.Constant) for t in node.inputs if t.name):
            continue
        try:
            value = _layout_value(node)
        except (ValueError, IndexError, TypeError, KeyError):  # left to the general folding, which reports it
            continue
        if value is None:
            continue
        out = node.outputs[0]
        redirect_readers(out, gs.Constant(out.name, np.asarray(value)))
        node.outputs.clear()
        node.inputs.clear()
        folded.append(node.name)
    if folded:
        graph.cleanup()
    return folded


_IDENTITY = {"Max": -np.inf, "Min": np.inf}


def _is_identity(tensor: gs.Tensor, value: float) -> bool:
    return isinstance(tensor, gs.Constant) and np.asarray(tensor.values).size > 0 \
        and bool(np.all(np.asarray(tensor.values) == value))


def _broadcasts_within(constant: gs.Constant, others: list[gs.Tensor]) -> bool:
    """True when `constant` broadcast against `others` gives no larger shape than theirs."""
    shape = np.asarray(constant.values).shape
    if not shape:
        return True
    for other in others:
        if other.shape is not None and len(other.shape) >= len(shape) and all(
                d == 1 or d == o for d, o in zip(shape, other.shape[len(other.shape) - len(shape):])):
            return True
    return False


def drop_identities(graph: gs.Graph, report: PassReport) -> None:
    """Max(x, -inf) -> x, Min(x, +inf) -> x, Clip(x, -inf, b) -> Clip(x, , b): see the module's docstring."""
    removed = False
    for node in list(graph.nodes):
        if node.op in _IDENTITY and len(node.inputs) > 1:
            keep = [t for t in node.inputs if not _is_identity(t, _IDENTITY[node.op])]
            dropped = [t for t in node.inputs if _is_identity(t, _IDENTITY[node.op])]
            if not dropped:
                continue
            if not keep:
                report.skipped.append((node.name, f"every operand is {_IDENTITY[node.op]}"))
                continue
            if not all(_broadcasts_within(t, keep) for t in dropped):
                report.skipped.append((node.name, f"its {_IDENTITY[node.op]} operand broadcasts the others"))
                continue
            if len(keep) == 1 and not is_graph_output(graph, node.outputs[0]):
                redirect_readers(node.outputs[0], keep[0])
                node.outputs.clear()
                node.inputs.clear()
                removed = True
            else:
                node.inputs[:] = keep
            report.converted.append(node.name)
        elif node.op == "Clip" and len(node.inputs) > 1:
            infinite = [k for k in (1, 2) if k < len(node.inputs) and isinstance(node.inputs[k], gs.Constant)
                        and np.all(np.isinf(np.asarray(node.inputs[k].values)))]
            for k in infinite:
                node.inputs[k] = gs.Variable.empty()
            while node.inputs and not node.inputs[-1].name:
                node.inputs.pop()
            if infinite:
                report.converted.append(node.name)
    if removed:
        graph.cleanup()


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("fold_constants")
    before = {n.name for n in graph.nodes}
    fold_layout(graph)
    graph.fold_constants(error_ok=True).cleanup()
    after = {n.name for n in graph.nodes}
    report.converted = sorted(before - after)
    drop_identities(graph, report)
    return report


PASS = Pass("fold_constants", run, doc="Constant folding.")

"""Helpers shared by the passes that insert spiking operators."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.errors import ModelError
from rewrites.neurons import DOMAIN, OperatorSpec


def state_pair(node_name: str, var: str, like: gs.Variable) -> tuple[gs.Variable, gs.Variable]:
    """The state input `state.<node>.<var>` and its output `state.<node>.<var>.next`, shaped like `like`."""
    shape = like.shape
    if shape is None or any(not isinstance(d, int) or d <= 0 for d in list(shape)[1:]):
        raise ModelError(f"node '{node_name}': the shape of tensor '{like.name}' is not static ({shape})",
                         "export the model with static non-batch dimensions")
    name = f"state.{node_name}.{var}"
    dims = list(shape)
    if not isinstance(dims[0], int) or dims[0] <= 0:
        dims[0] = "N"
    return (gs.Variable(name, np.float32, dims), gs.Variable(name + ".next", np.float32, dims))


def spiking_node(spec: OperatorSpec, name: str, inputs: list[gs.Tensor], output: gs.Variable,
                 state_like: list[gs.Variable], attrs: dict | None = None) -> gs.Node:
    pairs = [state_pair(name, var, like) for var, like in zip(spec.state, state_like)]
    return gs.Node(spec.op_type, name=name, attrs=attrs or {}, domain=DOMAIN,
                   inputs=list(inputs) + [p[0] for p in pairs], outputs=[output] + [p[1] for p in pairs])


def replace_node(graph: gs.Graph, old: gs.Node, new: gs.Node) -> None:
    old.inputs.clear()
    old.outputs.clear()
    graph.nodes.append(new)

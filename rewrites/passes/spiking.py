"""Helpers shared by the passes that insert spiking operators."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ground.errors import ModelError
from snnfile import DOMAIN, next_name, state_name
from snnfile.operators import OperatorSpec
from rewrites.passes.base import replace_input


def state_pair(node_name: str, var: str, like: gs.Variable) -> tuple[gs.Variable, gs.Variable]:
    """The state input `state.<node>.<var>` and its output `state.<node>.<var>.next`, shaped like `like`."""
    shape = like.shape
    if shape is None or any(not isinstance(d, int) or d <= 0 for d in list(shape)[1:]):
        raise ModelError(f"node '{node_name}': the shape of tensor '{like.name}' is not static ({shape})",
                         "export the model with static non-batch dimensions")
    name = state_name(node_name, var)
    dims = list(shape)
    if not isinstance(dims[0], int) or dims[0] <= 0:
        dims[0] = "N"
    return (gs.Variable(name, np.float32, dims), gs.Variable(next_name(name), np.float32, dims))


def spiking_node(spec: OperatorSpec, name: str, inputs: list[gs.Tensor], output: gs.Variable,
                 state_like: list[gs.Variable], attrs: dict | None = None) -> gs.Node:
    pairs = [state_pair(name, var, like) for var, like in zip(spec.state, state_like)]
    return gs.Node(spec.op_type, name=name, attrs=attrs or {}, domain=DOMAIN,
                   inputs=list(inputs) + [p[0] for p in pairs], outputs=[output] + [p[1] for p in pairs])


def replace_node(graph: gs.Graph, old: gs.Node, new: gs.Node) -> None:
    old.inputs.clear()
    old.outputs.clear()
    graph.nodes.append(new)


def step_like() -> gs.Variable:
    """A stand-in shaped like the per-node step counter (state of shape [1])."""
    return gs.Variable("step", np.float32, [1])


def shaped_like(name: str, like: gs.Tensor) -> gs.Variable:
    return gs.Variable(name, np.float32, list(like.shape) if like.shape is not None else None)


def wrap_exact(graph: gs.Graph, name: str, nodes: list[gs.Node], inputs: list[gs.Variable],
               outputs: list[gs.Variable], summed: bool = False) -> None:
    """Estimate-and-correct around float nodes: they read the running means of `inputs` and their `outputs`
    are replaced, for every reader, by the corrected stream whose running mean is the float value. `summed`
    (a file decoded by the sum, FS coding): they read the running sums and their value is emitted once, at
    the step fs_schedule finds the inputs final, so that the outputs sum to the float value of the summed
    inputs."""
    from snnfile.operators import RATE_CORRECT, RELEASE, RUNNING_MEAN, RUNNING_SUM
    members = {id(n) for n in nodes}
    for k, x in enumerate(inputs):
        mean = shaped_like(f"{name}.{'sum' if summed else 'mean'}{k}", x)
        spec, state = (RUNNING_SUM, [x]) if summed else (RUNNING_MEAN, [x, step_like()])
        graph.nodes.append(spiking_node(spec, mean.name, [x], mean, state))
        for n in nodes:
            replace_input(n, x, mean)
    for k, y in enumerate(outputs):
        value = shaped_like(f"{name}.float{k}", y)
        producer = y.inputs[0]
        producer.outputs[producer.outputs.index(y)] = value
        for reader in [r for r in y.outputs if id(r) in members]:
            replace_input(reader, y, value)
        if summed:  # released once, at the step fs_schedule finds its inputs final
            graph.nodes.append(spiking_node(RELEASE, f"{name}.release{k}", [value, gs.Constant(
                f"{name}.release{k}.at", np.zeros(1, np.float32))], y, [step_like()]))
        else:
            graph.nodes.append(spiking_node(RATE_CORRECT, f"{name}.correct{k}", [value], y, [y, step_like()]))

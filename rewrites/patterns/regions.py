"""Elementwise functions of one signal: the subgraphs that become one UGO (or one exact float operator).

Every tensor has a root: a tensor made by an elementwise node from a single root's family (its other inputs
scalar constants) has that root, any other tensor is its own root. So x/sqrt(2) -> Erf -> +1 -> *x -> *0.5
(GELU as exporters write it), x*Sigmoid(x) (SiLU) or 1/Sqrt(v + eps) are functions of one root tensor.
A region is the part of a root's family that holds a nonlinearity (a seed) together with what feeds it and
what follows it within the family; its outputs are the family tensors read outside it. Plain linear chains,
ReLU-like nodes with no seed around them and squares x*x of one tensor (an exact spiking product) are left
to the other passes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from rewrites.patterns.tensors import dynamic_tensors, is_relu_like

NONLINEAR = frozenset({
    "Gelu", "Erf", "Exp", "Sigmoid", "Tanh", "Softplus", "Softsign", "Elu", "Selu", "Celu", "LeakyRelu",
    "HardSigmoid", "HardSwish", "Mish", "Abs", "Reciprocal", "Sqrt", "Pow", "Log", "Sin", "Cos", "Clip",
    "ThresholdedRelu", "Relu",
})
LINEAR = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Identity"})
FAMILY_OPS = NONLINEAR | LINEAR


@dataclass
class Region:
    root: gs.Variable
    nodes: list[gs.Node]  # in graph order
    outputs: list[gs.Variable]  # family tensors read outside the region (or graph outputs)

    @property
    def name(self) -> str:
        return self.nodes[0].name

    @property
    def ops(self) -> list[str]:
        return [n.op for n in self.nodes]

    def function_model(self, output: gs.Variable, opset: int) -> onnx.ModelProto:
        """A standalone model computing `output` from the root, elementwise on a 1-D input."""
        needed = _ancestors_within(self.nodes, output)
        nodes, inits = [], []
        for node in self.nodes:
            if id(node) not in needed:
                continue
            names = []
            for t in node.inputs:
                if isinstance(t, gs.Constant):
                    inits.append(numpy_helper.from_array(np.asarray(t.values), t.name))
                names.append(t.name)
            nodes.append(helper.make_node(node.op, names, [o.name for o in node.outputs], name=node.name,
                                          **node.attrs))
        graph = helper.make_graph(nodes, "f", [helper.make_tensor_value_info(self.root.name, onnx.TensorProto.FLOAT,
                                                                             ["n"])],
                                  [helper.make_tensor_value_info(output.name, onnx.TensorProto.FLOAT, None)],
                                  initializer=_unique(inits))
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _unique(inits: list) -> list:
    seen, out = set(), []
    for t in inits:
        if t.name not in seen:
            seen.add(t.name)
            out.append(t)
    return out


def _ancestors_within(nodes: list[gs.Node], output: gs.Variable) -> set[int]:
    members = {id(n) for n in nodes}
    found: set[int] = set()
    stack = [output]
    while stack:
        t = stack.pop()
        for producer in t.inputs:
            if id(producer) in members and id(producer) not in found:
                found.add(id(producer))
                stack.extend(producer.inputs)
    return found


def _is_scalar_constant(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Constant) and np.asarray(t.values).size == 1


def is_seed(node: gs.Node) -> bool:
    """A nonlinearity of the family: a nonlinear op that is not ReLU-like (an IF neuron does it exactly), or
    a product / quotient of two different family tensors."""
    if node.op in NONLINEAR:
        return not is_relu_like(node)
    if node.op in ("Mul", "Div"):
        dynamic = [t for t in node.inputs if isinstance(t, gs.Variable)]
        return len(dynamic) == 2 and dynamic[0] is not dynamic[1]
    return False


def find_regions(graph: gs.Graph, exclude: frozenset[str] = frozenset()) -> list[Region]:
    """`exclude`: nodes a pass already kept as exact float operators (a decoded head)."""
    root, families = _families(graph, exclude)
    regions = []
    for members in families.values():
        region_nodes = _seeded(members)
        if region_nodes:
            regions.append(_region(graph, root[members[0].outputs[0].name], region_nodes))
    return regions


def _families(graph: gs.Graph, exclude: frozenset[str]) -> tuple[dict[str, gs.Variable], dict[str, list[gs.Node]]]:
    graph.toposort()
    dynamic = dynamic_tensors(graph)
    root: dict[str, gs.Variable] = {}
    families: dict[str, list[gs.Node]] = {}
    for node in graph.nodes:
        if node.domain not in (None, "", "ai.onnx") or node.op not in FAMILY_OPS or len(node.outputs) != 1 \
                or node.name in exclude:
            continue
        inputs = [t for t in node.inputs if t.name]
        variables = [t for t in inputs if isinstance(t, gs.Variable)]
        if not variables or any(t.name not in dynamic for t in variables):
            continue
        if not all(_is_scalar_constant(t) for t in inputs if not isinstance(t, gs.Variable)):
            continue
        roots = {id(root.get(t.name, t)): root.get(t.name, t) for t in variables}
        if len(roots) != 1:
            continue
        r = next(iter(roots.values()))
        root[node.outputs[0].name] = r
        families.setdefault(r.name, []).append(node)
    return root, families


def _family_seeds(members: list[gs.Node]) -> set[int]:
    """The seeds of a family, less gated products: a product whose operands pass only through linear and
    ReLU-like nodes, one of them at least, from the root (x * Clip(x + 3, 0, 6), HardSwish) is an IF neuron
    and a spiking product, exact as T grows, not a nonlinearity to fit."""
    gated: set[str] = set()  # family tensors with a ReLU-like node and no seed upstream
    curved: set[str] = set()  # family tensors with a seed upstream
    seeds: set[int] = set()
    for n in members:  # graph order
        inputs = [t.name for t in n.inputs if isinstance(t, gs.Variable)]
        upstream_curved = any(t in curved for t in inputs)
        seed = is_seed(n) and not (n.op == "Mul" and not upstream_curved and any(t in gated for t in inputs))
        if seed:
            seeds.add(id(n))
        if seed or upstream_curved:
            curved.update(t.name for t in n.outputs)
        elif is_relu_like(n) or any(t in gated for t in inputs):
            gated.update(t.name for t in n.outputs)
    return seeds


def _seeded(members: list[gs.Node]) -> list[gs.Node]:
    """Members that are seeds, feed a seed, or follow one (within the family)."""
    ids = {id(n) for n in members}
    seed_ids = _family_seeds(members)

    def is_seed(n: gs.Node) -> bool:
        return id(n) in seed_ids

    seeds = [n for n in members if is_seed(n)]
    if not seeds:
        return []
    keep: set[int] = set()
    for seed in seeds:
        stack = [seed]
        while stack:  # what feeds it
            n = stack.pop()
            if id(n) in keep:
                continue
            keep.add(id(n))
            stack.extend(p for t in n.inputs for p in t.inputs if id(p) in ids)
    frontier = [n for n in members if id(n) in keep and is_seed(n)]
    while frontier:  # what follows
        n = frontier.pop()
        for c in (c for t in n.outputs for c in t.outputs if id(c) in ids):
            if id(c) not in keep or is_seed(c):
                if id(c) not in keep:
                    keep.add(id(c))
                    frontier.append(c)
    return [n for n in members if id(n) in keep]


def _region(graph: gs.Graph, root: gs.Variable, nodes: list[gs.Node]) -> Region:
    ids = {id(n) for n in nodes}
    graph_outputs = {id(t) for t in graph.outputs}
    outputs = []
    for n in nodes:
        for t in n.outputs:
            if id(t) in graph_outputs or any(id(c) not in ids for c in t.outputs):
                outputs.append(t)
    return Region(root, nodes, outputs)

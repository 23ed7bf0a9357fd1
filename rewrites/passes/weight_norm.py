"""weight_norm: layer-wise weight normalisation (seed 001): neurons fire unit spikes at threshold 1 and the
thresholds live in the weights, W_l *= theta_{l-1} / theta_l, b_l /= theta_l. Active only with
`options.weight_norm` (`convert --weight-norm`); runs after relu_to_if and maxpool_to_neuron.

An IF neuron (or signed IF neuron) with threshold theta on input I emits spikes s * theta; the same neuron
with threshold 1 (levels divided by theta) on input I / theta emits the same spikes s, and s * theta is the
original output. Weight normalisation moves the 1/theta into the weights and bias of the Conv/Gemm that
produce I and the *theta into the weights of every Conv/Gemm that its spikes reach. Formally, every tensor
gets a scale sigma (original value = sigma * new value) with these constraints:

- a normalised neuron: its input and its output have scale theta; any other neuron: scale 1 on both;
- ops that commute with a positive scalar factor (MaxPool neuron, MaxPool, AveragePool, GlobalAveragePool,
  Flatten, Reshape, Transpose, Pad with zero padding, Slice, Resize, Mul/Div by a constant, ...): output
  scale = input scale;
- ops that join tensors (Add, Sub, Sum, Concat, Max, Min, Mean): every input and the output share one scale;
- a Conv, ConvTranspose, Gemm or MatMul with constant weights (and bias) is free: it absorbs any ratio,
  weights *= sigma_in / sigma_out, bias /= sigma_out;
- graph inputs and outputs, constants joined to a tensor, and every other op: scale 1.

The tensors linked by the first three rules form classes (union-find). A class whose pinned scales disagree
(a residual Add joining branches of different thresholds, a neuron that feeds a graph output or a Softmax,
a neuron fed straight by the graph input, two neurons of different thresholds with only pooling between
them, ...) cannot be folded: every neuron pinned in it stays threshold-balanced, with the reason, and the
resolution repeats until no class disagrees. What remains is exact in real arithmetic, and exact in float32
when the thresholds are powers of two (scaling by a power of two commutes with every rounding).

Only scalar thresholds are folded (relu_to_if writes scalars)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from snnfile import DOMAIN, is_state
from snnfile.operators import IF_NEURON, OPERATORS, SIGNED_IF_NEURON
from rewrites.passes.base import Pass, PassContext, PassReport

FIRING = frozenset({IF_NEURON.op_type, SIGNED_IF_NEURON.op_type})
LEVELS = ("fire_level", "unfire_level")  # inputs divided by theta along with the threshold
# data input 0 -> data output(s), values scaled alike
COMMUTING = frozenset({
    "MaxPoolNeuron", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape",
    "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Slice", "Split", "Gather", "Pad", "Resize",
    "Upsample", "DepthToSpace", "SpaceToDepth", "Tile", "Expand", "Neg", "ReduceMean", "ReduceSum", "ReduceMax",
    "ReduceMin", "SpikeReduceMax", "SpikeReduceMin",
})
JOINS = frozenset({"Add", "Sub", "Sum", "Concat", "Max", "Min", "Mean", "SpikeMax", "SpikeMin"})
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
SHAPE_ONLY = frozenset({"Shape", "Size"})


@dataclass(frozen=True)
class Pin:
    value: float
    what: str  # for reasons: "graph output 'y'", "input of relu4 (threshold 0.25)", ...
    neuron: str | None = None  # the normalised neuron that sets it, None for a fixed scale of 1


class _Classes:
    """Union-find over tensor names."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        self.parent.setdefault(name, name)
        root = name
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[name] != root:
            self.parent[name], name = root, self.parent[name]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _scalar(tensor: gs.Tensor) -> float | None:
    if isinstance(tensor, gs.Constant) and np.asarray(tensor.values).size == 1:
        return float(np.asarray(tensor.values).reshape(-1)[0])
    return None


def _named(tensors) -> list[gs.Tensor]:
    return [t for t in tensors if t.name]


def _foldable(node: gs.Node) -> bool:
    """A weighted op whose weights (and bias) are float constants and whose data operand is input 0."""
    if node.op not in WEIGHTED or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return False
    if np.asarray(node.inputs[1].values).dtype.kind != "f":
        return False
    if node.op == "MatMul":
        return len(node.inputs) == 2
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    return bias is None or isinstance(bias, gs.Constant)


def _commuting_data(node: gs.Node) -> gs.Tensor | None:
    """The data input of an op that commutes with a positive scalar factor, else None."""
    if node.op == "Pad":
        if node.attrs.get("mode", "constant") == "constant":
            value = node.attrs.get("value", 0.0)
            if len(node.inputs) > 2 and node.inputs[2].name:
                value = _scalar(node.inputs[2])
            if value != 0.0:
                return None
        return node.inputs[0]
    if node.op in COMMUTING:
        return node.inputs[0]
    if node.op in ("Mul", "Div") and len(node.inputs) == 2:
        a, b = node.inputs
        if isinstance(b, gs.Constant) and not isinstance(a, gs.Constant):
            return a
        if node.op == "Mul" and isinstance(a, gs.Constant) and not isinstance(b, gs.Constant):
            return b
    return None


class _Plan:
    """The scale classes of a graph, the fixed pins, and the neurons that may be normalised."""

    def __init__(self, graph: gs.Graph, neurons: dict[str, gs.Node], thetas: dict[str, float]):
        self.classes = _Classes()
        self.fixed: list[tuple[str, Pin]] = []  # (tensor, pin of scale 1)
        self.joins: dict[str, list[str]] = {}  # tensor -> "Add 'add8'" descriptions, grouped by class later
        self.neurons, self.thetas = neurons, thetas
        for t in graph.inputs:
            self.fixed.append((t.name, Pin(1.0, f"graph input '{t.name}'")))
        for t in graph.outputs:
            self.fixed.append((t.name, Pin(1.0, f"graph output '{t.name}'")))
        for node in graph.nodes:
            self._link(node)

    def _link(self, node: gs.Node) -> None:
        what = f"{node.op} '{node.name}'"
        if node.op in FIRING and node.domain == DOMAIN:
            return  # pinned per round: theta when normalised, 1 when not
        if node.op in SHAPE_ONLY:
            return  # reads shapes only; its integer output is never joined to a spiking tensor
        if _foldable(node):
            return  # free: input and output classes stay apart
        data = _commuting_data(node)
        if data is not None:
            outputs = node.outputs if node.op == "Split" else node.outputs[:1]
            self._join([data] + _named(outputs))
            return
        if node.op in JOINS:
            self._join(_named(node.inputs) + _named(node.outputs))
            self.joins.setdefault(node.outputs[0].name, []).append(what)
            return
        for t in _named(node.inputs) + _named(node.outputs):  # any other op sees original values
            if isinstance(t, gs.Variable) and not is_state(t.name):
                self.fixed.append((t.name, Pin(1.0, what)))

    def _join(self, tensors: list[gs.Tensor]) -> None:
        for t in tensors:
            if isinstance(t, gs.Constant):
                self.fixed.append((t.name, Pin(1.0, f"constant '{t.name}'")))
            self.classes.union(tensors[0].name, t.name)

    def pins(self, chosen: set[str]) -> dict[str, list[Pin]]:
        by_class: dict[str, list[Pin]] = {}
        for tensor, pin in self.fixed:
            by_class.setdefault(self.classes.find(tensor), []).append(pin)
        for name, node in self.neurons.items():
            for side, tensor in (("input", node.inputs[0]), ("output", node.outputs[0])):
                if name in chosen:
                    pin = Pin(self.thetas[name], f"{side} of {name} (threshold {self.thetas[name]:g})", name)
                else:
                    pin = Pin(1.0, f"{side} of {name} (threshold-balanced, scale 1)")
                by_class.setdefault(self.classes.find(tensor.name), []).append(pin)
        return by_class

    def through(self, root: str) -> str:
        joins = sorted(w for t, ws in self.joins.items() if self.classes.find(t) == root for w in ws)
        return f" through {', '.join(joins)}" if joins else ""

    def scale(self, pins: dict[str, list[Pin]], tensor: str) -> float:
        found = pins.get(self.classes.find(tensor))
        return found[0].value if found else 1.0


def resolve(plan: _Plan, candidates: set[str]) -> tuple[set[str], dict[str, str]]:
    """Drop the neurons pinned in a class whose scales disagree until none does; returns the neurons kept
    and the reason for each one dropped."""
    chosen, reasons = set(candidates), {}
    while True:
        pins = plan.pins(chosen)
        dropped = False
        for root in sorted(pins):
            group = pins[root]
            if len({p.value for p in group}) < 2:
                continue
            for pin in group:
                if pin.neuron in chosen:
                    others = sorted({p.what for p in group if p.neuron != pin.neuron})
                    listing = "; ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
                    side = pin.what.split(" ", 1)[0]
                    reasons[pin.neuron] = (f"its {side} (threshold {pin.value:g}) meets another scale: {listing}"
                                           f"{plan.through(root)}")
                    chosen.discard(pin.neuron)
                    dropped = True
        if not dropped:
            return chosen, reasons


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("weight_norm")
    if not ctx.options.weight_norm:
        return report
    graph.toposort()
    neurons = {n.name: n for n in graph.nodes if n.domain == DOMAIN and n.op in FIRING}
    thetas: dict[str, float] = {}
    early: dict[str, str] = {}
    for name, node in neurons.items():
        spec = OPERATORS[node.op]
        theta = _scalar(node.inputs[spec.inputs.index("threshold")])
        levels = [node.inputs[spec.inputs.index(k)] for k in LEVELS if k in spec.inputs]
        if theta is None or theta <= 0.0 or any(_scalar(t) is None for t in levels):
            early[name] = "its threshold and levels are not positive scalar constants"
        else:
            thetas[name] = theta
    plan = _Plan(graph, neurons, thetas)
    chosen, reasons = resolve(plan, set(thetas))
    reasons.update(early)
    pins = plan.pins(chosen)

    for node in [n for n in graph.nodes if _foldable(n)]:
        s_in, s_out = plan.scale(pins, node.inputs[0].name), plan.scale(pins, node.outputs[0].name)
        if s_in == 1.0 and s_out == 1.0:
            continue
        node.inputs[1] = gs.Constant(f"{node.name}.weight", _scaled(node.inputs[1].values, s_in / s_out))
        if node.op != "MatMul" and len(node.inputs) > 2 and node.inputs[2].name:
            node.inputs[2] = gs.Constant(f"{node.name}.bias", _scaled(node.inputs[2].values, 1.0 / s_out))
        report.converted.append(node.name)

    for name in neurons:
        if name not in chosen:
            report.skipped.append((name, reasons[name]))
            report.layers.append({"node": name, "weight_norm": False, "weight_norm_skipped": reasons[name]})
            continue
        node, theta = neurons[name], thetas[name]
        spec = OPERATORS[node.op]
        for key in ("threshold",) + LEVELS:
            if key in spec.inputs:
                i = spec.inputs.index(key)
                old = np.asarray(node.inputs[i].values)
                node.inputs[i] = gs.Constant(node.inputs[i].name, np.asarray(old.astype(np.float64) / theta, old.dtype))
        report.converted.append(name)
        report.layers.append({"node": name, "weight_norm": True, "model_threshold": 1.0, "scale": theta})
    return report


def _scaled(values, factor: float, block: int = 2**20) -> np.ndarray:
    """values * factor computed in float64 and stored in the values' dtype, a block at a time (the same floats
    as one float64 product, without a float64 copy of a large weight)."""
    w = np.asarray(values)
    out = np.empty(w.shape, w.dtype)
    flat_in, flat_out = w.reshape(-1), out.reshape(-1)
    for start in range(0, flat_in.size, block):
        flat_out[start:start + block] = flat_in[start:start + block].astype(np.float64) * factor
    return out


PASS = Pass("weight_norm", run, spiking=True,
            doc="With --weight-norm: fold IF thresholds into the weights (unit spikes, thresholds 1).")

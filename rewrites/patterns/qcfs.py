"""QCFS activation chains (a Floor between scalings and clamps): matched in any exported spelling, read for
their threshold and levels (the qcfs_to_if pass replaces each with ONE IF neuron, no calibration).

A network trained with the QCFS activation (seed 004; seed 000's MyFloor)

    h(z) = lambda * clip(floor(z * L / lambda + shift) / L, 0, 1),   shift = 1/2 (clip-floor-shift) or 0

converts exactly to an IF neuron with threshold theta = lambda and initial membrane v(0) = shift * theta
(phi = shift): for a constant input z the neuron's spike count after t steps is
clip(floor(t z / theta + phi), 0, t), so its mean output at t = L is h(z). Lambda and L are read from the
graph's constants; nothing is calibrated.

Exported forms (op sequences between the layer's input and output; c = scalar constant):

    classic torch.onnx (dynamo=False) of QCFS / MyFloor   Div(lambda) Mul(L) Add(1/2) Floor Div(L) Clip(0, 1) Mul(lambda)
    dynamo torch.onnx (onnxscript's aten_clamp)            Div(lambda) Mul(L) Add(1/2) Floor Div(L) Max(0) Min(1) Mul(lambda)
    multiply by reciprocals                                 Mul(1/lambda) Mul(L) Add(1/2) Floor Mul(1/L) Clip(0, 1) Mul(lambda)
    folded scales (L/lambda in one constant)                Mul(L/lambda) Add(1/2) Floor Mul(lambda/L) Clip(0, lambda)
    without the shift (clip-floor)                          ... Floor ... (no Add)
    clamp before the floor                                  Div(lambda) Clip(0, 1) Mul(L) Add(1/2) Floor Div(L) Mul(lambda)
    straight-through floor x + (floor(x) - x).detach()      Floor Sub Add in place of Floor

Rather than one fixed sequence per form, each STEP of a chain has one matcher per ONNX spelling (scale: Mul
or Div by a constant; shift: Add or Sub of a constant; clamp: Clip, Max, Min or Relu; floor: Floor or the
straight-through Floor-Sub-Add), each returning the reason it does not apply, and the chain's composed
function is checked against the QCFS form:

- before the floor the steps compose to u = clip(a * x + b, lo, hi) (a > 0); floor(clip(u, lo, hi)) =
  clip(floor(u), floor(lo), floor(hi)) since floor is monotone;
- after it they compose to y = S * clip(k, klo, khi) + O (S > 0) for the integer k = floor(a * x + b);
- it is QCFS exactly when O = 0, klo = 0, khi = L is a whole number >= 1, the two scalings are inverse
  (a * S = 1, i.e. a = L / lambda and S = lambda / L) and b is 1/2 or 0; then lambda = S * L.

The walk from each Floor takes the longest run of steps whose intermediate tensors have no other reader;
of its sub-chains the longest that is exactly QCFS is replaced (so a preceding unrelated Mul by a constant
is left alone), else the Floor is reported in `skipped` with the reason the whole run is not QCFS.
Constants must be scalars (or uniform tensors that do not broadcast the input to another shape).
`options.neuron = signed` gives the signed (two-type) IF neuron instead, tmax = options.effective_tmax, as in
relu_to_if; for a constant input it never fires a negative spike, so the closed form above holds for it too.
Must run before relu_to_if: a Clip(0, 1) or Relu inside the chain is ReLU-like on its own."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.patterns.tensors import clip_bounds, is_graph_output


REL_TOL = 1e-4  # on a * S = 1, the shift, the clamp bounds in steps and the offset (float32 constants)
INF = math.inf
MAX_STEPS = 16  # scalings, shifts and clamps walked on each side of a Floor


@dataclass(frozen=True)
class Step:
    """One elementwise step on the chain's tensor: 'scale' (x * value), 'shift' (x + value) or 'clamp'."""

    kind: str
    value: float = 1.0
    lo: float = -INF
    hi: float = INF


@dataclass
class Link:
    node: gs.Node
    step: Step
    x: gs.Tensor  # the chain tensor it reads


@dataclass
class FloorUnit:
    nodes: list[gs.Node]  # [Floor] or [Floor, Sub, Add] (straight-through)
    x: gs.Tensor
    y: gs.Tensor
    form: str


@dataclass
class QcfsMatch:
    nodes: list[gs.Node]  # every node of the chain, in order
    x: gs.Tensor  # chain input
    y: gs.Tensor  # chain output
    lam: float
    L: int
    shift: bool
    form: str  # the op sequence, e.g. "Div Mul Add Floor Div Clip Mul"
    floor: gs.Node


# --------------------------------------------------------------------------------------------------------
# constants
# --------------------------------------------------------------------------------------------------------
def scalar(t: gs.Tensor, like: gs.Tensor) -> float | str:
    """The value of a constant that is a scalar (or a uniform tensor that keeps the shape of `like`), else
    the reason it is not."""
    if not isinstance(t, gs.Constant):
        return f"operand '{t.name}' is not a constant"
    values = np.asarray(t.values)
    if values.size == 0:
        return f"constant '{t.name}' is empty"
    if values.dtype.kind not in "fiu":
        return f"constant '{t.name}' is not numeric"
    flat = values.reshape(-1).astype(np.float64)
    if not np.all(flat == flat[0]):
        return f"constant '{t.name}' {list(values.shape)} is not a scalar (per-channel constants are not supported)"
    shape = getattr(like, "shape", None)
    if values.ndim > 1 or values.size > 1:
        if shape is None or values.ndim > len(shape) or any(
                d != 1 and (not isinstance(s, int) or s != d)
                for d, s in zip(values.shape[::-1], list(shape)[::-1])):
            return f"constant '{t.name}' {list(values.shape)} may broadcast '{like.name}' to another shape"
    return float(flat[0])


def _operands(node: gs.Node, x: gs.Tensor | None) -> tuple[gs.Tensor, gs.Tensor, int] | str:
    """For a binary node: (variable, constant, index of the variable). x, when given, must be the variable."""
    ins = [i for i in node.inputs if i.name]
    if len(ins) != 2:
        return f"{node.op} with {len(ins)} inputs"
    consts = [isinstance(i, gs.Constant) for i in ins]
    if consts == [True, True] or consts == [False, False]:
        return f"{node.op} needs one constant and one tensor operand"
    k = consts.index(False)
    if x is not None and ins[k] is not x:
        return f"{node.op} does not read '{x.name}'"
    return ins[k], ins[1 - k], k


# --------------------------------------------------------------------------------------------------------
# step matchers: one per ONNX spelling; each returns (Step, variable input) or the reason it does not apply
# --------------------------------------------------------------------------------------------------------
def _match_mul(node, x):
    ops = _operands(node, x)
    if isinstance(ops, str):
        return ops
    var, const, _ = ops
    c = scalar(const, var)
    if isinstance(c, str):
        return c
    if c <= 0:
        return f"Mul by {c:g} (a QCFS chain only scales by positive constants)"
    return Step("scale", c), var


def _match_div(node, x):
    ops = _operands(node, x)
    if isinstance(ops, str):
        return ops
    var, const, k = ops
    if k != 0:
        return "Div of a constant by a tensor (reciprocal)"
    c = scalar(const, var)
    if isinstance(c, str):
        return c
    if c <= 0:
        return f"Div by {c:g} (a QCFS chain only scales by positive constants)"
    return Step("scale", 1.0 / c), var


def _match_add(node, x):
    ops = _operands(node, x)
    if isinstance(ops, str):
        return ops
    var, const, _ = ops
    c = scalar(const, var)
    return c if isinstance(c, str) else (Step("shift", c), var)


def _match_sub(node, x):
    ops = _operands(node, x)
    if isinstance(ops, str):
        return ops
    var, const, k = ops
    if k != 0:
        return "Sub of a tensor from a constant (negates it)"
    c = scalar(const, var)
    return c if isinstance(c, str) else (Step("shift", -c), var)


def _match_clip(node, x):
    var = node.inputs[0] if node.inputs else None
    if var is None or isinstance(var, gs.Constant) or (x is not None and var is not x):
        return "Clip does not read the chain tensor"
    bounds = clip_bounds(node)
    if bounds is None:
        return "Clip bounds are not constants"
    lo, hi = (-INF if bounds[0] is None else bounds[0]), (INF if bounds[1] is None else bounds[1])
    for i in (1, 2):  # clip_bounds reads the first value only: insist on scalars
        if len(node.inputs) > i and node.inputs[i].name:
            c = scalar(node.inputs[i], var)
            if isinstance(c, str):
                return c
    return Step("clamp", lo=lo, hi=hi), var


def _match_max(node, x):
    ops = _operands(node, x)
    if isinstance(ops, str):
        return ops
    var, const, _ = ops
    c = scalar(const, var)
    return c if isinstance(c, str) else (Step("clamp", lo=c), var)


def _match_min(node, x):
    ops = _operands(node, x)
    if isinstance(ops, str):
        return ops
    var, const, _ = ops
    c = scalar(const, var)
    return c if isinstance(c, str) else (Step("clamp", hi=c), var)


def _match_relu(node, x):
    var = node.inputs[0]
    if x is not None and var is not x:
        return "Relu does not read the chain tensor"
    return Step("clamp", lo=0.0), var


STEP_MATCHERS = {"Mul": _match_mul, "Div": _match_div, "Add": _match_add, "Sub": _match_sub,
                 "Clip": _match_clip, "Max": _match_max, "Min": _match_min, "Relu": _match_relu}


def match_step(node: gs.Node, x: gs.Tensor | None = None) -> tuple[Step, gs.Tensor] | str:
    if node.domain not in (None, "", "ai.onnx"):
        return f"{node.op} of domain {node.domain}"
    matcher = STEP_MATCHERS.get(node.op)
    if matcher is None:
        return f"{node.op} is not a scaling, shift or clamp by a constant"
    if len([o for o in node.outputs if o.name]) != 1:
        return f"{node.op} with several outputs"
    return matcher(node, x)


# --------------------------------------------------------------------------------------------------------
# floor matchers
# --------------------------------------------------------------------------------------------------------
def _readers(t: gs.Tensor) -> list[gs.Node]:
    return list(t.outputs)


def match_floor(graph: gs.Graph, floor: gs.Node) -> FloorUnit | str:
    """Floor, or the straight-through spelling u + (Floor(u) - u) (torch's x + (x.floor() - x).detach())."""
    u, w = floor.inputs[0], floor.outputs[0]
    if isinstance(u, gs.Constant):
        return "Floor of a constant"
    readers = _readers(w)
    if len(readers) == 1 and readers[0].op == "Sub" and not is_graph_output(graph, w):
        sub = readers[0]
        if list(sub.inputs) == [w, u] and len(_readers(sub.outputs[0])) == 1 \
                and not is_graph_output(graph, sub.outputs[0]):
            add = _readers(sub.outputs[0])[0]
            if add.op == "Add" and {id(i) for i in add.inputs} == {id(u), id(sub.outputs[0])}:
                return FloorUnit([floor, sub, add], u, add.outputs[0], "Floor Sub Add")
    return FloorUnit([floor], u, w, "Floor")


# --------------------------------------------------------------------------------------------------------
# composition and the QCFS check
# --------------------------------------------------------------------------------------------------------
@dataclass
class Params:
    lam: float
    L: int
    shift: bool


def _floor(v: float) -> float:
    """floor, tolerant of float32 constants: a bound of L - 1e-7 (lambda * (L / lambda)) is L."""
    return v if math.isinf(v) else float(math.floor(v + REL_TOL * max(1.0, abs(v))))


def compose(pre: list[Step], post: list[Step]) -> Params | str:
    """Compose the steps around the floor and check the result is QCFS; the reason when it is not."""
    a, b, lo, hi = 1.0, 0.0, -INF, INF  # u = clip(a x + b, lo, hi)
    for s in pre:
        if s.kind == "scale":
            a, b, lo, hi = a * s.value, b * s.value, lo * s.value, hi * s.value
        elif s.kind == "shift":
            b, lo, hi = b + s.value, lo + s.value, hi + s.value
        else:
            lo, hi = max(lo, s.lo), min(hi, s.hi)
    if lo > hi:
        return f"the clamps before the floor leave the empty range [{lo:g}, {hi:g}]"
    klo, khi = _floor(lo), _floor(hi)
    S, O = 1.0, 0.0  # y = S * clip(k, klo, khi) + O
    for s in post:
        if s.kind == "scale":
            S, O = S * s.value, O * s.value
        elif s.kind == "shift":
            O += s.value
        else:
            klo, khi = max(klo, (s.lo - O) / S), min(khi, (s.hi - O) / S)
    if klo == -INF:
        return "no lower clamp (Clip/Max/Relu) around the floor: the output is not bounded below"
    if khi == INF:
        return "no upper clamp (Clip/Min) around the floor: the output is not bounded above"
    if abs(O) > REL_TOL * S:
        return f"the output is offset by {O:g} (a QCFS output starts at 0)"
    if abs(klo) > REL_TOL:
        return f"the lower clamp is at {klo:g} steps, not 0"
    L = round(khi)
    if L < 1 or abs(khi - L) > REL_TOL * max(1.0, abs(khi)):
        return f"the upper clamp is at {khi:g} steps, not a whole number >= 1"
    if abs(a * S - 1.0) > REL_TOL:
        return (f"the scalings are not inverse: input scale {a:g} (L/lambda) times output scale {S:g} "
                f"(lambda/L) is {a * S:g}, not 1")
    if abs(b - 0.5) <= REL_TOL:
        shift = True
    elif abs(b) <= REL_TOL:
        shift = False
    else:
        return f"the shift before the floor is {b:g} steps, neither 1/2 (clip-floor-shift) nor 0 (clip-floor)"
    return Params(S * L, int(L), shift)


def match_chain(graph: gs.Graph, floor: gs.Node, claimed: set[int] | None = None) -> QcfsMatch | str:
    """The longest QCFS chain around this Floor, or the reason there is none."""
    claimed = claimed or set()
    unit = match_floor(graph, floor)
    if isinstance(unit, str):
        return unit
    # backward: producers whose output is read by the chain only
    pre: list[Link] = []
    t, readers = unit.x, [n for n in unit.nodes if any(i is unit.x for i in n.inputs)]
    back = f"starts after {MAX_STEPS} steps"
    while len(pre) < MAX_STEPS:
        if not t.inputs:
            back = f"starts at graph input '{t.name}'"
            break
        node = t.inputs[0]
        if is_graph_output(graph, t) or {id(n) for n in _readers(t)} != {id(n) for n in readers}:
            back = f"starts after {node.op} '{node.name}' (its output '{t.name}' is read elsewhere too)"
            break
        m = "it belongs to another QCFS chain" if id(node) in claimed else match_step(node)
        if isinstance(m, str):
            back = f"starts after {node.op} '{node.name}' ({m})"
            break
        pre.insert(0, Link(node, m[0], m[1]))
        t, readers = m[1], [node]
    # forward: single readers
    post: list[Link] = []
    t = unit.y
    ahead = f"ends after {MAX_STEPS} steps"
    while len(post) < MAX_STEPS:
        readers = _readers(t)
        if is_graph_output(graph, t):
            ahead = f"ends at graph output '{t.name}'"
            break
        if len(readers) != 1:
            ahead = f"ends at tensor '{t.name}' (read by {len(readers)} nodes)"
            break
        node = readers[0]
        m = "it belongs to another QCFS chain" if id(node) in claimed else match_step(node, t)
        if isinstance(m, str):
            ahead = f"ends before {node.op} '{node.name}' ({m})"
            break
        post.append(Link(node, m[0], t))
        t = node.outputs[0]
    best: tuple[int, int, int, Params] | None = None
    for i in range(len(pre) + 1):
        for j in range(len(post), -1, -1):
            size = (len(pre) - i) + j
            if best is not None and size <= best[0]:
                break
            p = compose([l.step for l in pre[i:]], [l.step for l in post[:j]])
            if isinstance(p, Params):
                best = (size, i, j, p)
                break
    if best is None:
        reason = compose([l.step for l in pre], [l.step for l in post])
        ops = " ".join([l.node.op for l in pre] + [unit.form] + [l.node.op for l in post])
        return f"'{ops}' is not a QCFS activation: {reason} (the chain {back} and {ahead})"
    _, i, j, p = best
    pre, post = pre[i:], post[:j]
    nodes = [l.node for l in pre] + unit.nodes + [l.node for l in post]
    x = pre[0].x if pre else unit.x
    y = post[-1].node.outputs[0] if post else unit.y
    form = " ".join([l.node.op for l in pre] + [unit.form] + [l.node.op for l in post])
    return QcfsMatch(nodes, x, y, p.lam, p.L, p.shift, form, floor)


def find_chains(graph: gs.Graph) -> tuple[list[QcfsMatch], list[tuple[str, str]]]:
    """Every QCFS chain of the graph (non-overlapping, in graph order) and the Floors that are not one."""
    graph.toposort()
    matches, skipped, claimed = [], [], set()
    for floor in [n for n in graph.nodes if n.op == "Floor" and n.domain in (None, "", "ai.onnx")]:
        m = match_chain(graph, floor, claimed)
        if isinstance(m, str):
            skipped.append((floor.name, m))
            continue
        claimed.update(id(n) for n in m.nodes)
        matches.append(m)
    return matches, skipped


def qcfs_levels(graph: gs.Graph) -> int | None:
    """The quantisation steps L shared by every QCFS chain of the graph; None if it has none or they differ.
    Reads the graph only (run it on the normalised graph, before the spiking passes)."""
    levels = {m.L for m in find_chains(graph)[0]}
    return levels.pop() if len(levels) == 1 else None


# --------------------------------------------------------------------------------------------------------
# the pass
# --------------------------------------------------------------------------------------------------------

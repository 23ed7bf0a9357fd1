"""The drain gate of the exported file: its optional scalar input `snn.drive` (docs/contract.md, "Drain").

Declared with an initializer of the same name holding 1.0, so a runtime that does not know it need not feed
it. Fed 0, nothing new charges in: the float data inputs and every constant additive term read drive x
their value, namely
- the bias of a Conv, ConvTranspose or Gemm whose data operand is a signal;
- the bias and the mean of a BatchNormalization left unfolded (its offset B - mean * scale / sqrt(var + eps));
- the constant operand of an Add or Sub whose other operand is a signal.
The neurons then only settle. A runtime steps T input steps, then E drain steps with snn.drive = 0, and
decodes by the file's rule (the mean divides by T).

The spike budget of the signed neurons whose --tmax was not given is the number of steps with drive so far
(a StepCount node): it never binds in input steps (a neuron fires at most once a step) and holds the count
at T in drain steps, whatever the T a runtime picks. The UGO hidden layers read the same count (their knots
charge once per step with drive); in a file without the gate it counts every step. A file cannot drain when
it holds an operator that divides by the step count, or a data input that is not float32; its signed
neurons then have no budget, and the metadata says why it has no gate."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ground.errors import ModelError
from snnfile import DOMAIN, DRIVE, PRESENT, is_state, next_name, state_name
from snnfile.operators import FIRST_STEP, RELEASE, RUNNING_SUM, SIGNED_IF_NEURON, STEP_COUNT, TIME_NORMALISED

STEPS = "snn.steps"
NO_COUNT_BOUND = 2.0 ** 24  # float32 counts stay exact below it


@dataclass
class DriveGate:
    gated: list[str] = field(default_factory=list)  # "<node>.<input index>" of every gated constant
    inputs: list[str] = field(default_factory=list)  # the data inputs gated
    budget: list[str] = field(default_factory=list)  # signed neurons budgeted by the step count (none without gate)
    reason: str = ""  # why the file has no gate ('' when it has one)
    drive: gs.Variable | None = None  # the input to declare, after the state inputs


def not_drainable(graph: gs.Graph, data: list[gs.Variable]) -> str:
    for node in graph.nodes:
        if node.domain == DOMAIN and node.op in TIME_NORMALISED:
            return f"node '{node.name}' ({node.op}) divides by the step count: steps without charge would dilute it"
    for x in data:
        if x.dtype != np.float32:
            return f"data input '{x.name}' is {np.dtype(x.dtype).name if x.dtype is not None else 'untyped'}, " \
                   "not float32: it cannot be gated"
    return ""


def _is_float_constant(t) -> bool:
    return isinstance(t, gs.Constant) and np.dtype(t.dtype).kind == "f"


def additive_terms(node: gs.Node, signals: set[str]) -> tuple[int, ...]:
    """The inputs of `node` that hold a constant additive term (see the module docstring)."""
    ins = node.inputs
    if node.domain not in (None, "", "ai.onnx") or not ins or not ins[0].name:
        return ()
    if node.op in ("Conv", "ConvTranspose", "Gemm"):
        return (2,) if len(ins) > 2 and ins[0].name in signals and _is_float_constant(ins[2]) else ()
    if node.op == "BatchNormalization":
        return (2, 3) if len(ins) >= 5 and ins[0].name in signals and all(
            _is_float_constant(t) for t in ins[1:5]) else ()
    if node.op in ("Add", "Sub") and len(ins) == 2:
        for k in (0, 1):
            if _is_float_constant(ins[k]) and ins[1 - k].name in signals:
                return (k,)
    return ()


def _is_static_float(t, signals: set[str]) -> bool:
    """A float tensor the input does not reach: a constant, or computed from constants and shapes."""
    return t.name not in signals and t.dtype is not None and np.dtype(t.dtype).kind == "f" and (
        isinstance(t, gs.Constant) or bool(t.inputs))


def static_terms(node: gs.Node, signals: set[str]) -> tuple[int, ...]:
    """FS coding: besides additive_terms, the float operands of an Add, Sub, Sum or Concat that the input does
    not reach but that are computed in the graph (a ViT's class token, Expand-ed to the batch): each is a
    value that must enter once."""
    ins = node.inputs
    if node.domain not in (None, "", "ai.onnx") or node.op not in ("Add", "Sub", "Sum", "Concat") or not any(
            t.name in signals for t in ins):
        return ()
    return tuple(k for k, t in enumerate(ins) if not isinstance(t, gs.Constant) and _is_static_float(t, signals))


def _step_count(graph: gs.Graph) -> gs.Node | None:
    return next((n for n in graph.nodes if n.name == STEPS and n.op == STEP_COUNT.op_type), None)


def step_counter(graph: gs.Graph) -> gs.Variable:
    """The output of the file's StepCount (made once, fed 1 until `gate` feeds it the drive): the steps with
    drive so far, shape [1]."""
    node = _step_count(graph)
    if node is None:
        count = state_name(STEPS, STEP_COUNT.state[0])
        node = gs.Node(STEP_COUNT.op_type, name=STEPS, domain=DOMAIN, inputs=[
            gs.Constant(f"{STEPS}.every_step", np.ones(1, np.float32)), gs.Variable(count, np.float32, [1])],
            outputs=[gs.Variable(STEPS, np.float32, [1]), gs.Variable(next_name(count), np.float32, [1])])
        graph.nodes.append(node)
    return node.outputs[0]


def gate(graph: gs.Graph, default_budget: bool) -> DriveGate:
    """Add the drive gate to the spiking graph (before export), or say why it cannot have one. The caller
    declares `drive` as the graph's last input, with an initializer of 1.0 in the exported model.
    `default_budget`: the signed neurons made from ReLUs (and QCFS chains) had no --tmax."""
    data = [t for t in graph.inputs if not is_state(t.name)]
    budgeted = [n for n in graph.nodes if n.domain == DOMAIN and n.op == SIGNED_IF_NEURON.op_type
                and default_budget and len(n.inputs) > 4 and n.inputs[4].name == f"{n.name}.tmax"]
    report = DriveGate(reason=not_drainable(graph, data))
    if report.reason:
        unbounded = gs.Constant("snn.no_count_bound", np.array(NO_COUNT_BOUND, np.float32))
        for neuron in budgeted:
            neuron.inputs[4] = unbounded
            report.budget.append(neuron.name)
        return report
    drive = gs.Variable(DRIVE, np.float32, [])
    _gate_terms(graph, drive, data, report)
    if budgeted or _step_count(graph) is not None:
        steps = step_counter(graph)
        steps.inputs[0].inputs[0] = drive  # the StepCount counts the steps with drive
        for neuron in budgeted:
            neuron.inputs[4] = steps
            report.budget.append(neuron.name)
    report.drive = drive
    return report


def _gate_terms(graph: gs.Graph, drive: gs.Variable, data: list[gs.Variable], report: DriveGate,
                few_spikes: bool = False) -> None:
    """Multiply every constant additive term and every data input by `drive`. The operators between a
    RunningSum and its Release (FS coding) read levels, not streams: their constants are left alone."""
    signals = {x.name for x in data}
    gated: dict[str, gs.Variable] = {}
    for node in list(graph.nodes):
        terms = additive_terms(node, signals) + (static_terms(node, signals) if few_spikes else ())
        for k in sorted(set(terms)):
            const = node.inputs[k]
            if const.name not in gated:
                # a scalar times FS's clock [1] is [1]; a computed tensor of unknown shape stays unknown
                shape = None if const.shape is None else list(const.shape) or list(drive.shape)
                out = gs.Variable(f"{const.name}.driven", np.float32, shape)
                graph.nodes.append(gs.Node("Mul", name=f"{const.name}.gate", inputs=[const, drive], outputs=[out]))
                gated[const.name] = out
            node.inputs[k] = gated[const.name]
            report.gated.append(f"{node.name}.{k}")
        if node.domain == DOMAIN and node.op == RUNNING_SUM.op_type or few_spikes and node.op in ("Shape", "Size"):
            continue  # a running sum is a level, read by float operators at every step; a shape is no charge
        if any(t.name in signals for t in node.inputs) or (node.domain == DOMAIN and node.op == RELEASE.op_type):
            signals.update(t.name for t in node.outputs)
    for x in data:
        out = gs.Variable(f"{x.name}.driven", np.float32, x.shape)
        for reader in list(x.outputs):
            for k, t in enumerate(reader.inputs):
                if t is x:
                    reader.inputs[k] = out
        graph.nodes.append(gs.Node("Mul", name=f"{x.name}.gate", inputs=[x, drive], outputs=[out]))
        report.inputs.append(x.name)


def _first_float(x: gs.Variable) -> list[gs.Variable]:
    """The first float32 tensors computed from a data input that is not float (token ids -> their embedding,
    a mask -> its Cast): FS coding gates those, as it gates a float input."""
    found, frontier, seen = [], [x], set()
    while frontier:
        t = frontier.pop()
        for reader in t.outputs:
            for out in reader.outputs:
                if out.name in seen or is_state(out.name):
                    continue
                seen.add(out.name)
                if out.dtype is not None and np.dtype(out.dtype) == np.float32:
                    found.append(out)
                elif out.dtype is not None and np.dtype(out.dtype).kind == "f":
                    raise ModelError(f"tensor '{out.name}' computed from input '{x.name}' is "
                                     f"{np.dtype(out.dtype).name}, not float32: FS coding cannot gate it",
                                     "convert it without --coding fs")
                else:
                    frontier.append(out)
    return found


def first_step_gate(graph: gs.Graph) -> DriveGate:
    """FS coding (docs/fs.md): the data inputs (for an int input, the first float tensors computed from it),
    every constant additive term and every float operand the input does not reach (static_terms) enter at
    the first step only, gated by a FirstStep clock (node and output PRESENT), so the sum of a layer's input
    over the steps is its ANN input, once. The file has no snn.drive."""
    data = []
    for x in [t for t in graph.inputs if not is_state(t.name)]:
        data += [x] if x.dtype == np.float32 else _first_float(x)
    report = DriveGate()
    seen = state_name(PRESENT, FIRST_STEP.state[0])
    clock = gs.Variable(PRESENT, np.float32, [1])
    graph.nodes.append(gs.Node(FIRST_STEP.op_type, name=PRESENT, domain=DOMAIN, inputs=[
        gs.Variable(seen, np.float32, [1])], outputs=[clock, gs.Variable(next_name(seen), np.float32, [1])]))
    _gate_terms(graph, clock, data, report, few_spikes=True)
    return report

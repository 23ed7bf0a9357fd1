"""The time loop inside onnxruntime: an in-memory model that runs a whole window in one session call.

The exported file computes one step (docs/contract.md). `loop_model` wraps that step graph into ONNX `Loop`s
so that onnxruntime runs every step without coming back to Python:

    data inputs --[input-only prefix, run once]--> Loop over T steps (body: the rest of the step graph)
    zeros       --[prefix of the silent copy]-----> Loop over extra_t steps (same body; with drain the
                                                    bias-free copy's body, sim/drain.py)

- The nodes that depend on the data inputs only (under direct coding the first conv) are hoisted out of
  the loops: they give the same value at every step, so they run once per window. The silent loop reads
  them computed on zero input.
- Loop-carried: every `state.*` tensor (zeros of the declared shape at the start, the batch from the first
  data input), and per firing layer its spike count (`y != 0` added up; IF and signed IF neurons are expanded
  into their function bodies and counted from the boolean they compute anyway, see `_expanded`) and, with
  `observe`, its output summed in float64 over the first k steps. Counts and sums start as scalar zeros and
  take the layer's shape at the first step (onnxruntime lets a loop-carried value change shape). Counts are
  uint8 for windows of up to 255 steps (a Cast and an Add over one byte per neuron: 1.1 ms against 2.5 ms
  for a float32 Add over 6.4M neurons, one thread), float32 beyond.
- Scan outputs: the model's outputs at every step and, with `observe`, whether any neuron of the batch
  sample fired at that step.

T, extra_t and k are inputs of the model (`loop.T`, `loop.extra`, `loop.observe`), so one session serves
every window. The model-local functions of the spiking operators resolve inside the loop bodies.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from sim.model import SpikingModel
from snnfile import DEFAULT_DOMAINS, DOMAIN, is_state, next_name

T_INPUT, EXTRA_INPUT, OBSERVE_INPUT = "loop.T", "loop.extra", "loop.observe"
MAX_NARROW = 255  # the longest window whose spike counts fit uint8


@dataclass(frozen=True)
class LoopOutputs:
    """Names of the wrapped model's outputs, per loop (the silent loop's lists are empty without extra_t)."""

    outputs: list[list[str]]  # [loop][model output]: per-step values [steps, B, ...]
    counts: list[str]  # per firing layer: spikes per neuron over the window [B, ...], uint8 or float32
    sums: list[str]  # per firing layer with observe: float64 [B, ...]
    active: list[str]  # [loop]: bool [steps, B], with observe (none without firing layers)

    def names(self) -> list[str]:
        return [n for loop in self.outputs for n in loop] + self.counts + self.sums + self.active


def loop_model(model: SpikingModel, firing: list[onnx.NodeProto], extra: bool, observe: bool,
               silent: onnx.ModelProto | None = None, narrow: bool = False) -> tuple[onnx.ModelProto, LoopOutputs]:
    """The step graph of `model` wrapped into a Loop over `loop.T` steps and, with `extra`, a second Loop over
    `loop.extra` silent steps whose body is `silent`'s graph (the bias-free copy for drain; default the model
    itself). `firing` are the nodes whose first output is counted, in uint8 with `narrow` (windows of at most
    MAX_NARROW steps), else in float32 (exact to 2**24 steps)."""
    proto = model.proto
    graph = proto.graph
    silent_graph = (silent or proto).graph
    data = [i for i in graph.input if i.name not in model.constants and not is_state(i.name)]
    states = [i for i in graph.input if is_state(i.name)]
    hoisted, invariant = _hoisted(graph, {i.name for i in data}, set(model.constants))
    opset = next((o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS), 17)
    b = _Graph(opset)

    # outer graph: the prefix on the data, the initial state
    nodes = [n for i, n in enumerate(graph.node) if i in hoisted]
    batch = b.node("Gather", [b.node("Shape", [data[0].name]), b.const(np.array([0], np.int64))])
    carried = [b.node("ConstantOfShape", [_shape(b, s, batch)],
                      value=helper.make_tensor("value", s.type.tensor_type.elem_type, [1], [0]))
               for s in states]
    count_type = TensorProto.UINT8 if narrow else TensorProto.FLOAT
    carried += [b.const(np.array(0, helper.tensor_dtype_to_np_dtype(count_type))) for _ in firing]
    if observe:
        carried += [b.const(np.array(0.0, np.float64)) for _ in firing]
    state_names = [s.name for s in states]
    loops = [("", T_INPUT)]
    if extra:
        loops.append((".silent", EXTRA_INPUT))
        for d in data:
            b.node("ConstantOfShape", [b.node("Shape", [d.name])],
                   value=helper.make_tensor("value", d.type.tensor_type.elem_type, [1], [0]), out=d.name + ".silent")
        nodes += [_renamed(n, invariant, ".silent") for i, n in enumerate(silent_graph.node)
                  if i in hoisted and any(o in invariant for o in n.output)]
    limit = OBSERVE_INPUT
    functions = {(f.domain, f.name): f for f in proto.functions}
    constants = dict(model.constants)
    names = LoopOutputs([], [], [], [])
    initializers = {t.name: t for t in list(graph.initializer) + list(silent_graph.initializer)}
    outer_refs = _references(nodes)
    for k, (suffix, trips) in enumerate(loops):
        source = graph if not suffix else silent_graph
        body = _body(source, hoisted, invariant, suffix, states, model.outputs, firing, observe, limit,
                     _Graph(opset, prefix=f"body{k}."), functions, constants, count_type)
        _own_initializers(body, initializers, outer_refs, f".body{k}")
        outs = [f"loop{k}.{s}" for s in state_names] + [f"loop{k}.count.{n.name}" for n in firing]
        outs += [f"loop{k}.sum.{n.name}" for n in firing] if observe else []
        scans = [f"loop{k}.{name}" for name in model.outputs] + ([f"loop{k}.active"] if observe and firing else [])
        b.nodes.append(helper.make_node("Loop", [trips, ""] + carried, outs + scans, f"loop{k}", body=body))
        carried = outs
        names.outputs.append(scans[:len(model.outputs)])
        names.active.extend(scans[len(model.outputs):])
        if observe and extra and not suffix:  # the silent loop counts its steps from 0: k - T of them observed
            limit = b.node("Sub", [OBSERVE_INPUT, T_INPUT])
    names.counts.extend(carried[len(states):len(states) + len(firing)])
    names.sums.extend(carried[len(states) + len(firing):])

    scalar = [helper.make_tensor_value_info(n, TensorProto.INT64, [])
              for n in [T_INPUT] + ([EXTRA_INPUT] if extra else []) + ([OBSERVE_INPUT] if observe else [])]
    outer = helper.make_graph(nodes + b.nodes, graph.name + ".loop", list(data) + scalar,
                              [helper.make_value_info(n, onnx.TypeProto()) for n in names.names()],
                              [initializers[n] for n in initializers if n in outer_refs] + b.inits)
    for vi in outer.output:  # untyped outputs: onnxruntime infers them
        vi.ClearField("type")
    wrapped = helper.make_model(outer, opset_imports=list(proto.opset_import), ir_version=proto.ir_version,
                                functions=list(proto.functions))
    return wrapped, names


def _references(nodes) -> set[str]:
    """Every tensor name the nodes read, their subgraphs included."""
    names: set[str] = set()
    for node in nodes:
        names.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= _references(sub.node)
    return names


def _own_initializers(body: onnx.GraphProto, initializers: dict[str, onnx.TensorProto], outer: set[str],
                      suffix: str) -> None:
    """Copy the initializers the body reads into it: onnxruntime optimises a subgraph's convolutions (NCHWc
    layout) only when their weights are the subgraph's own initializers (measured: Conv 2.7 s -> 1.8 s with its
    reorders, fmnist_cnn, batch 256, T = 32). A name the outer graph also reads gets `suffix` in the body, so
    that no body name shadows an outer one."""
    used = _references(body.node)
    renames = {n: n + suffix for n in used if n in initializers and n in outer}
    for name in sorted(used):
        if name in initializers:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(initializers[name])
            tensor.name = renames.get(name, name)
            body.initializer.append(tensor)
    if renames:
        _rename_inputs(body.node, renames)


def _rename_inputs(nodes, renames: dict[str, str]) -> None:
    for node in nodes:
        for k, name in enumerate(node.input):
            if name in renames:
                node.input[k] = renames[name]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _rename_inputs(sub.node, renames)


def _hoisted(graph: onnx.GraphProto, data: set[str], constants: set[str]) -> tuple[set[int], set[str]]:
    """Indices of the default-domain nodes whose inputs are all data inputs, constants or outputs of such
    nodes, and the tensors among their outputs (and the data inputs) that depend on the data."""
    invariant, fixed, hoisted = set(data), set(constants) | {""}, set()
    for i, node in enumerate(graph.node):
        if node.domain not in DEFAULT_DOMAINS or any(a.type in (onnx.AttributeProto.GRAPH,
                                                                onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if node.op_type == "Constant" and not node.input:
            hoisted.add(i)
            fixed.update(node.output)
        elif node.input and all(n in invariant or n in fixed for n in node.input):
            hoisted.add(i)
            (invariant if any(n in invariant for n in node.input) else fixed).update(node.output)
    return hoisted, invariant


def _body(graph: onnx.GraphProto, hoisted: set[int], invariant: set[str], suffix: str,
          states: list[onnx.ValueInfoProto], outputs: list[str], firing: list[onnx.NodeProto], observe: bool,
          limit: str, b: _Graph, functions: dict[tuple[str, str], onnx.FunctionProto],
          constants: dict[str, np.ndarray], count_type: int) -> onnx.GraphProto:
    firing_names = {n.name for n in firing}
    nodes, spikes = [], {}
    for i, node in enumerate(graph.node):
        if i in hoisted:
            continue
        node = _renamed(node, invariant, suffix)
        expanded = _expanded(node, functions.get((node.domain, node.op_type)), constants, b.opset) \
            if node.name.removesuffix(suffix) in firing_names else None
        if expanded:
            nodes += expanded[0]
            spikes[node.output[0]] = expanded[1]
        else:
            nodes.append(node)
    produced = {o for n in nodes for o in n.output}
    inputs = [helper.make_tensor_value_info("loop.i", TensorProto.INT64, []),
              helper.make_tensor_value_info("loop.cond", TensorProto.BOOL, [])]
    inputs += list(states)  # with their declared shapes: without them onnxruntime fuses fewer ops in the body
    out_names = [b.node("Identity", ["loop.cond"])]
    out_names += [_produced(b, next_name(s.name), produced) for s in states]
    fired = []  # per firing layer: y != 0 (NaN included)
    for n in firing:
        count = f"count.{n.name}"
        inputs.append(helper.make_tensor_value_info(count, count_type, None))
        booleans = spikes.get(n.output[0]) or [b.node("Cast", [n.output[0]], to=TensorProto.BOOL)]
        fired.append(booleans[0] if len(booleans) == 1 else b.node("Xor", booleans))
        out_names.append(b.node("Add", [count, b.node("Cast", [fired[-1]], to=count_type)]))
    if observe:
        on = b.node("Less", ["loop.i", limit])
        nothing = b.const(np.array(0.0, np.float64))
        for n in firing:
            total = f"sum.{n.name}"
            inputs.append(helper.make_tensor_value_info(total, TensorProto.DOUBLE, None))
            y = b.node("Cast", [n.output[0]], to=TensorProto.DOUBLE)
            out_names.append(b.node("Add", [total, b.node("Where", [on, y, nothing])]))
    out_names += [_produced(b, (name + suffix) if name in invariant else name, produced) for name in outputs]
    if observe and firing:
        flat = b.const(np.array([0, -1], np.int64))
        per_layer = [b.reduce_max(b.node("Reshape", [b.node("Cast", [f], to=TensorProto.FLOAT), flat]))
                     for f in fired]
        any_fired = per_layer[0] if len(per_layer) == 1 else b.node("Max", per_layer)
        out_names.append(b.node("Cast", [any_fired], to=TensorProto.BOOL))
    return helper.make_graph(nodes + b.nodes, "step" + suffix, inputs,
                             [helper.make_value_info(n, onnx.TypeProto()) for n in out_names], b.inits)


BOOLEAN_OPS = frozenset({"GreaterOrEqual", "Greater", "Less", "LessOrEqual", "Equal", "And", "Or", "Not", "Xor"})


def _expanded(node: onnx.NodeProto, function: onnx.FunctionProto | None, constants: dict[str, np.ndarray],
              opset: int) -> tuple[list[onnx.NodeProto], list[str]] | None:
    """A firing node replaced by its function's body, and the boolean tensors the body's spike s is cast from
    (Y = s * threshold), so that a spike is counted from a boolean the neuron computes anyway instead of from Y.
    Recognised: s = Cast(fired) (IFNeuron: fired) and s = Cast(up) - Cast(down) (SignedIFNeuron: s != 0 where
    up xor down), with a constant threshold that is finite and non-zero everywhere (then s != 0 exactly where
    Y != 0) and at most one axis longer than 1 (it cannot widen Y beyond s). Anything else: None, and the
    output Y is counted."""
    if function is None or function.attribute or list(function.attribute_proto):
        return None
    if any(o.domain in DEFAULT_DOMAINS and o.version != opset for o in function.opset_import):
        return None
    threshold = constants.get(node.input[1]) if len(node.input) > 1 else None
    if threshold is None or threshold.dtype.kind != "f" or not np.all(np.isfinite(threshold)) \
            or not np.all(threshold != 0) or sum(d > 1 for d in threshold.shape) > 1:
        return None
    names = {formal: actual for formal, actual in zip(function.input, node.input) if actual}
    names.update({formal: actual for formal, actual in zip(function.output, node.output) if actual})
    prefix = f"{node.name}/"
    nodes = []
    for k, inner in enumerate(function.node):
        if inner.domain not in DEFAULT_DOMAINS or any(a.ref_attr_name or a.type in (
                onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in inner.attribute):
            return None
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        copy.input[:] = [names.setdefault(n, prefix + n) if n else "" for n in inner.input]
        copy.output[:] = [names.setdefault(n, prefix + n) if n else "" for n in inner.output]
        copy.name = prefix + (inner.name or f"{inner.op_type}{k}")
        nodes.append(copy)
    producer = {o: n for n in nodes for o in n.output}

    def boolean_cast(name: str) -> bool:
        cast = producer.get(name)
        return cast is not None and cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT \
            and cast.input[0] in producer and producer[cast.input[0]].op_type in BOOLEAN_OPS

    mul = producer.get(node.output[0])
    if mul is None or mul.op_type != "Mul" or node.input[1] not in mul.input:
        return None
    spike = mul.input[1] if mul.input[0] == node.input[1] else mul.input[0]
    if boolean_cast(spike):  # s = Cast(fired): fired
        return nodes, [producer[spike].input[0]]
    sub = producer.get(spike)
    if sub is not None and sub.op_type == "Sub" and all(boolean_cast(n) for n in sub.input):
        return nodes, [producer[n].input[0] for n in sub.input]  # s = Cast(up) - Cast(down): up xor down
    return None


def _produced(b: _Graph, name: str, produced: set[str]) -> str:
    """A body output must be computed in the body: an outer value (an invariant output) goes through Identity."""
    return name if name in produced else b.node("Identity", [name])


def _renamed(node: onnx.NodeProto, invariant: set[str], suffix: str) -> onnx.NodeProto:
    """A copy of node reading (and, if it is a hoisted node, writing) the suffixed names of the data-dependent
    invariant tensors; subgraphs included."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    if suffix:
        _rename(copy, invariant, suffix)
    return copy


def _rename(node: onnx.NodeProto, invariant: set[str], suffix: str) -> None:
    for k, name in enumerate(node.input):
        if name in invariant:
            node.input[k] = name + suffix
    for k, name in enumerate(node.output):
        if name in invariant:
            node.output[k] = name + suffix
    if node.name:
        node.name += suffix
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for inner in sub.node:
                _rename(inner, invariant, suffix)


def _shape(b: _Graph, vi: onnx.ValueInfoProto, batch: str) -> str:
    dims = vi.type.tensor_type.shape.dim
    if all(d.HasField("dim_value") for d in dims):
        return b.const(np.array([d.dim_value for d in dims], np.int64))
    parts = [batch if not d.HasField("dim_value") else b.const(np.array([d.dim_value], np.int64)) for d in dims]
    return b.node("Concat", parts, axis=0)


class _Graph:
    """Nodes and initializers added around the step graph, with fresh names."""

    def __init__(self, opset: int, prefix: str = "outer."):
        self.opset, self.prefix = opset, prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def _name(self, kind: str) -> str:
        return f"{self.prefix}{kind}.{len(self.nodes) + len(self.inits)}"

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self._name(op)
        self.nodes.append(helper.make_node(op, inputs, [out], out, **attrs))
        return out

    def const(self, value: np.ndarray) -> str:
        name = self._name("const")
        self.inits.append(onnx.numpy_helper.from_array(value, name))
        return name

    def reduce_max(self, x: str) -> str:
        """Max over axis 1 of a [B, n] tensor, as [B]."""
        if self.opset >= 18:
            return self.node("ReduceMax", [x, self.const(np.array([1], np.int64))], keepdims=0)
        return self.node("ReduceMax", [x], axes=[1], keepdims=0)


def firing_nodes(model: SpikingModel, non_firing: frozenset[str]) -> list[onnx.NodeProto]:
    return [n for n in model.proto.graph.node if n.domain == DOMAIN and n.op_type not in non_firing]

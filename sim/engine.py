"""The NumPy engine: runs an exported spiking model over a whole time window, layer by layer.

Every tensor that depends on the input is a sequence [T_in, B, ...] where T_in is 1 when the value is the
same at every step (under direct coding the input and everything before the first neuron) and T otherwise.
A stateless operator runs once on a time-invariant input; otherwise elementwise operators broadcast over
the time axis, batch-first operators (Conv, Gemm, pooling, ...) run once with time folded into the batch,
and anything else runs step by step. Spiking operators scan over time in their native kernels.

The heavy stateless operators (Conv, ConvTranspose, Gemm, MatMul with constant weights, pooling) run under
onnxruntime by default, one small session per node fed the folded [T*B, ...] tensor: its convolution is 2-3x
faster than the NumPy kernel. Between Convs that onnxruntime runs channel-blocked, tensors stay in that
layout (sim/nchwc.py). `linear="numpy"` keeps everything in NumPy. Batch slices run on a thread pool (NumPy
and onnxruntime release the GIL)."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException
import onnxruntime as ort

from ground.errors import first_line, SpikingModelError
from sim.drain import BiasTerm, bias_terms
from sim.model import SpikingModel
from snnfile import DEFAULT_DOMAINS, DOMAIN, is_state
from sim.nchwc import blocked_constant, blocked_conv, blocked_pool, blocked_view, from_blocked, to_blocked
from sim.neurons import NEURON_KERNELS, REUSING, maxpool_neuron
from sim.ops import KERNELS, attributes, axes_from, softmax_axes
from ground.sessions import make_session

ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Greater", "Less",
    "GreaterOrEqual", "LessOrEqual", "And", "Or", "Not", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal",
    "Sigmoid", "Tanh", "Erf", "Relu", "LeakyRelu", "Clip", "Floor", "Ceil", "Round", "Sign", "Cast",
    "HardSigmoid", "HardSwish", "Softplus", "Elu", "Selu", "Gelu", "Identity", "Dropout", "PRelu", "Sin", "Cos",
})
BATCH_FIRST = frozenset({
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "BatchNormalization", "LRN", "InstanceNormalization", "DepthToSpace", "SpaceToDepth",
})
# Reductions and normalisations whose floats depend on the order of their additions: under onnxruntime they
# round as the onnxruntime engine does (NumPy's pairwise sums moved a few spikes of the ViT example, 2.5e-3
# on its decoded output at T = 16).
ORDER_DEPENDENT = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceProd", "Softmax",
                             "LogSoftmax", "LayerNormalization"})
# no NumPy kernel: run under onnxruntime when their inputs after the first are constants
ORT_ONLY = frozenset({"Resize"})
# run under onnxruntime by default
DELEGATED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool", "MaxPool",
                       "GlobalMaxPool"}) | ORDER_DEPENDENT | ORT_ONLY
LINEAR_BACKENDS = ("onnxruntime", "numpy")
BLOCKED_NEURONS = frozenset({"IFNeuron", "SignedIFNeuron"})  # elementwise in their input
AXIS_OPS = frozenset({"Flatten", "Softmax", "LogSoftmax", "Concat", "Split", "LayerNormalization", "ArgMax",
                      "Gather"})


DEFAULT_MEMORY_BUDGET = 16 * 2**20  # bytes of one [T, slice, ...] tensor; the fastest of 8-32 MiB (docs/benchmarks.md)
ORT_ERRORS = (Fail, InvalidArgument, RuntimeException)


def node_failed(model: SpikingModel, node: onnx.NodeProto, exc: Exception) -> SpikingModelError:
    first = first_line(exc)
    return SpikingModelError(f"{model.path}: node '{node.name}' ({node.op_type}) cannot run: {first}",
                             "the file does not hold together; export it again with `ann2snn convert`")


@dataclass
class Seq:
    """A per-step tensor over the window: data[t] is its value at step t (data[0] at every step if len 1)."""

    data: np.ndarray
    block: int = 0  # > 0: the data hold onnxruntime's channel-blocked order (sim/nchwc.py), this many channels a block

    @property
    def invariant(self) -> bool:
        return self.data.shape[0] == 1

    def step(self, t: int) -> np.ndarray:
        return self.data[0 if self.invariant else t]


@dataclass
class LayerSpikes:
    """Spike statistics of one firing layer, summed over samples (and over the batches added)."""

    node: str
    op: str
    neurons: int  # per sample
    spikes: int = 0  # over all samples and steps
    silent: int = 0  # neuron-samples that never fired in the window
    saturated: int = 0  # neuron-samples that fired at every step of the window

    def add_counts(self, counts: np.ndarray, steps: int) -> None:
        """counts: spikes per neuron over the window, [B, ...]."""
        self.neurons = int(np.prod(counts.shape[1:]))
        self.spikes += int(counts.sum(dtype=np.int64))
        self.silent += int(np.count_nonzero(counts == 0))
        self.saturated += int(np.count_nonzero(counts >= steps))

    def merge(self, other: LayerSpikes) -> None:
        self.neurons = other.neurons
        self.spikes += other.spikes
        self.silent += other.silent
        self.saturated += other.saturated


@dataclass
class WindowResult:
    outputs: dict[str, np.ndarray]  # name -> [T, B, ...] per-step values
    spikes: dict[str, LayerSpikes] = field(default_factory=dict)
    # with observe=k: firing node -> its output summed over the first k steps [B, ...], and whether any neuron
    # fired at each step [T, B]
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    active: np.ndarray | None = None

    @staticmethod
    def concat(parts: list[WindowResult]) -> WindowResult:
        """Join results of consecutive slices of one batch."""
        first = parts[0]
        outputs = {k: np.concatenate([p.outputs[k] for p in parts], axis=1) for k in first.outputs}
        spikes = first.spikes
        for p in parts[1:]:
            for name, layer in p.spikes.items():
                spikes[name].merge(layer)
        sums = {k: np.concatenate([p.sums[k] for p in parts]) for k in first.sums}
        active = np.concatenate([p.active for p in parts], axis=1) if first.active is not None else None
        return WindowResult(outputs, spikes, sums, active)

    def observe(self, node: str, out: np.ndarray, steps: int) -> None:
        """Record a firing layer's per-step output [T, B, ...], summed over its first `steps` steps."""
        self.sums[node] = out[:steps].sum(axis=0, dtype=np.float64)
        fired = (out != 0).reshape(out.shape[0], out.shape[1], -1).any(axis=2)
        self.active = fired if self.active is None else self.active | fired


class NumpyEngine:
    """`memory_budget` bounds the bytes of one sequence tensor: the batch is run in slices small enough that
    [T, slice, largest activation] fits, which also keeps the working set in cache. `workers` slices run at
    once (default: one per CPU, one with linear="numpy"). `linear` picks the backend of the stateless linear
    operators: "onnxruntime" or "numpy"."""

    name = "numpy"

    def __init__(self, model: SpikingModel, memory_budget: int = DEFAULT_MEMORY_BUDGET, workers: int | None = None,
                 linear: str = "onnxruntime", blocked: bool = True):
        if linear not in LINEAR_BACKENDS:
            raise SpikingModelError(f"unknown linear backend {linear!r}", f"choose one of {', '.join(LINEAR_BACKENDS)}")
        self.model = model
        self.nodes = model.nodes
        self.attrs = [attributes(n) for n in self.nodes]
        opset = next((o.version for o in model.proto.opset_import if o.domain in DEFAULT_DOMAINS), 13)
        for node, attrs in zip(self.nodes, self.attrs):
            if node.op_type in ("Softmax", "LogSoftmax") and node.domain in DEFAULT_DOMAINS:
                attrs["opset"] = opset  # their axis semantics changed at opset 13 (sim.ops.softmax_axes)
        for node in self.nodes:
            known = NEURON_KERNELS if node.domain == DOMAIN else KERNELS
            if node.op_type not in known and not (linear == "onnxruntime" and node.op_type in ORT_ONLY
                                                  and _delegable(model, node)):
                raise SpikingModelError(f"{model.path}: node '{node.name}' ({node.op_type}) has no NumPy kernel",
                                        "use --engine onnxruntime")
        self.last_use = _last_use(self.nodes, model.outputs)
        self.memory_budget = memory_budget
        # OpenBLAS threads the NumPy matmuls itself: more workers would oversubscribe the CPUs
        self.workers = max(1, workers or (_cpus() if linear == "onnxruntime" else 1))
        self.linear = linear
        threads = 1 if self.workers > 1 else 0
        # node index -> its onnxruntime kernel; the other standard nodes use KERNELS
        self.delegated = {i: OrtNode(model, node, threads) for i, node in enumerate(self.nodes)
                          if linear == "onnxruntime" and _delegable(model, node)}
        # MaxPoolNeuron index -> its kernel with the pooling of the running sums under onnxruntime (2x NumPy's)
        self.pools = {i: partial(maxpool_neuron, pool=OrtNode(model, _maxpool_of(node), threads))
                      for i, node in enumerate(self.nodes)
                      if linear == "onnxruntime" and node.domain == DOMAIN and node.op_type == "MaxPoolNeuron"}
        # SpikeMatMul index -> its kernel with the products under onnxruntime's MatMul: the GEMM of the stepped file,
        # whose sums round as OpenBLAS's do not (the first difference of the engines on the ViT example, 2e-5 at
        # step 0, flipped spikes downstream); per matrix its floats do not depend on how many are batched
        self.products = {i: partial(NEURON_KERNELS[node.op_type],
                                    product=OrtNode(model, _product_of(node), threads, constants={}))
                         for i, node in enumerate(self.nodes)
                         if linear == "onnxruntime" and node.domain == DOMAIN and node.op_type == "SpikeMatMul"}
        # with `blocked`, Convs (and MaxPool neurons) that onnxruntime runs channel-blocked keep that layout
        # between them (sim/nchwc.py): same floats, no reorder on every call
        opsets = [o for o in model.proto.opset_import if o.domain in DEFAULT_DOMAINS]
        self.blocked_convs = {i: conv for i in self.delegated if blocked and self.nodes[i].op_type == "Conv"
                              and (conv := blocked_conv(self.nodes[i], model.constants, opsets, threads))}
        # max pooling nodes and MaxPool neurons that take a blocked input as it is
        self.blocked_ops = {i: pool for i in self.delegated if self.blocked_convs and self.nodes[i].op_type != "Conv"
                            and (pool := blocked_pool(self.nodes[i], threads))}
        self.blocked_pools = {i: partial(maxpool_neuron, pool=pool) for i in self.pools
                              if self.blocked_convs and (pool := blocked_pool(self.nodes[i], threads, "MaxPool"))}
        self.drain_terms: dict[int, BiasTerm] | None = None
        self.threads, self.opsets = threads, opsets
        self.sample_bytes = 4 * max([_per_sample_size(vi) for vi in list(model.proto.graph.input)
                                     + list(model.proto.graph.value_info)] + [1])

    def run(self, feeds: dict[str, np.ndarray], T: int, extra_t: int = 0, observe: int = 0,
            drain: bool = False) -> WindowResult:
        """Run a batch from zero state: the input for T steps, then extra_t steps of zero input (and no biases
        with `drain`, sim/drain.py). `observe` > 0 also returns each firing layer's output summed over that many
        leading steps, and per-step activity."""
        if drain and extra_t and self.drain_terms is None:
            self.drain_terms = bias_terms(self.model)
        drained = self.drain_terms if drain and extra_t else None
        run = lambda f: self._run(f, T, extra_t, observe, drained)  # noqa: E731
        batch = len(next(iter(feeds.values())))
        step = self.slice_size(batch, T + extra_t)
        if batch <= step:
            return run(feeds)
        slices = [{k: v[i:i + step] for k, v in feeds.items()} for i in range(0, batch, step)]
        if self.workers == 1:
            parts = [run(f) for f in slices]
        else:
            with ThreadPoolExecutor(min(self.workers, len(slices))) as pool:
                parts = list(pool.map(run, slices))
        if not all(out.ndim > 1 and out.shape[1] == len(next(iter(f.values())))
                   for part, f in zip(parts, slices) for out in part.outputs.values()):
            return run(feeds)  # an output whose axis 1 is not the batch (a Shape, a rank-raising constant)
        return WindowResult.concat(parts)

    def slice_size(self, batch: int, steps: int) -> int:
        """Samples a slice: [steps, slice, largest activation] within the memory budget, one slice per worker at
        most, two samples at least (so that an output not batched on axis 1 shows)."""
        step = max(1, self.memory_budget // (self.sample_bytes * steps))
        if self.workers > 1:
            step = min(step, -(-batch // self.workers))
        return max(2, step)

    def _run(self, feeds: dict[str, np.ndarray], T: int, extra_t: int, observe: int,
             drained: dict[int, BiasTerm] | None) -> WindowResult:
        """`drained`: the bias terms left out after T steps, None when the silent steps are not drain steps."""
        evaluation = self._evaluate(feeds, T, extra_t, observe, drained, frozenset())
        while True:
            try:
                next(evaluation)
            except StopIteration as done:
                return done.value

    def replace_constants(self, values: dict[str, np.ndarray]) -> None:
        """New values for constants: the onnxruntime kernels that baked them in are built again."""
        self.model.constants.update(values)
        for i, node in enumerate(self.nodes):
            if not values.keys() & set(node.input):
                continue
            if i in self.delegated:
                self.delegated[i] = OrtNode(self.model, node, self.threads)
            if i in self.blocked_convs:
                conv = blocked_conv(node, self.model.constants, self.opsets, self.threads)
                if conv is None:  # the same shapes block the same way
                    raise RuntimeError(f"node '{node.name}' no longer blocks with its new constants")
                self.blocked_convs[i] = conv

    def _evaluate(self, feeds: dict[str, np.ndarray], T: int, extra_t: int, observe: int,
                  drained: dict[int, BiasTerm] | None, pauses: frozenset[int]):
        """The run as a generator: before each node whose index is in `pauses` it yields (index, env), the
        tensors computed so far and the constants the rest will read, which the caller may replace; it
        returns the WindowResult."""
        steps = T + extra_t
        result = WindowResult({})
        env: dict[str, Any] = dict(self.model.constants)
        for name in self.model.state_inputs:
            env[name] = None
        for name, x in feeds.items():
            if extra_t:
                seq = np.zeros((steps,) + x.shape, x.dtype)
                seq[:T] = x
                env[name] = Seq(seq)
            else:
                env[name] = Seq(x[None])
        blocking = bool(self.blocked_convs) and not drained
        drain_attrs = {"driven_steps": T} if drained is not None else {}
        drained = drained or {}
        for i, (node, attrs) in enumerate(zip(self.nodes, self.attrs)):
            if i in pauses:
                yield i, env
            inputs = [env[n] if n else None for n in node.input]
            block = self._block_of(i, node, inputs) if blocking else 0
            if not block and node.op_type not in ("Shape", "Size"):
                for k, name in enumerate(node.input):
                    if isinstance(inputs[k], Seq) and inputs[k].block:
                        env[name] = inputs[k] = _plain(inputs[k])
            try:
                if block and (i in self.blocked_convs or i in self.blocked_ops):
                    kernel = self.blocked_convs.get(i) or self.blocked_ops[i]
                    outs = self._blocked(kernel, node, attrs, inputs, steps)
                elif node.domain == DOMAIN:
                    kernel = (self.blocked_pools.get(i) if block else None) or self.pools.get(i) \
                        or self.products.get(i) or NEURON_KERNELS[node.op_type]
                    if node.op_type == "StepCount":
                        attrs = {**attrs, **drain_attrs}
                    elif node.op_type == "SignedIFNeuron" and isinstance(inputs[4], Seq):
                        attrs = {**attrs, "tmax_per_step": True}
                    reuse = node.op_type in REUSING and self._reusable(i, node.input[0], inputs[0], env, steps)
                    outs = self._neuron(kernel, node, attrs, inputs, steps, result, observe, block, reuse)
                else:
                    reuse = next((k for k in (0, 1) if node.op_type in IN_PLACE and len(node.input) == 2
                                  and self._reusable(i, node.input[k], inputs[k], env, steps)), None)
                    outs = self._standard(self.delegated.get(i) or KERNELS[node.op_type], node, attrs, inputs,
                                          steps, block, reuse)
                if i in drained and isinstance(outs[0], Seq) and not outs[0].invariant:
                    outs[0] = Seq(_without_term(outs[0].data, drained[i], T))
            except (ValueError, IndexError, *ORT_ERRORS) as exc:  # shapes the checks let through
                raise node_failed(self.model, node, exc) from exc
            for name, value in zip(node.output, outs):
                if name:
                    env[name] = value
            for name in self.last_use.get(i, ()):
                env.pop(name, None)
        for name in self.model.outputs:
            value = _plain(env[name])
            data = value.data if isinstance(value, Seq) else np.broadcast_to(value, (1,) + np.shape(value))
            result.outputs[name] = np.broadcast_to(data, (steps,) + data.shape[1:])
        return result

    def _reusable(self, i: int, name: str, x, env: dict, steps: int) -> bool:
        """True when node i is the last reader of tensor `name`, a [steps, ...] array the engine made (a fed
        input is a [1, ...] view of the caller's array) that no other live tensor shares memory with: node i
        may then write its output over it."""
        if steps < 2 or not isinstance(x, Seq) or len(x.data) != steps or name not in self.last_use.get(i, ()):
            return False
        return not any(isinstance(v, Seq) and v is not x and np.may_share_memory(v.data, x.data) for v in env.values())

    def _block_of(self, i: int, node: onnx.NodeProto, inputs: list) -> int:
        """The block size to run node i in the channel-blocked layout, or 0 to run it on plain tensors."""
        x = inputs[0] if inputs else None
        if (i in self.blocked_convs or i in self.blocked_ops or i in self.blocked_pools) and not (
                isinstance(x, Seq) and x.data.dtype == np.float32):  # onnxruntime's kernels take float32 only
            return 0
        if i in self.blocked_convs:
            return self.blocked_convs[i].block
        if i in self.blocked_ops:
            return x.block if x.data.ndim == 5 else 0
        budget = 4 if node.domain == DOMAIN and node.op_type == "SignedIFNeuron" else -1  # a step count
        seqs = [v for k, v in enumerate(inputs) if isinstance(v, Seq) and k != budget]
        if not seqs or not seqs[0].block or any(s.block != seqs[0].block for s in seqs):
            return 0
        block = seqs[0].block
        if node.domain == DOMAIN:
            if node.op_type == "MaxPoolNeuron":
                return block if i in self.blocked_pools else 0
            if node.op_type not in BLOCKED_NEURONS or not isinstance(inputs[0], Seq):
                return 0
        elif node.op_type not in ELEMENTWISE or len({s.data.shape[1:] for s in seqs}) != 1:
            return 0
        if seqs[0].data.ndim != 5:
            return 0
        per_step = seqs[0].data.shape[1:]
        constants = [v for name, v in zip(node.input, inputs)
                     if name and not is_state(name) and not isinstance(v, Seq)]
        return block if all(blocked_constant(c, per_step, block) is not None for c in constants) else 0

    def _blocked(self, kernel, node: onnx.NodeProto, attrs: dict, inputs: list, steps: int) -> list:
        """A node under its NCHWc kernel: the input brought to the layout the kernel takes, the output blocked."""
        x = inputs[0]
        if kernel.input_blocked and not x.block:
            x = Seq(to_blocked(x.data, kernel.block), kernel.block)
        elif not kernel.input_blocked and x.block:
            x = _plain(x)
        outs = self._standard(kernel, node, attrs, [x] + inputs[1:], steps)
        outs[0].block = kernel.block
        return outs

    def _neuron(self, kernel, node: onnx.NodeProto, attrs: dict, inputs: list, steps: int, result: WindowResult,
                observe: int, block: int = 0, reuse_input: bool = False) -> list:
        args = [v.data if isinstance(v, Seq) else v
                for name, v in zip(node.input, inputs) if not is_state(name)]
        if args and not isinstance(inputs[0], Seq):
            args[0] = np.asarray(args[0])[None]
        shape = args[0].shape[1:] if args else ()  # a clock (FirstStep) reads nothing
        if block and node.op_type in BLOCKED_NEURONS:  # elementwise: run on the memory order
            args = [blocked_view(args[0], block)] + [c if attrs.get("tmax_per_step") and k == 4
                                                     else blocked_constant(c, shape, block)
                                                     for k, c in enumerate(args[1:], start=1)]
        out, counts = kernel(args, attrs, steps, reuse_input=True) if reuse_input else kernel(args, attrs, steps)
        if block and node.op_type in BLOCKED_NEURONS:
            out = out.reshape((steps,) + shape)
        if counts is not None:
            result.spikes.setdefault(node.name, LayerSpikes(node.name, node.op_type, 0)).add_counts(counts, steps)
            if observe:
                result.observe(node.name, out, observe)
                if block:
                    result.sums[node.name] = from_blocked(result.sums[node.name], block)
        return [Seq(out, block)] + [None] * (len(node.output) - 1)

    def _standard(self, kernel, node: onnx.NodeProto, attrs: dict, inputs: list, steps: int, block: int = 0,
                  reuse: int | None = None) -> list:
        """`reuse`: the index of an input given up (_reusable) that an Add, Sub or Mul may write its result over."""
        op = node.op_type
        seqs = [v for v in inputs if isinstance(v, Seq)]
        if not seqs:
            return kernel(inputs, attrs)
        if op in ("Shape", "Size"):
            return kernel([seqs[0].data[0]], attrs)
        if block:  # elementwise on channel-blocked tensors of one shape (_block_of)
            per_step = seqs[0].data.shape[1:]
            plain = [blocked_view(v.data, block) if isinstance(v, Seq)
                     else None if v is None else blocked_constant(v, per_step, block) for v in inputs]
            outs = _in_place(op, plain, reuse) or kernel(plain, attrs)
            return [Seq(o.reshape(o.shape[:1] + per_step), block) for o in outs]
        if all(s.invariant for s in seqs):
            plain = [v.data[0] if isinstance(v, Seq) else v for v in inputs]
            return [Seq(o[None]) for o in kernel(plain, attrs)]
        if op in ELEMENTWISE and _broadcasts_over_time(inputs):
            plain = [v.data if isinstance(v, Seq) else v for v in inputs]
            return [Seq(o) for o in _in_place(op, plain, reuse) or kernel(plain, attrs)]
        if op == "Reshape":
            x = inputs[0].data
            target = kernel([x[0], inputs[1]], attrs)[0].shape
            return [Seq(x.reshape((x.shape[0],) + tuple(target)))]
        if _foldable(op, attrs, inputs):
            if self.model.few_spikes:
                return _folded_where_active(kernel, attrs, inputs, steps)
            return self._folded(kernel, attrs, inputs, steps)
        return self._stepwise(kernel, attrs, inputs, steps)

    @staticmethod
    def _folded(kernel, attrs: dict, inputs: list, steps: int) -> list:
        batch = next(v for v in inputs if isinstance(v, Seq)).data.shape[1]
        plain = []
        for v in inputs:
            if isinstance(v, Seq):
                data = np.broadcast_to(v.data, (steps,) + v.data.shape[1:]) if v.invariant else v.data
                plain.append(data.reshape((steps * batch,) + data.shape[2:]))
            else:
                plain.append(v)
        return [Seq(o.reshape((steps, batch) + o.shape[1:])) for o in kernel(plain, attrs)]

    @staticmethod
    def _stepwise(kernel, attrs: dict, inputs: list, steps: int) -> list:
        per_step = [kernel([v.step(t) if isinstance(v, Seq) else v for v in inputs], attrs)
                    for t in range(steps)]
        return [Seq(np.stack([outs[k] for outs in per_step])) for k in range(len(per_step[0]))]


class PausedRun:
    """One batch run from zero state for T steps, stopped before each of `stops` (node names, in graph order)
    so that the caller reads what the node is fed and may set the constants it and later nodes read: what the
    per-layer search needs, each layer converted as chosen before the next one's input is recorded, in one
    pass over the network instead of one per layer. The batch is split in slices as NumpyEngine.run does;
    their evaluations advance together."""

    def __init__(self, engine: NumpyEngine, feeds: dict[str, np.ndarray], T: int, stops: list[str]):
        index = {n.name: i for i, n in enumerate(engine.nodes)}
        self.stops = [index[name] for name in stops]
        if self.stops != sorted(self.stops):
            raise ValueError("stops are not in graph order")
        batch = len(next(iter(feeds.values())))
        step = engine.slice_size(batch, T)
        slices = [{k: v[i:i + step] for k, v in feeds.items()} for i in range(0, batch, step)]
        self.runs = [engine._evaluate(f, T, 0, 0, None, frozenset(self.stops)) for f in slices]
        self.pool = ThreadPoolExecutor(min(engine.workers, len(slices))) if engine.workers > 1 and len(slices) > 1 \
            else None
        self.envs: list[dict] = []
        self.names = [n.name for n in engine.nodes]
        self.engine = engine

    def advance(self) -> str:
        """Run every slice up to the next stop; the name of the node it stopped before."""
        paused = list(self.pool.map(next, self.runs)) if self.pool else [next(run) for run in self.runs]
        self.envs = [env for _, env in paused]
        return self.names[paused[0][0]]

    def tensor(self, name: str, steps: int | None = None) -> np.ndarray:
        """A tensor at the stop, [T or 1, batch, ...] (its first `steps` steps only), a copy in the plain
        layout."""
        return np.concatenate([_plain(env[name]).data[:steps] for env in self.envs], axis=1)

    def means(self, name: str, counts: tuple[int, ...]) -> list[np.ndarray] | None:
        """A tensor's mean over its first k steps for each k of `counts`, [batch, ...] float64; None where it
        does not change from step to step."""
        data = [_plain(env[name]).data for env in self.envs]
        if len(data[0]) == 1:
            return None
        return [np.concatenate([np.add.reduce(d[:k], axis=0, dtype=np.float64) / k for d in data]) for k in counts]

    def set(self, values: dict[str, np.ndarray]) -> None:
        """Replace constants (initializer names) for the rest of the run, in the kernels that hold them too."""
        for env in self.envs:
            env.update(values)
        self.engine.replace_constants(values)

    def close(self) -> None:
        for run in self.runs:
            run.close()
        if self.pool:
            self.pool.shutdown()


class OrtNode:
    """One stateless linear or pooling node as a one-node onnxruntime session with its constant inputs baked in, called
    like a NumPy kernel. Its other inputs are fed (the first alone for a delegated node; both operands of the
    products of a spike product, whose node has no constants). The session is built on first use. Inputs other
    than float32, and a node that onnxruntime cannot load (`reason` says why), go to the NumPy kernel."""

    def __init__(self, model: SpikingModel, node: onnx.NodeProto, threads: int,
                 constants: dict[str, np.ndarray] | None = None):
        self.model, self.node, self.threads = model, node, threads
        self.constants = model.constants if constants is None else constants
        self.fallback = KERNELS.get(node.op_type) or partial(_no_kernel, model, node)
        self.session: ort.InferenceSession | None = None
        self.reason = ""
        self.lock = threading.Lock()

    def __call__(self, inputs: list, attrs: dict) -> list:
        feeds = {name: x for name, x in zip(self.node.input, inputs) if name and name not in self.constants}
        if not all(isinstance(x, np.ndarray) and x.dtype == np.float32 and x.size for x in feeds.values()):
            return self.fallback(inputs, attrs)
        with self.lock:
            if self.session is None and not self.reason:
                self._build({name: x.ndim for name, x in feeds.items()})
        if self.session is None:
            return self.fallback(inputs, attrs)
        return self.session.run(None, {name: np.ascontiguousarray(x) for name, x in feeds.items()})

    def _build(self, ranks: dict[str, int]) -> None:
        node = self.node
        inits = [onnx.numpy_helper.from_array(self.constants[n], n)
                 for n in dict.fromkeys(node.input) if n in self.constants]
        graph = onnx.helper.make_graph(
            [node], node.name or node.op_type,
            [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [None] * r) for n, r in ranks.items()],
            [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in node.output], inits)
        opsets = [o for o in self.model.proto.opset_import if o.domain in DEFAULT_DOMAINS]
        proto = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=self.model.proto.ir_version)
        try:
            self.session = make_session(proto, self.threads)
        except Exception as exc:  # onnxruntime raises untyped errors
            self.reason = first_line(exc)


def _no_kernel(model: SpikingModel, node: onnx.NodeProto, inputs: list, attrs: dict) -> list:
    raise SpikingModelError(f"{model.path}: node '{node.name}' ({node.op_type}) runs only under onnxruntime, on "
                            "float32", "use --engine onnxruntime")


IN_PLACE = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}


def _in_place(op: str, operands: list, reuse: int | None) -> list | None:
    """[op(a, b)] written over operand `reuse` when the result has its shape and float32 type, else None."""
    if reuse is None or op not in IN_PLACE:
        return None
    target = operands[reuse]
    if (target.dtype != np.float32 or not target.flags.writeable or not target.flags.c_contiguous
            or np.result_type(*operands) != np.float32
            or np.broadcast_shapes(*(np.shape(o) for o in operands)) != target.shape):
        return None
    return [IN_PLACE[op](operands[0], operands[1], out=target)]


def _plain(value):
    """A Seq in plain order (a copy when it is channel-blocked); anything else as it is."""
    if isinstance(value, Seq) and value.block:
        return Seq(from_blocked(value.data, value.block))
    return value


def _without_term(data: np.ndarray, term: BiasTerm, T: int) -> np.ndarray:
    """The node's per-step output [steps, B, ...] with its constant term taken out of the steps after T."""
    if not data.flags.writeable:
        data = data.copy()
    data[T:] -= term.offset_for(data.ndim - 1)
    return data


def _maxpool_of(node: onnx.NodeProto) -> onnx.NodeProto:
    """The standard MaxPool a MaxPoolNeuron applies to its running sums (same attributes)."""
    pool = onnx.NodeProto()
    pool.CopyFrom(node)
    pool.domain, pool.op_type = "", "MaxPool"
    del pool.input[1:]
    del pool.output[1:]
    return pool


def _product_of(node: onnx.NodeProto) -> onnx.NodeProto:
    """The standard MatMul of a SpikeMatMul's products, of two fed operands (its kernel names them)."""
    return onnx.helper.make_node("MatMul", ["a", "b"], ["y"], name=f"{node.name}.product")


def _delegable(model: SpikingModel, node: onnx.NodeProto) -> bool:
    """A default-domain linear node whose inputs after the first are all initializers."""
    if node.domain not in DEFAULT_DOMAINS or node.op_type not in DELEGATED or len(node.output) != 1:
        return False
    if not node.input or node.input[0] in model.constants:
        return False
    return all(n in model.constants for n in node.input[1:] if n)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


SPARSE_BELOW = 0.75  # run a folded op on the steps its input is active only when they are fewer than this share


def _folded_where_active(kernel, attrs: dict, inputs: list, steps: int) -> list:
    """`NumpyEngine._folded` for an FS file, whose layers are active in a few of its steps: the op runs on
    the steps where its one sequence input holds a non-zero value and on one zero step, whose result (the
    op of zero: a bias, or zero) fills the others. Exact: the op treats every step alike."""
    seqs = [k for k, v in enumerate(inputs) if isinstance(v, Seq)]
    x = inputs[seqs[0]].data if len(seqs) == 1 else None
    if x is None or len(x) != steps or x.dtype.kind != "f":
        return NumpyEngine._folded(kernel, attrs, inputs, steps)
    active = np.flatnonzero(x.reshape(steps, -1).any(axis=1))
    if len(active) >= SPARSE_BELOW * steps:
        return NumpyEngine._folded(kernel, attrs, inputs, steps)
    picked = np.concatenate([x[active], np.zeros((1,) + x.shape[1:], x.dtype)])
    part = list(inputs)
    part[seqs[0]] = Seq(picked)
    outs = NumpyEngine._folded(kernel, attrs, part, len(picked))
    full = []
    for out in outs:
        data = np.empty((steps,) + out.data.shape[1:], out.data.dtype)
        data[:] = out.data[-1]
        data[active] = out.data[:-1]
        full.append(Seq(data))
    return full


def _broadcasts_over_time(inputs: list) -> bool:
    """True when numpy broadcasting of [T, B, ...] sequences with the constants gives the per-step result:
    all sequences have the same per-step rank and no constant has a higher rank."""
    ranks = {v.data.ndim - 1 for v in inputs if isinstance(v, Seq)}
    if len(ranks) != 1:
        return False
    rank = ranks.pop()
    return all(np.ndim(v) <= rank for v in inputs if v is not None and not isinstance(v, Seq))


def _foldable(op: str, attrs: dict, inputs: list) -> bool:
    """True when the op treats axis 0 as an independent batch, so time can be folded into it."""
    first = inputs[0]
    if not isinstance(first, Seq) or (op != "Concat" and any(isinstance(v, Seq) for v in inputs[1:])):
        return False
    rank = first.data.ndim - 1
    if op in BATCH_FIRST:
        return True
    if op == "Resize":  # scales that keep axis 0; `sizes` would name the batch without the folded steps
        scales = inputs[2] if len(inputs) > 2 else None
        sized = len(inputs) > 3 and inputs[3] is not None and np.size(inputs[3])
        return scales is not None and np.size(scales) > 0 and float(np.ravel(scales)[0]) == 1.0 and not sized
    if op == "Gemm":
        return not attrs.get("transA", 0)
    if op == "MatMul":
        return rank >= 2 and np.ndim(inputs[1]) <= 2
    if op == "Transpose":
        perm = attrs.get("perm")
        return perm is not None and perm[0] == 0
    if op in ORDER_DEPENDENT and op.startswith("Reduce"):
        axes = axes_from(inputs, 1, attrs)
        return bool(axes) and all(int(a) % rank != 0 for a in axes)
    if op in ("Softmax", "LogSoftmax"):
        return 0 not in softmax_axes(attrs, rank)
    if op in AXIS_OPS:
        if op == "Concat" and not all(isinstance(v, Seq) for v in inputs):
            return False
        if op == "Gather":
            return attrs.get("axis", 0) % rank != 0
        default = 1 if op == "Flatten" else (-1 if op == "LayerNormalization" else 0)
        axis = attrs.get("axis", default)
        return axis % rank != 0 if axis != 0 else False
    return False


def _per_sample_size(vi: onnx.ValueInfoProto) -> int:
    dims = vi.type.tensor_type.shape.dim
    sizes = [d.dim_value for d in dims[1:]]
    return int(np.prod(sizes)) if sizes and all(v > 0 for v in sizes) else 1


def _last_use(nodes: list[onnx.NodeProto], keep: list[str]) -> dict[int, list[str]]:
    """For each node index, the tensors whose last reader it is (freed after it runs)."""
    last: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name:
                last[name] = i
    out: dict[int, list[str]] = {}
    for name, i in last.items():
        if name not in keep:
            out.setdefault(i, []).append(name)
    return out

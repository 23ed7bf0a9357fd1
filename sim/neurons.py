"""Native NumPy kernels of the ai.ann2snn operators, over a whole time window at once.

A kernel gets the node's non-state inputs (the first a sequence [T_in, B, ...] with T_in = 1 for an input
that is the same at every step, the others constants), its attributes and the window length T, and returns
the output sequence [T, B, ...] and the number of spikes of each neuron over the window, [B, ...] (None for
operators that do not fire).
State starts at zero, as the contract says, so state inputs are not read. The arithmetic follows the
operators' ONNX function bodies operation by operation so that both engines compute the same floats."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from sim.ops import KERNELS
from snnfile.operators import FS_SILENT_THRESHOLD

NeuronKernel = Callable[[list[np.ndarray], dict[str, Any], int], tuple[np.ndarray, np.ndarray | None]]


def _output_for(x: np.ndarray, T: int, reuse_input: bool) -> np.ndarray:
    """The [T, ...] output buffer: the input itself when the caller gives it up and it fits (each kernel reads
    x[t] before it writes out[t]; a fresh 8-16 MiB buffer per call cost 30% of the IF kernel's time)."""
    if reuse_input and len(x) == T and x.dtype == np.float32 and x.flags.writeable and x.flags.c_contiguous:
        return x
    return np.empty((T,) + x.shape[1:], np.float32)


def if_neuron(inputs: list[np.ndarray], attrs: dict[str, Any], T: int,
              reuse_input: bool = False) -> tuple[np.ndarray, np.ndarray]:
    x, threshold, fire_level = inputs[:3]
    threshold = threshold.astype(np.float32, copy=False)
    fire_level = fire_level.astype(np.float32, copy=False)
    out = _output_for(x, T, reuse_input)
    v = np.zeros(x.shape[1:], np.float32)  # the membrane, updated in place: v + x, then v - spike
    fired = np.empty(v.shape, np.bool_)
    counts = _Counts(v.shape, T)
    for t in range(T):
        np.add(v, x[t if len(x) > 1 else 0], out=v)
        np.greater_equal(v, fire_level, out=fired)
        np.multiply(fired, threshold, out=out[t])
        np.subtract(v, out[t], out=v)
        counts.add(fired)
    return out, counts.total()


def signed_if_neuron(inputs: list[np.ndarray], attrs: dict[str, Any], T: int,
                     reuse_input: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two-type IF neuron: +1 spike when the membrane reaches the threshold and the net count is below tmax,
    -1 when the membrane is negative and the net count is positive. The spike count is the number of
    non-zero spikes, positive and negative alike (each is a synaptic event): net count + 2 x negative ones."""
    x, threshold, fire_level, unfire_level, tmax = (np.asarray(a) for a in inputs[:5])
    threshold, fire_level, unfire_level, tmax = (a.astype(np.float32, copy=False)
                                                 for a in (threshold, fire_level, unfire_level, tmax))
    if attrs.get("tmax_per_step"):  # the budget is a sequence [T, 1] (a StepCount): one value a step
        budget = tmax.reshape(T)
        bounded = bool(np.any(budget < np.arange(1, T + 1)))
    else:
        budget = np.broadcast_to(tmax, (T,) + tmax.shape)
        bounded = bool(np.any(tmax < T))  # else the count (at most one spike a step) never reaches tmax
    out = _output_for(x, T, reuse_input)
    v = np.zeros(x.shape[1:], np.float32)  # the membrane, updated in place
    count = np.zeros_like(v)
    up, down, gate = (np.empty(v.shape, np.bool_) for _ in range(3))
    spike = np.empty_like(v)
    taken_back = _Counts(v.shape, T)
    for t in range(T):
        np.add(v, x[t if len(x) > 1 else 0], out=v)
        np.greater_equal(v, fire_level, out=up)
        if bounded:
            np.less(count, budget[t], out=gate)
            up &= gate
        np.less(v, unfire_level, out=down)
        np.greater(count, np.float32(0.0), out=gate)
        down &= gate
        np.subtract(up, down, out=spike, dtype=np.float32)
        np.multiply(spike, threshold, out=out[t])
        np.subtract(v, out[t], out=v)
        count += spike
        taken_back.add(down)
    return out, count.astype(np.int32) + 2 * taken_back.total()


def ugo_hidden(inputs: list[np.ndarray], attrs: dict[str, Any], T: int) -> tuple[np.ndarray, np.ndarray]:
    """The hidden layer of a UGO subnet from the sum of its shared input: counts n(sum, steps) at each step,
    output the change times the threshold. A step whose count changes is one (graded) spike."""
    x = inputs[0]
    threshold, fire_level, knots = (np.asarray(a, np.float32) for a in inputs[1:4])
    steps = np.broadcast_to(np.asarray(inputs[4], np.float32).reshape(-1), (T,))  # a StepCount's [T, 1]
    lift = threshold - fire_level
    zero = np.float32(0.0)

    def count(total: np.ndarray, t: np.float32) -> np.ndarray:
        n = total + (lift - t * knots)
        n /= threshold
        np.floor(n, out=n)
        np.maximum(n, zero, out=n)
        return np.minimum(n, t, out=n)

    total = np.zeros(x.shape[1:], np.float32)
    before = count(total, zero)
    shape = (T,) + np.broadcast_shapes(total.shape, knots.shape)
    out = np.empty(shape, np.float32)
    fired = np.empty(shape[1:], np.bool_)
    events = _Counts(shape[1:], T)
    for t in range(T):
        np.add(total, x[t if len(x) > 1 else 0], out=total)
        now = count(total, np.float32(steps[t]))
        np.subtract(now, before, out=out[t])
        np.not_equal(out[t], zero, out=fired)
        out[t] *= threshold
        events.add(fired)
        before = now
    return out, events.total()


class _Counts:
    """Per-neuron event counts over a window, added from boolean masks: in uint8 (a quarter of int32's memory
    traffic) while the window is under 256 steps."""

    def __init__(self, shape: tuple, T: int):
        self.narrow = T < 256
        self.values = np.zeros(shape, np.uint8 if self.narrow else np.int32)

    def add(self, mask: np.ndarray) -> None:
        if self.narrow:
            np.add(self.values, mask.view(np.uint8), out=self.values)
        else:
            self.values += mask

    def total(self) -> np.ndarray:
        return self.values.astype(np.int32)


def running_sum(x: np.ndarray, T: int, reuse_input: bool = False) -> np.ndarray:
    """acc[t] = x[0] + ... + x[t] added in step order (x of length 1 repeats). A loop of whole-array adds:
    np.cumsum over the leading axis is about 15x slower."""
    acc = _output_for(x, T, reuse_input)
    if acc is not x:
        acc[0] = x[0]
    for t in range(1, T):
        np.add(acc[t - 1], x[t if len(x) > 1 else 0], out=acc[t])
    return acc


def maxpool_neuron(inputs: list[np.ndarray], attrs: dict[str, Any], T: int,
                   pool: Callable[[list, dict], list] | None = None,
                   reuse_input: bool = False) -> tuple[np.ndarray, None]:
    """`pool`: the MaxPool kernel of the folded [T * B, ...] sums (default NumPy's; the engine passes a faster one)."""
    x = inputs[0]
    acc = running_sum(x, T, reuse_input)
    pooled = (pool or KERNELS["MaxPool"])([acc.reshape((-1,) + acc.shape[2:])], attrs)[0]
    pooled = pooled.reshape((T, x.shape[1]) + pooled.shape[1:])
    out = np.empty_like(pooled)
    out[0] = pooled[0]
    np.subtract(pooled[1:], pooled[:-1], out=out[1:])
    return out, None


def _over_window(x: np.ndarray, T: int) -> np.ndarray:
    return np.broadcast_to(x, (T,) + x.shape[1:]) if len(x) == 1 else x


def _steps(T: int, rank: int) -> np.ndarray:
    """1, 2, ..., T as float32, shaped to broadcast over [T, ...] of the given per-step rank."""
    return np.arange(1, T + 1, dtype=np.float32).reshape((T,) + (1,) * rank)


def running_mean(inputs: list[np.ndarray], attrs: dict[str, Any], T: int) -> tuple[np.ndarray, None]:
    x = inputs[0]
    return running_sum(x, T) / _steps(T, x.ndim - 1), None


def rate_correct(inputs: list[np.ndarray], attrs: dict[str, Any], T: int) -> tuple[np.ndarray, None]:
    x = _over_window(inputs[0], T)
    total = x * _steps(T, x.ndim - 1)
    out = np.empty_like(total)
    out[0] = total[0]
    np.subtract(total[1:], total[:-1], out=out[1:])
    return out, None


def _spike_product(op: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> NeuronKernel:
    def kernel(inputs: list[np.ndarray], attrs: dict[str, Any], T: int,
               product: Callable[[list, dict], list] | None = None) -> tuple[np.ndarray, None]:
        """`product`: the kernel of the products [x, y] -> [x op y] over [T, B, ...] (default NumPy's `op`; the
        engine passes onnxruntime's MatMul, whose sums round as in the stepped file and OpenBLAS's do not)."""
        a, b = (np.asarray(v, np.float32) for v in inputs[:2])
        sums = [running_sum(a, T), running_sum(b, T)]
        total = op(*sums) if product is None else product(sums, attrs)[0]
        total *= np.float32(1.0) / _steps(T, total.ndim - 1)  # as the body: a Mul by Reciprocal(step)
        return _increments(total), None
    return kernel


def _spike_max(op: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> NeuronKernel:
    """SpikeMax / SpikeMin: the increase, step by step, of op of the running sums of both inputs."""
    def kernel(inputs: list[np.ndarray], attrs: dict[str, Any], T: int) -> tuple[np.ndarray, None]:
        a, b = (np.asarray(v, np.float32) for v in inputs[:2])
        return _increments(op(running_sum(a, T), running_sum(b, T))), None
    return kernel


def _spike_reduce(op: Callable[..., np.ndarray]) -> NeuronKernel:
    """SpikeReduceMax / SpikeReduceMin over the attribute's axes of one step (axis 0 is time here)."""
    def kernel(inputs: list[np.ndarray], attrs: dict[str, Any], T: int) -> tuple[np.ndarray, None]:
        sums = running_sum(np.asarray(inputs[0], np.float32), T)
        axes = tuple(int(a) + 1 for a in attrs["axes"])
        return _increments(op(sums, axis=axes, keepdims=bool(attrs.get("keepdims", 1)))), None
    return kernel


def _increments(totals: np.ndarray) -> np.ndarray:
    out = np.empty_like(totals)
    out[0] = totals[0]
    np.subtract(totals[1:], totals[:-1], out=out[1:])
    return out


def step_count(inputs: list[np.ndarray], attrs: dict[str, Any], T: int) -> tuple[np.ndarray, None]:
    """Steps with drive so far, [T, 1]: 1, 2, .. up to attrs["driven_steps"] (the input steps; default every
    step), then constant through the drain steps."""
    driven = attrs.get("driven_steps", T)
    return np.minimum(np.arange(1, T + 1), driven).astype(np.float32).reshape(T, 1), None


def fs_neuron(inputs: list[np.ndarray], attrs: dict[str, Any], T: int) -> tuple[np.ndarray, np.ndarray]:
    """Few-spikes neuron: row min(t, last) of the tables at step t; rows whose thresholds are all the largest
    float32 (before and after the firing steps) only integrate."""
    x = inputs[0]
    thresholds, resets, weights = (np.asarray(a, np.float32) for a in inputs[1:4])
    last = int(np.asarray(inputs[4]).reshape(-1)[0])
    firing = ~np.all(thresholds.reshape(len(thresholds), -1) == np.float32(FS_SILENT_THRESHOLD), axis=1)
    out = np.zeros((T,) + x.shape[1:], np.float32)
    v = np.zeros(x.shape[1:], np.float32)
    fired = np.empty(v.shape, np.bool_)
    taken = np.empty_like(v)
    counts = _Counts(v.shape, T)
    for t in range(T):
        np.add(v, x[t if len(x) > 1 else 0], out=v)
        row = min(t, last)
        if not firing[row]:
            continue
        np.greater_equal(v, thresholds[row], out=fired)
        np.multiply(fired, weights[row], out=out[t])
        np.multiply(fired, resets[row], out=taken)
        np.subtract(v, taken, out=v)
        counts.add(fired)
    return out, counts.total()


def first_step(inputs: list[np.ndarray], attrs: dict[str, Any], T: int) -> tuple[np.ndarray, None]:
    """1 at the first step, then 0, [T, 1]."""
    out = np.zeros((T, 1), np.float32)
    out[0] = 1.0
    return out, None


def running_sum_kernel(inputs: list[np.ndarray], attrs: dict[str, Any], T: int) -> tuple[np.ndarray, None]:
    return running_sum(np.asarray(inputs[0], np.float32), T), None


def release(inputs: list[np.ndarray], attrs: dict[str, Any], T: int) -> tuple[np.ndarray, None]:
    """X at step `at` only."""
    x = np.asarray(inputs[0], np.float32)
    at = int(np.asarray(inputs[1]).reshape(-1)[0])
    out = np.zeros((T,) + x.shape[1:], np.float32)
    if 0 <= at < T:
        out[at] = x[at if len(x) > 1 else 0] * np.float32(1.0)
    return out, None


REUSING = frozenset({"IFNeuron", "SignedIFNeuron", "MaxPoolNeuron"})  # kernels that take reuse_input
NEURON_KERNELS: dict[str, NeuronKernel] = {
    "IFNeuron": if_neuron,
    "SignedIFNeuron": signed_if_neuron,
    "UGOHidden": ugo_hidden,
    "MaxPoolNeuron": maxpool_neuron,
    "RunningMean": running_mean,
    "RateCorrect": rate_correct,
    "SpikeMatMul": _spike_product(np.matmul),
    "SpikeMul": _spike_product(np.multiply),
    "StepCount": step_count,
    "SpikeMax": _spike_max(np.maximum),
    "SpikeMin": _spike_max(np.minimum),
    "SpikeReduceMax": _spike_reduce(np.max),
    "SpikeReduceMin": _spike_reduce(np.min),
    "FSNeuron": fs_neuron,
    "FirstStep": first_step,
    "RunningSum": running_sum_kernel,
    "Release": release,
}

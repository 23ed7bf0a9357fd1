"""How calibration reads each observed tensor out of the onnxruntime session.

A tensor with at most SAMPLE_ABOVE values per channel in a batch is an output as it is, and every value is
reduced and binned in NumPy. A larger one never leaves onnxruntime whole: the graph computes, per sample and
channel, its minimum, maximum and sum over every value, and a subsample for the histogram:

- reductions: ReduceMin, ReduceMax and ReduceSum over axes 2... (pooling on onnxruntime's blocked layout
  instead, GlobalMaxPool / GlobalAveragePool / a depthwise Conv of weight -1, measured slower);
- subsample: every s-th value of the whole batch flattened (Reshape [-1], Slice with step s), s the smallest
  prime from 3 that does not divide C * (values per channel of a sample) and keeps about batch * that / s
  values per channel within SAMPLE_ABOVE. s and C * H * W being coprime, consecutive samples of the batch
  are sampled at shifted positions, so the subsample spreads over every channel and position instead of
  repeating one grid (on examples/fmnist_cnn's first layer, a stride-5 grid of rows and columns was 5.7%
  off the exact 99th percentile, the flat subsample of as many values 0.09%).

Also in the graph: the sum of squares per sample and channel (ReduceSumSquare), and the candidates for the
exact top values (stats.TopFold): a graph input `<tensor>.calibration.floor` [1, C, 1, ...] holds each
channel's floor; the (sample, channel) blocks whose maximum passes it are gathered (NonZero, Gather), and
Greater + Compress return only their values above it with their channel ids, so few values per batch are
selected, and leave onnxruntime, once the floors have risen.

Ranks below 3, tensors of unknown shape, other dtypes than float32 and tensors of more channels than
ChannelFold keeps fine counts for are always output whole.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from rewrites.calibration.stats import CHANNEL_BINS, FINE_STATE_LIMIT, Reductions
from rewrites.emit import Emitter, reduce

# Values per channel of one batch above which a tensor's histogram is subsampled, to about this many. Binning
# costs about 4 ns per value in NumPy against about 1 ns of inference, but on examples/fmnist_cnn 2**12 moved
# the 99th percentiles by up to 0.3% and the SNN's accuracy at T = 32 from 91.35% to 91.20% (ANN 92.2%;
# tests/cli/test_example.py allows 1 point): the default keeps the example exact at batch 64.
SAMPLE_ABOVE = 2**16


@dataclass
class Observed:
    """One observed tensor and the session outputs that carry it: [tensor] when whole, else its per-sample,
    per-channel [minimum, maximum, sum] ([N, C] each) and the flat subsample."""
    name: str
    outputs: list[str]
    channels: int = 0
    per_sample: int = 0  # values per channel in one sample (sampled tensors)
    step: int = 0  # subsampling stride, 0 when whole
    floor: str = ""  # the graph input of the candidates' floors (sampled tensors)
    rank: int = 0
    _ids: dict = field(default_factory=dict, repr=False)

    @property
    def sampled(self) -> bool:
        return self.step > 0

    def channel_ids(self, batch: int) -> np.ndarray:
        """The channel of each value of the subsample of a batch of `batch` samples."""
        if batch not in self._ids:
            flat = np.arange(0, batch * self.channels * self.per_sample, self.step)
            self._ids = {batch: (flat // self.per_sample) % self.channels, **self._ids}
        return self._ids[batch]

    def fold_args(self, values: list[np.ndarray]) -> tuple[np.ndarray, Reductions, np.ndarray]:
        """The subsample, the per-channel reductions and the subsample's channel ids of a batch, from this
        tensor's outputs: the arguments of ChannelFold.update."""
        low, high, total, sample = values[:4]
        n = len(low)
        return sample, (low.min(axis=0), high.max(axis=0), total.astype(np.float64).sum(axis=0),
                        n * self.per_sample), self.channel_ids(n)


def _static(shape) -> bool:
    return shape is not None and len(shape) >= 3 and all(isinstance(d, int) and d > 0 for d in shape[1:])


def _primes():
    n = 3
    while True:
        if all(n % p for p in range(3, math.isqrt(n) + 1, 2)):
            yield n
        n += 2


def _step(per_channel: int, period: int) -> int:
    """The smallest prime s >= 3 that does not divide `period` with per_channel / s <= SAMPLE_ABOVE."""
    for s in _primes():
        if period % s and per_channel <= SAMPLE_ABOVE * s:
            return s


def _candidates(emit: Emitter, x: gs.Tensor, shape: list[int], floor: gs.Variable, opset: int, var
                ) -> list[gs.Variable]:
    """The values of x above their channel's floor, in x's flat order, and their channel ids. Only the
    blocks (rows along the last axis; for rank 3, the values of one sample and channel) whose maximum passes
    the floor are gathered and compared: selecting over a mask costs about 2 ns a value in onnxruntime
    against 0.1 for a reduction, and once the floors have risen few rows hold a candidate. A row whose
    maximum is at most the floor holds none, so the candidates are exactly those of a test of every value."""
    channels = shape[1]
    per_block = shape[-1] if len(shape) >= 4 else math.prod(shape[2:])
    blocks_per_channel = math.prod(shape[2:]) // per_block
    minus_one = np.array([-1], np.int64)
    floors = emit("Reshape", [floor, minus_one], "floors")
    rows = emit("Reshape", [x, np.array([-1, per_block], np.int64)], "rows")
    high = reduce(emit, "ReduceMax", rows, [1], "row_max", opset, keepdims=0)
    row_channel = np.arange(channels, dtype=np.int64).repeat(blocks_per_channel)  # per row of one sample
    row_floor = emit("Gather", [floors, row_channel], "row_floor", axis=0)
    hit = emit("Greater", [emit("Reshape", [high, np.array([-1, channels * blocks_per_channel], np.int64)],
                                "row_max_by_sample"), row_floor], "hit", out=var("hit", np.bool_))
    hit_flat = emit("Reshape", [hit, minus_one], "hit_flat", out=var("hit_flat", np.bool_))
    found = emit("NonZero", [hit_flat], "found", out=var("found", np.int64))
    blocks = emit("Reshape", [found, minus_one], "blocks", out=var("blocks", np.int64))
    picked = emit("Gather", [rows, blocks], "picked", axis=0)
    channel = emit("Mod", [emit("Div", [blocks, np.array(blocks_per_channel, np.int64)], "block_of_channel",
                                out=var("block_of_channel", np.int64)), np.array(channels, np.int64)],
                   "channel", out=var("channel", np.int64))
    level = emit("Reshape", [emit("Gather", [floors, channel], "level", axis=0), np.array([-1, 1], np.int64)],
                 "level_column")
    above = emit("Greater", [picked, level], "above", out=var("above", np.bool_))
    mask = emit("Reshape", [above, minus_one], "mask", out=var("mask", np.bool_))
    top = emit("Compress", [emit("Reshape", [picked, minus_one], "picked_flat"), mask], "top")
    ids = emit("Cast", [emit("Reshape", [channel, np.array([-1, 1], np.int64)], "channel_column",
                             out=var("channel_column", np.int64))], "channel_ids",
               out=var("channel_ids", np.int32), to=onnx.TensorProto.INT32)
    spread = emit("Expand", [ids, emit("Shape", [picked], "picked_shape", out=var("picked_shape", np.int64))],
                  "ids", out=var("ids", np.int32))
    flat_ids = emit("Reshape", [spread, minus_one], "flat_ids", out=var("flat_ids", np.int32))
    return [top, emit("Compress", [flat_ids, mask], "top_ids", out=var("top_ids", np.int32))]


def observe(graph: gs.Graph, tensors: list[str], batch_size: int, bins: int) -> list[Observed]:
    """Add to the graph the reductions and subsample of every tensor above SAMPLE_ABOVE values per channel
    in a batch of `batch_size`; return how each tensor is read (`bins`: of the whole-tensor histograms)."""
    known = graph.tensors()
    fine = bins & (bins - 1) == 0 and bins >= CHANNEL_BINS  # ChannelFold's fine counts, which a flat sample needs
    plan = []
    for name in tensors:
        x = known.get(name)
        shape = None if x is None else x.shape
        if (x is None or not _static(shape) or np.dtype(x.dtype or np.float32) != np.float32 or not fine
                or shape[1] * bins > FINE_STATE_LIMIT or batch_size * math.prod(shape[2:]) <= SAMPLE_ABOVE):
            plan.append(Observed(name, [name]))
            continue
        channels, per_sample = shape[1], math.prod(shape[2:])
        step = _step(batch_size * per_sample, channels * per_sample)
        emit = Emitter(graph, f"{name}.calibration")
        axes = list(range(2, len(shape)))
        outs = [reduce(emit, op, x, axes, op.lower(), graph.opset, keepdims=0)
                for op in ("ReduceMin", "ReduceMax", "ReduceSum")]
        flat = emit("Reshape", [x, np.array([-1], np.int64)], "flat")
        outs.append(emit("Slice", [flat, np.array([0], np.int64), np.array([2**62], np.int64),
                                   np.array([0], np.int64), np.array([step], np.int64)], "sample"))
        outs.append(reduce(emit, "ReduceSumSquare", x, axes, "sumsq", graph.opset, keepdims=0))
        broadcast = [1, channels] + [1] * (len(shape) - 2)
        floor = gs.Variable(f"{name}.calibration.floor", np.float32, broadcast)
        graph.inputs.append(floor)
        def var(label, dtype):
            return gs.Variable(f"{name}.calibration.{label}.out", dtype)
        outs += _candidates(emit, x, shape, floor, graph.opset, var)
        plan.append(Observed(name, [o.name for o in outs], channels, per_sample, step, floor.name, len(shape)))
    return plan

"""Streaming per-tensor statistics and the calibration file that carries them.

The histogram covers [-R, R) with a fixed number of equal bins. When a batch holds a value outside the
range, R doubles and adjacent bins merge in pairs, so earlier counts stay exact and memory is bounded by the
bin count, never by the amount of data. A percentile is read from the cumulative counts, exact to one bin.

Count, extrema and sum always cover every value. The histogram may cover a deterministic subsample of
large tensors (rewrites/calibration/observe.py); it then holds `binned` < `count` values, written as
"binned" in the file's histogram (absent: every value), and percentiles are read over those.

High percentiles are exact: each tensor (and channel) also keeps its largest values (TopValues), as many as
the lowest exact percentile needs over the whole data set (sized before the pass from its length), capped at
TOP_LIMIT. The q-th percentile is numpy's method='higher': the value at ascending index ceil(q/100 (N - 1)),
i.e. the (N - that index)-th largest. Where that rank is past what was kept, the histogram answers (within
one bin width) and `exact(q)` says so.
"""
from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rewrites.config import DEFAULT_NORM, NormSpec
from ground.errors import Ann2SnnError, CalibrationError, InputFileError

SCHEMA = "ann2snn.calibration"
SCHEMA_VERSION = 2  # 2: sum of squares and exact top values; 1 (histograms only) still reads
READS = (1, 2)
DEFAULT_BINS = 4096
CHANNEL_BINS = 512


@dataclass
class TensorStats:
    name: str
    bins: int = DEFAULT_BINS
    count: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf
    total: float = 0.0
    half_range: float = 0.0  # R; 0 until the first non-zero value
    counts: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    channel_axis: int | None = None  # per-channel statistics along this axis, when collected
    channels: list[TensorStats] | None = field(default=None, repr=False)
    binned: int | None = None  # values in the histogram; None: count (every value)
    total_sq: float = 0.0  # sum of squares (0 in version-1 files)
    top: TopValues | None = field(default=None, repr=False)  # the largest values, for exact percentiles

    def __post_init__(self):
        if self.bins % 4:
            raise ValueError("bins must be a multiple of 4")
        if self.counts is None:
            self.counts = np.zeros(self.bins, np.int64)
        if self.binned is None:
            self.binned = self.count

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(max(self.total_sq / self.count - self.mean ** 2, 0.0)) if self.count else 0.0

    def rank(self, q: float) -> int:
        """The 1-based rank from the top of the q-th percentile (numpy method='higher')."""
        return self.count - math.ceil(q / 100.0 * (self.count - 1))

    def exact(self, q: float) -> bool:
        """Whether percentile(q) is exact (read from the kept top values), not from the histogram."""
        return q >= 100.0 or (self.top is not None and self.count > 0 and self.rank(q) <= self.top.exact_rank)

    @property
    def bin_width(self) -> float:
        return 2.0 * self.half_range / self.bins

    def update_channels(self, values: np.ndarray, axis: int) -> None:
        """Fold a batch into per-channel statistics (channel `axis` of `values`) only."""
        self.update(values, axis, whole=False)

    def update(self, values: np.ndarray, channel_axis: int | None = None, whole: bool = True,
               exact: Reductions | None = None) -> None:
        """Fold a batch in: the whole tensor unless `whole` is False, and each channel along `channel_axis`
        when given. All channels are reduced and binned in one vectorised pass. With `exact` (per channel
        min, max, sum and values per channel of the whole batch), `values` is a subsample of the batch: only
        it is binned, the rest comes from `exact`."""
        x = np.asarray(values)
        if x.size == 0 and exact is None:
            return
        by_channel = _by_channel(x, channel_axis)
        if exact is None:
            lows, highs, sums = _channel_reductions(by_channel, self.name)
            per_channel = by_channel.size // max(by_channel.shape[1], 1)
        else:
            lows, highs, sums, per_channel = _checked(exact, self.name)
        if channel_axis is None:
            _fold([self], by_channel, lows, highs, sums, per_channel)
            return
        if self.channels is None:
            self.channel_axis = channel_axis
            self.channels = [TensorStats(f"{self.name}[{c}]", CHANNEL_BINS) for c in range(by_channel.shape[1])]
        elif len(self.channels) != by_channel.shape[1]:
            raise CalibrationError(f"tensor '{self.name}' changed its channel count during calibration")
        if not whole:
            _fold(self.channels, by_channel, lows, highs, sums, per_channel)
            return
        _add_scalars([self], lows.min(keepdims=True), highs.max(keepdims=True), sums.sum(keepdims=True),
                     per_channel * len(self.channels))
        _add_scalars(self.channels, lows, highs, sums, per_channel)
        fine = _fine_counts(by_channel, self, self.channels)
        if fine is None:  # bins or ranges that do not nest: bin twice
            _add_counts([self], by_channel.reshape(1, 1, -1))
            _add_counts(self.channels, by_channel)
            return
        for t, row in zip(self.channels, fine.reshape(len(self.channels), self.channels[0].bins, -1).sum(axis=2)):
            t.counts += row
            t.binned += by_channel.shape[0] * by_channel.shape[2]
        self.counts += _merge_to_whole(fine, [c.half_range for c in self.channels], self.half_range)
        self.binned += by_channel.size

    def _grow(self, magnitude: float) -> None:
        if magnitude == 0.0 or magnitude < self.half_range:
            return
        if self.half_range == 0.0:
            self.half_range = 2.0 ** math.ceil(math.log2(magnitude) + 1e-12)
            if self.half_range <= magnitude:
                self.half_range *= 2.0
            return
        while self.half_range <= magnitude:
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            quarter = self.bins // 4
            self.counts = np.zeros(self.bins, np.int64)
            self.counts[quarter:quarter + merged.size] = merged
            self.half_range *= 2.0

    def percentile(self, q: float) -> float:
        """The q-th percentile (0 < q <= 100) of all values seen, within one bin width."""
        if self.count == 0:
            raise CalibrationError(f"tensor '{self.name}' has no calibration samples")
        if q < 100.0 and self.exact(q):
            return float(self.top.values[self.rank(q) - 1])
        if q >= 100.0 or self.half_range == 0.0 or self.binned == 0:
            return self.maximum if q >= 100.0 else min(max(0.0, self.minimum), self.maximum)
        target = q / 100.0 * self.binned
        cumulative = np.cumsum(self.counts)
        i = int(np.searchsorted(cumulative, target, side="left"))
        before = cumulative[i - 1] if i > 0 else 0
        inside = self.counts[i]
        fraction = (target - before) / inside if inside else 1.0
        value = -self.half_range + (i + fraction) * self.bin_width
        return float(min(max(value, self.minimum), self.maximum))

    def to_json(self) -> dict:
        nonzero = np.flatnonzero(self.counts)
        body = {
            "count": self.count, "min": self.minimum, "max": self.maximum, "mean": self.mean,
            "histogram": {"bins": self.bins, "range": [-self.half_range, self.half_range],
                          "nonzero_bins": nonzero.tolist(), "counts": self.counts[nonzero].tolist()},
        }
        if self.binned != self.count:
            body["histogram"]["binned"] = self.binned
        body["sum_sq"] = self.total_sq
        if self.top is not None:
            body["top"] = self.top.to_json()
        if self.channels is not None:
            body["channels"] = {"axis": self.channel_axis, "stats": [c.to_json() for c in self.channels]}
        return body

    @classmethod
    def from_json(cls, name: str, data: dict) -> TensorStats:
        """Read one tensor's statistics, checking every field a hand edit could break (ValueError)."""
        hist = data["histogram"]
        bins = _integer(hist["bins"], "bins")
        if not 4 <= bins <= MAX_BINS or bins % 4:
            raise ValueError(f"tensor '{name}': {bins} bins (a multiple of 4 up to {MAX_BINS} expected)")
        index = np.asarray(hist["nonzero_bins"])
        values = np.asarray(hist["counts"])
        if index.ndim != 1 or index.shape != values.shape or (index.size and (
                index.dtype.kind not in "iu" or values.dtype.kind not in "iu")):
            raise ValueError(f"tensor '{name}': nonzero_bins and counts must be integer lists of one length")
        if index.size and (index.min() < 0 or index.max() >= bins or values.min() < 0):
            raise ValueError(f"tensor '{name}': bin index outside 0..{bins - 1} or a negative count")
        counts = np.zeros(bins, np.int64)
        counts[index.astype(np.int64)] = values.astype(np.int64)
        count = _integer(data["count"], "count")
        binned = _integer(hist.get("binned", count), "binned")
        if binned > count:
            raise ValueError(f"tensor '{name}': binned {binned} is more than count {count}")
        if counts.sum() != binned:
            raise ValueError(f"tensor '{name}': histogram counts do not add up to "
                             f"{'binned' if 'binned' in hist else 'count'}")
        minimum, maximum, mean = (_finite(data[k], k) for k in ("min", "max", "mean"))
        half_range = _finite(hist["range"][1], "range")
        if (count and minimum > maximum) or half_range < 0:
            raise ValueError(f"tensor '{name}': min > max or a negative range")
        stats = cls(name, bins, count, minimum, maximum, mean * count, half_range, counts, binned=binned,
                    total_sq=_finite(data.get("sum_sq", 0.0), "sum_sq"))
        if "top" in data:
            stats.top = TopValues.from_json(name, data["top"], count)
        if "channels" in data:
            stats.channel_axis = _integer(data["channels"]["axis"], "axis")
            stats.channels = [cls.from_json(f"{name}[{c}]", d) for c, d in enumerate(data["channels"]["stats"])]
        return stats


MAX_BINS = 2**20  # a histogram read from a file is allocated, so its size is bounded

# Per channel of a whole batch, computed elsewhere (in the onnxruntime graph): minimum, maximum, sum (each [C])
# and the number of values per channel.
Reductions = tuple[np.ndarray, np.ndarray, np.ndarray, int]


def _input_shapes(value) -> dict[str, list]:
    """The recorded input shapes: {name: [batch name, positive ints...]}; ValueError otherwise."""
    if not isinstance(value, dict):
        raise ValueError("input_shapes is not an object")
    for name, dims in value.items():
        if not isinstance(dims, list) or not dims or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims[1:]):
            raise ValueError(f"input_shapes[{name!r}] is not a list of positive dims")
    return {str(k): list(v) for k, v in value.items()}


def _integer(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, not {value!r}")
    return value


def _finite(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, not {value!r}")
    return float(value)


def _fold(targets: list[TensorStats], by_channel: np.ndarray, lows: np.ndarray, highs: np.ndarray,
          sums: np.ndarray, per_channel: int) -> None:
    """Add the values [A, C, B] (all `per_channel` values of each channel, or a subsample) to C statistics:
    target c gets by_channel[:, c]."""
    _add_scalars(targets, lows, highs, sums, per_channel)
    _add_counts(targets, by_channel)


def _add_scalars(targets: list[TensorStats], lows: np.ndarray, highs: np.ndarray, sums: np.ndarray,
                 count: int) -> None:
    """Count, extrema and sum of each target, then its range grown to hold the new extrema."""
    for t, lo, hi, total in zip(targets, lows.tolist(), highs.tolist(), sums.tolist()):
        t.count += count
        t.minimum = min(t.minimum, lo)
        t.maximum = max(t.maximum, hi)
        t.total += total
        t._grow(max(abs(lo), abs(hi)))


def _add_counts(targets: list[TensorStats], by_channel: np.ndarray) -> None:
    """Histogram of channel c of [A, C, B] into target c (equal bin counts): one bincount for all."""
    bins = targets[0].bins
    index = _bin_index(by_channel, np.array([t.half_range for t in targets]), bins)
    counts = np.bincount(index, minlength=len(targets) * bins).reshape(len(targets), bins)
    for t, row in zip(targets, counts):
        t.counts += row
        t.binned += by_channel.shape[0] * by_channel.shape[2]


def _fine_counts(by_channel: np.ndarray, whole: TensorStats, channels: list[TensorStats]) -> np.ndarray | None:
    """Counts [C, whole.bins] of each channel over its own range [-R_c, R_c) in whole.bins bins, or None
    where that grid does not nest in both the channel's and the whole tensor's bins. Both histograms are then
    sums of these fine bins, so every value is binned once instead of twice."""
    big, small = whole.bins, channels[0].bins
    ranges = np.array([c.half_range for c in channels])
    if big & (big - 1) or small & (small - 1) or big < small or (ranges > whole.half_range).any():
        return None
    return np.bincount(_bin_index(by_channel, ranges, big), minlength=len(channels) * big).reshape(-1, big)


def _merge_to_whole(fine: np.ndarray, ranges: list[float], half_range: float) -> np.ndarray:
    """The whole tensor's histogram from fine channel counts: with R_c = R / 2**k, fine bin j of channel c
    is whole bin floor((j - bins/2) / 2**k) + bins/2 (exact: all ranges are powers of two)."""
    bins = fine.shape[1]
    half = bins // 2
    out = np.zeros(bins, np.int64)
    shifts = [None if r == 0.0 else round(math.log2(half_range / r)) for r in ranges]
    for k in sorted(set(shifts), key=lambda v: -1 if v is None else v):
        summed = fine[[i for i, v in enumerate(shifts) if v == k]].sum(axis=0)
        if k is not None and 2**k <= half:
            merged = summed.reshape(-1, 2**k).sum(axis=1)
            out[half - merged.size // 2:half + merged.size // 2] += merged
        else:  # the whole channel range lies within the two bins around zero
            out[half - 1] += summed[:half].sum()
            out[half] += summed[half:].sum()
    return out


def _by_channel(x: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """x as [A, C, B] with the channels on axis 1 (one channel holding everything without an axis)."""
    if channel_axis is None:
        return x.reshape(1, 1, -1)
    axis = channel_axis % x.ndim
    return x.reshape(math.prod(x.shape[:axis]), x.shape[axis], -1)


def _channel_reductions(by_channel: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel of [A, C, B]: minimum, maximum and sum (row sums in the input's precision, pairwise and
    exact enough for a mean, added up in float64); NaN or infinity is a CalibrationError."""
    lows = by_channel.min(axis=2).min(axis=0)
    highs = by_channel.max(axis=2).max(axis=0)
    if not (np.isfinite(lows).all() and np.isfinite(highs).all()):
        raise CalibrationError(f"tensor '{name}' holds NaN or infinite values during calibration",
                               "check the model and the data")
    return lows, highs, by_channel.sum(axis=2).astype(np.float64).sum(axis=0)


def _checked(exact: Reductions, name: str) -> Reductions:
    """Reductions as float64 arrays; NaN or infinity (a NaN reaches the sum) is the CalibrationError of
    _channel_reductions."""
    lows, highs, sums = (np.asarray(v, np.float64).reshape(-1) for v in exact[:3])
    if not (np.isfinite(lows).all() and np.isfinite(highs).all() and np.isfinite(sums).all()):
        raise CalibrationError(f"tensor '{name}' holds NaN or infinite values during calibration",
                               "check the model and the data")
    return lows, highs, sums, int(exact[3])


def _bin_index(by_channel: np.ndarray, half_ranges: np.ndarray, bins: int) -> np.ndarray:
    """Flat bin index c * bins + floor((x + R_c) / w_c) of each value x of channel c in [A, C, B], with
    w_c = 2 R_c / bins; a channel with R_c = 0 holds only zeros, which go to the middle bin.
    When R_c and bins are powers of two (_grow makes R_c one) x * bins / (2 R_c) is exact in float32, so the
    index is floor of that plus bins / 2, in float32: the bins of the float64 formula, except that negative
    values within R_c * 2**-29 of zero land just below zero, where float64 rounded x + R_c up to R_c."""
    channels = by_channel.shape[1]
    offsets = bins * np.arange(channels)
    safe = np.where(half_ranges > 0, half_ranges, 1.0)
    scale = np.where(half_ranges > 0, bins / (2.0 * safe), 0.0)
    if (by_channel.dtype == np.float32 and bins & (bins - 1) == 0 and channels * bins < 2**24
            and np.array_equal(scale.astype(np.float32).astype(np.float64), scale)):
        t = np.multiply(by_channel, scale.astype(np.float32)[None, :, None])
        np.floor(t, out=t)
        t += (offsets + bins // 2).astype(np.float32)[None, :, None]
        return t.astype(np.intp).reshape(-1)
    width = (2.0 * safe / bins)[None, :, None]
    index = np.floor((by_channel.astype(np.float64) + safe[None, :, None]) / width).astype(np.intp)
    np.clip(index, 0, bins - 1, out=index)
    index[:, half_ranges == 0] = bins // 2
    index += offsets[None, :, None]
    return index.reshape(-1)



def _flat_bin_index(values: np.ndarray, channel_ids: np.ndarray, half_ranges: np.ndarray, bins: int) -> np.ndarray:
    """_bin_index of a flat sample whose value i belongs to channel channel_ids[i]: the same bins."""
    safe = np.where(half_ranges > 0, half_ranges, 1.0)
    scale = np.where(half_ranges > 0, bins / (2.0 * safe), 0.0)
    offsets = (bins * np.arange(len(half_ranges)) + bins // 2)[channel_ids]
    if (values.dtype == np.float32 and bins & (bins - 1) == 0 and len(half_ranges) * bins < 2**24
            and np.array_equal(scale.astype(np.float32).astype(np.float64), scale)):
        t = values * scale.astype(np.float32)[channel_ids]
        np.floor(t, out=t)
        return t.astype(np.intp) + offsets
    index = np.floor(values.astype(np.float64) * scale[channel_ids]).astype(np.intp)
    np.clip(index, -(bins // 2), bins // 2 - 1, out=index)
    return index + offsets


TOP_LIMIT = 2**16  # top values kept per tensor (its channels share as many): 256 KiB each
TOP_MARGIN = 1.25  # kept past the rank needed, so shards merged stay exact (their floors differ)
EXACT_FROM = 99.0  # the lowest percentile kept exact by default (tune tries 99, 99.9, 99.99)


def top_capacity(values: int, exact_from: float, limit: int = TOP_LIMIT) -> int:
    """How many top values to keep of `values` for percentiles >= exact_from to be exact."""
    want = math.ceil((1.0 - exact_from / 100.0) * values * TOP_MARGIN) + 16
    return max(1, min(want, limit, values))


@dataclass
class TopValues:
    """The largest values of a tensor, sorted descending. Values at or below `floor` may be missing (-inf:
    none is), so the ones at or above it are the exact top `exact_rank`."""
    values: np.ndarray  # float32, descending
    floor: float = -math.inf
    capacity: int = 0

    @property
    def exact_rank(self) -> int:
        if self.floor == -math.inf:
            return len(self.values)
        return int(np.count_nonzero(self.values >= self.floor))

    def to_json(self) -> dict:
        return {"capacity": self.capacity, "floor": None if self.floor == -math.inf else self.floor,
                "values": base64.b64encode(self.values.astype("<f4").tobytes()).decode("ascii")}

    @classmethod
    def from_json(cls, name: str, data: dict, count: int) -> TopValues:
        values = np.frombuffer(base64.b64decode(data["values"], validate=True), "<f4").astype(np.float32)
        floor = -math.inf if data.get("floor") is None else _finite(data["floor"], "floor")
        if len(values) > count or (len(values) > 1 and (np.diff(values) > 0).any()) or not np.isfinite(values).all():
            raise ValueError(f"tensor '{name}': top values not finite, descending and at most count")
        return cls(values, floor, _integer(data.get("capacity", len(values)), "capacity"))

    @staticmethod
    def merge(parts: list[TopValues]) -> TopValues:
        """The top values of the union of shards: exact down to the highest floor of the parts."""
        values = np.sort(np.concatenate([p.values for p in parts]))[::-1].astype(np.float32)
        floor = max(p.floor for p in parts)
        capacity = sum(p.capacity for p in parts)
        if floor != -math.inf:
            values = values[values >= floor]
        return TopValues(np.ascontiguousarray(values), floor, capacity)


class TopFold:
    """Streaming top-k of one tensor and (with `channels`) of each channel, fed only candidates: values above
    floors() (computed in the graph). Buffers are trimmed to k when they pass 2k, which raises the floors;
    a floor only ever lies at or below the final k-th largest, so what it rejects is never in the top k."""

    def __init__(self, k: int, channels: int = 0, k_channel: int = 0):
        self.k, self.k_channel, self.channels = k, k_channel, channels
        self.whole: list[np.ndarray] = []
        self.whole_n = 0
        self.tau = -math.inf
        self.vals: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []
        self.ch_n = 0
        self.tau_c = np.full(channels, -np.inf, np.float32)

    def floors(self) -> np.ndarray:
        """Per channel, the value a candidate must pass: [C] (one value without channels), float32."""
        if not self.channels:
            return np.array([self.tau], np.float32)
        return np.minimum(self.tau_c, np.float32(self.tau))

    def update(self, values: np.ndarray, ids: np.ndarray | None) -> None:
        values = values.reshape(-1)
        w = values[values > self.tau] if self.tau != -math.inf else values
        if w.size:
            self.whole.append(w)
            self.whole_n += w.size
            if self.whole_n > 2 * self.k + 1024:
                self._trim_whole()
        if self.channels:
            m = values > self.tau_c[ids]
            if m.any():
                self.vals.append(values[m])
                self.ids.append(ids[m].astype(np.int32, copy=False))
                self.ch_n += int(m.sum())
                if self.ch_n > 2 * self.k_channel * self.channels + 1024:
                    self._trim_channels()

    def update_blocks(self, blocks: np.ndarray) -> None:
        """update() with every value of `blocks` ([N, C, S], channels on axis 1) and its channel: each value
        is tested once against its channel's floor, broadcast, and only the candidates go on (as the graph
        does for the tensors it reads), which leaves the same state as passing every value and id."""
        hit = np.flatnonzero(blocks > self.floors()[None, :, None])
        ids = ((hit // blocks.shape[2]) % self.channels).astype(np.int32)
        self.update(blocks.reshape(-1)[hit], ids)

    def _trim_whole(self) -> None:
        v = np.concatenate(self.whole)
        if v.size > self.k:
            v = np.partition(v, v.size - self.k)[v.size - self.k:]
            self.tau = float(v.min())
        self.whole, self.whole_n = [v], v.size

    def _trim_channels(self) -> None:
        """Keep each channel's k_channel largest (a partition per channel, after a stable grouping by
        channel: radix-sorted where the ids fit 16 bits) and raise the floors of the channels that had more."""
        v, c = np.concatenate(self.vals), np.concatenate(self.ids)
        key = c.astype(np.int16) if self.channels <= np.iinfo(np.int16).max else c
        order = np.argsort(key, kind="stable")
        v = v[order]
        ends = np.cumsum(np.bincount(c, minlength=self.channels))
        kept, kept_ids = [], []
        for channel, (start, end) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends)):
            values = v[start:end]
            if values.size > self.k_channel:
                values = np.partition(values, values.size - self.k_channel)[values.size - self.k_channel:]
                self.tau_c[channel] = values.min()
            kept.append(values)
            kept_ids.append(np.full(values.size, channel, np.int32))
        self.vals, self.ids = [np.concatenate(kept)], [np.concatenate(kept_ids)]
        self.ch_n = len(self.vals[0])

    def finish(self) -> tuple[TopValues, list[TopValues] | None]:
        whole = _top(np.concatenate(self.whole) if self.whole else np.zeros(0, np.float32), self.k,
                     self.tau != -math.inf)
        if not self.channels:
            return whole, None
        v = np.concatenate(self.vals) if self.vals else np.zeros(0, np.float32)
        c = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int32)
        return whole, [_top(v[c == i], self.k_channel, self.tau_c[i] != -np.inf) for i in range(self.channels)]


def _top(values: np.ndarray, k: int, dropped: bool) -> TopValues:
    """The k largest of `values`, descending; floored at the k-th where any value was left out."""
    values = np.sort(values.astype(np.float32, copy=False))[::-1]
    dropped = dropped or values.size > k
    values = np.ascontiguousarray(values[:k])
    return TopValues(values, float(values[-1]) if dropped and values.size else -math.inf, k)


def merge_stats(parts: list[TensorStats]) -> TensorStats:
    """One tensor's statistics over several shards, as one pass over all of them gives (the histogram
    counts alike where each shard was binned at batch boundaries; percentiles exact where the merged top
    values reach)."""
    first = parts[0]
    out = TensorStats(first.name, first.bins)
    for p in parts:
        if p.bins != first.bins:
            raise CalibrationError(f"tensor '{first.name}': shards binned with {p.bins} and {first.bins} bins",
                                   "calibrate the shards with the same --bins")
        _add_scalars([out], np.array([p.minimum]), np.array([p.maximum]), np.array([p.total]), p.count)
        out.total_sq += p.total_sq
    out.half_range = max([out.half_range] + [p.half_range for p in parts])
    for p in parts:
        counts = p.counts.copy()
        r = p.half_range
        while r and r < out.half_range:  # regrid to the common range (powers of two: exact)
            merged = counts.reshape(-1, 2).sum(axis=1)
            counts = np.zeros(p.bins, np.int64)
            counts[p.bins // 4:p.bins // 4 + merged.size] = merged
            r *= 2.0
        out.counts += counts
    out.binned = sum(p.binned for p in parts)
    if all(p.top is not None for p in parts):
        out.top = TopValues.merge([p.top for p in parts])
    if all(p.channels is not None for p in parts):
        out.channel_axis = first.channel_axis
        out.channels = [merge_stats([p.channels[c] for p in parts]) for c in range(len(first.channels))]
    return out


FINE_STATE_LIMIT = 2**20  # fine bins (int64) a ChannelFold may hold for one tensor: 8 MiB


class ChannelFold:
    """Fold batches into one tensor's TensorStats (the whole tensor and each channel along `channel_axis`)
    with the histogram merging deferred to finish(): per channel, count, extrema, sum and `stats.bins` fine
    bins over the channel's own range [-R_c, R_c) (R_c grows like TensorStats._grow, merging fine bins in
    pairs). Both the channel histogram and the whole tensor's are exact sums of the fine bins (all ranges and
    bin counts powers of two), so the counts equal TensorStats.update's over the same batches; a batch costs
    its reductions, one bin index and one bincount, and no per-batch merge.

    Falls back to TensorStats.update per batch where the fine grid does not nest (bins not powers of two),
    where `stats` already holds data, or where the fine state would pass FINE_STATE_LIMIT bins."""

    def __init__(self, stats: TensorStats, channel_axis: int | None):
        self.stats = stats
        self.channel_axis = channel_axis
        self.fine: np.ndarray | None = None  # [C, bins] counts, allocated with the first batch
        self.direct = (stats.count > 0 or stats.channels is not None or stats.bins & (stats.bins - 1) != 0
                       or CHANNEL_BINS & (CHANNEL_BINS - 1) != 0 or stats.bins < CHANNEL_BINS)

    def update(self, values: np.ndarray, exact: Reductions | None = None,
               channel_ids: np.ndarray | None = None) -> None:
        """Fold a batch; with `exact` (see TensorStats.update), `values` is a subsample of it, binned only.
        With `channel_ids` too, `values` is a flat subsample and value i belongs to channel channel_ids[i]
        (one of len(exact[0]) channels; not in the fallback)."""
        x = np.asarray(values)
        if x.size == 0 and exact is None:
            return
        if channel_ids is not None:
            x = x.reshape(1, 1, -1)
        axis = None if self.channel_axis is None or x.ndim == 0 else self.channel_axis % x.ndim
        by_channel = _by_channel(x, axis)
        channels = by_channel.shape[1] if channel_ids is None else len(exact[0])
        if self.fine is None and not self.direct and channels * self.stats.bins > FINE_STATE_LIMIT:
            self.direct = True
        if self.direct:
            if channel_ids is not None:
                raise ValueError(f"tensor '{self.stats.name}': a flat subsample needs the fine counts")
            self.stats.update(x, axis, exact=exact)
            return
        if exact is None:
            lows, highs, sums = _channel_reductions(by_channel, self.stats.name)
            per_channel = by_channel.size // channels
        else:
            lows, highs, sums, per_channel = _checked(exact, self.stats.name)
        if self.fine is None:
            self.fine = np.zeros((channels, self.stats.bins), np.int64)
            self.count = 0
            self.binned = np.zeros(channels, np.int64)
            self.lows = np.full(channels, math.inf)
            self.highs = np.full(channels, -math.inf)
            self.totals = np.zeros(channels)
            self.ranges = np.zeros(channels)
        elif channels != self.fine.shape[0]:
            raise CalibrationError(f"tensor '{self.stats.name}' changed its channel count during calibration")
        # the whole tensor's scalars and range exactly as TensorStats.update keeps them
        _add_scalars([self.stats], lows.min(keepdims=True), highs.max(keepdims=True), sums.sum(keepdims=True),
                     per_channel * channels)
        lows64, highs64 = lows.astype(np.float64), highs.astype(np.float64)
        self.count += per_channel
        if channel_ids is None:
            self.binned += by_channel.size // channels
        else:
            self.binned += np.bincount(channel_ids, minlength=channels)
        np.minimum(self.lows, lows64, out=self.lows)
        np.maximum(self.highs, highs64, out=self.highs)
        self.totals += sums
        magnitude = np.maximum(np.abs(lows64), np.abs(highs64))
        for c in np.flatnonzero((magnitude > 0.0) & (magnitude >= self.ranges)).tolist():
            self.ranges[c] = _grow_row(self.fine[c], float(self.ranges[c]), float(magnitude[c]))
        bins = self.stats.bins
        index = (_bin_index(by_channel, self.ranges, bins) if channel_ids is None
                 else _flat_bin_index(x.reshape(-1), channel_ids, self.ranges, bins))
        self.fine += np.bincount(index, minlength=channels * bins).reshape(channels, bins)

    def finish(self) -> TensorStats:
        """Write the histograms into the TensorStats (and its channels, with a channel axis) and return it."""
        stats = self.stats
        if self.direct or self.fine is None:
            return stats
        stats.binned = int(self.binned.sum())
        if self.channel_axis is None:
            stats.counts = self.fine[0].copy()
            return stats
        top = float(self.ranges.max())
        if top > stats.half_range:  # a channel's first range rounded up past the whole's: widen the whole's
            stats.half_range = top
        stats.counts = _merge_to_whole(self.fine, self.ranges.tolist(), stats.half_range)
        stats.channel_axis = self.channel_axis
        per_channel = self.fine.reshape(len(self.fine), CHANNEL_BINS, -1).sum(axis=2)
        stats.channels = [TensorStats(f"{stats.name}[{c}]", CHANNEL_BINS, self.count, lo, hi, total, r, row,
                                      binned=b)
                          for c, (lo, hi, total, r, row, b) in enumerate(zip(
                              self.lows.tolist(), self.highs.tolist(), self.totals.tolist(), self.ranges.tolist(),
                              per_channel, self.binned.tolist()))]
        return stats


def _grow_row(counts: np.ndarray, half_range: float, magnitude: float) -> float:
    """TensorStats._grow on one histogram row held elsewhere (in place); returns the new range."""
    if half_range == 0.0:
        half_range = 2.0 ** math.ceil(math.log2(magnitude) + 1e-12)
        return half_range * 2.0 if half_range <= magnitude else half_range
    quarter = counts.size // 4
    while half_range <= magnitude:
        merged = counts.reshape(-1, 2).sum(axis=1)
        counts[:] = 0
        counts[quarter:quarter + merged.size] = merged
        half_range *= 2.0
    return half_range


@dataclass
class Calibration:
    fingerprint: str
    model_path: str
    samples: int
    tensors: dict[str, TensorStats]
    tool_version: str = ""
    method: str = DEFAULT_NORM  # the norm `convert` uses unless told otherwise
    source: str = field(default="", compare=False)  # the file it was read from, for error messages
    # {input: [dims]} the dynamic inputs were bound to (rewrites/shapes.py), batch by name; absent when none
    input_shapes: dict[str, list] = field(default_factory=dict)

    @property
    def percentile(self) -> float:
        """The percentile of the default norm (99 for max or mmse): the column `calibrate` shows."""
        return NormSpec.parse(self.method).percentile

    def stats(self, tensor: str, node: str) -> TensorStats:
        if tensor not in self.tensors:
            where = f"{self.source}: " if self.source else ""
            raise CalibrationError(f"{where}calibration has no statistics for tensor '{tensor}' "
                                   f"(input of node '{node}')",
                                   "recalibrate this model with `ann2snn calibrate`")
        return self.tensors[tensor]

    def to_json(self) -> str:
        body = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "tool_version": self.tool_version,
            "model": {"path": self.model_path, "fingerprint": self.fingerprint}, "samples": self.samples,
            "method": self.method, **({"input_shapes": self.input_shapes} if self.input_shapes else {}),
            "tensors": {name: self.tensors[name].to_json() for name in sorted(self.tensors)},
        }
        return json.dumps(body, indent=1)

    @classmethod
    def read(cls, path: str | Path) -> Calibration:
        path = Path(path)
        if not path.exists():
            raise InputFileError(f"{path}: no such file")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{path}: not a calibration file (invalid JSON: {exc})",
                                   "make one with `ann2snn calibrate`") from exc
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise CalibrationError(f"{path}: not an ann2snn calibration file",
                                   "make one with `ann2snn calibrate`")
        if data.get("schema_version") not in READS:
            raise CalibrationError(f"{path}: calibration schema version {data.get('schema_version')!r}, "
                                   f"this tool reads versions {', '.join(map(str, READS))}",
                                   "recalibrate with `ann2snn calibrate`")
        try:
            tensors = {name: TensorStats.from_json(name, t) for name, t in data["tensors"].items()}
            result = cls(str(data["model"]["fingerprint"]), str(data["model"].get("path", "")),
                         _integer(data["samples"], "samples"), tensors, str(data.get("tool_version", "")),
                         str(data.get("method", DEFAULT_NORM)), str(path), _input_shapes(data.get("input_shapes", {})))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            raise CalibrationError(f"{path}: malformed calibration file ({type(exc).__name__}: {exc})",
                                   "recalibrate") from exc
        try:
            NormSpec.parse(result.method)
        except Ann2SnnError as exc:
            raise CalibrationError(f"{path}: malformed calibration file (method {result.method!r} is not a "
                                   "valid norm)", "recalibrate") from exc
        return result

    @classmethod
    def merge(cls, parts: list[Calibration]) -> Calibration:
        """Shards of one model's calibration (e.g. its data split over machines) as one calibration: the
        statistics one pass over all their data gives."""
        first = parts[0]
        for p in parts[1:]:
            if p.fingerprint != first.fingerprint or set(p.tensors) != set(first.tensors):
                raise CalibrationError(f"{p.source or 'a shard'}: calibration of another model than "
                                       f"{first.source or 'the first shard'}", "merge shards of one model")
        tensors = {name: merge_stats([p.tensors[name] for p in parts]) for name in first.tensors}
        return cls(first.fingerprint, first.model_path, sum(p.samples for p in parts), tensors,
                   first.tool_version, first.method, input_shapes=first.input_shapes)

    def check_model(self, fingerprint: str, path: str | Path, model_path: str | Path) -> None:
        if fingerprint != self.fingerprint:
            raise CalibrationError(
                f"{path}: calibration was made for another model ({self.model_path or 'unknown'}), "
                f"not {model_path}", f"calibrate {model_path} with `ann2snn calibrate`")

"""UGO (seed 002's Universal Group Operator): y = f(x) elementwise as y = b2 + sum_j w2_j * h_j with
h_j = IF(x - k_j) hidden neurons of threshold k_{j+1} - k_j.

A 1 -> N -> 1 net of clipped ReLUs is a piecewise-linear function, so the fit is a construction, not a
descent: knots k_0 < ... < k_N over the calibrated input range, placed where the input is frequent and f
bends (density ~ p^(1/5) |f''|^(2/5), the L2-optimal spacing of linear interpolation, mixed half and half
with uniform spacing as STA mixes its synthetic samples), kinks of a piecewise-linear f found on a fine grid
and made knots (so Clip, LeakyReLU, Abs, HardSigmoid come out exact), then the knot values by least
squares over samples of the calibrated distribution mixed with a uniform over the range. Outside
[k_0, k_N] the function is held at its end values: a hidden neuron cannot fire more than once a step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from rewrites.calibration.stats import TensorStats

GRID = 4097
DEFAULT_SIZE = 64
# STA's sizes: GELU 64, exp 32, reciprocal 64, 1/sqrt 8
SIZES = (({"Sqrt", "Reciprocal"}, 8), ({"Reciprocal"}, 64), ({"Exp"}, 32))


def default_size(ops: list[str]) -> int:
    present = set(ops)
    for needed, size in SIZES:
        if needed <= present:
            return size
    return DEFAULT_SIZE


@dataclass
class UgoFit:
    knots: np.ndarray  # [N + 1], increasing
    values: np.ndarray  # [N + 1], the function at the knots
    max_error: float = 0.0  # absolute, on samples of the calibrated input distribution
    mean_error: float = 0.0
    relative: bool = False  # fitted for relative error
    max_relative_error: float = 0.0  # to |f| when relative, else to max |f| over the range

    @property
    def size(self) -> int:
        return len(self.knots) - 1

    @property
    def thresholds(self) -> np.ndarray:
        return np.diff(self.knots)

    @property
    def slopes(self) -> np.ndarray:
        return np.diff(self.values) / np.diff(self.knots)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.interp(x, self.knots, self.values)

    def hidden_sum(self, x: np.ndarray) -> np.ndarray:
        """The net as the spiking graph writes it (rates of clipped hidden units), for checks."""
        h = np.clip(np.asarray(x, np.float64)[..., None] - self.knots[:-1], 0.0, self.thresholds)
        return self.values[0] + h @ self.slopes


def samples_from_stats(stats: TensorStats, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draws from the calibrated histogram (uniform within a bin), inside the observed [min, max]."""
    if stats.count == 0 or stats.half_range == 0.0 or stats.counts.sum() == 0:
        return np.full(n, stats.minimum if np.isfinite(stats.minimum) else 0.0)
    p = stats.counts / stats.counts.sum()
    bins = rng.choice(len(p), size=n, p=p)
    x = -stats.half_range + (bins + rng.random(n)) * stats.bin_width
    return np.clip(x, stats.minimum, stats.maximum)


def _kinks(grid: np.ndarray, fg: np.ndarray) -> np.ndarray | None:
    """Kink positions when f is piecewise linear on the grid (else None): where the slope changes, found
    exactly by intersecting the straight pieces on either side."""
    slope = np.diff(fg) / np.diff(grid)
    scale = max(float(np.abs(slope).max()), 1e-12)
    # f is evaluated in float32 (onnxruntime): rounding alone moves each slope by up to eps (|f_i| + |f_i+1|) / dx
    magnitude = np.abs(fg)
    noise = float(np.finfo(np.float32).eps) * (magnitude[1:] + magnitude[:-1]) / np.diff(grid)
    bends = np.flatnonzero(np.abs(np.diff(slope)) > np.maximum(1e-5 * scale, 4 * (noise[1:] + noise[:-1])))
    if len(bends) == 0:
        return np.array([])
    if len(bends) > GRID // 100:
        return None
    kinks = []
    for group in np.split(bends, np.flatnonzero(np.diff(bends) > 1) + 1):
        left, right = group[0], group[-1] + 1  # straight pieces: slope[left], slope[right]
        if left - 1 < 0 or right + 1 >= len(slope):
            continue
        s1, s2 = slope[left - 1], slope[right + 1]
        x1, y1, x2, y2 = grid[left], fg[left], grid[right + 1], fg[right + 1]
        if abs(s1 - s2) < 1e-12 * scale or len(group) > 3:
            return None
        kinks.append((y2 - y1 + s1 * x1 - s2 * x2) / (s1 - s2))
    return np.array(kinks)


def _geometric(lo: float, hi: float) -> bool:
    """A positive range over two decades (a reciprocal's input) is sampled geometrically, else evenly."""
    return lo > 0 and hi / lo > 100


def _grid(lo: float, hi: float) -> np.ndarray:
    return np.geomspace(lo, hi, GRID) if _geometric(lo, hi) else np.linspace(lo, hi, GRID)


def _relative(fg: np.ndarray) -> bool:
    """Fit for relative error when f keeps one sign and spans more than two decades (exp, 1/x, 1/sqrt):
    what follows multiplies it, so its small values matter as much as its large ones."""
    magnitude = np.abs(fg)
    return bool((np.all(fg > 0) or np.all(fg < 0)) and magnitude.max() > 10 * magnitude.min())


def _density_knots(grid, fg, samples, count, relative) -> np.ndarray:
    """`count` knots spread by the density p^(1/5) |f''|^(2/5) (L2-optimal for linear interpolation), half
    mixed with an even spread; for relative error (|f''|/|f|)^(1/2) (relative L-infinity optimal)."""
    lo, hi = grid[0], grid[-1]
    if not hi > lo:
        return np.array([lo])
    widths = np.diff(grid)
    p, _ = np.histogram(samples, bins=grid)
    p = np.convolve(p / widths, np.ones(33) / 33, mode="same")
    slope = np.diff(fg) / widths
    curvature = np.abs(np.diff(slope)) / (0.5 * (widths[1:] + widths[:-1]))
    curvature = np.concatenate([curvature[:1], 0.5 * (curvature[1:] + curvature[:-1]), curvature[-1:]])
    p = p / max(p.max(), 1e-300) + 1e-3
    if relative:
        kappa = curvature / np.abs(0.5 * (fg[1:] + fg[:-1]))
        q = p ** 0.2 * (kappa / max(kappa.max(), 1e-300) + 1e-12) ** 0.5
    else:
        q = p ** 0.2 * (curvature / max(curvature.max(), 1e-300) + 1e-3) ** 0.4
        q = 0.5 * q / np.average(q, weights=widths) + 0.5
    cdf = np.concatenate([[0.0], np.cumsum(q * widths)])
    cdf /= cdf[-1]
    return np.interp(np.linspace(0.0, 1.0, count), cdf, grid)


DYNAMIC_RANGE = 1e12  # fits ignore where |f| of one sign is below this fraction of its largest value


def _significant(f, lo: float, hi: float) -> tuple[float, float]:
    """[lo, hi] narrowed to where |f| >= max |f| / DYNAMIC_RANGE, and one grid point beyond on each side where
    it fades, for f of one sign that fades over part of it (exp of an attention score masked with -3.4e38):
    the UGO holds the faded end value, about 0, beyond. The grid narrows around the significant part until
    that part fills a quarter of it."""
    for attempt in range(64):
        grid = _grid(lo, hi)
        magnitude = np.abs(np.asarray(f(grid), np.float64))
        keep = np.flatnonzero(magnitude >= magnitude.max() / DYNAMIC_RANGE)
        first, last = max(keep[0] - 1, 0), min(keep[-1] + 1, GRID - 1)
        if attempt == 0 and last - first >= GRID // 4 and magnitude.min() == 0:
            return lo, hi  # a flat zero piece on a fair range (ReLU, HardSigmoid): its kink is a knot
        if last - first >= GRID // 4 or (grid[first], grid[last]) == (lo, hi):
            return float(grid[first]), float(grid[last])
        lo, hi = float(grid[first]), float(grid[last])
    return lo, hi


def _fades(fg: np.ndarray) -> bool:
    magnitude = np.abs(fg)
    return bool((np.all(fg >= 0) or np.all(fg <= 0)) and magnitude.max() > DYNAMIC_RANGE * magnitude.min())


def fit(f: Callable[[np.ndarray], np.ndarray], samples: np.ndarray, size: int,
        lo: float | None = None, hi: float | None = None, seed: int = 0) -> UgoFit:
    """Fit f on the range of `samples` (or [lo, hi]) with `size` hidden neurons."""
    samples = np.asarray(samples, np.float64).reshape(-1)
    lo = float(samples.min()) if lo is None else lo
    hi = float(samples.max()) if hi is None else hi
    if not hi > lo:
        hi = lo + max(abs(lo), 1.0) * 1e-3
    grid = _grid(lo, hi)
    fg = np.asarray(f(grid), np.float64)
    if _fades(fg):
        lo, hi = _significant(f, lo, hi)
        grid = _grid(lo, hi)
        fg = np.asarray(f(grid), np.float64)
    kinks = _kinks(grid, fg)
    relative = kinks is None and _relative(fg)
    if kinks is not None and len(kinks) <= size - 1:
        knots = np.unique(np.concatenate([[lo, hi], kinks]))
        extra = size + 1 - len(knots)
        if extra > 0:  # finer units on the busiest pieces: each unit quantises to its own threshold / T
            dense = _density_knots(grid, fg, samples, extra + 2, relative)[1:-1]
            knots = np.unique(np.concatenate([knots, dense]))
    else:
        knots = _density_knots(grid, fg, samples, size + 1, relative)
    knots = np.unique(knots)
    rng = np.random.default_rng(seed)
    spread = np.exp(rng.uniform(np.log(lo), np.log(hi), 4096)) if _geometric(lo, hi) else rng.uniform(lo, hi, 4096)
    inside = samples[(samples >= lo) & (samples <= hi)]
    train = np.concatenate([inside[rng.permutation(len(inside))[:8192]], spread, knots])
    target = np.asarray(f(train), np.float64)
    values = _least_squares(knots, train, target, np.abs(np.asarray(f(knots), np.float64)) if relative else None)
    result = UgoFit(knots, values, relative=relative)
    check = inside if len(inside) else knots
    want = np.asarray(f(check), np.float64)
    err = np.abs(result(check) - want)
    result.max_error, result.mean_error = float(err.max()), float(err.mean())
    scale = np.abs(want) if relative else max(float(np.abs(fg).max()), 1e-300)
    result.max_relative_error = float((err / scale).max())
    return result


def _least_squares(knots: np.ndarray, x: np.ndarray, y: np.ndarray, scale: np.ndarray | None = None
                   ) -> np.ndarray:
    """Values at the knots of the piecewise-linear interpolant closest to (x, y) (hat-function basis). With
    `scale` (|f| at the knots) the error is taken relative to |y| and the unknowns are values / scale, so
    that the system stays well conditioned over many decades.

    Each row of the basis has two nonzeros (the hats of its interval), so the normal equations are
    tridiagonal, summed in O(len(x)) and solved as a knots x knots system: the same least-squares solution
    as the dense [len(x), knots] problem (every interval holds samples: the training set includes the knots
    and a uniform spread), without a dense SVD that multithreaded BLAS made take up to a second per fit on
    a busy machine."""
    n = len(knots)
    i = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, n - 2)
    w = np.clip((x - knots[i]) / (knots[i + 1] - knots[i]), 0.0, 1.0)
    left, right, rhs = 1.0 - w, w, np.asarray(y, np.float64)
    if scale is not None:
        weights = 1.0 / np.abs(y)
        left, right, rhs = left * scale[i] * weights, right * scale[i + 1] * weights, rhs * weights
    normal = np.zeros((n, n))
    k = np.arange(n)
    normal[k, k] = np.bincount(i, left * left, n) + np.bincount(i + 1, right * right, n)
    normal[k[:-1], k[1:]] = normal[k[1:], k[:-1]] = np.bincount(i, left * right, n)[:-1]
    solution = np.linalg.lstsq(normal, np.bincount(i, left * rhs, n) + np.bincount(i + 1, right * rhs, n),
                               rcond=None)[0]
    return solution if scale is None else solution * scale

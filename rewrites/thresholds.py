"""Threshold rules: the value an IF neuron's threshold takes from the calibrated statistics of its input.

- max: the largest activation seen (no clipping on the calibration data);
- percentile:Q: the Q-th percentile of the post-ReLU values (zeros included), i.e. max(Q-th of the input, 0);
- mmse: the threshold that minimises the mean squared error between the ReLU activation and what an IF
  neuron with that threshold delivers at T steps under a constant input, the clip-floor(-shift) quantiser
  theta/T * clip(floor(z T/theta + phi), 0, T) (SNN Calibration, Li et al. ICML 2021), searched on a grid and
  evaluated on the calibration histogram.
"""
from __future__ import annotations

import numpy as np

from rewrites.calibration.stats import TensorStats

MMSE_GRID = 256  # candidate thresholds, evenly spaced in (0, max]


def quantised(z: np.ndarray, theta: np.ndarray, T: int, phi: float) -> np.ndarray:
    """Mean output of an IF neuron (soft reset, v(0) = phi * theta) fed z at each of T steps."""
    return theta / T * np.clip(np.floor(z * T / theta + phi), 0, T)


def histogram_points(stats: TensorStats) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres with non-zero counts, and the counts."""
    nonzero = np.flatnonzero(stats.counts)
    centres = -stats.half_range + (nonzero + 0.5) * stats.bin_width
    return centres, stats.counts[nonzero].astype(np.float64)


def quantisation_mse(stats: TensorStats, thetas: np.ndarray, T: int, phi: float) -> np.ndarray:
    """Mean squared error of the quantiser for each candidate threshold, over the histogram."""
    z, weight = histogram_points(stats)
    relu = np.maximum(z, 0.0)
    errors = (relu[None, :] - quantised(z[None, :], thetas[:, None], T, phi)) ** 2
    return errors @ weight / max(weight.sum(), 1.0)


def mmse_threshold(stats: TensorStats, T: int, phi: float) -> float:
    top = stats.maximum
    if top <= 0.0 or stats.half_range == 0.0:
        return 0.0
    thetas = top * np.arange(1, MMSE_GRID + 1) / MMSE_GRID
    return float(thetas[int(np.argmin(quantisation_mse(stats, thetas, T, phi)))])


def threshold(stats: TensorStats, kind: str, percentile: float, T: int, phi: float) -> float:
    """The threshold of one layer (or one channel) under rule `kind` ('max', 'percentile' or 'mmse')."""
    if kind == "max":
        value = stats.maximum
    elif kind == "percentile":
        value = stats.percentile(percentile)
    else:
        value = mmse_threshold(stats, T, phi)
    return max(float(value), 0.0)

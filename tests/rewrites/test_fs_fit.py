"""Few-spikes neurons fitted to activations (rewrites/fs.py, fit_tables): each reproduces its function to the
errors docs/fs.md states, over the calibrated range.

The bounds are the figures of docs/fs.md's fit table (K = 12, 5,000 normal samples clipped to the range,
seed 0), the worse of the two machines it was measured on, rounded up to the next half percent of the
function's range over the interval: the fit is deterministic on a machine (its minimum differs from one CPU
to another), so a change of the fitter that loses accuracy fails here."""
from __future__ import annotations

from math import erf

import numpy as np
import pytest

from rewrites.fs import fit_tables

OPS = {  # function, range, max error and mean error as fractions of the function's range there
    "Sigmoid": (lambda x: 1 / (1 + np.exp(-x)), (-8, 8), 0.03, 0.01),
    "Tanh": (np.tanh, (-4, 4), 0.03, 0.01),
    "Erf": (np.vectorize(erf), (-3, 3), 0.02, 0.005),
    "Exp": (np.exp, (-6, 0), 0.07, 0.01),
    "Softplus": (lambda x: np.log1p(np.exp(x)), (-4, 4), 0.04, 0.01),
    "Reciprocal": (lambda x: 1 / x, (0.5, 8), 0.1, 0.01),
    "Sqrt": (np.sqrt, (0.1, 4), 0.05, 0.01),
}


def _samples(lo: float, hi: float) -> np.ndarray:
    return np.random.default_rng(0).normal((lo + hi) / 2, (hi - lo) / 6, 5000).clip(lo, hi)


@pytest.mark.parametrize("op", sorted(OPS))
def test_fitted_neuron_reproduces_its_function(op):
    f, (lo, hi), max_bound, mean_bound = OPS[op]
    fit = fit_tables(f, _samples(lo, hi), 12)
    grid = np.linspace(lo, hi, 4001)
    span = float(np.ptp(f(grid)))
    error = np.abs(fit(grid) - f(grid))
    assert (fit.lo, fit.hi) == pytest.approx((lo, hi), abs=0.05)
    assert error.max() <= max_bound * span, (op, error.max() / span)
    assert fit.max_error <= max_bound * span
    assert fit.mean_error <= mean_bound * span, (op, fit.mean_error / span)
    assert fit.tables.K == 12


def test_fits_are_deterministic():
    f, (lo, hi), *_ = OPS["Sigmoid"]
    a, b = fit_tables(f, _samples(lo, hi), 8), fit_tables(f, _samples(lo, hi), 8)
    for name in ("thresholds", "resets", "weights"):
        np.testing.assert_array_equal(getattr(a.tables, name), getattr(b.tables, name))
    assert a.offset == b.offset

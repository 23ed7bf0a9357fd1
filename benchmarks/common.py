"""Helpers shared by the benchmarks: machine description, best-of-N timing, the ResNet-style test graph and
synthetic data. Nothing here imports torch."""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "tests"):  # the project's packages; tests/builders.py for the benchmark graphs
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
EXAMPLE = REPO / "examples" / "fmnist_cnn"
MB = 2**20

from builders import resnet_model  # noqa: E402,F401 (re-exported: the benchmarks' ResNet-style graph)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_lines() -> list[str]:
    import onnxruntime

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: nproc={os.cpu_count()}, cpu={cpu_model()!r}, python {platform.python_version()}, "
        f"numpy {np.__version__}, onnxruntime {onnxruntime.__version__}",
        f"load average at start (1, 5, 15 min): {load}",
    ]


def load_line() -> str:
    return "load average at end (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def best_of(functions: dict[str, Callable[[], object]], repeat: int, pause: float = 0.1) -> dict[str, list[float]]:
    """Time every function `repeat` times, interleaved (round r runs each once) so that a burst of load
    from other processes hits all of them alike. Before each timed call it sleeps `pause` seconds: an
    onnxruntime session's worker threads keep spinning for a moment after a run, and on 2 cores that slowed
    the next variant's first runs by up to 2x when it followed at once. Returns name -> all wall times (s)."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, fn in functions.items():
            time.sleep(pause)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def fmt_times(times: list[float]) -> str:
    return "/".join(f"{t:.2f}" for t in times)


def random_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Uniform [0, 1) images, like pixel data scaled by 1/255."""
    return np.random.default_rng(seed).random((n,) + shape, dtype=np.float32)

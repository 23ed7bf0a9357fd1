"""The library entry point behind `simulate`: run an exported spiking model over data for T steps."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from rewrites.calibration.data import Dataset, load_dataset
from rewrites.errors import Ann2SnnError, DataError
from rewrites.graph import load_model
from rewrites.runtime import Session
from sim.energy import estimate
from sim.engine import NumpyEngine
from sim.metrics import Accumulator, SimulationReport, finish, report_steps
from sim.model import SpikingModel, load_spiking
from sim.ort import OrtEngine

ENGINES = {"numpy": NumpyEngine, "onnxruntime": OrtEngine}
Progress = Callable[[int, int], None]


def make_engine(model: SpikingModel, engine: str, memory_budget: int | None = None):
    if engine not in ENGINES:
        raise Ann2SnnError(f"unknown engine {engine!r}", f"choose one of {', '.join(ENGINES)}")
    if engine == "numpy" and memory_budget:
        return NumpyEngine(model, memory_budget)
    return ENGINES[engine](model)


def ann_runner(path: str | Path, model: SpikingModel):
    session = Session(load_model(path), str(path))
    names = session.input_names
    if names != [s.name for s in model.inputs]:
        raise DataError(f"{path}: ANN inputs {names} differ from the spiking model's "
                        f"{[s.name for s in model.inputs]}", "pass the ANN this spiking model was converted from")
    output = session.output_names[0]
    return lambda feeds: session.run([output], feeds)[0]


def simulate(snn_path: str | Path, data_path: str | Path, T: int, extra_t: int = 0, engine: str = "numpy",
             ann_path: str | Path | None = None, batch_size: int = 128, limit: int | None = None,
             progress: Progress | None = None, memory_budget: int | None = None) -> SimulationReport:
    if T < 1 or extra_t < 0 or batch_size < 1:
        raise Ann2SnnError(f"invalid window T={T}, extra_t={extra_t}, batch size {batch_size}",
                           "T and the batch size must be positive, extra_t zero or more")
    model = load_spiking(snn_path)
    dataset = load_dataset(data_path, model.inputs, limit)
    runner = make_engine(model, engine, memory_budget)
    ann = ann_runner(ann_path, model) if ann_path else None
    return run_dataset(runner, model, dataset, T, extra_t, ann, batch_size, progress)


def run_dataset(runner, model: SpikingModel, dataset: Dataset, T: int, extra_t: int, ann, batch_size: int,
                progress: Progress | None = None, memory_budget: int | None = None) -> SimulationReport:
    steps = T + extra_t
    acc = Accumulator(steps)
    start = time.perf_counter()
    done = 0
    output = model.outputs[0]
    for k, batch in enumerate(dataset.batches(batch_size)):
        n = len(next(iter(batch.values())))
        labels = dataset.labels[done:done + n] if dataset.labels is not None else None
        result = runner.run(batch, T, extra_t)
        acc.add(np.asarray(result.outputs[output]), labels, ann(batch) if ann else None, result.spikes)
        done += n
        if progress:
            progress(done, len(dataset))
    report = finish(acc, runner.name, T, extra_t, report_steps(steps))
    report.seconds = time.perf_counter() - start
    report.energy = estimate(model, {name: (layer.spikes, layer.neurons) for name, layer in acc.layers.items()},
                             acc.samples, steps).to_json()
    return report

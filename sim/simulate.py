"""The library entry point behind `simulate`: run an exported spiking model over data for T steps."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ground.data import Dataset, load_dataset
from ground.errors import Ann2SnnError, DataError
from ground.load import load_model
from ground.sessions import Session
from sim.analysis import LayerErrors, UntilSilent, neuron_layers
from sim.drain import check_drainable
from sim.energy import estimate
from sim.engine import NumpyEngine
from sim.metrics import Accumulator, SimulationReport, finish, report_steps
from sim.model import load_spiking, SpikingModel
from sim.ort import OrtEngine
from ground.protos import add_outputs
from snnfile import Meta

ENGINES = {"numpy": NumpyEngine, "onnxruntime": OrtEngine}
Progress = Callable[[int, int], None]


def make_engine(model: SpikingModel, engine: str, memory_budget: int | None = None):
    if engine not in ENGINES:
        raise Ann2SnnError(f"unknown engine {engine!r}", f"choose one of {', '.join(ENGINES)}")
    if engine == "numpy" and memory_budget:
        return NumpyEngine(model, memory_budget)
    return ENGINES[engine](model)


class AnnReference:
    """The original ANN under onnxruntime: its first output, and on request any of its tensors by name."""

    def __init__(self, path: str | Path, model: SpikingModel, extra: list[str] = ()):
        ann = load_model(path)
        self.output = ann.graph.output[0].name
        known = {vi.name for vi in list(ann.graph.value_info) + list(ann.graph.output)} | \
            {o for n in ann.graph.node for o in n.output}
        self.extra = [name for name in extra if name in known]
        self.session = Session(add_outputs(ann, self.extra), str(path), optimize=not self.extra)
        if self.session.input_names != [s.name for s in model.inputs]:
            raise DataError(f"{path}: ANN inputs {self.session.input_names} differ from the spiking model's "
                            f"{[s.name for s in model.inputs]}", "pass the ANN this spiking model was converted from")

    def __call__(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        values = self.session.run([self.output] + self.extra, feeds)
        return values[0], dict(zip(self.extra, values[1:]))


@dataclass(frozen=True)
class Analyses:
    layer_error: bool = False  # needs the ANN
    until_silent: int | None = None  # cap on the silent steps


@dataclass(frozen=True)
class Window:
    """The steps of a run: T input steps, then extra_t silent steps, drain steps with `drain`."""

    T: int
    extra_t: int
    drain: bool
    notes: tuple[str, ...] = ()


def window_for(model: SpikingModel, T: int | None, extra_t: int | None, drain: bool | None) -> Window:
    """The window a run uses where it is not told: T from the file's ann2snn.default_T (else 32), and the
    file's ann2snn.drain_steps as drain steps. Notes say where the run departs from what the file was
    converted for."""
    file_T = model.default_T
    steps = T or file_T or 32
    if model.few_spikes:  # the input at the first step, then steps without it (folded: drain steps)
        notes = [] if not file_T or steps >= file_T else [
            f"the file's layers need {file_T} steps to pass their spikes on (FS coding); this run stops at {steps}"]
        if extra_t or drain:
            notes.append("extra and drain steps do not apply to an FS file: its input enters at the first step "
                         f"and every later step is without it; this run has {steps} steps in all")
        return Window(1, steps - 1, steps > 1, tuple(notes))
    drain_steps = model.drain_steps
    if extra_t is None:
        extra_t = drain_steps if drain is not False else 0
        drain = bool(drain_steps) if drain is None else drain
    drain = bool(drain) and extra_t > 0
    notes = []
    if file_T and steps != file_T:
        notes.append(f"the file was converted for T = {file_T} (its thresholds, spike budgets and any charge "
                     f"or bias correction target that T); this run has T = {steps}")
    if drain_steps and not drain:
        notes.append(f"the file was converted to be read after {drain_steps} drain steps (ann2snn.drain_steps); "
                     "this run has none")
    return Window(steps, extra_t, drain, tuple(notes))


def simulate(snn: str | Path | SpikingModel, data_path, T: int | None = None, extra_t: int | None = None,
             engine: str = "numpy", ann_path: str | Path | None = None, batch_size: int = 128,
             limit: int | None = None, progress: Progress | None = None, memory_budget: int | None = None,
             analyses: Analyses = Analyses(), drain: bool | None = None) -> SimulationReport:
    """`drain`: the silent steps (extra_t, until-silent) are drain steps (sim/drain.py). T, extra_t and drain
    left None follow the file (window_for). `snn`: the file's path, or the file already read."""
    model = snn if isinstance(snn, SpikingModel) else load_spiking(snn)
    window = window_for(model, T, extra_t, drain)
    check_window(window.T, window.extra_t, batch_size)
    dataset = load_dataset(data_path, model.inputs, limit)
    runner = make_engine(model, engine, memory_budget)
    if analyses.layer_error and not ann_path:
        raise Ann2SnnError("the layer error report needs the ANN", "pass --ann MODEL")
    extra = LayerErrors(neuron_layers(model), window.T + window.extra_t).tensors() if analyses.layer_error else []
    ann = AnnReference(ann_path, model, extra) if ann_path else None
    report = run_dataset(runner, model, dataset, window.T, window.extra_t, ann, batch_size, progress, analyses,
                         window.drain)
    report.notes = list(window.notes) + report.notes
    return report


def check_window(T: int, extra_t: int, batch_size: int) -> None:
    if T < 1 or extra_t < 0 or batch_size < 1:
        raise Ann2SnnError(f"invalid window T={T}, extra_t={extra_t}, batch size {batch_size}",
                           "T and the batch size must be positive, extra_t zero or more")


def run_dataset(runner, model: SpikingModel, dataset: Dataset, T: int, extra_t: int, ann: AnnReference | None,
                batch_size: int, progress: Progress | None = None,
                analyses: Analyses = Analyses(), drain: bool = False) -> SimulationReport:
    steps = T + extra_t
    window_extra = extra_t + (analyses.until_silent or 0)
    drain = drain and window_extra > 0
    if drain:
        check_drainable(model)
    acc = Accumulator(steps, input_steps=T if drain else None)
    errors = LayerErrors(neuron_layers(model), steps, T if drain else None) if analyses.layer_error else None
    silent = UntilSilent(steps, analyses.until_silent) if analyses.until_silent else None
    start = time.perf_counter()
    done = 0
    output = model.outputs[0]
    for batch in dataset.batches(batch_size):
        n = len(next(iter(batch.values())))
        labels = dataset.labels[done:done + n] if dataset.labels is not None else None
        result = runner.run(batch, T, window_extra, observe=steps if errors or silent else 0, drain=drain)
        per_step = np.asarray(result.outputs[output])
        reference, ann_values = ann(batch) if ann else (None, {})
        acc.add(per_step[:steps], labels, reference, result.spikes)
        if errors:
            errors.add(ann_values, result.sums)
        if silent:
            silent.add(per_step, result.active, labels, reference)
        done += n
        if progress:
            progress(done, len(dataset))
    report = finish(acc, runner.name, T, extra_t, report_steps(steps))
    report.seconds = time.perf_counter() - start
    report.energy = estimate(model, {name: (layer.spikes, layer.neurons) for name, layer in acc.layers.items()},
                             acc.samples, steps).to_json()
    report.layer_error = errors.to_json() if errors else None
    report.until_silent = silent.to_json() if silent else None
    report.drain = drain
    report.coding = model.metadata.get(Meta.CODING, "direct")
    if getattr(runner, "loop_reason", ""):
        report.engine_note = f"stepped the file from Python instead of running an ONNX Loop: {runner.loop_reason}"
    return report


def sweep_extra_t(snn_path: str | Path, data_path: str | Path, ts: list[int], max_extra: int,
                  engine: str = "numpy", batch_size: int = 128, limit: int | None = None,
                  memory_budget: int | None = None, drain: bool = False) -> dict:
    """Seed 000's table: for each t, accuracy after t + extra_t steps (extra_t = 0..max_extra, silent input;
    with `drain` no biases either)."""
    model = load_spiking(snn_path)
    dataset = load_dataset(data_path, model.inputs, limit)
    if dataset.labels is None:
        raise DataError(f"{data_path}: the extra_t sweep needs labels (array y, or class subfolders of images)")
    runner = make_engine(model, engine, memory_budget)
    grid = []
    for t in ts:
        check_window(t, max_extra, batch_size)
        report = run_dataset(runner, model, dataset, t, max_extra, None, batch_size, drain=drain)
        grid.append([report.accuracy_all[t + e - 1] for e in range(max_extra + 1)])
    return {"t": ts, "extra_t": list(range(max_extra + 1)), "accuracy": grid, "samples": len(dataset),
            "drain": drain}

"""Figures of a simulation: accuracy and agreement with the ANN at every step, error of the decoded output,
latency, spikes per layer, SynOps and energy. Accumulated batch by batch into fixed-size state."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.engine import LayerSpikes


def running_mean(per_step: np.ndarray, input_steps: int | None = None) -> np.ndarray:
    """Decoded output at every step: the mean of the outputs of steps 1..t, shape [T, B, ...]. After drain
    steps (sim/drain.py) the sum is divided by the `input_steps` only."""
    total = np.cumsum(per_step, axis=0, dtype=np.float64)
    steps = np.arange(1, len(per_step) + 1, dtype=np.float64)
    if input_steps:
        steps = np.minimum(steps, input_steps)
    return total / steps.reshape((-1,) + (1,) * (per_step.ndim - 1))


@dataclass
class Accumulator:
    steps: int
    input_steps: int | None = None  # set after drain steps: the output is decoded as its sum / input_steps
    samples: int = 0
    labelled: int = 0
    correct: np.ndarray = None  # type: ignore[assignment]
    agree: np.ndarray = None  # type: ignore[assignment]
    err_sq: np.ndarray = None  # type: ignore[assignment]
    ann_sq: float = 0.0
    ann_correct: int = 0
    compared: int = 0
    first_final: int = 0  # sum over samples of the first t whose prediction equals the final one
    settled: int = 0  # sum over samples of the t from which the prediction never changes
    layers: dict[str, LayerSpikes] = field(default_factory=dict)
    map_shape: tuple[int, ...] | None = None  # per sample, when the output is a map, not class scores

    def __post_init__(self):
        self.correct = np.zeros(self.steps, np.int64)
        self.agree = np.zeros(self.steps, np.int64)
        self.err_sq = np.zeros(self.steps, np.float64)

    def add(self, per_step: np.ndarray, labels: np.ndarray | None, ann: np.ndarray | None,
            spikes: dict[str, LayerSpikes]) -> None:
        decoded = running_mean(per_step, self.input_steps)
        batch = per_step.shape[1]
        self.samples += batch
        if sum(d > 1 for d in per_step.shape[2:]) > 1:
            self.map_shape = tuple(per_step.shape[2:])
        predicted = decoded.reshape(self.steps, batch, -1).argmax(-1)
        differs = predicted != predicted[-1][None]
        self.first_final += int((np.argmax(~differs, axis=0) + 1).sum())
        last_change = np.where(differs.any(0), self.steps - 1 - np.argmax(differs[::-1], axis=0), -1)
        self.settled += int((last_change + 2).sum())
        if labels is not None:
            self.labelled += batch
            self.correct += (predicted == labels[None]).sum(axis=1)
            if ann is not None:
                self.ann_correct += int((ann.reshape(batch, -1).argmax(-1) == labels).sum())
        if ann is not None:
            self.compared += batch
            self.agree += (predicted == ann.reshape(batch, -1).argmax(-1)[None]).sum(axis=1)
            diff = decoded - ann[None].astype(np.float64)
            self.err_sq += (diff.reshape(self.steps, -1) ** 2).sum(axis=1)
            self.ann_sq += float((ann.astype(np.float64) ** 2).sum())
        for name, layer in spikes.items():
            self.layers.setdefault(name, LayerSpikes(layer.node, layer.op, layer.neurons)).merge(layer)


@dataclass
class LayerReport:
    node: str
    op: str
    neurons: int
    spikes_per_neuron: float  # average spikes per neuron per sample over the window
    firing_rate: float  # spikes per neuron per step
    silent: float  # share of neurons that never fire in the window
    saturated: float  # share of neurons that fire at every step (clipped by the threshold)


@dataclass
class SimulationReport:
    engine: str
    T: int
    extra_t: int
    samples: int
    steps: list[int]  # the t at which figures are reported (1-based)
    accuracy: list[float] | None  # at each reported t
    agreement: list[float] | None
    relative_error: list[float] | None
    ann_accuracy: float | None
    layers: list[LayerReport]
    total_spikes_per_sample: float
    mean_first_final_t: float  # first t whose prediction equals the final one, averaged over samples
    mean_settled_t: float  # t from which the prediction no longer changes, averaged over samples
    seconds: float = 0.0
    accuracy_all: list[float] | None = None  # at every t = 1..T+extra_t
    agreement_all: list[float] | None = None
    energy: dict | None = None
    layer_error: dict | None = None
    until_silent: dict | None = None
    drain: bool = False
    notes: list[str] = field(default_factory=list)  # where the run departs from what the file was converted for
    engine_note: str = ""  # why the engine ran otherwise than by default (the Loop fell back to stepping)
    coding: str = "direct"  # the file's ann2snn.coding; fs: input at step 1, the rest are steps without it

    @property
    def final_accuracy(self) -> float | None:
        return self.accuracy[-1] if self.accuracy else None

    def to_dict(self) -> dict:
        return {
            "engine": self.engine, "engine_note": self.engine_note or None, "T": self.T, "extra_t": self.extra_t,
            "drain": self.drain, "notes": self.notes, "coding": self.coding,
            "samples": self.samples,
            "seconds": self.seconds, "ann_accuracy": self.ann_accuracy,
            "steps": self.steps, "accuracy": self.accuracy, "agreement": self.agreement,
            "relative_error": self.relative_error,
            "accuracy_all": self.accuracy_all, "agreement_all": self.agreement_all,
            "latency": {"mean_first_final_t": self.mean_first_final_t, "mean_settled_t": self.mean_settled_t},
            "total_spikes_per_sample": self.total_spikes_per_sample,
            "layers": [vars(layer) for layer in self.layers],
            "energy": self.energy,
            "layer_error": self.layer_error,
            "until_silent": self.until_silent,
        }


def report_steps(total: int) -> list[int]:
    """1, 2, 4, ... up to the last step, which is always included."""
    steps, t = [], 1
    while t < total:
        steps.append(t)
        t *= 2
    return steps + [total]


def finish(acc: Accumulator, engine: str, T: int, extra_t: int, steps: list[int]) -> SimulationReport:
    pick = [t - 1 for t in steps]
    accuracy_all = (acc.correct / acc.labelled).tolist() if acc.labelled else None
    agreement_all = (acc.agree / acc.compared).tolist() if acc.compared and not acc.map_shape else None
    rel = np.sqrt(acc.err_sq / acc.ann_sq).tolist() if acc.compared and acc.ann_sq > 0 else None
    window = T + extra_t
    layers = []
    for layer in acc.layers.values():
        cells = max(acc.samples * layer.neurons, 1)
        layers.append(LayerReport(layer.node, layer.op, layer.neurons, layer.spikes / cells,
                                  layer.spikes / (cells * window), layer.silent / cells, layer.saturated / cells))
    total = sum(layer.spikes for layer in acc.layers.values()) / max(acc.samples, 1)
    n = max(acc.samples, 1)
    return SimulationReport(
        engine, T, extra_t, acc.samples, steps,
        [accuracy_all[i] for i in pick] if accuracy_all else None,
        [agreement_all[i] for i in pick] if agreement_all else None,
        [rel[i] for i in pick] if rel else None,
        acc.ann_correct / acc.labelled if acc.labelled and acc.compared else None,
        layers, total, acc.first_final / n, acc.settled / n,
        accuracy_all=accuracy_all, agreement_all=agreement_all,
        notes=[f"the output is a map ([{', '.join(map(str, acc.map_shape))}] per sample), not class scores: no "
               "agreement with the ANN's top-1, only the relative error"] if acc.map_shape and acc.compared else [])

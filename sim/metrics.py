"""Figures of a simulation: accuracy and agreement with the ANN at every step, error of the decoded output,
spikes and firing rates per layer. Accumulated batch by batch into fixed-size state."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.engine import LayerSpikes


def running_mean(per_step: np.ndarray) -> np.ndarray:
    """Decoded output at every step: the mean of the outputs of steps 1..t, shape [T, B, ...]."""
    total = np.cumsum(per_step, axis=0, dtype=np.float64)
    steps = np.arange(1, len(per_step) + 1, dtype=np.float64).reshape((-1,) + (1,) * (per_step.ndim - 1))
    return total / steps


@dataclass
class Accumulator:
    steps: int
    samples: int = 0
    labelled: int = 0
    correct: np.ndarray = None  # type: ignore[assignment]
    agree: np.ndarray = None  # type: ignore[assignment]
    err_sq: np.ndarray = None  # type: ignore[assignment]
    ann_sq: float = 0.0
    ann_correct: int = 0
    compared: int = 0
    layers: dict[str, LayerSpikes] = field(default_factory=dict)

    def __post_init__(self):
        self.correct = np.zeros(self.steps, np.int64)
        self.agree = np.zeros(self.steps, np.int64)
        self.err_sq = np.zeros(self.steps, np.float64)

    def add(self, per_step: np.ndarray, labels: np.ndarray | None, ann: np.ndarray | None,
            spikes: dict[str, LayerSpikes]) -> None:
        decoded = running_mean(per_step)
        batch = per_step.shape[1]
        self.samples += batch
        predicted = decoded.reshape(self.steps, batch, -1).argmax(-1)
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
            total = self.layers.setdefault(name, LayerSpikes(layer.node, layer.op, layer.neurons))
            total.spikes += layer.spikes
            total.neurons = layer.neurons


@dataclass
class LayerReport:
    node: str
    op: str
    neurons: int
    spikes_per_neuron: float  # average spikes per neuron per sample over the window
    firing_rate: float  # spikes per neuron per step


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
    seconds: float = 0.0
    accuracy_all: list[float] | None = None  # at every t = 1..T+extra_t
    agreement_all: list[float] | None = None

    def to_json(self) -> dict:
        return {
            "engine": self.engine, "T": self.T, "extra_t": self.extra_t, "samples": self.samples,
            "seconds": self.seconds, "ann_accuracy": self.ann_accuracy,
            "steps": self.steps, "accuracy": self.accuracy, "agreement": self.agreement,
            "relative_error": self.relative_error,
            "accuracy_all": self.accuracy_all, "agreement_all": self.agreement_all,
            "total_spikes_per_sample": self.total_spikes_per_sample,
            "layers": [vars(layer) for layer in self.layers],
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
    agreement_all = (acc.agree / acc.compared).tolist() if acc.compared else None
    rel = np.sqrt(acc.err_sq / acc.ann_sq).tolist() if acc.compared and acc.ann_sq > 0 else None
    window = T + extra_t
    layers = [LayerReport(l.node, l.op, l.neurons,
                          l.spikes / max(acc.samples * l.neurons, 1),
                          l.spikes / max(acc.samples * l.neurons * window, 1)) for l in acc.layers.values()]
    total = sum(l.spikes for l in acc.layers.values()) / max(acc.samples, 1)
    return SimulationReport(
        engine, T, extra_t, acc.samples, steps,
        [accuracy_all[i] for i in pick] if accuracy_all else None,
        [agreement_all[i] for i in pick] if agreement_all else None,
        [rel[i] for i in pick] if rel else None,
        acc.ann_correct / acc.labelled if acc.labelled and acc.compared else None,
        layers, total, accuracy_all=accuracy_all, agreement_all=agreement_all)

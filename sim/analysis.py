"""Analyses beyond accuracy: where each neuron layer loses against the ANN (the conversion error split as in
seed 004), and stopping a sample once its network falls silent."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.model import SpikingModel
from snnfile import DOMAIN
from snnfile.operators import NON_FIRING


@dataclass
class NeuronLayer:
    node: str
    input: str  # the ANN tensor that feeds the neuron (z)
    output: str  # the ANN tensor the neuron replaces (a)
    threshold: np.ndarray
    phi: np.ndarray


def neuron_layers(model: SpikingModel) -> list[NeuronLayer]:
    layers = []
    for node in model.nodes:
        if node.domain != DOMAIN or node.op_type in NON_FIRING:
            continue
        theta = model.constants[node.input[1]].astype(np.float64)
        fire_level = model.constants[node.input[2]].astype(np.float64)
        layers.append(NeuronLayer(node.name, node.input[0], node.output[0], theta, 1.0 - fire_level / theta))
    return layers


@dataclass
class LayerError:
    """Error sums of one layer; every term is summed over neurons and samples. With a the ANN activation, z
    its pre-activation, r the SNN's mean output over the window W and q = theta/W * clip(floor(z W/theta + phi),
    0, W) the output of an ideal IF neuron fed z at every step: a - r = (a - clip(z, 0, theta)) [clipping]
    + (clip(z, 0, theta) - q) [quantisation] + (q - r) [unevenness, including errors arriving from earlier
    layers]."""

    node: str
    count: int = 0
    clipping: float = 0.0
    quantisation: float = 0.0
    unevenness: float = 0.0
    total: float = 0.0
    total_sq: float = 0.0
    ann_sq: float = 0.0
    skipped: str = ""
    undivided: str = ""  # why the total is not split into its three terms

    def add(self, layer: NeuronLayer, z: np.ndarray | None, a: np.ndarray, r: np.ndarray, window: int) -> None:
        """`z` None: the ANN has no tensor for the neuron's input (a normalising pass made it), so only the
        total is known."""
        a = a.astype(np.float64)
        self.count += a.size
        if z is not None:
            z = z.astype(np.float64)
            theta, phi = layer.threshold, layer.phi
            clipped = np.clip(z, 0.0, theta)
            ideal = theta / window * np.clip(np.floor(z * window / theta + phi), 0, window)
            self.clipping += float((a - clipped).sum())
            self.quantisation += float((clipped - ideal).sum())
            self.unevenness += float((ideal - r).sum())
        total = a - r
        self.total += float(total.sum())
        self.total_sq += float((total ** 2).sum())
        self.ann_sq += float((a ** 2).sum())

    def to_json(self) -> dict:
        if self.skipped:
            return {"node": self.node, "skipped": self.skipped}
        n = max(self.count, 1)
        split = {} if self.undivided else {"clipping": self.clipping / n, "quantisation": self.quantisation / n,
                                           "unevenness": self.unevenness / n}
        return {"node": self.node, "mean_error": self.total / n, **split,
                **({"undivided": self.undivided} if self.undivided else {}),
                "rms_error": float(np.sqrt(self.total_sq / n)),
                "relative_rms_error": float(np.sqrt(self.total_sq / self.ann_sq)) if self.ann_sq else None}


@dataclass
class LayerErrors:
    """`window`: the steps summed; after drain steps (sim/drain.py) the rate is that sum / `input_steps` and
    the ideal neuron quantises to input_steps levels."""

    layers: list[NeuronLayer]
    window: int
    input_steps: int | None = None
    errors: dict[str, LayerError] = field(default_factory=dict)

    def tensors(self) -> list[str]:
        return sorted({t for l in self.layers for t in (l.input, l.output)})

    def add(self, ann_values: dict[str, np.ndarray], sums: dict[str, np.ndarray]) -> None:
        for layer in self.layers:
            error = self.errors.setdefault(layer.node, LayerError(layer.node))
            if layer.output not in ann_values:
                error.skipped = "the ANN has no tensor of this name (made by a normalising pass)"
                continue
            if layer.input not in ann_values:
                error.undivided = (f"the neuron's input '{layer.input}' is made by a normalising pass: only the "
                                   "total is measured")
            levels = self.input_steps or self.window
            error.add(layer, ann_values.get(layer.input), ann_values[layer.output], sums[layer.node] / levels,
                      levels)

    def to_json(self) -> dict:
        rows = [self.errors[l.node].to_json() for l in self.layers if l.node in self.errors]
        ranked = [r for r in rows if r.get("relative_rms_error") is not None]
        worst = max(ranked, key=lambda r: r["relative_rms_error"])["node"] if ranked else None
        return {"window": self.window, "input_steps": self.input_steps or self.window, "layers": rows,
                "worst_layer": worst}


@dataclass
class UntilSilent:
    """Each sample runs T steps with input, then zero input until a step at which no neuron fires (at most
    `cap` extra steps); its prediction is the running mean up to and including that step."""

    T: int
    cap: int
    samples: int = 0
    correct: int = 0
    labelled: int = 0
    agree: int = 0
    compared: int = 0
    steps: int = 0
    capped: int = 0

    def add(self, per_step: np.ndarray, active: np.ndarray, labels: np.ndarray | None,
            ann: np.ndarray | None) -> None:
        batch = per_step.shape[1]
        silent = ~active[self.T:]
        found = silent.any(axis=0)
        stop = np.where(found, self.T + np.argmax(silent, axis=0) + 1, self.T + self.cap)
        totals = np.cumsum(per_step.reshape(per_step.shape[0], batch, -1), axis=0, dtype=np.float64)
        predicted = totals[stop - 1, np.arange(batch)].argmax(-1)
        self.samples += batch
        self.steps += int(stop.sum())
        self.capped += int((~found).sum())
        if labels is not None:
            self.labelled += batch
            self.correct += int((predicted == labels).sum())
        if ann is not None:
            self.compared += batch
            self.agree += int((predicted == ann.reshape(batch, -1).argmax(-1)).sum())

    def to_json(self) -> dict:
        return {"cap": self.cap, "mean_steps": self.steps / max(self.samples, 1),
                "share_capped": self.capped / max(self.samples, 1),
                "accuracy": self.correct / self.labelled if self.labelled else None,
                "agreement": self.agree / self.compared if self.compared else None}

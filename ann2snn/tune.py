"""Best options by default: each ReLU layer's conversion chosen by its measured error on calibration samples.

SNN Calibration's layer-wise idea (Li et al., ICML 2021) with seed 001's norms as candidates. Layer by layer,
in graph order, with the layers before it already converted as chosen:
1. run the spiking network on the samples for T steps and record the layer's input current, step by step
   (what the converted layers before it really deliver, unevenness included);
2. for every candidate (IF or signed neuron; threshold rule percentile 99 / 99.9 / 99.99, mmse or max; per
   tensor or per channel; phi 1/2, 1/4 or 0) run the neuron on that recorded current and measure the mean
   squared gap between its rate at T and the ANN's activation, relative to the activation's mean square
   (where maxima read the layer, MaxPools or max reductions, both through them first: a max keeps the top
   values, so a threshold that clips them costs more than the layer alone shows);
3. keep the best, and a charge correction when it lowers the error further: the mean gap per channel, as
   the charge the window's input lacks, added to the initial membrane (SNN Calibration's "light" pipeline
   corrects the bias instead, by the gap per step; but the gap is mostly the lag of the layers before, a
   fixed charge, so a bias shift tuned at T over-corrects by (T' - T) x the shift when the file is read at
   T' > T, and a charge does not).
The search runs on one spiking model whose neurons are all signed (an IF neuron is a signed neuron that never
fires negative: unfire level -inf), so no layer is converted twice; the final file is converted once with
the chosen settings. Deterministic: the first `samples` samples, no randomness."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from ground.data import Dataset
from rewrites.calibration.stats import Calibration
from rewrites.config import ConvertOptions, LayerSetting, Neuron, NormSpec
from rewrites.convert import ConversionResult, convert_model
from rewrites.passes.relu_to_if import layer_threshold
from ann2snn.refit import WINDOWS, Linear, Refit, linear_layers, refit as fit_linear
from sim.engine import NumpyEngine, PausedRun
from ground.errors import SpikingModelError
from sim.ort import OrtEngine
from sim.model import spiking_from_proto
from sim.neurons import if_neuron, signed_if_neuron
from sim.ops import KERNELS, attributes
from sim.simulate import AnnReference
from snnfile import Meta

NORMS = ("percentile:99", "percentile:99.9", "percentile:99.99", "mmse", "max")
PHIS = (0.5, 0.25, 0.0)
SAMPLES = 128
CHARGE_CANDIDATES = 3  # the best settings without correction that get one
CHARGE_ROUNDS = 2
Progress = Callable[[int, int], None]  # (layers done, layers)


@dataclass
class LayerChoice:
    node: str
    setting: LayerSetting
    charge: np.ndarray | None  # per channel, added to the initial membrane (a fixed charge, not per step)
    error: float  # relative mean squared error of the layer's rate at T against the ANN activation
    default_error: float  # the same for the options' own setting, on the same recorded input
    candidates: int

    def to_json(self) -> dict:
        return {**self.setting.to_json(), "charge_correction": self.charge is not None,
                "measured_error": round(self.error, 6), "default_error": round(self.default_error, 6),
                "candidates": self.candidates}


def tunable_layers(layers: list[dict]) -> list[dict]:
    """The layer entries of calibrated ReLU neurons (not QCFS layers, not UGO subnets)."""
    return [l for l in layers if l.get("op") in ("IFNeuron", "SignedIFNeuron") and "norm" in l
            and l["norm"] != "qcfs" and not l.get("dead")]


def tune(ann_path: str | Path, ann: onnx.ModelProto, calibration: Calibration, options: ConvertOptions,
         data: Dataset, samples: int = SAMPLES, progress: Progress | None = None, refit: bool = True
         ) -> tuple[list[LayerChoice], list[Refit], dict[str, np.ndarray]]:
    """Choose every ReLU layer's conversion (module docstring) and, with `refit`, refit the linear layers
    (ann2snn/refit.py) in the same pass, each before the neurons it feeds are chosen. `options` give T and what
    is not searched. Returns the choices, the refits and the refitted initializers by name."""
    T = options.default_T
    probe = replace(options, neuron=Neuron.SIGNED, tmax=None, layer_settings={})
    # the calibration was checked against the file by the caller; `ann` may be it with its input dims bound
    proto = convert_model(ann, calibration, probe, check=False, source_fingerprint=calibration.fingerprint).model
    layers = _with_outputs(proto, tunable_layers(_layers(proto)))
    linears = linear_layers(proto, ann) if refit else []
    steps = T * max(WINDOWS) if linears else T
    feeds = next(data.batches(samples))
    reference = AnnReference(ann_path, spiking_from_proto(proto, Path(ann_path)),
                             list(dict.fromkeys([l["node_output"] for l in layers] + [x.input for x in linears])))
    _, activations = reference(feeds)
    linears = [x for x in linears if x.input in activations]
    stops = {l["node"]: l for l in layers} | {x.node: x for x in linears}
    paused = _paused_run(proto, feeds, steps, list(stops))
    if paused is None:
        order = [n.name for n in proto.graph.node if n.name in stops]
    else:
        order = [paused.names[i] for i in paused.stops]
    last_use = {(stops[name].input if isinstance(stops[name], Linear) else stops[name]["node_output"]): k
                for k, name in enumerate(order)}
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    choices, refits, refitted = [], [], {}
    done = 0
    try:
        for k, name in enumerate(order):
            for tensor in [t for t, last in last_use.items() if last < k and t in activations]:
                del activations[tensor]  # the ANN's tensors no later stop reads
            if paused is not None:
                paused.advance()
            item = stops[name]
            if isinstance(item, Linear):
                if paused is not None:
                    rates = paused.means(item.input, tuple(T * w for w in WINDOWS))
                else:
                    seq = _input_current(proto, item.input, feeds, steps).astype(np.float64)
                    rates = None if np.all(seq == seq[:1]) else [seq[:T * w].mean(axis=0) for w in WINDOWS]
                if rates is None:  # it reads the presented input as it is: nothing to fit
                    continue
                record, values = fit_linear(item, inits, rates, activations[item.input])
                refits.append(record)
                if values:
                    inits.update(values)
                    refitted.update(values)
                    _set_initializers(proto, values)
                    if paused is not None:
                        paused.set(values)
                continue
            layer = item
            if paused is not None:
                current = paused.tensor(layer["input"], T)
                if len(current) != T:
                    current = np.ascontiguousarray(np.broadcast_to(current, (T,) + current.shape[1:]))
            else:
                current = _input_current(proto, layer["input"], feeds, T)
            target = activations.get(layer["node_output"])
            done += 1
            if target is None:
                continue
            stats = calibration.stats(layer["input"], layer["node"])
            choice = _choose(layer, stats, current, target.astype(np.float64), options, T, _observer(proto, layer))
            values = _apply(proto, layer, choice, stats, T)
            if paused is not None:
                paused.set(values)
            choices.append(choice)
            if progress:
                progress(done, len(layers))
    finally:
        if paused is not None:
            paused.close()
    return choices, refits, refitted


def _paused_run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], T: int, stops: list[str]) -> PausedRun | None:
    """The search's one pass over the network, stopping before each of `stops` (node names); None where the
    NumPy engine cannot run the model (then each input is recorded by a run of its own under onnxruntime)."""
    try:
        engine = NumpyEngine(spiking_from_proto(proto, Path("probe")))
    except SpikingModelError:
        return None
    order = {n.name: i for i, n in enumerate(engine.nodes)}
    return PausedRun(engine, feeds, T, sorted(stops, key=order.__getitem__))


def _set_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    for init in model.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))


def apply_refits(model: onnx.ModelProto, refitted: dict[str, np.ndarray]) -> None:
    """Give the final file the refitted weights and biases (the same initializer names as the search's)."""
    names = {t.name for t in model.graph.initializer}
    missing = set(refitted) - names
    if missing:
        raise RuntimeError(f"refitted initializers {sorted(missing)} are not in the converted file")
    _set_initializers(model, refitted)


def settings_of(choices: list[LayerChoice]) -> dict[str, LayerSetting]:
    return {c.node: c.setting for c in choices}


def apply_charges(model: onnx.ModelProto, choices: list[LayerChoice]) -> None:
    """Give the final file's neurons their chosen charge corrections (new fire and unfire levels)."""
    nodes = {n.name: n for n in model.graph.node}
    for choice in choices:
        if choice.charge is not None:
            _charge_neuron(model, nodes[choice.node], choice.charge)


def _charge_neuron(model: onnx.ModelProto, node: onnx.NodeProto, charge: np.ndarray) -> None:
    """Start `node`'s membrane `charge` higher: its fire (and unfire) levels lowered by it, per channel, in new
    initializers (a level may be shared with another neuron)."""
    inits = {t.name: t for t in model.graph.initializer}
    rank = len(_shape_of(model, node.input[0]))
    offset = _per_channel(np.asarray(charge, np.float64), rank)
    replaced = set()
    for slot in (2, 3) if node.op_type == "SignedIFNeuron" else (2,):
        level = numpy_helper.to_array(inits[node.input[slot]]).astype(np.float64)
        name = f"{node.name}.{('fire', 'unfire')[slot - 2]}_level.charged"
        model.graph.initializer.append(numpy_helper.from_array((level - offset).astype(np.float32), name))
        replaced.add(node.input[slot])
        node.input[slot] = name
    used = {i for n in model.graph.node for i in n.input} | {i.name for i in model.graph.input}
    keep = [t for t in model.graph.initializer if t.name in used or t.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _layers(proto: onnx.ModelProto) -> list[dict]:
    return json.loads({p.key: p.value for p in proto.metadata_props}[Meta.LAYERS])


def _with_outputs(proto: onnx.ModelProto, layers: list[dict]) -> list[dict]:
    """Each layer entry with the tensor its neuron writes (the ANN's ReLU output) as `node_output`."""
    outputs = {n.name: n.output[0] for n in proto.graph.node}
    for layer in layers:
        layer["node_output"] = outputs[layer["node"]]
    return layers


def _input_current(proto: onnx.ModelProto, tensor: str, feeds: dict[str, np.ndarray], T: int) -> np.ndarray:
    """The tensor's value at each of T steps, [T, B, ...], from a run of the spiking model."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    model = spiking_from_proto(probe, Path("probe"))
    model.outputs = [tensor]
    try:
        engine = NumpyEngine(model)
    except SpikingModelError:  # an op without a NumPy kernel (Resize): onnxruntime steps the same file
        engine = OrtEngine(model)
    return np.ascontiguousarray(engine.run(feeds, T).outputs[tensor], np.float32)


def _rate(current: np.ndarray, theta: np.ndarray, setting: LayerSetting, T: int) -> np.ndarray:
    theta32 = np.asarray(theta, np.float32)
    fire = np.asarray(theta * (1.0 - setting.phi), np.float32)
    if setting.neuron is Neuron.SIGNED:
        unfire = np.asarray(-theta * setting.phi, np.float32)
        out, _ = signed_if_neuron([current, theta32, fire, unfire, np.array(T, np.float32)], {}, T)
    else:
        out, _ = if_neuron([current, theta32, fire], {}, T)
    return out.sum(axis=0, dtype=np.float64) / T


def _observer(proto: onnx.ModelProto, layer: dict) -> Callable[[np.ndarray], np.ndarray]:
    """What the chain of maxima that reads the layer's decoded value makes of it (MaxPool neurons, spiking max
    reductions, each the one reader of the one before), as the same functions of a rate; else the identity."""
    steps: list[Callable[[np.ndarray], np.ndarray]] = []
    tensor = layer["node_output"]
    while True:
        readers = [n for n in proto.graph.node if tensor in n.input]
        if len(readers) != 1 or readers[0].op_type not in ("MaxPoolNeuron", "SpikeReduceMax"):
            break
        reader, attrs = readers[0], attributes(readers[0])
        if reader.op_type == "MaxPoolNeuron":
            steps.append(lambda r, a=attrs: KERNELS["MaxPool"]([r], a)[0])
        else:
            steps.append(lambda r, a=attrs: np.max(r, axis=tuple(int(k) for k in a["axes"]),
                                                   keepdims=bool(a.get("keepdims", 1))))
        tensor = reader.output[0]

    def observe(rate: np.ndarray) -> np.ndarray:
        for step in steps:
            rate = step(rate)
        return rate
    return observe


def _choose(layer: dict, stats, current: np.ndarray, target: np.ndarray, options: ConvertOptions,
            T: int, observe: Callable[[np.ndarray], np.ndarray] = lambda r: r) -> LayerChoice:
    rank = current.ndim - 1
    cap = layer.get("cap")
    axes = tuple(i for i in range(target.ndim) if i != 1)
    observed = observe(target)
    scale = max(float(np.mean(observed ** 2)), 1e-12)

    def error(setting: LayerSetting, charge: np.ndarray | None = None) -> float:
        theta, _ = layer_threshold(stats, setting, T, rank, layer["node"], cap)
        x = current if charge is None else _charged(current, charge, rank)
        return float(np.mean((observe(_rate(x, theta, setting, T)) - observed) ** 2)) / scale

    default = options.setting(layer["node"])
    tried = {default: error(default)}
    per_channel = (False, True) if stats.channels is not None and stats.channel_axis == 1 else (False,)
    for neuron in (Neuron.IF, Neuron.SIGNED):
        for norm in NORMS:
            for pc in per_channel:
                setting = LayerSetting(neuron, NormSpec.parse(norm), pc, 0.5)
                if setting not in tried:
                    tried[setting] = error(setting)
    best = min(tried, key=tried.get)
    for phi in PHIS:
        setting = replace(best, phi=phi)
        if setting not in tried:
            tried[setting] = error(setting)
    best = min(tried, key=tried.get)
    # a charge correction on the best few, iterated: the charged rate has a gap of its own
    corrected = {}
    for setting in sorted(tried, key=tried.get)[:CHARGE_CANDIDATES]:
        theta, _ = layer_threshold(stats, setting, T, rank, layer["node"], cap)
        charge = np.zeros(target.shape[1] if target.ndim > 1 else 1)
        for _ in range(CHARGE_ROUNDS):
            gap = (target - _rate(_charged(current, charge, rank), theta, setting, T)).mean(axis=axes)
            charge = charge + T * gap
        corrected[setting] = (error(setting, charge), charge)
    with_charge = min(corrected, key=lambda k: corrected[k][0])
    count = len(tried) + len(corrected) * CHARGE_ROUNDS
    if corrected[with_charge][0] < tried[best]:
        return LayerChoice(layer["node"], with_charge, corrected[with_charge][1], corrected[with_charge][0],
                           tried[default], count)
    return LayerChoice(layer["node"], best, None, tried[best], tried[default], count)


def _charged(current: np.ndarray, charge: np.ndarray, rank: int) -> np.ndarray:
    """The recorded current with `charge` delivered at the first step: the membrane starts that much higher."""
    out = current.copy()
    out[0] += _per_channel(charge, rank).astype(np.float32)
    return out


def _per_channel(values: np.ndarray, rank: int) -> np.ndarray:
    return values.reshape((-1,) + (1,) * (rank - 2)) if rank > 1 else values


def _apply(proto: onnx.ModelProto, layer: dict, choice: LayerChoice, stats, T: int) -> dict[str, np.ndarray]:
    """Give the search model's signed neuron `layer` the chosen setting (an IF choice never fires negative)
    and charge, in its initializers; returns them by name."""
    node = next(n for n in proto.graph.node if n.name == layer["node"])
    rank = len(_shape_of(proto, node.input[0]))
    theta, _ = layer_threshold(stats, choice.setting, T, rank, layer["node"], layer.get("cap"))
    phi = choice.setting.phi
    unfire = -theta * phi if choice.setting.neuron is Neuron.SIGNED else np.full_like(theta, -np.inf)
    fire = theta * (1.0 - phi)
    if choice.charge is not None:
        offset = _per_channel(np.asarray(choice.charge, np.float64), rank)
        fire, unfire = fire - offset, unfire - offset
    values = {node.input[1]: theta, node.input[2]: fire, node.input[3]: unfire}
    values = {name: np.asarray(v, np.float32) for name, v in values.items()}
    _set_initializers(proto, values)
    return values


def _shape_of(proto: onnx.ModelProto, name: str) -> list:
    for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        if vi.name == name:
            return list(vi.type.tensor_type.shape.dim)
    raise KeyError(name)


def tuned(result: ConversionResult, choices: list[LayerChoice], refits: list[Refit] = ()) -> ConversionResult:
    """The final conversion with the search's measurements in its layer entries, in the report and in the
    file's ann2snn.layers, and the refits in its ann2snn.refits."""
    by_node = {c.node: c.to_json() for c in choices}
    for layer in result.layers:
        if layer["node"] in by_node:
            layer["chosen"] = by_node[layer["node"]]
    entry = next(p for p in result.model.metadata_props if p.key == Meta.LAYERS)
    entry.value = json.dumps([{**l, "chosen": by_node[l["node"]]} if l["node"] in by_node else l
                              for l in json.loads(entry.value)])
    if refits:
        onnx.helper.set_model_props(result.model, {**{p.key: p.value for p in result.model.metadata_props},
                                                   Meta.REFITS: json.dumps([r.to_json() for r in refits])})
    return result

"""Bias correction after conversion (SNN Calibration, Li et al. ICML 2021, the "light" pipeline): layer by
layer, measure on calibration data the mean gap per channel between the ANN activation and the SNN's mean
output at T steps, and add it to the bias of the Conv/Gemm that drives the neuron, so the spiking layer's
expected output matches the ANN's. Works on the exported file: it changes initializers only."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ground.data import Dataset, load_dataset
from sim.analysis import neuron_layers
from sim.engine import NumpyEngine
from sim.model import spiking_from_proto, SpikingModel
from snnfile import DRIVE
from sim.ort import OrtEngine
from sim.simulate import AnnReference


@dataclass
class Correction:
    node: str
    bias: str | None  # the initializer that was shifted
    mean_shift: float  # mean over channels of the shift
    skipped: str = ""


def driving_bias(model: onnx.ModelProto, tensor: str) -> tuple[onnx.NodeProto | None, str]:
    """The Conv/Gemm whose output (alone, or as one operand of an Add) is `tensor`, and why not if none."""
    producers = {o: n for n in model.graph.node for o in n.output}
    users: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    node = producers.get(tensor)
    if node is not None and node.op_type == "Add":
        for operand in node.input:
            inner = producers.get(operand)
            if inner is not None and inner.op_type in ("Conv", "Gemm") and users.get(operand) == 1:
                node = inner
                break
    if node is None or node.op_type not in ("Conv", "Gemm"):
        return None, "the neuron's input does not come from a Conv or Gemm (alone or through an Add)"
    if node.op_type == "Gemm" and any(a.name in ("alpha", "beta") and a.f != 1.0 for a in node.attribute):
        return None, "Gemm with alpha or beta"
    return node, ""


def shift_bias(model: onnx.ModelProto, node: onnx.NodeProto, shift: np.ndarray) -> str:
    """Add `shift` to the bias of `node`, through the file's drain gate (a Mul by snn.drive) if it has one;
    a bias made here is gated too, so that drain steps still leave it out."""
    inits = {t.name: t for t in model.graph.initializer}
    gates = {n.output[0]: n for n in model.graph.node if n.op_type == "Mul" and DRIVE in n.input}
    bias = node.input[2] if len(node.input) > 2 else ""
    if bias in gates:
        bias = next(x for x in gates[bias].input if x != DRIVE)
    if bias in inits:
        old = inits[bias]
        value = numpy_helper.to_array(old).astype(np.float64) + shift
        old.CopyFrom(numpy_helper.from_array(value.astype(np.float32), old.name))
        return old.name
    name = f"{node.name}.bias_corrected"
    model.graph.initializer.append(numpy_helper.from_array(shift.astype(np.float32), name))
    read = name
    if DRIVE in {i.name for i in model.graph.input}:
        read = f"{name}.driven"
        position = list(model.graph.node).index(node)
        model.graph.node.insert(position, onnx.helper.make_node("Mul", [name, DRIVE], [read], f"{name}.gate"))
    while len(node.input) < 2:
        node.input.append("")
    if len(node.input) == 2:
        node.input.append(read)
    else:
        node.input[2] = read
    return name


def correct_biases(proto: onnx.ModelProto, path: Path, ann_path: str | Path, data: Dataset, T: int,
                   batch_size: int = 100, engine: str = "onnxruntime") -> tuple[onnx.ModelProto, list[Correction]]:
    """Return a corrected copy of the spiking model and what was shifted, layer by layer in graph order."""
    corrected = onnx.ModelProto()
    corrected.CopyFrom(proto)
    model = _as_spiking(corrected, path)
    layers = neuron_layers(model)
    ann = AnnReference(ann_path, model, sorted({l.output for l in layers}))
    done = []
    for layer in layers:
        node, reason = driving_bias(corrected, layer.input)
        if node is None:
            done.append(Correction(layer.node, None, 0.0, reason))
            continue
        gap = _mean_gap(_as_spiking(corrected, path), layer.node, layer.output, ann, data, T, batch_size, engine)
        if gap is None:
            done.append(Correction(layer.node, None, 0.0, "the ANN has no tensor of this name"))
            continue
        name = shift_bias(corrected, node, gap)
        done.append(Correction(layer.node, name, float(gap.mean())))
    return corrected, done


def correct_with_data(proto: onnx.ModelProto, name: str | Path, ann_path: str | Path, data_path: str | Path,
                      T: int, limit: int | None = None) -> tuple[onnx.ModelProto, list[Correction]]:
    """correct_biases on the samples of a data file (the calibration data, typically)."""
    path = Path(name)
    data = load_dataset(data_path, spiking_from_proto(proto, path).inputs, limit)
    return correct_biases(proto, path, ann_path, data, T)


def _as_spiking(proto: onnx.ModelProto, path: Path) -> SpikingModel:
    return spiking_from_proto(proto, path)


def _mean_gap(model: SpikingModel, node: str, output: str, ann: AnnReference, data: Dataset, T: int,
              batch_size: int, engine: str) -> np.ndarray | None:
    runner = NumpyEngine(model) if engine == "numpy" else OrtEngine(model)
    total, count = None, 0
    for batch in data.batches(batch_size):
        _, values = ann(batch)
        if output not in values:
            return None
        rate = runner.run(batch, T, observe=T).sums[node] / T
        gap = values[output].astype(np.float64) - rate
        axes = tuple(i for i in range(gap.ndim) if i != 1)
        per_channel = gap.sum(axis=axes)
        total = per_channel if total is None else total + per_channel
        count += gap.size // gap.shape[1]
    return total / count

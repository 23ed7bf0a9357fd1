"""Synaptic operations and the energy estimate of a spiking model, from the exported file alone.

Every weighted operator (Conv, ConvTranspose, Gemm, MatMul with a constant) costs its MACs per sample in the
ANN. In the SNN it costs, per sample over the window, MACs x (spikes per neuron of the IF layers that feed
it), when its input is made of spikes: each spike is one accumulate per outgoing synapse (SynOps). An
operator fed by the analog input (direct coding: the first layer) stays dense and costs MACs at every step.
The path from a neuron to a weighted operator may pass through operators that only move, pool or add spikes
(reshapes, padding, max/average pooling, Add, Concat). Energy: 45 nm figures of Horowitz (ISSCC 2014),
4.6 pJ per 32-bit float MAC and 0.9 pJ per accumulate.
Spiking products (SpikeMatMul, SpikeMul) compute one product of their inputs' running sums per step and are
counted as dense MACs (the ANN product's MACs per step); outputs of the estimate-and-correct operators are analog,
so what they feed is dense too. In a few-spikes file an analog stream (a product released once) is non-zero
only at the steps its inputs change, and the layer reading it costs its MACs at those steps only."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from sim.model import SpikingModel
from snnfile import DOMAIN, is_state
from snnfile.operators import Energy, FS_SILENT_THRESHOLD, OPERATORS

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
PRODUCTS = frozenset({"SpikeMatMul", "SpikeMul"})  # weighted layers of two signals
TRANSPARENT = frozenset({"Flatten", "Reshape", "Pad", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout",
                         "AveragePool", "GlobalAveragePool", "MaxPool", "Add", "Sum", "Concat", "Slice", "Split",
                         "ReduceMean", "ReduceSum"}) | {op for op, spec in OPERATORS.items() if spec.energy is Energy.TRANSPARENT}


@dataclass
class WeightedLayer:
    node: str
    op: str
    macs: int  # per sample, one ANN inference
    sources: list[str] | None  # IF layers whose spikes feed it; None: fed by an analog (non-spiking) tensor


def _shape(model: onnx.ModelProto, name: str) -> list[int] | None:
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        if vi.name == name:
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
            return dims if all(d > 0 for d in dims[1:]) else None
    return None


def _macs(model: SpikingModel, node: onnx.NodeProto) -> int:
    out = _shape(model.proto, node.output[0])
    weight = model.constants.get(node.input[1]) if len(node.input) > 1 else None
    if out is not None and node.op_type in PRODUCTS:
        weight = np.zeros(0)
    if out is None or weight is None:
        return 0
    per_sample_out = int(np.prod(out[1:]))
    if node.op_type == "Conv":
        return per_sample_out * int(np.prod(weight.shape[1:]))
    if node.op_type == "ConvTranspose":
        x = _shape(model.proto, node.input[0])
        return int(np.prod(x[1:])) * int(np.prod(weight.shape[1:])) if x else 0
    if node.op_type in PRODUCTS:
        a = _shape(model.proto, node.input[0])
        return per_sample_out * (a[-1] if node.op_type == "SpikeMatMul" and a else 1)
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return per_sample_out * int(weight.shape[1 if trans_b else 0])
    return per_sample_out * int(weight.shape[-2] if weight.ndim >= 2 else weight.shape[0])


def weighted_layers(model: SpikingModel) -> list[WeightedLayer]:
    producers = {o: n for n in model.nodes for o in n.output}
    data_inputs = {s.name for s in model.inputs}

    def sources(tensor: str, seen: set[str]) -> list[str] | None:
        if tensor in seen:
            return []
        seen.add(tensor)
        if tensor in model.constants:
            return []
        node = producers.get(tensor)
        if node is None:
            return None if tensor in data_inputs else []
        energy = OPERATORS[node.op_type].energy if node.domain == DOMAIN else None
        if energy is Energy.ANALOG:
            return None
        if energy is not None and energy is not Energy.TRANSPARENT:
            return [node.name]
        if node.op_type not in TRANSPARENT:
            return None
        found: list[str] = []
        for name in node.input:
            if not name or is_state(name):
                continue
            more = sources(name, seen)
            if more is None:
                return None
            found += more
        return found

    layers = []
    for node in model.nodes:
        if node.op_type in WEIGHTED and node.domain != DOMAIN:
            if node.op_type == "MatMul" and node.input[1] not in model.constants:
                continue
            layers.append(WeightedLayer(node.name, node.op_type, _macs(model, node), sources(node.input[0], set())))
        elif node.op_type in PRODUCTS and node.domain == DOMAIN:
            layers.append(WeightedLayer(node.name, node.op_type, _macs(model, node), None))
    return layers


@dataclass
class EnergyReport:
    ann_macs: int  # per sample
    snn_macs: int  # dense operations of the SNN per sample over the window
    synops: float  # accumulates per sample over the window
    ann_energy_uj: float
    snn_energy_uj: float
    layers: list[dict]

    def to_json(self) -> dict:
        return {"ann_macs": self.ann_macs, "snn_macs": self.snn_macs, "synops": self.synops,
                "ann_energy_uJ": self.ann_energy_uj, "snn_energy_uJ": self.snn_energy_uj,
                "energy_ratio": self.snn_energy_uj / self.ann_energy_uj if self.ann_energy_uj else None,
                "constants": {"E_MAC_pJ": E_MAC_PJ, "E_AC_pJ": E_AC_PJ, "node": "45 nm"}, "layers": self.layers}


def estimate(model: SpikingModel, spikes_per_neuron: dict[str, tuple[int, int]], samples: int,
             steps: int) -> EnergyReport:
    """`spikes_per_neuron`: IF layer -> (total spikes, neurons per sample) over `samples` samples."""
    ann_macs = snn_macs = 0
    synops = 0.0
    rows = []
    added = {layer["sum_node"] for layer in model.layers if "sum_node" in layer}  # UGO output sums
    active = fs_active_steps(model, steps) if model.few_spikes else None
    inputs = {n.name: n.input[0] for n in model.nodes if n.input}
    for layer in weighted_layers(model):
        if layer.node not in added:  # a UGO's output sum is no layer of the ANN
            ann_macs += layer.macs
        if layer.sources is None:
            busy = steps if active is None else len(active.get(inputs[layer.node], range(steps)))
            dense = layer.macs * busy
            snn_macs += dense
            rows.append({"node": layer.node, "op": layer.op, "macs": layer.macs, "input": "analog",
                         "snn_macs": dense, "synops": 0.0, "in_ann": layer.node not in added})
            continue
        spikes = sum(spikes_per_neuron[s][0] for s in layer.sources if s in spikes_per_neuron)
        neurons = sum(spikes_per_neuron[s][1] for s in layer.sources if s in spikes_per_neuron)
        activity = spikes / (samples * neurons) if neurons and samples else 0.0
        ops = layer.macs * activity
        synops += ops
        rows.append({"node": layer.node, "op": layer.op, "macs": layer.macs, "input": "spikes",
                     "spikes_per_input_neuron": activity, "snn_macs": 0, "synops": ops,
                     "in_ann": layer.node not in added})
    return EnergyReport(ann_macs, snn_macs, synops, ann_macs * E_MAC_PJ * 1e-6,
                        (snn_macs * E_MAC_PJ + synops * E_AC_PJ) * 1e-6, rows)


def fs_active_steps(model: SpikingModel, steps: int) -> dict[str, set[int]]:
    """FS coding: for every tensor, the steps at which it is non-zero (a stream of spikes or increments) or
    changes (a running sum and what is computed from it): the input at the first step, an FS neuron in its
    firing steps (the rows of its tables that are not silent), any other operator when one of its inputs is
    (a constant term enters at the first step too). A layer reading an analog stream costs its MACs only
    at those steps."""
    active: dict[str, set[int]] = {x.name: {0} for x in model.inputs}
    everything = set(range(steps))
    for node in model.nodes:
        if node.domain == DOMAIN and node.op_type == "FSNeuron":
            thresholds = np.asarray(model.constants[node.input[1]], np.float32)
            rows = set(np.flatnonzero(~np.all(thresholds.reshape(len(thresholds), -1) == FS_SILENT_THRESHOLD,
                                              axis=1)).tolist())
            last = len(thresholds) - 1
            out = {t for t in range(steps) if min(t, last) in rows}
        elif node.domain == DOMAIN and node.op_type == "Release":
            out = {int(np.asarray(model.constants[node.input[1]]).reshape(-1)[0])}
        else:
            out = set()
            for name in node.input:
                if not name or is_state(name):
                    continue
                out |= {0} if name in model.constants else active.get(name, everything)
        for name in node.output:
            active[name] = out
    return active

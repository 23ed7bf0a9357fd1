"""Reading an exported spiking model and checking that it follows the contract (rewrites/export.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ground.data import input_specs, InputSpec
from ground.errors import SpikingModelError
from ground.load import load_model
from snnfile import contract_version, DEFAULT_DOMAINS, DOMAIN, DRIVE, is_state, Meta, next_name, PRESENT, version_problem



@dataclass
class SpikingModel:
    path: Path
    proto: onnx.ModelProto
    inputs: list[InputSpec]  # data inputs, in order
    outputs: list[str]  # non-state outputs, in order; the first is the decoded one
    state_inputs: list[str]
    constants: dict[str, np.ndarray]
    metadata: dict[str, str]
    # the file's drain gate folded away (fold_drive): the (node, input) pairs that read a gated constant
    gated: frozenset[tuple[int, int]] = frozenset()
    drainable: bool = False  # the file has the gate

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.proto.graph.node)

    @property
    def layers(self) -> list[dict]:
        return json.loads(self.metadata.get(Meta.LAYERS, "[]"))

    @property
    def default_T(self) -> int | None:
        value = self.metadata.get(Meta.DEFAULT_T)
        return int(value) if value and value.isdigit() else None

    @property
    def few_spikes(self) -> bool:
        """FS coding: the input enters at the first step and the decoded output is the sum of the steps'."""
        return self.metadata.get(Meta.CODING) == "fs"

    @property
    def drain_steps(self) -> int:
        """The drain steps the file was converted for (0: none, or a file without the gate)."""
        value = self.metadata.get(Meta.DRAIN_STEPS, "")
        return int(value) if value.isdigit() and self.drainable else 0


def load_spiking(path: str | Path) -> SpikingModel:
    path = Path(path)
    return spiking_from_proto(load_model(path, strict_domains=(DOMAIN,)), path)


def spiking_from_proto(model: onnx.ModelProto, path: Path) -> SpikingModel:
    """Check the contract of an exported model already in memory; `path` names it in errors."""
    outputs = [o.name for o in model.graph.output]
    state_inputs = [i.name for i in model.graph.input if is_state(i.name)]
    for name in state_inputs:
        if next_name(name) not in outputs:
            raise SpikingModelError(f"{path}: state input '{name}' has no output '{name}.next'",
                                    "is this a file exported by `ann2snn convert`?")
    if any(not n.name for n in model.graph.node if n.domain == DOMAIN):
        raise SpikingModelError(f"{path}: a {DOMAIN} node has no name (its spikes are counted by name)",
                                "the file was edited after export; export it again with `ann2snn convert`")
    names = [n.name for n in model.graph.node if n.name]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SpikingModelError(f"{path}: node name(s) used more than once: {', '.join(repeated[:5])}",
                                "the file was edited after export; export it again with `ann2snn convert`")
    numeric = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64,
               onnx.TensorProto.INT32)
    for vi in model.graph.input:
        if vi.name in state_inputs and vi.type.tensor_type.elem_type not in numeric:
            kind = onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type) \
                if vi.type.tensor_type.elem_type in onnx.TensorProto.DataType.values() else "unknown"
            raise SpikingModelError(f"{path}: state input '{vi.name}' is declared {kind}, not a number type",
                                    "the file was edited after export; export it again with `ann2snn convert`")
    declared = {vi.name: _dims(vi) for vi in list(model.graph.input) + list(model.graph.output)}
    for name in state_inputs:
        if declared[name] != declared[next_name(name)]:
            raise SpikingModelError(f"{path}: state input '{name}' is declared {declared[name]} but its output "
                                    f"'{name}.next' {declared[next_name(name)]}",
                                    "the file was edited after export; export it again with `ann2snn convert`")
    data_outputs = [o for o in outputs if not is_state(o)]
    version = contract_version(model.opset_import)
    if version is None:
        raise SpikingModelError(f"{path}: not a spiking model (no {DOMAIN} operators)",
                                "convert it first with `ann2snn convert`")
    problem = version_problem(version)
    if problem:
        raise SpikingModelError(f"{path}: {problem}")
    if not data_outputs:
        raise SpikingModelError(f"{path}: the model has no output besides its state")
    folded, gated = fold_drive(model)
    constants = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    metadata = {p.key: p.value for p in model.metadata_props}
    try:
        layers = json.loads(metadata.get(Meta.LAYERS, "[]"))
    except ValueError:
        layers = None
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise SpikingModelError(f"{path}: metadata 'ann2snn.layers' is not a JSON list of objects",
                                "the file was edited after export; export it again with `ann2snn convert`")
    return SpikingModel(path, folded, input_specs(folded, set(state_inputs)), data_outputs, state_inputs, constants, metadata, gated,
                        folded is not model)


def fold_drive(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, frozenset[tuple[int, int]]]:
    """The file's step at drive 1 without its gates (every Mul by snn.drive, or by an FS file's first-step
    clock snn.present, of a constant or of a data input is dropped and its readers read the operand), and the
    (node index, input index) pairs that read a gated constant, indexed in the folded model. Other readers of
    snn.drive (the step count) keep reading it. An FS file is then run as one input step and drain steps."""
    graph = proto.graph
    drives = ({DRIVE} & {i.name for i in graph.input}) | ({PRESENT} & {o for n in graph.node for o in n.output})
    if not drives:
        return proto, frozenset()
    constants = {t.name for t in graph.initializer}
    data = {i.name for i in graph.input} - constants
    # a gate on a tensor computed in the graph (an FS file's class token) stays: the engines step it
    gates = {n.output[0]: operand for n in graph.node
             if n.op_type == "Mul" and n.domain in DEFAULT_DOMAINS and drives & set(n.input) and len(n.input) == 2
             and (operand := next(x for x in n.input if x not in drives)) in constants | data}
    folded = onnx.ModelProto()
    folded.CopyFrom(proto)
    if DRIVE in drives and DRIVE not in constants:  # a file read after drain steps declares the input without a default
        folded.graph.initializer.append(onnx.helper.make_tensor(DRIVE, onnx.TensorProto.FLOAT, [], [1.0]))
    kept = [n for n in folded.graph.node if not (n.op_type == "Mul" and n.output[0] in gates)]
    gated = set()
    for i, node in enumerate(kept):
        for k, name in enumerate(node.input):
            if name in gates:
                node.input[k] = gates[name]
                if gates[name] in constants:
                    gated.add((i, k))
    del folded.graph.node[:]
    folded.graph.node.extend(kept)
    kept_info = [vi for vi in folded.graph.value_info if vi.name not in gates]
    del folded.graph.value_info[:]
    folded.graph.value_info.extend(kept_info)
    return folded, frozenset(gated)


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]

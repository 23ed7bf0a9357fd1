"""Export of the spiking graph as a standard ONNX model computing ONE time step.

Contract (public; other runtimes step our files knowing only this):
- every piece of state is a graph input `state.<node>.<var>` with a matching output `state.<node>.<var>.next`;
  every state starts at zero: feed zeros at t = 0 and the `.next` outputs afterwards;
- the other inputs and outputs are the original model's, same names, same order, before the state ones;
  the input is presented at every step and each output is that step's value, whose running mean over the
  steps so far is the decoded result;
- spiking operators are nodes of domain ai.ann2snn, each shipped as a model-local function of standard ops.
"""
from __future__ import annotations

import gc
import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from rewrites import __version__, drive
from rewrites.config import ConvertOptions
from ground.errors import ModelError
from ground.protos import default_opset, WEIGHTLESS_ABOVE, without_weights
from snnfile import CONTRACT, DOMAIN, DOMAIN_VERSION, DRIVE, Meta
from snnfile.bodies import function_body
from snnfile.operators import OPERATORS
from ground.sessions import Session

class SharedValues(LazyValues):
    """NumPy values already in memory, standing where exporting the graph and importing it again would put
    a LazyValues of the exported tensor, and behaving like one: the shape is a list, the first access to
    `values` loads a C-ordered copy (the constant's own from then on), and `tensor` is the tensor the export
    would have written. Until then the array is shared, not copied."""

    def __init__(self, array: np.ndarray, data_location: int | None = None):
        self.array = array
        self.shape = list(array.shape)
        self.dtype = array.dtype
        self.nbytes = array.nbytes
        self.data_location = data_location

    @property
    def tensor(self) -> onnx.TensorProto:
        tensor = helper.make_tensor("", dtype_to_onnx(self.dtype), self.shape, self.array.tobytes(), raw=True)
        if self.data_location is not None:
            tensor.data_location = self.data_location
        return tensor

    def load(self) -> np.ndarray:
        return np.array(self.array, order="C")

    def __str__(self) -> str:
        return f"SharedValues (shape={self.shape}, dtype={self.dtype})"


def large_constants(graph: gs.Graph) -> dict[str, gs.Constant]:
    """The graph's initializers of more than WEIGHTLESS_ABOVE bytes, by name (not those of subgraphs)."""
    large = {}
    for name, tensor in graph.tensors().items():
        if not isinstance(tensor, gs.Constant) or isinstance(tensor._values, SparseValues):
            continue
        values = tensor._values
        if isinstance(values, SharedValues):
            numeric = values.dtype.kind in "biufc"
        elif isinstance(values, LazyValues):
            numeric = values.tensor.data_type != onnx.TensorProto.STRING
        else:
            numeric = values.dtype.kind in "biufc"
        if numeric and values.nbytes > WEIGHTLESS_ABOVE:
            large[name] = tensor
    return large


def _stub(tensor: gs.Constant) -> onnx.TensorProto:
    """A TensorProto with the constant's name, exported type and dims and no data (external data at a location
    that does not exist), as `without_weights` writes them."""
    values = tensor._values
    if isinstance(values, SharedValues):
        data_type, dims = dtype_to_onnx(values.dtype), list(values.shape)
    elif isinstance(values, LazyValues):
        data_type, dims = values.tensor.data_type, list(values.tensor.dims)
    else:
        data_type, dims = dtype_to_onnx(tensor.export_dtype), list(values.shape)
    stub = onnx.TensorProto(name=tensor.name, data_type=data_type, dims=dims)
    stub.data_location = onnx.TensorProto.EXTERNAL
    stub.external_data.add(key="location", value="(weights left out)")
    return stub


def graph_to_model(graph: gs.Graph, weights: bool = True, release: bool = False) -> onnx.ModelProto:
    """What `gs.export_onnx(graph, do_type_check=False)` returns, without its copies of the weights.

    onnx-graphsurgeon builds the initializers in a list, copies them into a GraphProto, then copies that into
    the model: three copies of the weights at its peak. Here the large initializers are exported as stubs and
    then filled in place, one tensor at a time. `weights=False` leaves them as stubs (as `without_weights`
    does): a model for shape inference and checks. `release=True` re-points each large constant of NumPy
    values at its exported tensor once it is written, so that the graph's copy is freed as the model's grows
    (the values read the same; use it when the graph is about to be dropped)."""
    large = large_constants(graph)
    saved = {name: tensor._values for name, tensor in large.items()}
    try:
        for tensor in large.values():
            tensor._values = LazyValues(_stub(tensor))
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for name, tensor in large.items():
            tensor._values = saved[name]
    if not weights:
        return model
    for init in model.graph.initializer:
        tensor = large.get(init.name)
        if tensor is None:
            continue
        # as gs exports it: a lazily loaded tensor as it was read, NumPy values through its conversion
        init.CopyFrom(OnnxExporter.export_tensor_proto(tensor))
        if release and (isinstance(tensor._values, SharedValues) or isinstance(tensor._values, np.ndarray) and
                        dtype_to_onnx(tensor.dtype) == dtype_to_onnx(tensor.export_dtype)):
            tensor._values = LazyValues(init)
    return model


def graph_weights(graph: gs.Graph, large: dict[str, gs.Constant] | None = None) -> dict[str, np.ndarray]:
    """The values of the graph's large initializers as `graph_to_model` would export them, read into NumPy
    arrays without being kept in the graph (a lazily loaded constant stays lazy)."""
    out = {}
    for name, tensor in (large_constants(graph) if large is None else large).items():
        values = tensor._values
        if isinstance(values, SharedValues):
            out[name] = np.ascontiguousarray(values.array)
        elif isinstance(values, LazyValues):
            out[name] = onnx.numpy_helper.to_array(values.tensor)
        elif dtype_to_onnx(tensor.dtype) == dtype_to_onnx(tensor.export_dtype):
            out[name] = np.ascontiguousarray(values)
        else:
            out[name] = onnx.numpy_helper.to_array(OnnxExporter.export_tensor_proto(tensor))
    return out


def weights_to_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its large initializers turned into graph inputs of the same type and shape: the checker
    sees the same graph without a copy of the weights."""
    skeleton = without_weights(model)
    large = [t for t in skeleton.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    kept = [t for t in skeleton.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    del skeleton.graph.initializer[:]
    skeleton.graph.initializer.extend(kept)
    skeleton.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in large)
    return skeleton


def spiking_nodes(graph: gs.Graph) -> list[gs.Node]:
    return [n for n in graph.nodes if n.domain == DOMAIN]


def _with_budget(layers: list[dict], gated: drive.DriveGate) -> list[dict]:
    """Layer entries with the signed neurons' spike budget as the file holds it: the steps with drive so far
    ('steps') or none (null) where the gate replaced the conversion's T."""
    budget = set(gated.budget)
    kind = "steps" if gated.drive is not None else None
    return [{**layer, "tmax": kind} if layer["node"] in budget else layer for layer in layers]


def export_spiking(graph: gs.Graph, source: onnx.ModelProto, options: ConvertOptions,
                   layers: list[dict], fingerprint: str, fs_steps: int = 0) -> onnx.ModelProto:
    """`fs_steps`: under FS coding, the steps a runtime must run (the file's default T)."""
    graph.cleanup().toposort()
    gated = drive.first_step_gate(graph) if options.fs else drive.gate(graph, default_budget=options.tmax is None)
    graph.toposort()
    used = {}
    for node in spiking_nodes(graph):
        spec = OPERATORS[node.op]
        used[spec.op_type] = spec
        k = len(spec.state)
        graph.inputs.extend(node.inputs[len(node.inputs) - k:])
        graph.outputs.extend(node.outputs[1:1 + k])
    if gated.drive is not None:
        graph.inputs.append(gated.drive)
    opset = default_opset(source)
    # constants that passes replaced (weight_norm's scaled weights) are garbage held in graphsurgeon's reference
    # cycles, with any values they loaded: free them before the model's copy of the weights is built
    gc.collect()
    model = graph_to_model(graph, release=True)
    if gated.drive is not None and not options.drain_steps:
        # a default of 1: a runtime that does not know the input steps with input. A file read after drain steps
        # has none: reading it needs them (and onnxruntime lists an input with a default as an initializer only)
        model.graph.initializer.append(helper.make_tensor(DRIVE, onnx.TensorProto.FLOAT, [], [1.0]))
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    model.ir_version = max(source.ir_version, 8)
    model.functions.extend(function_body(spec, opset) for spec in used.values())
    model.producer_name = "ann2snn"
    model.producer_version = __version__
    meta = {p.key: p.value for p in source.metadata_props}
    meta.update({
        Meta.VERSION: __version__,
        Meta.CONTRACT: CONTRACT,
        Meta.CODING: options.coding.value,
        Meta.DECODING: "sum" if options.fs else "mean",
        Meta.DEFAULT_T: str(fs_steps if options.fs else options.default_T),
        Meta.PHI: str(options.phi),
        Meta.NORM: str(options.norm),
        Meta.NONLINEAR: options.nonlinear.value,
        Meta.SOURCE_FINGERPRINT: fingerprint,
        Meta.LAYERS: json.dumps(_with_budget(layers, gated)),
        Meta.DRAIN_STEPS: str(options.drain_steps if gated.drive is not None else 0),
    })
    if gated.reason:
        meta[Meta.NO_DRAIN] = gated.reason
    if options.fs:
        meta[Meta.FS_K] = str(options.fs_K)
        meta[Meta.NO_DRAIN] = "few-spikes coding: the input and the biases enter at the first step only"
    del model.metadata_props[:]
    for key in sorted(meta):
        model.metadata_props.add(key=key, value=meta[key])
    try:  # on a copy without the weights: both serialise the whole model otherwise
        skeleton = onnx.shape_inference.infer_shapes(weights_to_inputs(model), strict_mode=True)
        onnx.checker.check_model(skeleton, full_check=True)
    except Exception as exc:  # the checker raises several types
        raise ModelError(f"the exported spiking model failed the ONNX check: {str(exc).splitlines()[0]}",
                         "rerun with --debug and report it") from exc
    # and onnxruntime must load it (kernels for every kept op and type), before anything is written
    Session(skeleton, "the exported spiking model", optimize=False)
    del model.graph.value_info[:]
    model.graph.value_info.extend(skeleton.graph.value_info)
    return model

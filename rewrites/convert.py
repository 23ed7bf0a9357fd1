"""The library entry points behind `inspect` and `convert`: normalise, self-check, rewrite, export."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx
from onnx_graphsurgeon.ir.tensor import LazyValues

from ground.data import input_specs
from rewrites.calibration.stats import Calibration
from rewrites.config import ConvertOptions
from ground.errors import PassError, UnsupportedNode, UnsupportedNodesError
from rewrites.export import (SharedValues, export_spiking, graph_to_model, graph_weights, large_constants,
                             weights_to_inputs)
from ground.load import load_model, non_finite_constants, NonFinite
from ground.protos import default_opset, fingerprint, with_inferred_types
from rewrites.optable import Conversion, NodeConversion
from rewrites.passes import (CLAIMS, KEPT, NORMALISE, SPIKING, SPIKING_FS, PassContext, PassReport, converting_pass,
                             run_passes, verdicts)
from rewrites.passes import allow_float, batch_shapes, decoded_head, fold_constants, fuse_softmax, max_to_relu
from ground.sessions import Session, WEIGHTS_AS_INPUTS_ABOVE
from rewrites.shapes import DynamicInput, bind_input_shapes, dynamic_inputs, resolve_input_shapes


def import_graph(model: onnx.ModelProto, infer: bool = False) -> gs.Graph:
    """The model as a graph; its weights stay in `model` and are read lazily. `infer` first runs shape
    inference (on a weightless copy) so that every tensor has its type and shape."""
    if infer:
        with with_inferred_types(model):
            graph = gs.import_onnx(model)
    else:
        graph = gs.import_onnx(model)
    graph.toposort()
    return graph


def to_model(graph: gs.Graph, like: onnx.ModelProto, weights: bool = True) -> onnx.ModelProto:
    """The graph as a model with `like`'s opsets and IR version. `weights=False`: its large initializers
    without their data (see `graph_to_model`)."""
    model = graph_to_model(graph, weights=weights)
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    model.ir_version = like.ir_version
    return model


def reimport(graph: gs.Graph, like: onnx.ModelProto) -> gs.Graph:
    """`import_graph(to_model(graph, like), infer=True)` without a copy of the weights: the graph is
    exported and imported without its large initializers, whose constants then take the old graph's values
    (lazily loaded tensors of the source model stay so; NumPy values are shared through SharedValues, which
    reads like the LazyValues the round trip would have made)."""
    large = large_constants(graph)
    fresh = import_graph(to_model(graph, like, weights=False), infer=True)
    for name, tensor in fresh.tensors().items():
        old = large.get(name)
        if old is None or not isinstance(tensor, gs.Constant):
            continue
        values = old._values
        # data_location as the importer sets it from the exported tensor
        if isinstance(values, SharedValues):
            tensor._values, tensor.data_location = values, values.data_location
        elif isinstance(values, LazyValues):  # a tensor of the source model: exported as it is
            tensor._values = values
            tensor.data_location = int(values.tensor.data_location) if values.tensor.HasField("data_location") \
                else None
        elif old._export_dtype is None or dtype_to_onnx(old.dtype) == dtype_to_onnx(old.export_dtype):
            tensor._values = SharedValues(values, old.data_location)
            tensor.data_location = old.data_location
        else:  # exported in another type: read back as exported
            tensor._values = LazyValues(OnnxExporter.export_tensor_proto(old))
            tensor.data_location = old.data_location
    return fresh


def normalise(model: onnx.ModelProto, options: ConvertOptions | None = None
              ) -> tuple[gs.Graph, list[PassReport]]:
    """Run the normalising passes (same function, simpler graph) and re-infer shapes."""
    graph = import_graph(model, infer=True)
    reports = run_passes(graph, NORMALISE, PassContext(options or ConvertOptions()))
    return reimport(graph, model), reports


SCALE_FLOOR = 1e-2  # with rtol 1e-4: an absolute error of 1e-6 always passes


def self_check(original: onnx.ModelProto, rewritten: onnx.ModelProto | gs.Graph, what: str, seed: int = 0,
               rtol: float = 1e-4) -> float:
    """Run both models on the same random inputs; raise PassError if they differ. Returns the max error
    relative to the largest output magnitude, or to SCALE_FLOOR where that is smaller: float32 kernels have
    absolute errors of about 1e-7 (onnxruntime's Sigmoid is a polynomial), and an output near zero on random
    inputs (a text detector's probability map, 2.4e-6 at most) would turn them into relative errors of
    percents. `rewritten` may be a graph (with the opsets of `original`): a large one runs with its weights
    fed from its constants, not from an exported copy."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in input_specs(original):
        dims = [d if isinstance(d, int) and d > 0 else 2 for d in spec.shape]
        feeds[spec.name] = rng.random(dims).astype(spec.dtype) if spec.dtype.kind == "f" \
            else rng.integers(0, 2, dims).astype(spec.dtype)
    a = _run(original, feeds, "the model")
    name_after = f"the model after {what}"
    b = _run_graph(rewritten, original, feeds, name_after) if isinstance(rewritten, gs.Graph) \
        else _run(rewritten, feeds, name_after)
    worst = 0.0
    for name, x, y in zip([o.name for o in original.graph.output], a, b):
        scale = max(float(np.abs(x).max()), SCALE_FLOOR)
        err = float(np.abs(x.astype(np.float64) - y).max()) / scale
        worst = max(worst, err)
        if err > rtol:
            raise PassError(f"{what} changed output '{name}': max error {err:.2e} relative to its range",
                            "rerun with --skip-pass to find the pass, and report it")
    return worst


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], name: str) -> list[np.ndarray]:
    return Session(model, name, optimize=False).run(None, feeds)


def _run_graph(graph: gs.Graph, like: onnx.ModelProto, feeds: dict[str, np.ndarray], name: str
               ) -> list[np.ndarray]:
    """`_run(to_model(graph, like), ...)`. Above WEIGHTS_AS_INPUTS_ABOVE bytes of weights the session, like
    Session's own, takes the large initializers as inputs; their arrays are read from the graph's constants
    here, so no model with a copy of the weights is built."""
    large = large_constants(graph)
    if sum(t._values.nbytes for t in large.values()) <= WEIGHTS_AS_INPUTS_ABOVE:
        return _run(to_model(graph, like), feeds, name)
    skeleton = weights_to_inputs(to_model(graph, like, weights=False))
    weights = graph_weights(graph, large)
    return Session(skeleton, name, optimize=False).run(None, {**feeds, **weights})


@dataclass
class ModelSummary:
    inputs: list[dict]
    outputs: list[dict]
    parameters: int
    nodes: list[NodeConversion]
    opset: int
    non_finite: list[NonFinite] = field(default_factory=list)  # +-inf constants, where each is used
    dynamic: list[DynamicInput] = field(default_factory=list)  # inputs with dynamic dims past the batch

    @property
    def converts(self) -> bool:
        """Every node converts and every dynamic input can be bound to a static shape."""
        return all(n.conversion.converts for n in self.nodes) and all(d.bindable for d in self.dynamic)

    def to_dict(self) -> dict:
        """As `inspect --json` prints it (less the model's path)."""
        return {"opset": self.opset, "parameters": self.parameters, "inputs": self.inputs, "outputs": self.outputs,
                "ops": self.op_table(), "non_finite": [vars(c) | {"uses": list(c.uses)} for c in self.non_finite],
                "dynamic_inputs": [d.to_json() for d in self.dynamic]}

    def op_table(self) -> list[dict]:
        """Per op type and conversion: count and node names."""
        groups: dict[tuple[str, Conversion, bool], list[NodeConversion]] = {}
        for n in self.nodes:
            groups.setdefault((n.op_type, n.conversion, n.reason == allow_float.ENCODER), []).append(n)
        rows = []
        for (op, conv, encoder), members in sorted(groups.items(), key=lambda kv: (kv[0][1].converts, kv[0][0])):
            text = "input encoder (kept as is)" if encoder else conv.value
            by = None if encoder else converting_pass(conv)
            rows.append({"op": op, "count": len(members), "conversion": text, "converts": conv.converts,
                         "pass": by.name if by else None, "reason": members[0].reason,
                         "nodes": [m.node for m in members]})
        return rows


def _io(values) -> list[dict]:
    out = []
    for vi in values:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        out.append({"name": vi.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(
            tt.elem_type).name if tt.elem_type else "?"})
    return out


def summarize(model: onnx.ModelProto) -> ModelSummary:
    inits = {t.name for t in model.graph.initializer}
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    params += sum(int(np.prod(a.t.dims)) for n in model.graph.node if n.op_type == "Constant"  # paddle2onnx's weights
                  for a in n.attribute if a.HasField("t"))
    graph = import_graph(model, infer=True)
    # Constant nodes become values the matchers read; Max(x, 0) is a ReLU; shape-computed Reshape targets
    # become constants; the exp/sum/divide softmax loses its ReduceMax guard
    run_passes(graph, (fold_constants.PASS, max_to_relu.PASS, batch_shapes.PASS, fuse_softmax.PASS), PassContext())
    return ModelSummary(_io([i for i in model.graph.input if i.name not in inits]), _io(model.graph.output),
                        params, _with_encoder(graph, verdicts(graph), model), default_opset(model),
                        non_finite_constants(model), dynamic_inputs(model))


def _with_encoder(graph: gs.Graph, conversions: list[NodeConversion], model: onnx.ModelProto
                  ) -> list[NodeConversion]:
    """The input encoder as allow_float keeps it: float operators, as they are (with or without --allow-float);
    nodes that read an infinite mask on activations: unsupported, as `refuse_masks` says in convert."""
    encoder = set(allow_float.input_encoder(graph, conversions))
    masked = {node: reason for node, reason in masked_nodes(model)}
    head = {n.name for n in decoded_head.head_nodes(graph)}
    return [NodeConversion(c.node, c.op_type, Conversion.FLOAT, allow_float.ENCODER) if c.node in encoder
            else NodeConversion(c.node, c.op_type, Conversion.UNSUPPORTED, masked[c.node]) if c.node in masked
            else NodeConversion(c.node, c.op_type, Conversion.HEAD, "") if c.node in head
            else c for c in conversions]


def masked_nodes(model: onnx.ModelProto, found: list[NonFinite] | None = None) -> list[tuple[str, str]]:
    """(node, reason) of every node that reads an infinite constant mixed into an input-dependent tensor
    (an attention mask of -inf added before Softmax): calibration and the spiking operators need finite
    activations, so these are not converted yet. `found`: non_finite_constants(model), when known."""
    return [(node, f"reads the infinite mask '{c.tensor}' on input-dependent values") for c in
            (non_finite_constants(model) if found is None else found) for node in c.masks]


def refuse_masks(model: onnx.ModelProto, path: str | Path = "model", found: list[NonFinite] | None = None) -> None:
    """Raise UnsupportedNodesError, before any calibration, where `masked_nodes` finds something."""
    masked = masked_nodes(model, found)
    if masked:
        by_name = {n.name: n for n in model.graph.node}
        nodes = [UnsupportedNode(node, by_name[node].op_type, [None for i in by_name[node].input if i], reason)
                 for node, reason in masked]
        raise UnsupportedNodesError(f"{path}: {len(nodes)} node(s) cannot be converted: "
                                    + "; ".join(n.describe() for n in nodes), nodes,
                                    "export the model with a finite mask (e.g. -1e4 instead of -inf) or without it")


def inspect_model(path: str | Path, input_shapes: dict | None = None) -> ModelSummary:
    """`input_shapes` (--input-shape): the model is inspected bound to them, as `convert` binds it."""
    model = load_model(path)
    if input_shapes:
        bind_input_shapes(model, resolve_input_shapes(model, input_shapes, model_path=str(path)))
    return summarize(model)


def merge_layers(reports: list[PassReport]) -> list[dict]:
    """One entry per node, in order of first appearance: a later pass's entry for the same node (weight_norm
    on a neuron of relu_to_if) adds its keys to the earlier one."""
    merged: dict[str, dict] = {}
    for layer in (layer for r in reports for layer in r.layers):
        merged.setdefault(layer["node"], {}).update(layer)
    return list(merged.values())


DEFAULT_T = 32


def suggested_T(model: onnx.ModelProto) -> int:
    """L for a network trained with QCFS activations of one L (zero expected error at T = L), else 32."""
    from rewrites.patterns.qcfs import qcfs_levels
    graph, _ = normalise(model)
    return qcfs_levels(graph) or DEFAULT_T


@dataclass
class ConversionResult:
    model: onnx.ModelProto
    reports: list[PassReport]
    ops_before: Counter
    ops_after: Counter
    layers: list[dict]
    normalise_error: float
    kept_float: list[NodeConversion] = field(default_factory=list)
    corrections: list = field(default_factory=list)  # bias corrections applied after export
    ugo_fits: list[dict] = field(default_factory=list)


def unsupported_nodes(graph: gs.Graph, remaining: list[NodeConversion]) -> list[UnsupportedNode]:
    """Name, op type, input shapes (from shape inference) and reason of each node left unconverted."""
    by_name = {n.name: n for n in graph.nodes}

    def shape(tensor) -> list | None:
        return None if tensor.shape is None else [d if isinstance(d, int) else str(d) for d in tensor.shape]

    return [UnsupportedNode(n.node, n.op_type,
                            [shape(i) for i in by_name[n.node].inputs if i.name] if n.node in by_name else [],
                            n.reason or n.conversion.value)
            for n in remaining]


def convert_model(model: onnx.ModelProto, calibration: Calibration, options: ConvertOptions,
                  model_path: str | Path = "model", calib_path: str | Path = "calibration",
                  check: bool = True, source_fingerprint: str | None = None) -> ConversionResult:
    """`source_fingerprint`: of the file as given, where `model` is it with its dynamic input dims bound
    (rewrites/shapes.py): the calibration and the exported file refer to that file."""
    fp = source_fingerprint or fingerprint(model)
    calibration.check_model(fp, calib_path, model_path)
    refuse_masks(model, model_path)
    ops_before = Counter(n.op_type for n in model.graph.node)
    graph, reports = normalise(model, options)
    error = self_check(model, graph, "normalising passes") if check else float("nan")
    ctx = PassContext(options, calibration, claims=CLAIMS)
    reports += run_passes(graph, SPIKING_FS if options.fs else SPIKING, ctx)
    done = KEPT | {Conversion.FLOAT}  # float: kept exact by allow_float or by a pass
    remaining = [n for n in verdicts(graph, frozenset(ctx.kept_float)) if n.conversion not in done]
    if remaining:
        unsupported = unsupported_nodes(graph, remaining)
        listing = "; ".join(n.describe() for n in unsupported[:20])
        more = f" and {len(remaining) - 20} more (all in --json)" if len(remaining) > 20 else ""
        ops = ",".join(sorted({n.op_type for n in remaining}))
        raise UnsupportedNodesError(f"{model_path}: {len(remaining)} node(s) cannot be converted: {listing}{more}",
                                    unsupported,
                                    f"run `ann2snn inspect` for the full table, or keep them as float operators "
                                    f"with --allow-float {ops}")
    layers = merge_layers(reports)
    snn = export_spiking(graph, model, options, layers, fp, ctx.fs_steps)
    ops_after = Counter(n.op_type for n in snn.graph.node)
    kept = [NodeConversion(n, "", Conversion.FLOAT) for n in ctx.kept_float]
    return ConversionResult(snn, reports, ops_before, ops_after, layers, error, kept, ugo_fits=ctx.ugo_fits)

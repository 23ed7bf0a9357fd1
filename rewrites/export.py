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

import json

import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from rewrites import __version__
from rewrites.config import ConvertOptions
from rewrites.errors import ModelError
from rewrites.graph import default_opset, without_weights
from rewrites.neurons import DOMAIN, DOMAIN_VERSION, OPERATORS

CONTRACT = ("one time step per call; inputs state.* start at zero and take their .next outputs at the next "
            "step; the first non-state output is the step's value, decoded as the running mean over steps")


def _weights_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
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


def export_spiking(graph: gs.Graph, source: onnx.ModelProto, options: ConvertOptions,
                   layers: list[dict], fingerprint: str) -> onnx.ModelProto:
    graph.cleanup().toposort()
    used = {}
    for node in spiking_nodes(graph):
        spec = OPERATORS[node.op]
        used[spec.op_type] = spec
        k = len(spec.state)
        graph.inputs.extend(node.inputs[len(node.inputs) - k:])
        graph.outputs.extend(node.outputs[1:1 + k])
    opset = default_opset(source)
    model = gs.export_onnx(graph, do_type_check=False)
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    model.ir_version = max(source.ir_version, 8)
    model.functions.extend(spec.function(opset) for spec in used.values())
    model.producer_name = "ann2snn"
    model.producer_version = __version__
    meta = {p.key: p.value for p in source.metadata_props}
    meta.update({
        "ann2snn.version": __version__,
        "ann2snn.contract": CONTRACT,
        "ann2snn.coding": "direct",
        "ann2snn.decoding": "mean",
        "ann2snn.default_T": str(options.default_T),
        "ann2snn.phi": str(options.phi),
        "ann2snn.norm": str(options.norm),
        "ann2snn.nonlinear": options.nonlinear.value,
        "ann2snn.source_fingerprint": fingerprint,
        "ann2snn.layers": json.dumps(layers),
    })
    del model.metadata_props[:]
    for key in sorted(meta):
        model.metadata_props.add(key=key, value=meta[key])
    try:  # on a copy without the weights: both serialise the whole model otherwise
        skeleton = onnx.shape_inference.infer_shapes(_weights_as_inputs(model), strict_mode=True)
        onnx.checker.check_model(skeleton, full_check=True)
    except Exception as exc:  # the checker raises several types
        raise ModelError(f"the exported spiking model failed the ONNX check: {str(exc).splitlines()[0]}",
                         "rerun with --debug and report it") from exc
    del model.graph.value_info[:]
    model.graph.value_info.extend(skeleton.graph.value_info)
    return model

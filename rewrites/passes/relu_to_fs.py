"""relu_to_fs: ReLU and Clip(0, a) -> few-spikes neuron (convert --coding fs; rewrites/fs.py).

Matches the nodes relu_to_if matches. alpha follows from the calibrated threshold theta under the layer's rule
(--norm, --per-channel; capped at a Clip's max): theta is the largest value the neuron sends, in K spikes at
most, on a grid of theta / (2^K - 1), rounded (phi = 1/2) or floored (phi = 0). The firing steps are placed
by fs_schedule."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from ground.errors import CalibrationError
from rewrites.fs import neuron_inputs, relu_tables
from rewrites.optable import Conversion
from rewrites.passes.base import Pass, PassContext, PassReport, inputs_of
from rewrites.passes.relu_to_if import layer_entry, layer_threshold
from rewrites.passes.spiking import replace_node, spiking_node, step_like
from rewrites.patterns.tensors import clip_bounds, is_relu_like
from snnfile.operators import FS_NEURON


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("relu_to_fs")
    if ctx.calibration is None:
        raise CalibrationError("relu_to_fs needs a calibration", "pass --calib FILE from `ann2snn calibrate`")
    options = ctx.options
    K = options.fs_K
    for node in [n for n in graph.nodes if is_relu_like(n) and n.name not in ctx.kept_float]:
        setting = options.setting(node.name)
        x, y = node.inputs[0], node.outputs[0]
        stats = ctx.calibration.stats(x.name, node.name)
        cap = clip_bounds(node)[1] if node.op == "Clip" else None
        # the rules that weigh quantisation (mmse) see the FS grid: 2^K - 1 steps of theta, as T steps of rate coding
        theta, dead = layer_threshold(stats, setting, 2 ** K - 1, len(x.shape or ()), node.name, cap)
        tables = relu_tables(theta, K, setting.phi)
        neuron = spiking_node(FS_NEURON, node.name, [x] + neuron_inputs(node.name, tables), y, [y, step_like()])
        replace_node(graph, node, neuron)
        report.converted.append(node.name)
        report.layers.append(layer_entry(node, x, FS_NEURON.op_type, {"K": K}, theta, setting, stats, cap, dead))
    return report


PASS = Pass("relu_to_fs", run, spiking=True, doc="--coding fs: ReLU / Clip(0, a) -> few-spikes neuron.",
            converts=frozenset(), observes=inputs_of(Conversion.IF_NEURON))

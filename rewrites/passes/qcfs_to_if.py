"""qcfs_to_if: a QCFS activation chain -> ONE IF neuron, threshold lambda and initial membrane shift * lambda
read from the graph, no calibration. How chains are matched, and why the conversion is exact at t = L:
rewrites/patterns/qcfs.py. `options.neuron = signed` gives the signed (two-type) IF neuron instead, tmax =
options.effective_tmax, as in relu_to_if. Must run before relu_to_if: a Clip(0, 1) or Relu inside the chain
is ReLU-like on its own."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.config import Neuron
from snnfile.operators import IF_NEURON, SIGNED_IF_NEURON
from rewrites.passes.base import Pass, PassContext, PassReport
from rewrites.optable import Conversion
from rewrites.patterns.qcfs import find_chains
from rewrites.passes.spiking import replace_node, spiking_node


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    """Each chain -> IFNeuron(threshold lambda, phi 1/2 or 0); with options.neuron = signed, the signed IF neuron
    (seed 000's two-type neuron for QCFS networks) with the same threshold and phi and tmax as relu_to_if."""
    report = PassReport("qcfs_to_if")
    signed = ctx.options.neuron is Neuron.SIGNED
    spec = SIGNED_IF_NEURON if signed else IF_NEURON
    tmax = ctx.options.effective_tmax if signed else None
    matches, report.skipped = find_chains(graph)
    for m in matches:
        name = m.floor.name
        phi = 0.5 if m.shift else 0.0
        theta = float(np.float32(m.lam))
        inputs = [m.x, gs.Constant(f"{name}.threshold", np.array(theta, np.float32)),
                  gs.Constant(f"{name}.fire_level", np.array(theta * (1.0 - phi), np.float32))]
        if signed:
            inputs += [gs.Constant(f"{name}.unfire_level", np.array(-theta * phi, np.float32)),
                       gs.Constant(f"{name}.tmax", np.array(tmax, np.float32))]
        like = m.y if m.y.shape is not None else m.x
        neuron = spiking_node(spec, name, inputs, m.y, [like] * len(spec.state))
        for node in m.nodes[:-1]:
            node.inputs.clear()
            node.outputs.clear()
        replace_node(graph, m.nodes[-1], neuron)
        report.converted.append(name)
        report.layers.append({"node": name, "op": spec.op_type, "from": "QCFS", "neuron": ctx.options.neuron.value,
                              "tmax": tmax, "threshold": theta, "phi": phi, "norm": "qcfs", "input": m.x.name,
                              "calibrated_max": None, "dead": False, "L": m.L, "shift": m.shift, "form": m.form,
                              "replaced": [n.name for n in m.nodes]})
    return report


PASS = Pass("qcfs_to_if", run, spiking=True,
            doc="QCFS activation chain (clip-floor(-shift) of a trained threshold) -> IF neuron, threshold lambda, "
                "phi 1/2 (shift) or 0; no calibration.", converts=frozenset({Conversion.QCFS}))

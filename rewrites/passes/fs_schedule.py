"""fs_schedule: the firing steps of every few-spikes neuron on the file's step clock (rewrites/fs.py).

Each neuron fires its K steps from the last step at which its input can still change; the steps a runtime
must run (the file's ann2snn.default_T) follow from the deepest path."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from rewrites.fs import schedule
from rewrites.passes.base import Pass, PassContext, PassReport


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("fs_schedule")
    starts, steps = schedule(graph, ctx.options.fs_overlap)
    ctx.fs_steps = steps
    for node, start in starts.items():
        report.layers.append({"node": node, "start": start})
    return report


PASS = Pass("fs_schedule", run, spiking=True, doc="--coding fs: place each few-spikes neuron's firing steps.")

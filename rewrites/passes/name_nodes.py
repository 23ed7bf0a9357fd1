"""name_nodes: give every node a unique, non-empty name (state tensors and reports are named after nodes)."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from rewrites.passes.base import Pass, PassContext, PassReport


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("name_nodes")
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            base = node.name or f"{node.op}_{i}"
            name, k = base, 1
            while name in seen:
                name, k = f"{base}_{k}", k + 1
            node.name = name
            report.converted.append(name)
        seen.add(node.name)
    return report


PASS = Pass("name_nodes", run, doc="Unique non-empty node names.")

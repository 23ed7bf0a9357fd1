"""What a pass is, what it reports, and how a pipeline of passes runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx_graphsurgeon as gs

from rewrites.calibration.stats import Calibration
from rewrites.config import ConvertOptions
from rewrites.optable import Claim, Conversion, NodeConversion
from ground.errors import Ann2SnnError, PassError

Observes = Callable[[gs.Graph, list[NodeConversion]], list[str]]


@dataclass
class PassReport:
    name: str
    converted: list[str] = field(default_factory=list)  # node names changed or replaced
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (node name, reason)
    layers: list[dict] = field(default_factory=list)  # per-layer settings recorded in the metadata

    @property
    def changed(self) -> bool:
        return bool(self.converted)


@dataclass
class PassContext:
    options: ConvertOptions = field(default_factory=ConvertOptions)
    calibration: Calibration | None = None
    distributions: dict = field(default_factory=dict)  # tensor made by a pass -> samples of its values
    kept_float: list[str] = field(default_factory=list)  # nodes kept as exact float operators
    ugo_fits: list[dict] = field(default_factory=list)  # one entry per UGO: function, range, size, errors
    fs_steps: int = 0  # FS coding: the steps a runtime must run (fs_schedule)
    fs_fits: list[dict] = field(default_factory=list)  # FS coding: one entry per fitted neuron
    claims: tuple[Claim, ...] = ()  # the pipeline's claims, for a pass that reads the verdicts (allow_float)


@dataclass(frozen=True)
class Pass:
    """A named graph rewrite. `run` mutates the graph and returns its report; `spiking` passes need a
    calibration and change the function only in the limit of many time steps. A pass declares the nodes it
    takes (`claims`: the verdict of `inspect` on a node, or None), the verdicts it carries out (`converts`)
    and the tensors of the normalised graph it needs statistics of (`observes`, given the graph and its
    verdicts): the op table and the calibration plan are read from these (rewrites/passes/__init__.py)."""

    name: str
    run: Callable[[gs.Graph, PassContext], PassReport]
    spiking: bool = False
    doc: str = ""
    converts: frozenset[Conversion] = frozenset()
    observes: Observes | None = None
    claims: Claim | None = None


def run_passes(graph: gs.Graph, passes: tuple[Pass, ...], ctx: PassContext) -> list[PassReport]:
    reports = []
    for i, p in enumerate(passes):
        if p.name in ctx.options.skip_passes:
            continue
        try:
            report = p.run(graph, ctx)
            graph.cleanup().toposort()
        except Ann2SnnError:
            raise
        except Exception as exc:
            before = ", ".join(q.name for q in passes[:i]) or "none"
            raise PassError(f"pass '{p.name}' failed: {type(exc).__name__}: {exc} (passes before it: {before})",
                            "rerun with --debug and report it, or skip the pass with --skip-pass") from exc
        reports.append(report)
    return reports


def inputs_of(*conversions: Conversion) -> Observes:
    """`observes` for a pass whose nodes need the statistics of their first input."""
    def observed(graph: gs.Graph, verdicts: list[NodeConversion]) -> list[str]:
        by_name = {n.name: n for n in graph.nodes}
        return [by_name[v.node].inputs[0].name for v in verdicts if v.conversion in conversions
                and by_name[v.node].inputs and by_name[v.node].inputs[0].name]
    return observed


def replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make `node` read `new` wherever it read `old`."""
    for k, t in enumerate(node.inputs):
        if t is old:
            node.inputs[k] = new


def redirect_readers(old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every node that reads `old` read `new` instead."""
    for reader in list(old.outputs):
        replace_input(reader, old, new)

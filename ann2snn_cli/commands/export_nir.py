"""Write a spiking model from `ann2snn convert` as a NIR graph (Neuromorphic Intermediate Representation, read by
sinabs, snnTorch, Norse, Lava and other simulators and chips): Conv2d, Affine, IF neurons with unit spikes and
soft (subtract) reset, SumPool2d, Flatten. Nodes NIR cannot hold (max pooling, signed neurons, UGO, spiking
products, a membrane that starts above 0) are refused, each with its reason. Needs the nir package: pip install
'ann2snn[nir]'. See docs/nir.md."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ann2snn_cli._options import JsonOpt, OutOpt
from ann2snn_cli._output import Output
from ann2snn_cli.state import errors_to_exit_codes

NAME = "export-nir"


def command(
    model: Annotated[Path, typer.Argument(help="The spiking model from `ann2snn convert` (converted with --phi 0).")],
    output: OutOpt = None,
    node_metadata: Annotated[bool, typer.Option(
        "--node-metadata/--no-node-metadata", help="Write each node's metadata (its ONNX node, reset mode, v0, dt). "
        "Without it the file loads in nir <= 1.0.4, the version sinabs 3.1 requires; the graph's metadata still "
        "says reset, v0 and dt.")] = True,
    json_out: JsonOpt = None,
) -> None:
    with errors_to_exit_codes():
        import ann2snn
        from ground.errors import UnsupportedNodesError
        out = Output(json_out)
        target = output or _default_target(model)
        try:
            result = ann2snn.export_nir(model, target, node_metadata)  # refuses first when nir is missing
        except UnsupportedNodesError as exc:  # the message lists 20 nodes; --json gets every one
            out.emit_json(exc.to_json())
            raise
        out.table(f"NIR graph of {model.name}", ["node", "type", "shape", "note"],
                  [[n.name, n.type, "x".join(map(str, n.shape)), n.note or "-"] for n in result.nodes])
        out.print(f"wrote {target} ({len(result.nodes)} NIR nodes)")
        out.print("IF nodes: unit spikes, subtract reset, v0 = 0, dt = 1 (docs/nir.md)")
        out.emit_json(result.to_json())


def _default_target(model: Path) -> Path:
    name = model.name
    for suffix in (".snn.onnx", ".onnx"):
        if name.endswith(suffix):
            return model.with_name(name[: -len(suffix)] + ".nir")
    return model.with_name(name + ".nir")

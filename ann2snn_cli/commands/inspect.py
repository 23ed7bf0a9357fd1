"""Show how a model would convert. Its inputs, outputs and parameter count, and what each op type becomes
(or why it cannot be converted)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ann2snn_cli._options import InputShapeOpt, JsonOpt, ModelArg
from ann2snn_cli._output import Output
from ann2snn_cli.state import errors_to_exit_codes

NAME = "inspect"


def command(
    model: ModelArg,
    input_shape: InputShapeOpt = None,
    json_out: JsonOpt = None,
) -> None:
    with errors_to_exit_codes():
        import ann2snn
        summary = ann2snn.inspect(model, input_shape or ())
        out = Output(json_out)
        render(out, model, summary)
        out.emit_json({"model": str(model), **summary.to_dict()})


def render(out: Output, path: Path, summary) -> None:
    out.heading(str(path), f"  opset {summary.opset}, {summary.parameters:,} parameters")
    out.table("Inputs and outputs", ["tensor", "kind", "shape", "dtype"],
              [[t["name"], kind, "[" + ", ".join(map(str, t["shape"])) + "]", t["dtype"]]
               for kind, group in (("input", summary.inputs), ("output", summary.outputs)) for t in group])
    rows = []
    for row in summary.op_table():
        nodes = "" if row["converts"] else ", ".join(row["nodes"][:6]) + (" ..." if len(row["nodes"]) > 6 else "")
        rows.append([row["op"], row["count"], row["conversion"], (row["reason"] + (": " if nodes else "") + nodes)
                     if not row["converts"] else row["pass"] or ""])
    out.table("Operators", ["op", "count", "converts to", "by pass / why not"], rows)
    if summary.non_finite:
        out.print("constants holding infinite values (accepted where they are identities, bounds or masks): "
                  + "; ".join(c.describe() for c in summary.non_finite))
    for dyn in summary.dynamic:
        out.print(f"note: {dyn.describe()}")
    blocked = [r for r in summary.op_table() if not r["converts"]]
    unbound = [d.name for d in summary.dynamic if not d.bindable]
    if blocked:
        out.print(f"{sum(r['count'] for r in blocked)} node(s) cannot be converted yet (see above).")
    if unbound:
        out.print(f"{len(unbound)} input(s) cannot be bound to a static shape: {', '.join(unbound)} (see above).")
    if not blocked and not unbound:
        out.print("Every node converts.")

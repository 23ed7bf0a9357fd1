"""Run a spiking model over data for T time steps (every sample from zero state) and report accuracy,
agreement with the ANN at each t, and spikes per layer."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ann2snn_cli._options import BatchOpt, DataOpt, JsonOpt, LimitOpt
from ann2snn_cli._output import Output, percent
from ann2snn_cli.state import errors_to_exit_codes

NAME = "simulate"


def command(
    model: Annotated[Path, typer.Argument(help="The spiking model from `ann2snn convert`.")],
    data: DataOpt,
    steps: Annotated[Optional[int], typer.Option("--T", min=1, help="Time steps with input (default: the "
                                                 "model's recorded default).")] = None,
    extra_t: Annotated[int, typer.Option("--extra-t", min=0, help="Further steps with zero input, outputs still "
                                         "accumulated.")] = 0,
    engine: Annotated[str, typer.Option("--engine", help="numpy (layer by layer over the whole window) or "
                                        "onnxruntime (steps the exported file).")] = "numpy",
    ann: Annotated[Optional[Path], typer.Option("--ann", metavar="FILE", help="The original ANN: report "
                                                "agreement with its top-1 and its accuracy.")] = None,
    batch_size: BatchOpt = 128,
    limit: LimitOpt = None,
    json_out: JsonOpt = None,
) -> None:
    with errors_to_exit_codes():
        from sim.model import load_spiking
        from sim.simulate import simulate
        T = steps or load_spiking(model).default_T or 32
        out = Output(json_out)
        with out.progress("simulating", 0) as progress:
            report = simulate(model, data, T, extra_t, engine, ann, batch_size, limit, progress)
        render(out, report)
        out.emit_json(report.to_json())


def render(out: Output, report) -> None:
    columns = ["t"]
    if report.accuracy is not None:
        columns.append("accuracy")
    if report.agreement is not None:
        columns += ["agreement with ANN", "relative error"]
    rows = []
    for i, t in enumerate(report.steps):
        row = [str(t) + (" (extra)" if t > report.T else "")]
        if report.accuracy is not None:
            row.append(percent(report.accuracy[i]))
        if report.agreement is not None:
            row += [percent(report.agreement[i]), report.relative_error[i] if report.relative_error else None]
        rows.append(row)
    title = f"{report.samples} samples, T = {report.T}" + (f" + {report.extra_t} silent" if report.extra_t else "")
    if report.ann_accuracy is not None:
        title += f", ANN accuracy {percent(report.ann_accuracy)}"
    out.table(title, columns, rows)
    out.table("Spikes per neuron layer (per sample, over the window)",
              ["layer", "neurons", "spikes/neuron", "firing rate"],
              [[l.node, l.neurons, l.spikes_per_neuron, l.firing_rate] for l in report.layers])
    out.print(f"{report.total_spikes_per_sample:,.0f} spikes per sample; {report.engine} engine, "
              f"{report.seconds:.2f} s")

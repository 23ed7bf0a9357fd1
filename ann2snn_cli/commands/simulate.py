"""Run a spiking model over data for T steps. Every sample starts from zero state; reports accuracy and
agreement with the ANN at each step t, latency, spikes per layer, synaptic operations and the energy
estimate, and optionally fails (exit 1) below an accuracy gate."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ann2snn_cli._options import BatchOpt, DataOpt, JsonOpt, LimitOpt, MeanOpt, StdOpt
from ann2snn_cli._output import Output, percent
from ann2snn_cli.state import EXIT_GATE, errors_to_exit_codes

NAME = "simulate"


def command(
    model: Annotated[Path, typer.Argument(metavar="SNN", help="The spiking model from `ann2snn convert`.",
                                          show_default=False)],
    data: DataOpt,
    mean: MeanOpt = None,
    std: StdOpt = None,
    steps: Annotated[Optional[int], typer.Option("--T", min=1, metavar="N", help="Time steps with input "
                                                 "(default: the T the file was converted for).")] = None,
    extra_t: Annotated[Optional[int], typer.Option("--extra-t", min=0, metavar="E", help="Further steps with zero "
                       "input, outputs still accumulated (default: the drain steps the file was converted for, "
                       "usually 0; see --drain).")] = None,
    engine: Annotated[str, typer.Option("--engine", metavar="numpy|onnxruntime", help="numpy: layer by "
                                        "layer over all steps at once; onnxruntime: the file's one-step graph, "
                                        "repeated inside one ONNX Loop.")] = "numpy",
    ann: Annotated[Optional[Path], typer.Option("--ann", metavar="FILE", help="The original ANN: report "
                                                "agreement with its top-1 and its accuracy.")] = None,
    batch_size: BatchOpt = 128,
    limit: LimitOpt = None,
    max_memory: Annotated[int, typer.Option("--max-memory", min=1, metavar="MB", help="NumPy engine: bound on "
                                            "one [T, batch, ...] tensor; the batch is run in slices that fit.")] = 16,
    min_accuracy: Annotated[Optional[float], typer.Option("--min-accuracy", metavar="PERCENT", help="Gate: exit 1 "
                            "if the accuracy at the last step is below PERCENT (needs labels).")] = None,
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", metavar="POINTS", help="Gate: exit 1 if the "
                        "accuracy at the last step is more than POINTS below the ANN's (needs labels and --ann).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE.png", help="Draw accuracy against t and "
                                                 "spikes per layer (needs matplotlib: pip install 'ann2snn[plot]').")] = None,
    plot_with: Annotated[Optional[list[Path]], typer.Option("--plot-with", metavar="REPORT.json", help="Add the "
                         "curves of earlier `simulate --json` reports to the plot (repeatable).")] = None,
    layer_error: Annotated[bool, typer.Option("--layer-error", help="Per neuron layer: the gap between SNN rate "
                           "and ANN activation split into clipping, quantisation and unevenness (needs --ann).")] = False,
    until_silent: Annotated[Optional[int], typer.Option("--until-silent", metavar="CAP", min=1, help="Also report "
                            "accuracy when each sample keeps stepping with zero input until no neuron fires (at most "
                            "CAP extra steps).")] = None,
    sweep_extra_t: Annotated[Optional[int], typer.Option("--sweep-extra-t", metavar="E", min=0, help="Print instead "
                             "a table of the accuracy after t steps with input and then 0..E steps without: rows t "
                             "(1..T, or 1, 2, 4, .. T when T > 16), columns the extra steps (see docs/cli.md).")] \
        = None,
    drain: Annotated[Optional[bool], typer.Option("--drain/--no-drain", help="Make the steps "
                     "without input (--extra-t, --until-silent, --sweep-extra-t) drain steps: the biases are "
                     "switched off too, so the neurons only settle; the output is then its sum over all steps / T "
                     "(default: drain when the file was converted for drain steps; see docs/cli.md).")] = None,
    json_out: JsonOpt = None,
) -> None:
    with errors_to_exit_codes():
        from ground.data import data_source
        from ground.errors import Ann2SnnError, InputFileError
        import ann2snn
        if max_drop is not None and ann is None:
            raise Ann2SnnError("--max-drop needs --ann", "give the ANN the model was converted from")
        if plot and importlib.util.find_spec("matplotlib") is None:  # before the run, not after it
            raise Ann2SnnError("--plot needs matplotlib", "pip install 'ann2snn[plot]'")
        data = data_source(data, mean, std)
        out = Output(json_out)
        if sweep_extra_t is not None:
            grid = ann2snn.sweep_extra_t(model, data, sweep_extra_t, steps, drain=drain, engine=engine,
                                         batch_size=batch_size, limit=limit, memory_budget=max_memory * 2**20)
            render_sweep(out, grid)
            out.emit_json({"sweep_extra_t": grid})
            return
        with out.progress("simulating", 0) as progress:
            report = ann2snn.simulate(model, data, steps, ann=ann, extra_t=extra_t, drain=drain, engine=engine,
                                      batch_size=batch_size, limit=limit, layer_error=layer_error,
                                      until_silent=until_silent, memory_budget=max_memory * 2**20,
                                      progress=progress)
        for note in report.notes:
            out.note(f"note: {note}")
        render(out, report)
        result = report.to_dict()
        failures = gate_failures(report, min_accuracy, max_drop)
        result["gates"] = {"min_accuracy": min_accuracy, "max_drop": max_drop, "failed": failures}
        out.emit_json(result)
        if plot:
            runs = [(model.stem, result)]
            for path in plot_with or ():
                try:
                    runs.append((path.stem, json.loads(path.read_text())))
                except (OSError, ValueError) as exc:
                    raise InputFileError(f"{path}: not a readable simulate --json report ({exc})") from exc
            ann2snn.plot_reports(runs, plot)
            out.note(f"wrote {plot}")
        if failures:
            for reason in failures:
                out.note(f"gate failed: {reason}")
            raise typer.Exit(EXIT_GATE)


def gate_failures(report, min_accuracy: float | None, max_drop: float | None) -> list[str]:
    from ground.errors import DataError
    if (min_accuracy is not None or max_drop is not None) and report.final_accuracy is None:
        raise DataError("accuracy gates need labels: the data has no array y (or class subfolders of images)")
    failures = []
    last = report.steps[-1]
    if min_accuracy is not None and 100 * report.final_accuracy < min_accuracy:
        failures.append(f"accuracy {percent(report.final_accuracy)} at t = {last} is below {min_accuracy:g}%")
    if max_drop is not None:
        drop = 100 * (report.ann_accuracy - report.final_accuracy)
        if drop > max_drop:
            failures.append(f"accuracy {percent(report.final_accuracy)} at t = {last} is {drop:.2f} points below "
                            f"the ANN's {percent(report.ann_accuracy)} (allowed: {max_drop:g})")
    return failures


def render_sweep(out: Output, grid: dict) -> None:
    rows = [[t] + [percent(a) for a in accs] for t, accs in zip(grid["t"], grid["accuracy"])]
    silent = "silent input and no biases" if grid.get("drain") else "silent input"
    out.table(f"Accuracy after t + extra_t steps, {grid['samples']} samples",
              ["t"] + [f"+{e}" for e in grid["extra_t"]], rows, legend=f"the extra_t steps: {silent}")


def render(out: Output, report) -> None:
    columns = ["t"]
    if report.accuracy is not None:
        columns.append("accuracy")
    if report.agreement is not None:
        columns.append("agreement with ANN")
    compared = report.agreement is not None or report.relative_error is not None
    if compared:
        columns.append("relative error")
    rows = []
    for i, t in enumerate(report.steps):
        row = [str(t) + (" (extra)" if t > report.T and report.coding != "fs" else "")]
        if report.accuracy is not None:
            row.append(percent(report.accuracy[i]))
        if report.agreement is not None:
            row.append(percent(report.agreement[i]))
        if compared:
            row.append(report.relative_error[i] if report.relative_error else None)
        rows.append(row)
    silent = " drain" if report.drain else " silent"
    title = f"{report.samples} samples, T = {report.T}" + (f" + {report.extra_t}{silent}" if report.extra_t else "")
    if report.coding == "fs":
        title = f"{report.samples} samples, few-spikes coding, {report.T + report.extra_t} steps"
    if report.ann_accuracy is not None:
        title += f", ANN accuracy {percent(report.ann_accuracy)}"
    out.table(title, columns, rows)
    if report.accuracy is None:
        out.print("no labels in the data (array y, or class subfolders of images): no accuracy"
                  + ("" if compared else "; --ann gives the agreement with the ANN"))
    out.table("Spikes per neuron layer (per sample, over the window)",
              ["layer", "neurons", "spikes per neuron", "firing rate", "silent", "saturated"],
              [[l.node, l.neurons, l.spikes_per_neuron, l.firing_rate, percent(l.silent), percent(l.saturated)]
               for l in report.layers])
    out.print(f"{report.total_spikes_per_sample:,.0f} spikes per sample. Latency: the prediction first equals "
              f"the final one at t = {report.mean_first_final_t:.1f} on average and no longer changes from "
              f"t = {report.mean_settled_t:.1f}. {report.engine} engine, {report.seconds:.2f} s.")
    if report.engine_note:
        out.print(f"note: {report.engine} engine {report.engine_note}")
    e = report.energy
    if e:
        out.table("Operations and energy per sample (45 nm: 4.6 pJ per MAC, 0.9 pJ per accumulate)",
                  ["", "MACs", "SynOps (accumulates)", "energy"],
                  [["ANN, one inference", f"{e['ann_macs']:,.0f}", "-", f"{e['ann_energy_uJ']:.3g} uJ"],
                   [f"SNN, {report.T + report.extra_t} steps", f"{e['snn_macs']:,.0f}", f"{e['synops']:,.0f}",
                    f"{e['snn_energy_uJ']:.3g} uJ"]])
    if report.until_silent:
        u = report.until_silent
        out.print(f"Until silent (at most {u['cap']} extra steps): accuracy {percent(u['accuracy'])}, agreement "
                  f"{percent(u['agreement'])}, {u['mean_steps']:.1f} steps on average, {percent(u['share_capped'])} "
                  f"of samples never fell silent")
    if report.layer_error:
        errors = report.layer_error
        out.table(f"Conversion error per neuron layer at t = {errors['window']} (mean of ANN - SNN per neuron)",
                  ["layer", "clipping", "quantisation", "unevenness", "total", "relative RMS"],
                  [[r["node"], r.get("clipping"), r.get("quantisation"), r.get("unevenness"), r.get("mean_error"),
                    r.get("relative_rms_error") if "skipped" not in r else r["skipped"]] for r in errors["layers"]])
        undivided = [r["node"] for r in errors["layers"] if "undivided" in r]
        if undivided:
            out.print(f"{', '.join(undivided)}: total only, the neuron's input is made by a normalising pass "
                      "(no ANN tensor to split the error by)")
        if errors["worst_layer"]:
            out.print(f"Worst layer (relative RMS error): {errors['worst_layer']}")

"""Rewrite an ANN as a spiking ONNX model. ReLU becomes an integrate-and-fire (IF) neuron, MaxPool a
MaxPool neuron, GELU / exp / 1/sqrt and other nonlinearities small fitted subnets of IF neurons (UGO),
products of two signals spiking products; linear ops are kept. The file computes one time step and
carries its state as inputs and outputs (docs/contract.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ann2snn_cli._options import InputShapeOpt, JsonOpt, MeanOpt, ModelArg, OutOpt, StdOpt
from ann2snn_cli._output import Output, mib
from ann2snn_cli.state import errors_to_exit_codes

NAME = "convert"


def command(
    model: ModelArg,
    data: Annotated[Optional[Path], typer.Option("--data", metavar="FILE|DIR", help="Calibration samples (.npy/.npz "
                    "or a folder of images, as for calibrate): thresholds are calibrated on them and each ReLU "
                    "layer's options are "
                    "chosen by its measured error on them. Not needed for a QCFS network.")] = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    calib: Annotated[Optional[Path], typer.Option("--calib", metavar="FILE", help="Calibration JSON from "
                     "`ann2snn calibrate` for this model, instead of calibrating on --data.")] = None,
    save_calib: Annotated[Optional[Path], typer.Option("--save-calib", metavar="FILE", help="Keep the calibration "
                          "made from --data as JSON (for --calib later).")] = None,
    output: OutOpt = None,
    input_shape: InputShapeOpt = None,
    default_t: Annotated[Optional[int], typer.Option("--T", min=1, metavar="N", help="Time steps the conversion "
                         "targets, recorded as the file's default (default: 8; for a network trained with "
                         "quantised clip-floor-shift (QCFS) activations of L levels, L).")] = None,
    norm: Annotated[Optional[str], typer.Option(
        "--norm", metavar="max|percentile:Q|mmse", help="Threshold rule for every ReLU layer: 'max', 'percentile:Q', or 'mmse' (the threshold "
        "that minimises the squared error of the IF neuron's output at --T steps). Default: chosen per layer "
        "on --data.")] = None,
    per_channel: Annotated[Optional[bool], typer.Option("--per-channel/--per-tensor", help="One threshold per "
                           "channel (axis 1), or one per layer (default: chosen per layer on --data).")] = None,
    neuron: Annotated[Optional[str], typer.Option(
        "--neuron", metavar="if|signed",
        help="Neuron that replaces each ReLU. 'if': integrate-and-fire with soft reset, positive spikes only. "
             "'signed': a two-type IF neuron that also fires negative spikes to take back spikes fired too "
             "early. Default: chosen per layer on --data; signed for a QCFS network (see --T).")] = None,
    phi: Annotated[Optional[float], typer.Option("--phi", metavar="F", help="Initial membrane potential as a "
                   "fraction of the threshold (0.5: half a spike, which centres the rounding; 0: the classic "
                   "conversion). Default: chosen per layer.")] = None,
    tmax: Annotated[Optional[int], typer.Option(
        "--tmax", min=1, metavar="N", help="Signed neuron only: at most N spikes per neuron, net (default: the "
                                          "number of steps with input so far).")] = None,
    bias_correction: Annotated[Optional[bool], typer.Option(
        "--bias-correction/--no-bias-correction", help="Shift each neuron layer's bias per channel by the mean gap "
        "between ANN activation and SNN rate at --T steps, measured layer by layer on --data (default: per "
        "layer, where it lowers the measured error).")] = None,
    drain_steps: Annotated[Optional[int], typer.Option(
        "--drain-steps", min=0, metavar="E", help="Steps without input and without biases that the file is "
        "meant to be read after, so that the neurons settle (recorded in the file; see simulate --drain). "
        "Default: L for a QCFS network with signed neurons, else 0.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, metavar="N", help="Use only the first N "
                     "samples of --data.")] = None,
    weight_norm: Annotated[bool, typer.Option(
        "--weight-norm", help="Layer-wise weight normalisation: fold each neuron's threshold into "
                              "the weights around it, so that it fires unit spikes at threshold 1. Same spikes "
                              "as threshold balancing; neurons where it cannot be folded exactly are left "
                              "threshold-balanced and listed with the reason (see docs/cli.md).")] = False,
    nonlinear: Annotated[str, typer.Option(
        "--nonlinear", metavar="ugo|exact",
        help="Nonlinearities other than ReLU/MaxPool (GELU, exp in softmax, 1/sqrt in LayerNorm, ...). 'ugo': "
             "a small subnet of signed IF neurons fitted to the function on its calibrated input range (no "
             "float nonlinearity left). "
             "'exact': the float operator on the running mean, corrected each step (the accuracy ceiling).")] = "ugo",
    ugo_size: Annotated[Optional[int], typer.Option(
        "--ugo-size", min=1, metavar="N", help="Hidden neurons per UGO subnet (default: 64 for GELU and most "
                                               "functions, 32 for exp, 8 for 1/sqrt, doubled while the fit errs "
                                               "by more than 1%, up to 64; see docs/cli.md).")] = None,
    allow_float: Annotated[Optional[str], typer.Option(
        "--allow-float", metavar="OP[,OP]|all", help="Keep nodes of these op types (all: every op type), which "
        "nothing else maps, as float operators with estimate-and-correct semantics, or as they are where "
        "they read only the presented input or non-float tensors (listed in the report). Without it such "
        "nodes make the conversion fail with the list.")] = None,
    coding: Annotated[str, typer.Option(
        "--coding", metavar="rate|fs", help="'rate': each neuron's spike count over T steps carries its value "
        "(the default). 'fs': few-spikes neurons (Stoeckl and Maass 2021) send each value in at most --K "
        "weighted spikes, layer after layer; the file runs as many steps as its layers need (docs/fs.md).")] = "rate",
    fs_k: Annotated[Optional[int], typer.Option("--K", min=1, metavar="K", help="--coding fs: firing steps "
                    "per neuron, so a value is sent on a grid of threshold / (2^K - 1) (default: 8).")] = None,
    overlap: Annotated[int, typer.Option("--overlap", min=0, metavar="N", help="--coding fs: start each layer N "
                       "steps before its input is final (fewer steps; the last, smallest spikes of the layer "
                       "before then reach only its later spikes). Default: 0.")] = 0,
    skip_pass: Annotated[Optional[list[str]], typer.Option(
        "--skip-pass", metavar="NAME", help="Skip a normalising pass by name (repeatable; the names are in "
        "convert's Passes table).")] = None,
    no_refit: Annotated[bool, typer.Option("--no-refit", help="Keep the ANN's weights in every linear layer. "
                         "By default the per-layer search refits each Conv, Gemm and MatMul by least squares so that "
                         "the spiking layers before it deliver the ANN's current at T and 4T steps, and keeps a fit "
                         "only where it lowers the error on held-out samples (docs/cli.md).")] = False,
    layer_error: Annotated[bool, typer.Option("--layer-error", help="Measure, on the first 32 samples of --data, "
                           "how much of the output error each UGO subnet (GELU, exp, 1/x, 1/sqrt, ...) causes once "
                           "time has done its part: the output with that subnet's fit alone in place of its function, "
                           "and with all of them, against the ANN.")] = False,
    no_check: Annotated[bool, typer.Option("--no-check", help="Skip the onnxruntime self-check of the "
                                           "normalising passes.")] = False,
    json_out: JsonOpt = None,
) -> None:
    with errors_to_exit_codes():
        import ann2snn
        from ground.data import data_source
        from ground.errors import Ann2SnnError, UnsupportedNodesError
        from ground.save import writable_target
        if data is None and (mean is not None or std is not None):
            raise Ann2SnnError("--mean / --std need --data DIR", "give the folder of images they apply to")
        source = data_source(data, mean, std) if data is not None else None
        out = Output(json_out)
        target = writable_target(output or model.with_name(model.stem + ".snn.onnx"))  # refused before the work
        if save_calib is not None:
            writable_target(save_calib)
        try:
            with out.progress("converting", 0):
                converted = ann2snn.convert(
                    model, calib, source, save_calibration=save_calib, T=default_t, norm=norm,
                    per_channel=per_channel, neuron=neuron, phi=phi, tmax=tmax, bias_correction=bias_correction,
                    drain_steps=drain_steps, weight_norm=weight_norm, nonlinear=nonlinear, ugo_size=ugo_size,
                    allow_float=parse_ops(allow_float), skip_passes=skip_pass or (), limit=limit, check=not no_check,
                    input_shapes=input_shape or (), coding=coding, K=fs_k, overlap=overlap,
                    refit=not no_refit, layer_error=layer_error)
        except UnsupportedNodesError as exc:  # the message lists 20 nodes; --json gets every one
            out.emit_json(exc.to_json())
            raise
        converted.save(target)
        render(out, converted, target)
        out.emit_json(summary(converted, target))


def parse_ops(text: str | None) -> tuple[str, ...]:
    import onnx.defs
    from ground.errors import Ann2SnnError
    ops = tuple(op.strip() for op in (text or "").split(",") if op.strip())
    known = {s.name for s in onnx.defs.get_all_schemas()} | {"all"}  # all: every op type nothing else maps
    for op in ops:
        if op not in known:
            raise Ann2SnnError(f"--allow-float: unknown ONNX op type {op!r}", "op types are case-sensitive, "
                               "e.g. --allow-float ReduceMax,Floor, or all")
    return ops


def _threshold_text(value) -> str:
    if isinstance(value, list):
        return f"{min(value):.4g}..{max(value):.4g} ({len(value)} channels)"
    return f"{value:.4g}"


def _rule_text(setting) -> str:
    """The threshold rule in a few columns: p99.9, mmse, max; '/ch' per channel."""
    norm = setting.norm
    text = f"p{norm.percentile:g}" if norm.kind.value == "percentile" else norm.kind.value
    return text + ("/ch" if setting.per_channel else "")


def _memory_text(snn, ann) -> str:
    """One sample, one call: the state carried between steps and every tensor the call computes."""
    text = f"one step, per sample: state {mib(snn.state_bytes)}, tensors up to {mib(snn.tensor_bytes)}"
    if ann and ann.tensor_bytes:
        text += f" ({snn.tensor_bytes / ann.tensor_bytes:.1f}x the ANN's {mib(ann.tensor_bytes)})"
    return text


def summary(converted, target: Path) -> dict:
    return {"output": str(target), **converted.to_dict()}


def render(out: Output, converted, target: Path) -> None:
    result, options = converted.result, converted.options
    ops = sorted(set(result.ops_before) | set(result.ops_after))
    out.table("Operators before and after", ["op", "before", "after"],
              [[op, result.ops_before.get(op, 0), result.ops_after.get(op, 0)] for op in ops])
    rows = [[r.name, len(r.converted), "; ".join(f"{n}: {why}" for n, why in r.skipped)] for r in result.reports]
    out.table("Passes", ["pass", "changed", "left alone (why)"], rows)
    neurons = [l for l in result.layers if "threshold" in l]
    if converted.choices:
        out.table(f"Chosen per layer on {converted.calibration}",
                  ["node", "neuron", "threshold", "phi", "charge", "error", "default"],
                  [[c.node, c.setting.neuron.value, _rule_text(c.setting),
                    f"{c.setting.phi:g}", "charged" if c.charge is not None else "-", f"{c.error:.4f}",
                    f"{c.default_error:.4f}"] for c in converted.choices],
                  legend=f"threshold p: percentile, /ch: per channel; error: mean squared gap of the rate at T = "
                  f"{options.default_T} to the ANN, relative; default: the same for the default options")
    elif neurons and options.fs:
        out.table(f"few-spikes neurons (K = {options.fs_K}, {options.norm}, phi {options.phi:g})",
                  ["node", "from", "threshold", "fires at steps"],
                  [[l["node"], l["from"], _threshold_text(l["threshold"]),
                    f"{l['start'] + 1}..{l['start'] + l['K']}" if "start" in l else "-"] for l in neurons])
    elif neurons:
        kind = "signed IF neurons" if options.neuron.value == "signed" else "IF neurons"
        title = f"{kind} ({options.norm}, phi {options.phi:g}"
        title += f", tmax {options.tmax or 'steps'})" if options.neuron.value == "signed" else ")"
        columns, rows = ["node", "from", "threshold", "calibrated max"], \
            [[l["node"], l["from"], _threshold_text(l["threshold"]), l["calibrated_max"]] for l in neurons]
        legend = None
        if any(l.get("norm") == "qcfs" for l in neurons):  # trained lambda and shift, not the options
            legend = "QCFS layers: threshold lambda, phi from the trained shift"
            columns.append("phi")
            for row, l in zip(rows, neurons):
                row.append(f"{l['phi']:g}")
        if options.weight_norm:
            columns.append("weight norm")
            for row, l in zip(rows, neurons):
                row.append("folded (threshold 1)" if l.get("weight_norm") else
                           f"kept: {l.get('weight_norm_skipped', 'not reached')}")
        out.table(title, columns, rows, legend=legend)
    if converted.refits:
        out.table(f"Linear layers refitted on {converted.calibration}",
                  ["node", "inputs", "lambda", "before", "after"],
                  [[r.node, r.features, r.skipped or (f"{r.lam:g}" if r.refitted else "kept"),
                    "-" if r.skipped else f"{r.error_before:.4f}", f"{r.error_after:.4f}" if r.refitted else "-"]
                   for r in converted.refits],
                  legend="inputs: per output, bias included; before / after: squared gap of the layer's current "
                  "to the ANN's on held-out samples, relative, with the ANN's weights / refitted")
    dead = [l["node"] for l in neurons if l.get("dead")]
    if dead:
        out.print(f"note: never active during calibration (threshold set to 1): {', '.join(dead)}")
    if result.ugo_fits:
        out.table("UGO subnets (fit on the calibrated input distribution)",
                  ["node", "function", "input range", "hidden", "max |error|", "mean |error|"],
                  [[f["node"], f["op"], f"{f['range'][0]:.4g}..{f['range'][1]:.4g}", f["size"],
                    f"{f['max_error']:.3g}", f"{f['mean_error']:.3g}"] for f in result.ugo_fits])
    errors = converted.layer_errors
    if errors:
        out.table(f"Output error of each UGO subnet, in the limit of many steps ({errors.samples} samples)",
                  ["node", "function", "hidden", "fit error", "output error", "share"],
                  [[e.node, e.function, e.size, f"{e.fit_error:.2%}", f"{e.output_error:.2e}",
                    f"{errors.share(e):.0%}"] for e in errors.subnets],
                  legend=f"every subnet in place: output error {errors.together:.2e}. fit error: max over the "
                  "calibrated inputs, relative to |f| (exp, 1/x, 1/sqrt) or to f's range; output error: relative "
                  "error of the output's input-dependent part with this subnet alone in place of its function")
    fitted = [l for l in result.layers if l.get("nonlinear") == "fs"]
    if fitted:
        out.table("Fitted few-spikes neurons (on the calibrated input distribution)",
                  ["node", "function", "input range", "K", "max |error|", "mean |error|"],
                  [[f["node"], f["op"], f"{f['range'][0]:.4g}..{f['range'][1]:.4g}", f["K"],
                    f"{f['max_error']:.3g}", f"{f['mean_error']:.3g}"] for f in fitted])
    head = {name for r in result.reports if r.name == "decoded_head" for name in r.converted}
    if head:
        out.print(f"head, exact on the decoded value of its input: {', '.join(sorted(head))}")
    products = {name for r in result.reports if r.name == "products_to_spiking" for name in r.converted}
    if products and options.fs:
        out.print(f"{len(products)} products of two signals, on the running sums of their operands")
    kept = [n.node for n in result.kept_float if n.node not in head | products]
    if kept:
        out.print(f"kept as float operators (see allow_float in the passes): {', '.join(kept)}")
    out.print(f"normalising passes checked with onnxruntime: max relative error {result.normalise_error:.2e}")
    if result.corrections:
        out.table(f"Bias correction at T = {options.default_T}", ["layer", "bias shifted", "mean shift"],
                  [[c.node, c.bias or f"skipped: {c.skipped}", c.mean_shift] for c in result.corrections], names=(0, 1))
    for note in converted.notes:
        out.print(f"note: {note}")
    if converted.step_memory:
        out.print(_memory_text(converted.step_memory, converted.ann_memory))
    drain = f", read after {options.drain_steps} drain steps" if options.drain_steps else ""
    if options.fs:
        out.print(f"wrote {target} (few-spikes coding: run it {converted.default_T} steps, decode by the sum)")
    else:
        out.print(f"wrote {target} (T = {options.default_T}{drain})")

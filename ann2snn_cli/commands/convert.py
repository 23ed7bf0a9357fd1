"""Rewrite the ANN into a spiking network (ReLU -> IF neuron or signed IF neuron, MaxPool -> MaxPool neuron,
GELU / exp / 1/sqrt / other nonlinearities -> UGO subnets, products of two signals -> spiking products,
linear ops kept), optionally fold the thresholds into the weights, and export it as a one-step stateful ONNX
model."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ann2snn_cli._options import JsonOpt, OutOpt
from ann2snn_cli._output import Output
from ann2snn_cli.state import errors_to_exit_codes

NAME = "convert"


def command(
    model: Annotated[Path, typer.Argument(help="The ANN as an ONNX file.")],
    calib: Annotated[Path, typer.Option("--calib", metavar="FILE", help="Calibration JSON from `ann2snn calibrate` "
                                       "for this model.")],
    output: OutOpt = None,
    norm: Annotated[Optional[str], typer.Option(
        "--norm", help="Threshold rule: 'max', 'percentile:Q', or 'mmse' (minimise the squared error of the IF "
        "neuron's output at --T steps over the calibration histogram) (default: the one recorded by calibrate).")] = None,
    per_channel: Annotated[bool, typer.Option("--per-channel", help="One threshold per channel (axis 1) instead "
                                              "of one per layer.")] = False,
    bias_correction: Annotated[bool, typer.Option("--bias-correction", help="After conversion, shift each "
                               "neuron layer's bias per channel by the mean gap between ANN activation and SNN "
                               "rate at --T steps, measured layer by layer on --data.")] = False,
    data: Annotated[Optional[Path], typer.Option("--data", metavar="FILE", help="Samples for --bias-correction "
                    "(the calibration data).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="--bias-correction: use only the first N "
                     "samples.")] = None,
    phi: Annotated[float, typer.Option("--phi", help="Initial membrane potential as a fraction of the threshold "
                                       "(0.5: QCFS shift, 0: classic conversion).")] = 0.5,
    default_t: Annotated[Optional[int], typer.Option("--T", min=1, help="Number of time steps the conversion "
                         "targets (mmse, bias correction, signed tmax) and records as the model's default for "
                         "`simulate` (default: L for a QCFS-trained model, else 32).")] = None,
    neuron: Annotated[str, typer.Option(
        "--neuron", metavar="if|signed",
        help="Neuron that replaces each ReLU. 'if': integrate-and-fire with soft reset, positive spikes only. "
             "'signed': two-type IF neuron (seed 000, QFFS/ST-BIF) that also fires negative spikes to take back "
             "spikes fired too early; its net spike count stays in [0, --tmax].")] = "if",
    tmax: Annotated[Optional[int], typer.Option(
        "--tmax", min=1, help="Signed neuron only: the most net spikes one neuron may hold, which caps its "
                              "decoded value at tmax*threshold/t (default: --T).")] = None,
    weight_norm: Annotated[bool, typer.Option(
        "--weight-norm", help="Layer-wise weight normalisation (seed 001): fold each neuron's threshold into "
                              "the weights around it, so that it fires unit spikes at threshold 1. Same spikes "
                              "as threshold balancing; neurons where it cannot be folded exactly are left "
                              "threshold-balanced and listed with the reason.")] = False,
    nonlinear: Annotated[str, typer.Option(
        "--nonlinear", metavar="ugo|exact",
        help="Nonlinearities other than ReLU/MaxPool (GELU, exp in softmax, 1/sqrt in LayerNorm, ...). 'ugo': "
             "subnets of signed IF neurons fitted on the calibrated input range (no float nonlinearity left). "
             "'exact': the float operator on the running mean, corrected each step (the accuracy ceiling).")] = "ugo",
    ugo_size: Annotated[Optional[int], typer.Option(
        "--ugo-size", min=1, help="Hidden neurons per UGO (default: STA's size, 64 for GELU and most, 32 for "
                                  "exp, 8 for 1/sqrt, doubled while the fit errs by more than 1%, up to 64).")] = None,
    allow_float: Annotated[Optional[str], typer.Option(
        "--allow-float", metavar="OP[,OP]", help="Keep nodes of these op types, which nothing else maps, as "
        "float operators with estimate-and-correct semantics (listed in the report). Without it such nodes "
        "make the conversion fail with the list.")] = None,
    skip_pass: Annotated[Optional[list[str]], typer.Option(
        "--skip-pass", help="Skip a normalising pass by name (repeatable).")] = None,
    no_check: Annotated[bool, typer.Option("--no-check", help="Skip the onnxruntime self-check of the "
                                           "normalising passes.")] = False,
    json_out: JsonOpt = None,
) -> None:
    with errors_to_exit_codes():
        from rewrites.calibration.stats import Calibration
        from rewrites.config import ConvertOptions, Neuron, Nonlinear, NormSpec
        from rewrites.convert import convert_model, suggested_T
        from rewrites.errors import Ann2SnnError, UnsupportedNodesError
        from rewrites.graph import load_model, save_model
        from rewrites.passes import NORMALISE, PASSES
        skips = tuple(skip_pass or ())
        for name in skips:
            if name not in PASSES:
                raise Ann2SnnError(f"unknown pass {name!r}", f"passes: {', '.join(PASSES)}")
            if name not in {p.name for p in NORMALISE}:
                raise Ann2SnnError(f"pass {name!r} cannot be skipped", "only normalising passes can be skipped")
        if bias_correction and data is None:
            raise Ann2SnnError("--bias-correction needs --data", "give the calibration data")
        calibration = Calibration.read(calib)
        ann = load_model(model)
        default_t = default_t or suggested_T(ann)
        options = ConvertOptions(NormSpec.parse(norm or calibration.method), phi, default_t, skips,
                                 Neuron.parse(neuron), tmax, weight_norm, per_channel, Nonlinear.parse(nonlinear),
                                 ugo_size, parse_ops(allow_float))
        try:
            result = convert_model(ann, calibration, options, model, calib, check=not no_check)
        except UnsupportedNodesError as exc:  # the message lists 20 nodes; --json gets every one
            Output(json_out).emit_json(exc.to_json())
            raise
        target = output or model.with_name(model.stem + ".snn.onnx")
        if bias_correction:
            from sim.bias_correction import correct_with_data
            result.model, result.corrections = correct_with_data(result.model, target, model, data, default_t,
                                                                 limit)
        save_model(result.model, target)
        out = Output(json_out)
        render(out, result, target, options)
        out.emit_json(summary(result, target, options))


def parse_ops(text: str | None) -> tuple[str, ...]:
    import onnx.defs
    from rewrites.errors import Ann2SnnError
    ops = tuple(op.strip() for op in (text or "").split(",") if op.strip())
    known = {s.name for s in onnx.defs.get_all_schemas()}
    for op in ops:
        if op not in known:
            raise Ann2SnnError(f"--allow-float: unknown ONNX op type {op!r}", "op types are case-sensitive, "
                               "e.g. --allow-float ReduceMax,Floor")
    return ops


def _threshold_text(value) -> str:
    if isinstance(value, list):
        return f"{min(value):.4g}..{max(value):.4g} ({len(value)} channels)"
    return f"{value:.4g}"


def summary(result, target: Path, options) -> dict:
    return {
        "output": str(target), "norm": str(options.norm), "phi": options.phi, "default_T": options.default_T,
        "neuron": options.neuron.value, "tmax": options.effective_tmax if options.neuron.value == "signed" else None,
        "weight_norm": options.weight_norm, "per_channel": options.per_channel,
        "bias_correction": [vars(c) for c in result.corrections],
        "normalise_max_error": result.normalise_error,
        "ops_before": dict(sorted(result.ops_before.items())), "ops_after": dict(sorted(result.ops_after.items())),
        "passes": [{"name": r.name, "converted": r.converted, "skipped": [{"node": n, "reason": why}
                                                                        for n, why in r.skipped]}
                   for r in result.reports],
        "nonlinear": options.nonlinear.value,
        "ugo": result.ugo_fits,
        "kept_float": [n.node for n in result.kept_float],
        "layers": result.layers,
    }


def render(out: Output, result, target: Path, options) -> None:
    ops = sorted(set(result.ops_before) | set(result.ops_after))
    out.table("Operators before and after", ["op", "before", "after"],
              [[op, result.ops_before.get(op, 0), result.ops_after.get(op, 0)] for op in ops])
    rows = [[r.name, len(r.converted), "; ".join(f"{n}: {why}" for n, why in r.skipped)] for r in result.reports]
    out.table("Passes", ["pass", "changed", "left alone (why)"], rows)
    neurons = [l for l in result.layers if "threshold" in l]
    if neurons:
        kind = "signed IF neurons" if options.neuron.value == "signed" else "IF neurons"
        title = f"{kind} ({options.norm}, phi {options.phi:g}"
        title += f", tmax {options.effective_tmax})" if options.neuron.value == "signed" else ")"
        qcfs = False
        columns, rows = ["node", "from", "threshold", "calibrated max"], \
            [[l["node"], l["from"], _threshold_text(l["threshold"]), l["calibrated_max"]] for l in neurons]
        if any(l.get("norm") == "qcfs" for l in neurons):  # trained lambda and shift, not the options
            title += "; QCFS layers: threshold lambda, phi from the trained shift"
            qcfs = True
            columns.append("phi")
            for row, l in zip(rows, neurons):
                row.append(f"{l['phi']:g}")
        if options.weight_norm:
            columns.append("weight norm")
            for row, l in zip(rows, neurons):
                row.append("folded (threshold 1)" if l.get("weight_norm") else
                           f"kept: {l.get('weight_norm_skipped', 'not reached')}")
        out.table(title, columns, rows)
        if qcfs and options.neuron.value == "signed":
            out.print(f"QCFS with signed neurons: `simulate --T {options.default_T} --extra-t {options.default_T} "
                      "--drain` lets them settle at the ANN's activations (docs/ablation.md)")
    dead = [l["node"] for l in neurons if l.get("dead")]
    if dead:
        out.print(f"note: never active during calibration (threshold set to 1): {', '.join(dead)}")
    if result.ugo_fits:
        out.table("UGO subnets (fit on the calibrated input distribution)",
                  ["node", "function", "input range", "hidden", "max |error|", "mean |error|"],
                  [[f["node"], f["op"], f"{f['range'][0]:.4g}..{f['range'][1]:.4g}", f["size"],
                    f"{f['max_error']:.3g}", f"{f['mean_error']:.3g}"] for f in result.ugo_fits])
    if result.kept_float:
        out.print(f"kept as float operators (estimate-and-correct): {', '.join(n.node for n in result.kept_float)}")
    out.print(f"normalising passes checked with onnxruntime: max relative error {result.normalise_error:.2e}")
    if result.corrections:
        out.table(f"Bias correction at T = {options.default_T}", ["layer", "bias shifted", "mean shift"],
                  [[c.node, c.bias or f"skipped: {c.skipped}", c.mean_shift] for c in result.corrections])
    out.print(f"wrote {target}")

"""Rewrite the ANN into a spiking network (ReLU -> IF neuron, MaxPool -> MaxPool neuron, linear ops kept)
and export it as a one-step stateful ONNX model."""
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
        "--norm", help="Threshold rule: 'max' or 'percentile:Q' (default: the one recorded by calibrate).")] = None,
    phi: Annotated[float, typer.Option("--phi", help="Initial membrane potential as a fraction of the threshold "
                                       "(0.5: QCFS shift, 0: classic conversion).")] = 0.5,
    default_t: Annotated[int, typer.Option("--T", min=1, help="Default number of time steps recorded in the "
                                           "model for `simulate`.")] = 32,
    skip_pass: Annotated[Optional[list[str]], typer.Option(
        "--skip-pass", help="Skip a normalising pass by name (repeatable).")] = None,
    no_check: Annotated[bool, typer.Option("--no-check", help="Skip the onnxruntime self-check of the "
                                           "normalising passes.")] = False,
    json_out: JsonOpt = None,
) -> None:
    with errors_to_exit_codes():
        from rewrites.calibration.stats import Calibration
        from rewrites.config import ConvertOptions, NormSpec
        from rewrites.convert import convert_model
        from rewrites.errors import Ann2SnnError
        from rewrites.graph import load_model, save_model
        from rewrites.passes import NORMALISE, PASSES
        skips = tuple(skip_pass or ())
        for name in skips:
            if name not in PASSES:
                raise Ann2SnnError(f"unknown pass {name!r}", f"passes: {', '.join(PASSES)}")
            if name not in {p.name for p in NORMALISE}:
                raise Ann2SnnError(f"pass {name!r} cannot be skipped", "only normalising passes can be skipped")
        calibration = Calibration.read(calib)
        options = ConvertOptions(NormSpec.parse(norm or calibration.method), phi, default_t, skips)
        ann = load_model(model)
        result = convert_model(ann, calibration, options, model, calib, check=not no_check)
        target = output or model.with_name(model.stem + ".snn.onnx")
        save_model(result.model, target)
        out = Output(json_out)
        render(out, result, target, options)
        out.emit_json(summary(result, target, options))


def summary(result, target: Path, options) -> dict:
    return {
        "output": str(target), "norm": str(options.norm), "phi": options.phi, "default_T": options.default_T,
        "normalise_max_error": result.normalise_error,
        "ops_before": dict(sorted(result.ops_before.items())), "ops_after": dict(sorted(result.ops_after.items())),
        "passes": [{"name": r.name, "converted": r.converted, "skipped": [{"node": n, "reason": why}
                                                                        for n, why in r.skipped]}
                   for r in result.reports],
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
        out.table(f"IF neurons ({options.norm}, phi {options.phi:g})", ["node", "from", "threshold", "calibrated max"],
                  [[l["node"], l["from"], l["threshold"], l["calibrated_max"]] for l in neurons])
    dead = [l["node"] for l in neurons if l.get("dead")]
    if dead:
        out.print(f"note: never active during calibration (threshold set to 1): {', '.join(dead)}")
    out.print(f"normalising passes checked with onnxruntime: max relative error {result.normalise_error:.2e}")
    out.print(f"wrote {target}")

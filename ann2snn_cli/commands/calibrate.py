"""Record activation statistics on sample data. Runs the ANN over the data and writes the statistics (max,
min, mean, histogram) of every tensor a rewrite needs as a JSON file tied to this model, for `convert
--calib`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ann2snn_cli._options import (BatchOpt, DataOpt, InputShapeOpt, JsonOpt, LimitOpt, MeanOpt, ModelArg, OutOpt,
                                  StdOpt)
from ann2snn_cli._output import Output

from ann2snn_cli.state import errors_to_exit_codes

NAME = "calibrate"


def command(
    model: ModelArg,
    data: DataOpt,
    mean: MeanOpt = None,
    std: StdOpt = None,
    output: OutOpt = None,
    input_shape: InputShapeOpt = None,
    percentile: Annotated[Optional[float], typer.Option(
        "--percentile", min=0.0, max=100.0, metavar="Q", help="Default threshold rule recorded for `convert`: this "
        "percentile "
        "of each neuron's calibrated activation (default 99).")] = None,
    use_max: Annotated[bool, typer.Option("--max", help="Default threshold rule: the calibrated maximum.")] = False,
    batch_size: BatchOpt = 64,
    limit: LimitOpt = None,
    json_out: JsonOpt = None,
) -> None:
    with errors_to_exit_codes():
        import ann2snn
        from ground.data import data_source
        from ground.errors import Ann2SnnError
        from ground.save import write_text_atomic
        if use_max and percentile is not None:
            raise Ann2SnnError("--max and --percentile exclude each other", "give one of them")
        if percentile is not None and percentile <= 0.0:
            raise Ann2SnnError(f"invalid --percentile {percentile:g}", "use a value in (0, 100]")
        method = "max" if use_max else f"percentile:{percentile:g}" if percentile is not None else None
        out = Output(json_out)
        target = output or default_output(model)
        with out.progress("calibrating", 0) as progress:
            result = ann2snn.calibrate(model, data_source(data, mean, std), batch_size=batch_size, limit=limit,
                                       norm=method, progress=progress,
                                       input_shapes=input_shape or ())
        write_text_atomic(target, result.to_json())
        render(out, result, target)
        out.emit_json(summary(result, target))


def default_output(model: Path) -> Path:
    return model.with_name(model.stem + ".calib.json")


def summary(result, target: Path) -> dict:
    q = result.percentile
    return {"output": str(target), "samples": result.samples, "method": result.method,
            "input_shapes": result.input_shapes,
            "tensors": [{"tensor": n, "min": s.minimum, "max": s.maximum, "mean": s.mean,
                         f"p{q:g}": s.percentile(q)} for n, s in result.tensors.items()]}


def render(out: Output, result, target: Path) -> None:
    q = result.percentile
    out.table(f"Calibration over {result.samples} samples", ["tensor", "min", "mean", "max", f"p{q:g}"],
              [[n, s.minimum, s.mean, s.maximum, s.percentile(q)] for n, s in result.tensors.items()])
    for name, dims in result.input_shapes.items():
        out.print(f"note: input '{name}' has dynamic dims: calibrated at [{', '.join(map(str, dims))}] (recorded for `convert --calib`)")
    out.print(f"wrote {target} (default norm: {result.method})")

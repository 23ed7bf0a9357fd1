"""Calibrate, convert and simulate the bundled example (a small CNN trained on Fashion-MNIST) and show the
tables."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from ann2snn_cli._options import LimitOpt
from ann2snn_cli._output import Output
from ann2snn_cli.state import errors_to_exit_codes

NAME = "demo"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fmnist_cnn"


def command(
    steps: Annotated[int, typer.Option("--T", min=1, help="Time steps to simulate.")] = 32,
    engine: Annotated[str, typer.Option("--engine", help="numpy or onnxruntime.")] = "numpy",
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Keep the calibration and spiking model "
                                                    "here (default: a temporary folder).")] = None,
    limit: LimitOpt = None,
) -> None:
    with errors_to_exit_codes():
        from ann2snn_cli.commands import convert, simulate
        from rewrites.calibration.collect import calibrate as run_calibration
        from rewrites.config import ConvertOptions, NormSpec
        from rewrites.convert import convert_model
        from rewrites.errors import InputFileError
        from rewrites.graph import load_model, save_model, write_text_atomic
        from sim.simulate import simulate as run_simulation
        model, calib_data, test_data = (EXAMPLE / n for n in ("model.onnx", "calib.npz", "test.npz"))
        if not model.exists():
            raise InputFileError(f"{model}: bundled example not found",
                                 "run the demo from a clone of the repository (pip install -e .)")
        out = Output()
        with tempfile.TemporaryDirectory() as tmp:
            work = out_dir or Path(tmp)
            calib_path, snn_path = work / "model.calib.json", work / "model.snn.onnx"
            out.print(f"[bold]1/3 calibrate[/bold] {model.name} on {calib_data.name}")
            with out.progress("calibrating", 0) as progress:
                calibration = run_calibration(model, calib_data, 100, progress=progress)
            write_text_atomic(calib_path, calibration.to_json())
            out.print(f"[bold]2/3 convert[/bold] ({calibration.method}, phi 0.5)")
            options = ConvertOptions(NormSpec.parse(calibration.method), 0.5, steps)
            result = convert_model(load_model(model), calibration, options, model, calib_path)
            save_model(result.model, snn_path)
            convert.render(out, result, snn_path, options)
            out.print(f"[bold]3/3 simulate[/bold] T = {steps} on {test_data.name}")
            with out.progress("simulating", 0) as progress:
                report = run_simulation(snn_path, test_data, steps, 0, engine, model, 200, limit, progress)
            simulate.render(out, report)

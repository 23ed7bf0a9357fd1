"""Run all four steps on the bundled example. Calibrates, converts and simulates a small CNN trained on
Fashion-MNIST (examples/fmnist_cnn) and shows the tables."""
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
    steps: Annotated[Optional[int], typer.Option("--T", min=1, metavar="N", help="Time steps to convert for and "
                                                 "simulate "
                                                 "(default: convert's, 8).")] = None,
    engine: Annotated[str, typer.Option("--engine", metavar="numpy|onnxruntime",
                                        help="The simulator (see simulate --help).")] = "numpy",
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", metavar="DIR", help="Keep the calibration and "
                                                    "spiking model "
                                                    "here (default: a temporary folder).")] = None,
    limit: LimitOpt = None,
) -> None:
    with errors_to_exit_codes():
        import ann2snn
        from ann2snn_cli.commands import convert, simulate
        from ground.errors import InputFileError
        from ground.save import write_text_atomic
        model, calib_data, test_data = (EXAMPLE / n for n in ("model.onnx", "calib.npz", "test.npz"))
        if not model.exists():
            raise InputFileError(f"{model}: bundled example not found",
                                 "run the demo from a clone of the repository (pip install -e .)")
        out = Output()
        with tempfile.TemporaryDirectory() as tmp:
            work = out_dir or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            calib_path, snn_path = work / "model.calib.json", work / "model.snn.onnx"
            out.heading("1/3 calibrate", f" {model.name} on {calib_data.name}")
            with out.progress("calibrating", 0) as progress:
                calibration = ann2snn.calibrate(model, calib_data, batch_size=100, progress=progress)
            write_text_atomic(calib_path, calibration.to_json())
            out.heading("2/3 convert", f" (each layer's options chosen on {calib_data.name})")
            with out.progress("converting", 0):
                converted = ann2snn.convert(model, calib_path, calib_data, T=steps)
            converted.save(snn_path)
            convert.render(out, converted, snn_path)
            steps = converted.options.default_T
            out.heading("3/3 simulate", f" T = {steps} on {test_data.name}")
            with out.progress("simulating", 0) as progress:
                report = ann2snn.simulate(snn_path, test_data, steps, extra_t=0, engine=engine, ann=model,
                                          batch_size=200, limit=limit, progress=progress)
            simulate.render(out, report)
            if out_dir is None:
                out.print(f"The calibration and the spiking model were written to a temporary folder, now "
                          "removed; `ann2snn demo --out-dir DIR` keeps them.")

"""Option declarations shared by several commands, declared once."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JsonOpt = Annotated[Optional[str], typer.Option(
    "--json", metavar="FILE", help="Also write the figures as JSON to FILE ('-' for stdout, instead of tables).")]
DataOpt = Annotated[Path, typer.Option(
    "--data", metavar="FILE", help=".npy with the inputs, or .npz with arrays x (and optional labels y), or one "
    "array per model input name.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Samples per onnxruntime/engine call.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="Use only the first N samples.")]
OutOpt = Annotated[Optional[Path], typer.Option("-o", "--output", metavar="FILE", help="Where to write the result.")]
InputShapeOpt = Annotated[Optional[list[str]], typer.Option(
    "--input-shape", metavar="NAME:d0,d1,...", help="The shape to build the file for, for an input with dynamic "
    "dims past the batch (height, width): e.g. x:N,3,640,640 (repeatable; the batch, first, stays dynamic). "
    "Default: the shape of the --data arrays, or the one the --calib file recorded.")]

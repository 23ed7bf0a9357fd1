"""Option declarations shared by several commands, declared once."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JsonOpt = Annotated[Optional[str], typer.Option(
    "--json", metavar="FILE", help="Also write the figures as JSON to FILE ('-' for stdout, instead of tables).")]
DataOpt = Annotated[Path, typer.Option(
    "--data", metavar="FILE|DIR", help=".npy with the inputs; .npz with arrays x (and optional labels y), or one "
    "array per model input name; or a folder of PNG/JPEG images, in class subfolders for labels, resized to the "
    "model's input and scaled to [0, 1] (see docs/cli.md).")]
MeanOpt = Annotated[Optional[str], typer.Option(
    "--mean", metavar="M[,M,M]", help="Image folders: subtract this from the [0, 1] pixels, per channel.")]
StdOpt = Annotated[Optional[str], typer.Option(
    "--std", metavar="S[,S,S]", help="Image folders: then divide by this, per channel.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Samples run together in one "
                                       "call (more: faster, more memory).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, metavar="N", help="Use only the first N samples.")]
OutOpt = Annotated[Optional[Path], typer.Option("-o", "--output", metavar="FILE", help="Where to write the result.")]
InputShapeOpt = Annotated[Optional[list[str]], typer.Option(
    "--input-shape", metavar="NAME:d0,d1,...", help="For an input whose size past the batch is not fixed in "
    "the model (height, width): the shape to build for, e.g. x:N,3,640,640 (the batch, first, stays free; "
    "repeatable). Default: the shape of the --data arrays, or the one the --calib file recorded; a folder "
    "of images has none, its images are resized to this.")]
ModelArg = Annotated[Path, typer.Argument(metavar="MODEL", help="The ANN as an ONNX file.", show_default=False)]

"""The Python API: one call per command, each what the CLI command runs between parsing and rendering.

Models are paths or `onnx.ModelProto`s. Data is a path (.npy, .npz, a folder of images or an ImageFolder with
its normalisation), a NumPy array (the input of a single-input model), or a dict of arrays by input name
(`"x"` for a single input) with optional integer labels under `"y"`. Every error on bad input is an
`Ann2SnnError` whose message names the file, node or tensor at fault. docs/api.md has the examples."""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx

from ann2snn import conversion
from ann2snn.conversion import ConvertRequest, Converted
from ground.data import Arrays
from ground.save import save_model
from rewrites.calibration.collect import calibrate as collect_calibration
from rewrites.calibration.stats import Calibration
from rewrites.config import DEFAULT_NORM
from rewrites.convert import ModelSummary, inspect_model
from rewrites.shapes import parse_input_shapes
from sim.metrics import report_steps
from sim.model import SpikingModel, load_spiking, spiking_from_proto
from sim.simulate import Analyses, SimulationReport, simulate as run_simulation, sweep_extra_t as sweep_table, window_for

Progress = Callable[[int, int], None]
InputShapes = dict | Sequence[str] | None  # {name: dims}, or the CLI's NAME:d0,d1,... texts
IN_MEMORY = Path("(converted in memory)")


def calibrate(model: str | Path | onnx.ModelProto, data, *, batch_size: int = 64, limit: int | None = None,
              norm: str | None = None, input_shapes: InputShapes = None,
              progress: Progress | None = None) -> Calibration:
    """Per-tensor statistics of every tensor a rewrite needs, over the data (`ann2snn calibrate`); `norm` is
    recorded as the default threshold rule (None: the default, percentile:99). `.to_json()` is the
    calibration file's text."""
    with _model_file(model) as path:
        return collect_calibration(path, _data(data), batch_size, limit, method=norm or DEFAULT_NORM,
                                   progress=progress, input_shapes=_input_shapes(input_shapes))


def convert(model: str | Path | onnx.ModelProto, calibration: Calibration | str | Path | None = None, data=None,
            *, save_calibration: str | Path | None = None, **options) -> Converted:
    """The spiking model (`ann2snn convert`). Thresholds come from `calibration` (a Calibration or the path of
    its JSON), else from `data` calibrated on the fly, else from the graph (QCFS networks). `options` are the
    fields of ConvertRequest; those left out are chosen on the data. `.save(path)` writes the file."""
    known = {f.name for f in fields(ConvertRequest)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"convert() got unknown option(s) {', '.join(unknown)}; options: {', '.join(sorted(known))}")
    options = {k: tuple(v) if k in ("allow_float", "skip_passes") else v for k, v in options.items()}
    if "input_shapes" in options:
        options["input_shapes"] = _input_shapes(options["input_shapes"])
    with _model_file(model) as path:
        return conversion.convert(path, ConvertRequest(**options), calibration,
                                  _data(data) if data is not None else None, save_calibration)


def simulate(snn: str | Path | Converted | SpikingModel, data, T: int | None = None, *,
             ann: str | Path | onnx.ModelProto | None = None, extra_t: int | None = None, drain: bool | None = None,
             engine: str = "numpy", batch_size: int = 128, limit: int | None = None, layer_error: bool = False,
             until_silent: int | None = None, memory_budget: int | None = None,
             progress: Progress | None = None) -> SimulationReport:
    """Run the spiking model over the data for T steps (`ann2snn simulate`); T, extra_t and drain left out
    follow the file. With `ann`, agreement with its top-1 and its accuracy. `.to_dict()` is `--json`'s."""
    if isinstance(snn, Converted):
        snn = spiking_from_proto(snn.proto, IN_MEMORY)
    elif not isinstance(snn, SpikingModel):
        snn = load_spiking(snn)
    with _model_file(ann) as ann_path:
        return run_simulation(snn, _data(data), T, extra_t, engine, ann_path, batch_size, limit, progress,
                              memory_budget, Analyses(layer_error, until_silent), drain)


def sweep_extra_t(snn: str | Path, data, extra_t: int, T: int | None = None, *, drain: bool | None = None,
                  engine: str = "numpy", batch_size: int = 128, limit: int | None = None,
                  memory_budget: int | None = None) -> dict:
    """`ann2snn simulate --sweep-extra-t`: the accuracy after t steps with input and then 0..extra_t steps
    without, for t = 1..T (1, 2, 4, .. T when T > 16); T left out follows the file."""
    window = window_for(load_spiking(snn), T, 0, drain)
    ts = list(range(1, window.T + 1)) if window.T <= 16 else report_steps(window.T)
    return sweep_table(snn, _data(data), ts, extra_t, engine, batch_size, limit, memory_budget, bool(drain))


def inspect(model: str | Path | onnx.ModelProto, input_shapes: InputShapes = None) -> ModelSummary:
    """How each node converts, the inputs and the suggested T (`ann2snn inspect`)."""
    with _model_file(model) as path:
        return inspect_model(path, _input_shapes(input_shapes))


def _input_shapes(shapes: InputShapes) -> dict | None:
    """Shapes for the dynamic inputs: a dict as given, NAME:d0,d1,... texts parsed (an empty list: none)."""
    if shapes is None or isinstance(shapes, dict):
        return shapes
    return parse_input_shapes(tuple(shapes))


@contextmanager
def _model_file(model) -> Iterator[Path | None]:
    """The path of the model: the path given, or a ModelProto saved to a temporary folder for the call."""
    if model is None or not isinstance(model, onnx.ModelProto):
        yield None if model is None else Path(model)
        return
    with tempfile.TemporaryDirectory(prefix="ann2snn-") as folder:
        path = Path(folder) / f"{model.graph.name or 'model'}.onnx"
        save_model(model, path)
        yield path


def _data(data):
    """What the data readers take: a path or reader as given, arrays wrapped."""
    if isinstance(data, np.ndarray):
        return Arrays({"x": data})
    if isinstance(data, dict):
        return Arrays(dict(data))
    return data

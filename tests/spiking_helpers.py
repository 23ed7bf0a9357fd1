"""Calibrate-and-convert in memory for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from rewrites.calibration.collect import calibrate
from rewrites.config import ConvertOptions, Neuron, NormSpec
from rewrites.convert import convert_model
from ground.save import save_model
from sim.engine import NumpyEngine
from sim.model import load_spiking
from sim.ort import OrtEngine


def convert_with_data(model: onnx.ModelProto, x: np.ndarray, tmp: Path, norm: str = "max", phi: float = 0.5,
                      name: str = "model", neuron: str = "if", tmax: int | None = None, T: int = 32,
                      weight_norm: bool = False):
    """Save model and data under tmp, calibrate on x, convert; returns (snn path, ConversionResult)."""
    ann_path, data_path, snn_path = tmp / f"{name}.onnx", tmp / f"{name}.npz", tmp / f"{name}.snn.onnx"
    save_model(model, ann_path)
    np.savez(data_path, x=x)
    calibration = calibrate(ann_path, data_path, batch_size=max(1, len(x) // 3))
    options = ConvertOptions(NormSpec.parse(norm), phi, T, neuron=Neuron.parse(neuron), tmax=tmax,
                             weight_norm=weight_norm)
    result = convert_model(model, calibration, options)
    save_model(result.model, snn_path)
    return snn_path, result


def both_engines(snn_path: Path, x: np.ndarray, T: int, extra_t: int = 0, drain: bool = False):
    model = load_spiking(snn_path)
    name = model.inputs[0].name
    a = NumpyEngine(model).run({name: x}, T, extra_t, drain=drain)
    b = OrtEngine(model).run({name: x}, T, extra_t, drain=drain)
    return a, b, model.outputs[0]


def step_by_contract(snn_path: Path, feeds: dict[str, np.ndarray], T: int, drain: int = 0) -> np.ndarray:
    """The decoded first output after T input steps and `drain` steps with snn.drive = 0, stepping the file
    knowing only the public contract (docs/contract.md): state fed zeros, then its .next outputs; the mean of
    the step outputs divides by T. No simulator code is used."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(snn_path), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    states = [i for i in session.get_inputs() if i.name.startswith("state.")]
    batch = len(next(iter(feeds.values())))
    state = {s.name: np.zeros([d if isinstance(d, int) else batch for d in s.shape], np.float32) for s in states}
    first = next(o for o in outputs if not o.startswith("state."))
    gated = "snn.drive" in {i.name for i in session.get_inputs()} | {
        i.name for i in session.get_overridable_initializers()}  # a file that cannot drain has no gate
    assert gated or not drain, "the file has no snn.drive: it cannot drain"
    total = 0.0
    for t in range(T + drain):
        drive = {"snn.drive": np.array(1.0 if t < T else 0.0, np.float32)} if gated else {}
        values = session.run([first] + [s.name + ".next" for s in states], {**feeds, **state, **drive})
        total = total + values[0].astype(np.float64)
        state = dict(zip(state, values[1:]))
    return total / T

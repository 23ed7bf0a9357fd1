"""Calibrate-and-convert in memory for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from rewrites.calibration.collect import calibrate
from rewrites.config import ConvertOptions, Neuron, NormSpec
from rewrites.convert import convert_model
from rewrites.graph import save_model
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

"""Calibrate-and-convert in memory for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from rewrites.calibration.collect import calibrate
from rewrites.config import ConvertOptions, NormSpec
from rewrites.convert import convert_model
from rewrites.graph import save_model
from sim.engine import NumpyEngine
from sim.model import load_spiking
from sim.ort import OrtEngine


def convert_with_data(model: onnx.ModelProto, x: np.ndarray, tmp: Path, norm: str = "max", phi: float = 0.5,
                      name: str = "model"):
    """Save model and data under tmp, calibrate on x, convert; returns (snn path, ConversionResult)."""
    ann_path, data_path, snn_path = tmp / f"{name}.onnx", tmp / f"{name}.npz", tmp / f"{name}.snn.onnx"
    save_model(model, ann_path)
    np.savez(data_path, x=x)
    calibration = calibrate(ann_path, data_path, batch_size=max(1, len(x) // 3))
    result = convert_model(model, calibration, ConvertOptions(NormSpec.parse(norm), phi))
    save_model(result.model, snn_path)
    return snn_path, result


def both_engines(snn_path: Path, x: np.ndarray, T: int, extra_t: int = 0):
    model = load_spiking(snn_path)
    name = model.inputs[0].name
    a = NumpyEngine(model).run({name: x}, T, extra_t)
    b = OrtEngine(model).run({name: x}, T, extra_t)
    return a, b, model.outputs[0]

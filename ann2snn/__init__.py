"""The Python API of ann2snn: one call per command.

    from ann2snn import convert, ConvertRequest
    converted = convert("model.onnx", data="calib.npz")   # thresholds calibrated, options chosen on the data
    save_model(converted.result.model, "model.snn.onnx")
"""
from ann2snn.convert import DEFAULT_T, ConvertRequest, Converted, convert
from rewrites.calibration.collect import calibrate
from rewrites.convert import inspect_model as inspect
from ground.load import load_model
from ground.save import save_model
from sim.simulate import simulate
from sim.to_nir import export_nir, to_nir

__all__ = ["DEFAULT_T", "ConvertRequest", "Converted", "calibrate", "convert", "export_nir", "inspect", "load_model",
           "save_model", "simulate", "to_nir"]

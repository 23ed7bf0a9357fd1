"""ann2snn as a library: one call per command (ann2snn/api.py; docs/api.md has the examples).

    import ann2snn
    converted = ann2snn.convert("model.onnx", data="calib.npz")   # calibrated, options chosen on the data
    converted.save("model.snn.onnx")
    report = ann2snn.simulate("model.snn.onnx", "test.npz", T=8, ann="model.onnx")
    print(report.to_dict()["accuracy"])
"""
from ann2snn.api import calibrate, convert, inspect, simulate, sweep_extra_t
from ann2snn.conversion import DEFAULT_T, ConvertRequest, Converted
from ground.errors import Ann2SnnError
from ground.load import load_model
from ground.save import save_model
from rewrites import __version__
from rewrites.calibration.stats import Calibration
from sim.metrics import SimulationReport
from sim.plot import plot_reports
from sim.to_nir import export_nir, to_nir

__all__ = ["DEFAULT_T", "Ann2SnnError", "Calibration", "ConvertRequest", "Converted", "SimulationReport",
           "__version__", "calibrate", "convert", "export_nir", "inspect", "load_model", "plot_reports", "save_model",
           "simulate", "sweep_extra_t", "to_nir"]

"""onnxruntime sessions for calibration, self-checks and ANN references, with errors that name the model."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from rewrites.errors import DataError, ModelError


# onnxruntime also logs every failure it raises, straight to stderr; the raised error is reported instead.
ort.set_default_logger_severity(4)


class Session:
    """A CPU session; `optimize=False` keeps every tensor (fusions cannot remove an observed output)."""

    def __init__(self, model: onnx.ModelProto, name: str, optimize: bool = True):
        options = ort.SessionOptions()
        options.log_severity_level = 4
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.name = name
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises untyped errors
            raise ModelError(f"{name}: onnxruntime cannot load it: {_first_line(exc)}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(outputs, feeds)
        except Exception as exc:  # onnxruntime raises untyped errors
            raise DataError(f"{self.name}: onnxruntime failed on the data: {_first_line(exc)}",
                            "check the data's shape against `ann2snn inspect`") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]

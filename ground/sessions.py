"""onnxruntime sessions for calibration, self-checks and ANN references, with errors that name the model."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from ground.errors import DataError, ModelError, first_line
from ground.protos import without_weights


# onnxruntime also logs every failure it raises, straight to stderr; the raised error is reported instead.
ort.set_default_logger_severity(4)


# Unoptimised sessions of models with more weights than this take them as inputs fed from NumPy arrays
# (onnxruntime reads a contiguous array in place), instead of from a serialised copy of the model that it
# parses and copies again: one copy of the weights instead of three.
WEIGHTS_AS_INPUTS_ABOVE = 64 * 2**20


def make_session(model: onnx.ModelProto, threads: int = 0, optimize: bool = True, spin: bool = True,
                 optimized_path: str | None = None) -> ort.InferenceSession:
    """Every onnxruntime session of the tool is built here: on the CPU, with onnxruntime's own logging off (a
    failure is raised, and reported by the caller with what to do). `threads`: intra-op threads (0: onnxruntime's
    choice); `optimize=False` keeps every node as written (an observed tensor cannot be fused away); `spin=False`
    lets the worker threads sleep between runs; `optimized_path` keeps the optimised graph there."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class Session:
    """A CPU session; `optimize=False` keeps every tensor (fusions cannot remove an observed output)."""

    def __init__(self, model: onnx.ModelProto, name: str, optimize: bool = True, spin: bool = True):
        """`spin=False`: onnxruntime's worker threads sleep between runs instead of spinning, leaving the CPU to
        other work on the caller's side (calibration folds statistics on a thread while the session runs)."""
        self.name = name
        self.weights: dict[str, np.ndarray] = {}
        if not optimize and sum(t.ByteSize() for t in model.graph.initializer) > WEIGHTS_AS_INPUTS_ABOVE:
            model, self.weights = weights_as_inputs(model)
        try:
            self.session = make_session(model, optimize=optimize, spin=spin)
        except Exception as exc:  # onnxruntime raises untyped errors
            raise ModelError(f"{name}: onnxruntime cannot load it: {first_line(exc)}") from exc
        self.input_names = [i.name for i in self.session.get_inputs() if i.name not in self.weights]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(outputs, {**feeds, **self.weights} if self.weights else feeds)
        except Exception as exc:  # onnxruntime raises untyped errors
            raise DataError(f"{self.name}: onnxruntime failed on the data: {first_line(exc)}",
                            "check the data's shape against `ann2snn inspect`") from exc


def weights_as_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A weightless copy of the model whose large initializers are graph inputs, and their values."""
    skeleton = without_weights(model)
    moved = [t for t in skeleton.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    names = {t.name for t in moved}
    kept = [t for t in skeleton.graph.initializer if t.name not in names]
    listed = {i.name for i in skeleton.graph.input}  # IR < 4 lists initializers as inputs too
    skeleton.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                for t in moved if t.name not in listed)
    skeleton.graph.ClearField("initializer")
    skeleton.graph.initializer.extend(kept)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in names}
    return skeleton, weights

"""Loading, checking, fingerprinting and atomic saving of ONNX models."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from rewrites.errors import InputFileError, ModelError

MIN_OPSET = 11


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX model, with its external data; every failure names the file."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if not path.is_file():
        raise InputFileError(f"{path}: not a file")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise InputFileError(f"{path}: not a readable ONNX model ({_first_line(exc)})",
                             "is the file complete? re-export it") from exc
    if not model.graph.node:
        raise InputFileError(f"{path}: no graph nodes: not an ONNX model or an empty one",
                             "re-export the model")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelError(f"{path}: invalid ONNX model: {_first_line(exc)}") from exc
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ModelError(f"{path}: opset {opset} is older than {MIN_OPSET}",
                         f"re-export with opset_version >= {MIN_OPSET}")
    return model


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def fingerprint(model: onnx.ModelProto) -> str:
    """A content hash of the graph and its weights, independent of how the file was serialised."""
    h = hashlib.sha256()
    for node in model.graph.node:
        h.update(node.SerializeToString(deterministic=True))
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        arr = numpy_helper.to_array(init)
        h.update(init.name.encode())
        h.update(str((arr.dtype.str, arr.shape)).encode())
        h.update(arr.tobytes())
    for vi in list(model.graph.input) + list(model.graph.output):
        h.update(vi.SerializeToString(deterministic=True))
    return "sha256:" + h.hexdigest()


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference raises several unrelated types
        raise ModelError(f"shape inference failed: {_first_line(exc)}") from exc


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write to a temporary file beside the target, then rename: never a half-written model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]

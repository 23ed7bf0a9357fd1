"""Saving ONNX models and text atomically: a temporary file beside the target, renamed over it, so nothing is
half-written; weights over 2 GB (or as the source was read) go to an aligned external data file."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import onnx
try:
    from google.protobuf.unknown_fields import UnknownFieldSet
except ImportError:  # protobuf before 4.22 (tf2onnx pins 3.20): the message method it replaced
    def UnknownFieldSet(message):  # noqa: N802
        return message.UnknownFields()
from onnx import numpy_helper

from ground.errors import InputFileError
from ground.protos import EXTERNAL_DATA_KEY, copy_field, get_meta, uses_external_data, without_weights


EXTERNAL_ABOVE = 2**30  # bytes of weights from which a model is always saved with external data


ALIGN = 4096  # offset alignment of tensors in the data file (lets a runtime map them)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> None:
    """Write to temporary files beside the target, then rename: never a half-written model. With external
    data (default: when the model was read with it or its weights reach EXTERNAL_ABOVE bytes) the weights
    go to `<name>.data` beside the model; the data file is renamed into place before the model that
    references it. The model in memory is left unchanged and its weights are not copied as a whole."""
    path = writable_target(path)
    if external_data is None:
        external_data = get_meta(model, EXTERNAL_DATA_KEY) == "true" or \
            sum(_tensor_size(t) for t in model.graph.initializer) >= EXTERNAL_ABOVE
    with _replacing(path) as temps:
        if external_data:
            data_name = path.name + ".data"
            data_tmp = _temp_beside(path.parent / data_name, temps)
            skeleton = _write_external(model, data_tmp, data_name)
            model_tmp = _temp_beside(path, temps)
            model_tmp.write_bytes(skeleton.SerializeToString())
            data_path = path.parent / data_name
            if not data_path.exists():
                temps.append(data_path)  # ours to remove if the model cannot be put in place
            os.replace(data_tmp, data_path)
            os.replace(model_tmp, path)
        else:
            model_tmp = _temp_beside(path, temps)
            if _streamable(model):
                with open(model_tmp, "wb") as f:
                    _write_inline(model, f)
            else:
                onnx.save(model, str(model_tmp))
            os.replace(model_tmp, path)


@contextmanager
def _replacing(path: Path) -> Iterator[list[Path]]:
    """The temporary files the block lists are removed if it fails; an OSError is reported naming `path`."""
    temps: list[Path] = []
    try:
        yield temps
    except BaseException as exc:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise


def writable_target(path: str | os.PathLike) -> Path:
    """The output path, refused with a one-line error when its folder does not exist (nothing is created)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputFileError(f"{path}: the folder {path.parent} does not exist", "create it, or give another path")
    return path


def _write_error(path: Path, exc: OSError) -> InputFileError:
    """An error writing one of our temporary files or renaming it, told as the error of the user's path."""
    return InputFileError(f"{path}: cannot write it ({exc.strerror or type(exc).__name__})",
                          "check the folder's permissions and free space")


def _file_mode() -> int:
    """What open() would give a new file under the process's umask (mkstemp gives 0600 whatever it is)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temp_beside(path: Path, temps: list[Path]) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    temps.append(Path(tmp))
    os.chmod(tmp, _file_mode())
    return Path(tmp)


def _write_external(model: onnx.ModelProto, data_file: Path, location: str) -> onnx.ModelProto:
    """Write each initializer over WEIGHTLESS_ABOVE bytes into `data_file` (one tensor in memory at a time)
    and return a weightless copy of the model that references them at `location`."""
    skeleton = without_weights(model)
    stubs = {t.name: t for t in skeleton.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    with open(data_file, "wb") as f:
        for tensor in model.graph.initializer:
            stub = stubs.get(tensor.name)
            if stub is None:
                continue
            offset = -f.tell() % ALIGN + f.tell()
            f.seek(offset)
            raw = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
            f.write(raw)
            del stub.external_data[:]
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
                stub.external_data.add(key=key, value=value)
            del raw
    return skeleton


def _streamable(model: onnx.ModelProto) -> bool:
    """`_write_inline` writes what SerializeToString would: no unknown fields at the two levels it splits, no
    tensor that onnx.save would move to external data."""
    return model.HasField("graph") and not (UnknownFieldSet(model) or UnknownFieldSet(model.graph)) \
        and not uses_external_data(model)


def _write_inline(model: onnx.ModelProto, f) -> None:
    """The bytes of `model.SerializeToString()`, written one initializer at a time: the model's fields before
    and after its graph, the graph's before and after its initializers, each initializer in between. Fields
    are serialised in field-number order, as protobuf does, so the file is the same byte for byte; the
    largest buffer is one tensor, not the whole model."""
    graph = model.graph
    graph_lo, graph_hi = _split_fields(graph, "initializer")
    model_lo, model_hi = _split_fields(model, "graph")
    init_tag, graph_tag = (_field_tag(m, name) for m, name in ((graph, "initializer"), (model, "graph")))
    sizes = [_tensor_size(t) for t in graph.initializer]
    graph_size = len(graph_lo) + len(graph_hi) + sum(len(init_tag) + len(_varint(n)) + n for n in sizes)
    if len(model_lo) + len(graph_tag) + len(_varint(graph_size)) + graph_size + len(model_hi) \
            > onnx.checker.MAXIMUM_PROTOBUF:  # refused as onnx.save refuses it
        raise ValueError("The proto size is larger than the 2 GB limit. Please use save_as_external_data to save "
                         "tensors separately from the model file.")
    f.write(model_lo)
    f.write(graph_tag + _varint(graph_size))
    f.write(graph_lo)
    for tensor, size in zip(graph.initializer, sizes):
        f.write(init_tag + _varint(size))
        written = _tensor_parts(tensor)
        if sum(map(len, written)) != size:
            raise RuntimeError(f"tensor '{tensor.name}' serialised to {sum(map(len, written))} bytes, announced {size}")
        for part in written:
            f.write(part)
        del written
    f.write(graph_hi)
    f.write(model_hi)


def _tensor_parts(tensor: onnx.TensorProto) -> list[bytes]:
    """The tensor's serialisation in pieces: with raw data, its bytes as read (upb's serialiser, like its
    ByteSize, builds the whole message in a growing buffer: two copies of the tensor at its peak)."""
    if not tensor.HasField("raw_data"):
        return [tensor.SerializeToString()]
    lo, hi = _split_fields(tensor, "raw_data")
    raw = tensor.raw_data
    return [lo, _field_tag(tensor, "raw_data") + _varint(len(raw)), raw, hi]


def _tensor_size(tensor: onnx.TensorProto) -> int:
    """tensor.ByteSize(), with one copy of the raw data at a time instead of two."""
    if not tensor.HasField("raw_data"):
        return tensor.ByteSize()
    parts = _tensor_parts(tensor)
    return sum(map(len, parts))


def _split_fields(message, name: str) -> tuple[bytes, bytes]:
    """The serialised fields of `message` numbered below and above field `name`, which is left out."""
    number = message.DESCRIPTOR.fields_by_name[name].number
    below, above = type(message)(), type(message)()
    for field, value in message.ListFields():
        if field.name != name:
            copy_field(field, value, below if field.number < number else above)
    return below.SerializeToString(), above.SerializeToString()


def _field_tag(message, name: str) -> bytes:
    return _varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | 2)  # wire type 2: length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file beside the target, then rename (see save_model)."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside the target, then rename (see save_model)."""
    path = writable_target(path)
    with _replacing(path) as temps:
        tmp = _temp_beside(path, temps)
        tmp.write_bytes(data)
        os.replace(tmp, path)

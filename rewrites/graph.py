"""Loading, checking, fingerprinting and atomic saving of ONNX models."""
from __future__ import annotations

import hashlib
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
try:
    from google.protobuf.unknown_fields import UnknownFieldSet
except ImportError:  # protobuf before 4.22 (tf2onnx pins 3.20): the message method it replaced
    def UnknownFieldSet(message):  # noqa: N802
        return message.UnknownFields()
from onnx import external_data_helper, numpy_helper

from rewrites.errors import InputFileError, ModelError

MIN_OPSET = 11
SPIKING_DOMAIN = "ai.ann2snn"


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX model, with its external data; every failure names the file.

    Declared sizes are checked against the bytes present before anything is allocated from them, and
    external data must be regular files inside the model's folder: anything else is refused, never read."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if not path.is_file():
        raise InputFileError(f"{path}: not a file")
    # Given the path, the checker reads the file itself (no 2 GB limit, no serialised copy here) and holds it
    # twice (bytes and parsed) while it runs. A file holding its weights is checked before it is loaded, not
    # beside it; the error is raised in the same place either way, after the checks that name problems better.
    check_first = path.stat().st_size > CHECK_FIRST_ABOVE
    checker_error = _checker_error(path) if check_first else None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf and onnx raise several unrelated types on damaged files
        raise InputFileError(f"{path}: not a readable ONNX model ({_first_line(exc)})",
                             "is the file complete? re-export it") from exc
    if not model.graph.node:
        raise InputFileError(f"{path}: no graph nodes: not an ONNX model or an empty one",
                             "re-export the model")
    try:
        check_text(model)
    except ValueError as exc:
        raise InputFileError(f"{path}: {exc}", "the file is damaged; re-export it") from exc
    for tensor in all_tensors(model):
        check_tensor_size(tensor, path)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            check_external_data(tensor, path)
    read_dynamic_dims(model, path)
    check_input_sizes(model, path)
    check_edges(model, path)
    check_types(model, path)
    if not check_first:
        checker_error = _checker_error(path)
    if checker_error is not None:
        raise ModelError(f"{path}: invalid ONNX model: {_first_line(checker_error)}",
                         "re-export the model") from checker_error
    if uses_external_data(model):
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # checked above; this catches what the file system does in between
            raise InputFileError(f"{path}: cannot read external data ({_first_line(exc)})") from exc
        _set_meta(model, EXTERNAL_DATA_KEY, "true")
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ModelError(f"{path}: opset {opset} is older than {MIN_OPSET}",
                         f"re-export with opset_version >= {MIN_OPSET}")
    non_finite_constants(model, path)
    # Our own exports passed strict inference when written, so a spiking model must pass it again; for
    # other models, strict mode could refuse files onnxruntime runs.
    strict = any(op.domain == SPIKING_DOMAIN for op in model.opset_import)
    try:
        shapes = onnx.shape_inference.infer_shapes(without_weights(model), strict_mode=strict, data_prop=True)
    except Exception as exc:  # shape inference raises several unrelated types
        raise ModelError(f"{path}: shape inference failed: {_first_line(exc)}",
                         "the file is damaged; convert the model again" if strict else "re-export the model") from exc
    check_inferred_sizes(shapes, path)
    return model


CHECK_FIRST_ABOVE = 64 * 2**20  # bytes of model file from which the checker runs before the model is loaded


def _checker_error(path: Path) -> Exception | None:
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # ValidationError, ValueError, and protobuf errors on odd fields
        return exc
    return None


WEIGHTLESS_ABOVE = 1024  # bytes; smaller tensors (shapes, axes, scalars) stay for shape inference to read


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model whose large initializers keep name, type and dims but no data (marked as external
    data at a location that does not exist), for shape inference and other structural work without a
    second copy of the weights."""
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip={"graph"})
    _copy_fields(model.graph, skeleton.graph, skip={"initializer"})
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL and not _larger_than(tensor, WEIGHTLESS_ABOVE):
            skeleton.graph.initializer.add().CopyFrom(tensor)
            continue
        stub = skeleton.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value="(weights left out)")
    return skeleton


def _larger_than(tensor: onnx.TensorProto, size: int) -> bool:
    """True when the tensor's data, as its dims and type declare it, is over `size` bytes: the rule
    rewrites/export.py's large_constants applies to the same tensors in a graph, so that every weight a
    weightless copy leaves out is one that is fed back. Decided without serialising the tensor (upb's
    ByteSize serialises it: a transient copy of each weight). Strings have no fixed size and stay."""
    nbytes = tensor_nbytes(tensor)
    return nbytes is not None and nbytes > size


def _copy_fields(source, target, skip: set[str]) -> None:
    for field, value in source.ListFields():
        if field.name not in skip:
            _copy_fields_into(field, value, target)


# A tensor of more elements than this (per sample, for graph inputs) is refused before anything is
# allocated for it: 2**31 float32 values are 8 GiB.
MAX_ELEMENTS = 2**31


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes of the graph, its subgraphs and its functions."""
    def in_nodes(nodes) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from in_graph(sub)

    def in_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        yield from (s.values for s in graph.sparse_initializer)
        yield from in_nodes(graph.node)

    yield from in_graph(model.graph)
    for function in model.functions:
        yield from in_nodes(function.node)


def _repeated(field) -> bool:
    """FieldDescriptor.is_repeated, or its label before protobuf 5 had the property (tf2onnx pins 3.20)."""
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == field.LABEL_REPEATED


def check_text(message, where: str = "model") -> None:
    """Every string field must be valid UTF-8 (protobuf hands a damaged one back as bytes, which fails much
    later, deep inside a rewrite). Raises ValueError naming the field. Tensors' data is not touched."""
    if isinstance(message, onnx.TensorProto):
        fields = [("name", [message.name]), ("doc_string", [message.doc_string]),
                  ("external_data", [e.key for e in message.external_data] + [e.value for e in message.external_data])]
    else:
        fields = [(f.name, list(v) if _repeated(f) else [v]) for f, v in message.ListFields()]
        for field, value in message.ListFields():
            if field.type == field.TYPE_MESSAGE:
                for item in (value if _repeated(field) else [value]):
                    check_text(item, f"{where}.{field.name}")
    for name, values in fields:
        for value in values:
            if isinstance(value, bytes) and message.DESCRIPTOR.fields_by_name[name].type == 9:  # TYPE_STRING
                raise ValueError(f"{where}.{name} {value[:40]!r} is not valid UTF-8")


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in all_tensors(model))


_TYPED_FIELD = {onnx.TensorProto.FLOAT: "float_data", onnx.TensorProto.DOUBLE: "double_data",
                onnx.TensorProto.INT64: "int64_data", onnx.TensorProto.UINT64: "uint64_data",
                onnx.TensorProto.UINT32: "uint64_data"}
_INT32_STORED = {onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT16,
                 onnx.TensorProto.UINT8, onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
_INT32_STORED |= {getattr(onnx.TensorProto, name) for name in (  # one byte each, held like the small ints
    "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0") if hasattr(onnx.TensorProto, name)}
_PACKED = {getattr(onnx.TensorProto, name): per_byte  # values a byte of raw data holds
           for name, per_byte in (("UINT4", 2), ("INT4", 2), ("FLOAT4E2M1", 2), ("UINT2", 4), ("INT2", 4))
           if hasattr(onnx.TensorProto, name)}


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the declared dims and type need, or None for types without a fixed item size."""
    if tensor.data_type not in _TYPED_FIELD and tensor.data_type not in _INT32_STORED:
        return None
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return math.prod(tensor.dims) * itemsize


def check_tensor_size(tensor: onnx.TensorProto, path: Path) -> None:
    """Declared dims must be non-negative, not enormous, and match the data held in the file."""
    where = f"{path}: tensor '{tensor.name}'"
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelError(f"{where} declares negative dims {dims}", "re-export the model")
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        raise ModelError(f"{where} declares {count:,} elements (dims {dims}), more than {MAX_ELEMENTS:,}",
                         "the file is damaged or not a model this tool can hold in memory")
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return
    nbytes = tensor_nbytes(tensor)
    if tensor.data_type in _PACKED and tensor.HasField("raw_data"):
        nbytes = -(-count // _PACKED[tensor.data_type])
        if len(tensor.raw_data) != nbytes:
            raise ModelError(f"{where} declares dims {dims} ({nbytes:,} packed bytes) but holds "
                             f"{len(tensor.raw_data):,} bytes", "the file is damaged; re-export the model")
        return
    if tensor.HasField("raw_data"):
        if nbytes is not None and len(tensor.raw_data) != nbytes:
            raise ModelError(f"{where} declares dims {dims} ({nbytes:,} bytes) but holds "
                             f"{len(tensor.raw_data):,} bytes", "the file is damaged; re-export the model")
        return
    field = _TYPED_FIELD.get(tensor.data_type, "int32_data" if tensor.data_type in _INT32_STORED else None)
    if field is not None and len(getattr(tensor, field)) != count:
        raise ModelError(f"{where} declares dims {dims} ({count:,} values) but holds "
                         f"{len(getattr(tensor, field)):,}", "the file is damaged; re-export the model")


def check_external_data(tensor: onnx.TensorProto, path: Path) -> None:
    """External data must be a regular file inside the model's folder (no absolute path, no '..' out of it,
    no symbolic link), and hold the declared bytes. Checked before onnx reads anything."""
    where = f"{path}: external data of tensor '{tensor.name}'"
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    hint = "keep the weights file beside the model, referenced by a relative name"
    if not location:
        raise ModelError(f"{where} has no location", hint)
    relative = Path(location)
    if relative.is_absolute() or location.startswith(("/", "\\")) or relative.drive:
        raise ModelError(f"{where} points to an absolute path '{location}': refused, not read", hint)
    folder = path.parent.resolve()
    target = folder
    for part in relative.parts:
        if part in ("..", ""):
            raise ModelError(f"{where} points outside the model's folder ('{location}'): refused, not read", hint)
        target = target / part
        if target.is_symlink():
            raise ModelError(f"{where} is a symbolic link ('{location}'): refused, not read", hint)
    if not target.resolve().is_relative_to(folder):
        raise ModelError(f"{where} points outside the model's folder ('{location}'): refused, not read", hint)
    if not target.is_file():
        raise InputFileError(f"{where}: no such file '{target}'", "copy the weights file beside the model")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError as exc:
        raise ModelError(f"{where} has a non-numeric offset or length", "re-export the model") from exc
    size = target.stat().st_size
    if offset < 0 or (length is not None and length < 0):
        raise ModelError(f"{where} has a negative offset or length", "re-export the model")
    available = size - offset if length is None else length
    if offset + available > size:
        raise ModelError(f"{where} needs bytes {offset:,}..{offset + available:,} of '{location}', which has "
                         f"{size:,}", "the weights file is truncated or belongs to another model")
    nbytes = tensor_nbytes(tensor)
    if nbytes is not None and available != nbytes:
        raise ModelError(f"{where} declares dims {list(tensor.dims)} ({nbytes:,} bytes) but '{location}' holds "
                         f"{available:,} for it", "the weights file is truncated or belongs to another model")


BATCH_DIM = "N"  # the name a batch axis written as -1 or 0 is given (torch's exports here use it too)


def read_dynamic_dims(model: onnx.ModelProto, path: Path | str | None = None) -> None:
    """Dims written as -1 (paddle2onnx) or 0 (some TF/Keras converters) mean "not known": they are cleared,
    in place, to the dynamic dims ONNX spells with a dim_param or nothing. On the graph's inputs and outputs
    the first axis becomes the batch dim_param (the one an input already names, else BATCH_DIM), so such a
    file reads exactly as one exported with a symbolic batch; other axes and value_info become unnamed
    dims that shape inference fills. Any other negative dim is damage and refused."""
    graph = model.graph
    batch = next((vi.type.tensor_type.shape.dim[0].dim_param for vi in graph.input
                  if vi.type.tensor_type.shape.dim and vi.type.tensor_type.shape.dim[0].dim_param), BATCH_DIM)
    initializers = {t.name for t in graph.initializer}
    where = f"{path}: " if path else ""
    for kind, values in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
        for vi in values:
            if not vi.type.HasField("tensor_type") or vi.name in initializers:
                continue
            for axis, d in enumerate(vi.type.tensor_type.shape.dim):
                if not d.HasField("dim_value") or d.dim_value > 0:
                    continue
                if d.dim_value < -1:
                    raise ModelError(f"{where}{kind} '{vi.name}' declares dim {d.dim_value} at axis {axis}",
                                     "the file is damaged; re-export the model")
                d.ClearField("dim_value")
                if axis == 0 and kind != "value_info":
                    d.dim_param = batch


def check_input_sizes(model: onnx.ModelProto, path: Path) -> None:
    """Graph inputs whose declared shape (per sample) is enormous would make us allocate it: refuse them."""
    for vi in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        if any(d < 0 for d in dims) or math.prod(dims[1:] if len(dims) > 1 else dims) > MAX_ELEMENTS:
            shown = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                     for d in vi.type.tensor_type.shape.dim]
            raise ModelError(f"{path}: input '{vi.name}' declares dims {shown}, more than {MAX_ELEMENTS:,} "
                             "elements per sample", "the file is damaged; re-export the model")


def check_edges(model: onnx.ModelProto, path: Path) -> None:
    """Every node input is provided by an input, an initializer or a node, and the nodes form no cycle:
    said in our words, with the node and tensor, before the checker's less specific message."""
    graph = model.graph
    available = {vi.name for vi in graph.input} | {t.name for t in graph.initializer} | {""}
    available |= {t.values.name for t in graph.sparse_initializer}
    producer = {o: node for node in graph.node for o in node.output if o}
    for node in graph.node:
        for name in node.input:
            if name not in available and name not in producer:
                raise ModelError(f"{path}: node '{node.name}' ({node.op_type}) reads tensor '{name}', which no "
                                 "node, graph input or initializer provides (a dangling input)",
                                 "re-export the model; a weight may be missing")
    # Kahn's algorithm over node indices: whatever cannot be ordered lies on or after a cycle
    nodes = list(graph.node)
    waiting = [sum(1 for i in set(n.input) if i in producer) for n in nodes]
    readers: dict[str, list[int]] = {}
    for k, node in enumerate(nodes):
        for name in set(node.input):
            if name in producer:
                readers.setdefault(name, []).append(k)
    ready = [k for k, count in enumerate(waiting) if count == 0]
    done = 0
    while ready:
        k = ready.pop()
        done += 1
        for name in nodes[k].output:
            for reader in readers.pop(name, []) if name else []:
                waiting[reader] -= 1
                if waiting[reader] == 0:
                    ready.append(reader)
    if done < len(nodes):
        stuck = [n for n, count in zip(nodes, waiting) if count > 0]
        raise ModelError(f"{path}: the graph has a cycle through node '{stuck[0].name}' ({stuck[0].op_type}) "
                         f"and {len(stuck) - 1} node(s) after it", "an ONNX graph must be acyclic; re-export it")


_KNOWN_TYPES = frozenset(onnx.TensorProto.DataType.values())


def check_types(model: onnx.ModelProto, path: Path) -> None:
    """Element types must be ones this onnx knows (the checker lets unknown numbers through value_info)."""
    graph = model.graph
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        kind = vi.type.WhichOneof("value")
        if kind not in (None, "tensor_type"):
            raise ModelError(f"{path}: '{vi.name}' is not a tensor (its type is {kind.removesuffix('_type')})",
                             "ann2snn converts graphs of tensors; re-export the model without sequence, map or "
                             "optional values")
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type not in _KNOWN_TYPES:
            raise ModelError(f"{path}: tensor '{vi.name}' has unknown element type {vi.type.tensor_type.elem_type}",
                             "the file is damaged; re-export the model")
    for tensor in graph.initializer:
        if tensor.data_type not in _KNOWN_TYPES or tensor.data_type == onnx.TensorProto.UNDEFINED:
            raise ModelError(f"{path}: initializer '{tensor.name}' has unknown element type {tensor.data_type}",
                             "the file is damaged; re-export the model")


@dataclass(frozen=True)
class NonFinite:
    """A constant that holds +-inf where that is meant: the identity of a maximum or minimum, an absent Clip
    bound, a mask that Softmax / Exp turn into zero weight."""
    tensor: str
    values: str  # "-inf", "+inf" or "+-inf"
    count: int
    uses: tuple[str, ...]  # "node (op): why", for every node that reads it, directly or through a pass-through
    masks: tuple[str, ...] = ()  # nodes it reaches mixed into an input-dependent tensor (a mask on activations)

    def describe(self) -> str:
        return f"'{self.tensor}' ({self.count} x {self.values}; {', '.join(self.uses)})"


# Where an infinite value is meant: op -> (inputs that may hold it (None: any), the signs that are harmless)
_INF_READERS = {
    "Max": (None, {-1}, "the identity of Max"), "ReduceMax": ((0,), {-1}, "the identity of a maximum"),
    "MaxPool": ((0,), {-1}, "the identity of a maximum"), "GlobalMaxPool": ((0,), {-1}, "the identity of a maximum"),
    "ArgMax": ((0,), {-1}, "never the maximum"), "TopK": ((0,), {-1}, "never among the largest"),
    "Min": (None, {1}, "the identity of Min"), "ReduceMin": ((0,), {1}, "the identity of a minimum"),
    "ArgMin": ((0,), {1}, "never the minimum"),
    "Clip": ((1, 2), {-1, 1}, "an absent bound"),
    "Softmax": ((0,), {-1}, "a mask: zero weight"), "LogSoftmax": ((0,), {-1}, "a mask: zero weight"),
    "Exp": ((0,), {-1}, "a mask: exp(-inf) = 0"),
}
# Ops that pass an infinite value on (the sign flips on Sub's second operand and Neg); their readers decide
_INF_PASSING = frozenset({"Add", "Sub", "Neg", "Where", "Concat", "Reshape", "Unsqueeze", "Squeeze", "Expand",
                          "Transpose", "Flatten", "Cast", "Identity", "Slice", "Gather", "Tile"})


def non_finite_constants(model: onnx.ModelProto, path: Path | str | None = None) -> list[NonFinite]:
    """The float constants of the graph (initializers, Constant and ConstantOfShape values) that hold +-inf,
    each with the nodes that read it. Raises ModelError on a NaN, and on an infinite value that reaches a
    node where it is not an identity, bound or mask (a weight of a Conv, an operand of Mul, a graph output):
    arithmetic would turn it into NaN or infinite outputs."""
    graph = model.graph
    where = f"{path}: " if path else ""
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, k))
    outputs = {o.name for o in graph.output}
    dynamic = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    for node in graph.node:  # sorted: the checker requires it
        if node.op_type not in ("Shape", "Size") and any(i in dynamic for i in node.input):
            dynamic.update(node.output)
    sources = [(t.name, t) for t in graph.initializer]
    for node in graph.node:
        if node.op_type not in ("Constant", "ConstantOfShape") or not node.output:
            continue
        for attr in node.attribute:
            if attr.HasField("t"):
                sources.append((node.output[0], attr.t))
            elif attr.name in ("value_float", "value_floats"):
                sources.append((node.output[0], numpy_helper.from_array(
                    np.asarray(attr.f if attr.name == "value_float" else attr.floats, np.float32))))
    found = []
    for name, tensor in sources:
        if tensor.data_type not in _FLOAT_TYPES:
            continue
        values = numpy_helper.to_array(tensor)
        nan = int(np.count_nonzero(np.isnan(values)))
        if nan:
            raise ModelError(f"{where}constant '{name}' holds {nan} NaN value(s)",
                             "the file is damaged or the training diverged; re-export the model")
        infinite = np.isinf(values)
        if not infinite.any():
            continue
        signs = {int(v) for v in np.sign(values[infinite])}
        masks: list[str] = []
        uses = _inf_uses(name, signs, readers, outputs, where, dynamic, masks)
        text = {frozenset({-1}): "-inf", frozenset({1}): "+inf"}.get(frozenset(signs), "+-inf")
        found.append(NonFinite(name, text, int(infinite.sum()), tuple(uses), tuple(dict.fromkeys(masks))))
        del values
    return found


def _inf_uses(name: str, signs: set[int], readers: dict, outputs: set[str], where: str, dynamic: set[str],
              masks: list[str], origin: str = "", depth: int = 0) -> list[str]:
    """How every reader of `name` (holding infinite values of `signs`, from the constant `origin`) uses it;
    raises where none applies."""
    origin = origin or name
    through = f" (through '{name}')" if name != origin else ""
    if name in outputs:
        raise ModelError(f"{where}constant '{origin}' holds infinite values and reaches the graph output '{name}'",
                         "re-export the model; an infinite output is not a result")
    uses = []
    for node, k in readers.get(name, []):
        if node.op_type in _INF_READERS:
            positions, harmless, why = _INF_READERS[node.op_type]
            if (positions is None or k in positions) and signs <= harmless:
                uses.append(f"{node.name} ({node.op_type}): {why}")
                if name in dynamic:
                    masks.append(node.name)
                continue
        elif node.op_type in _INF_PASSING and depth < 8 and not (node.op_type == "Where" and k == 0):
            flipped = {-s for s in signs} if (node.op_type == "Sub" and k == 1) or node.op_type == "Neg" else signs
            uses += _inf_uses(node.output[0], flipped, readers, outputs, where, dynamic, masks, origin, depth + 1)
            continue
        raise ModelError(f"{where}constant '{origin}' holds infinite values and node '{node.name}' ({node.op_type}) "
                         f"reads them at input {k}{through}, where they are no identity, bound or mask",
                         "the file is damaged or the training diverged; re-export the model")
    return uses


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def _without_value_names(node: onnx.NodeProto) -> onnx.NodeProto:
    """The node with the names of its tensor attributes cleared (Constant's and ConstantOfShape's value): the
    name means nothing, and onnx-graphsurgeon sets it in place when it exports a graph that shares the
    tensor, so the same model would hash twice. (It may set the name to "", which still serialises.)"""
    if not any(a.HasField("t") and a.t.HasField("name") for a in node.attribute):
        return node
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for attr in copy.attribute:
        attr.t.ClearField("name")
    return copy


def fingerprint(model: onnx.ModelProto) -> str:
    """A content hash of the graph and its weights, independent of how the file was serialised."""
    h = hashlib.sha256()
    for node in model.graph.node:
        h.update(_without_value_names(node).SerializeToString(deterministic=True))
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        arr = numpy_helper.to_array(init)
        h.update(init.name.encode())
        h.update(str((arr.dtype.str, arr.shape)).encode())
        # the bytes of arr.tobytes(), read in place (no second copy of the weight); object arrays as before
        h.update(arr.tobytes() if arr.dtype.kind == "O" else np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
        del arr
    for vi in list(model.graph.input) + list(model.graph.output):
        h.update(vi.SerializeToString(deterministic=True))
    return "sha256:" + h.hexdigest()


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model's value_info and output types as shape inference finds them, computed on a weightless copy
    (inference reads only small constant tensors), so no copy of the weights is made. The result holds
    no large weights: use it for types and shapes (see `with_inferred_types`), not to run."""
    try:
        inferred = onnx.shape_inference.infer_shapes(without_weights(model), strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference raises several unrelated types
        raise ModelError(f"shape inference failed: {_first_line(exc)}") from exc
    check_inferred_sizes(inferred)
    return inferred


@contextmanager
def with_inferred_types(model: onnx.ModelProto) -> Iterator[onnx.ModelProto]:
    """The model itself, its value_info and output types replaced by inferred ones for the duration of the
    block and restored after it: the weights are neither copied nor touched."""
    inferred = infer_shapes(model)
    graph = model.graph
    saved_info, saved_outputs = list(graph.value_info), list(graph.output)
    graph.ClearField("value_info")
    graph.value_info.extend(inferred.graph.value_info)
    graph.ClearField("output")
    graph.output.extend(inferred.graph.output)
    try:
        yield model
    finally:
        graph.ClearField("value_info")
        graph.value_info.extend(saved_info)
        graph.ClearField("output")
        graph.output.extend(saved_outputs)


def check_inferred_sizes(model: onnx.ModelProto, path: Path | str | None = None) -> None:
    """Refuse a tensor whose inferred static shape is enormous (a ConstantOfShape or Expand of a constant
    shape, say) before constant folding or a runtime allocates it."""
    for vi in list(model.graph.value_info) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            count = math.prod(d.dim_value for d in dims)
            if count > MAX_ELEMENTS:
                producer = next((f"node '{n.name}' ({n.op_type})" for n in model.graph.node if vi.name in n.output),
                                "the graph")
                where = f"{path}: " if path else ""
                raise ModelError(f"{where}tensor '{vi.name}' written by {producer} would hold {count:,} elements, more "
                                 f"than {MAX_ELEMENTS:,}", "the model is damaged or far too large to convert")


# Recorded in the metadata of a model read with external data; export copies the source's metadata, so
# the converted model is saved with external data too.
EXTERNAL_DATA_KEY = "ann2snn.external_data"
EXTERNAL_ABOVE = 2**30  # bytes of weights from which a model is always saved with external data
ALIGN = 4096  # offset alignment of tensors in the data file (lets a runtime map them)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> None:
    """Write to temporary files beside the target, then rename: never a half-written model. With external
    data (default: when the model was read with it or its weights reach EXTERNAL_ABOVE bytes) the weights
    go to `<name>.data` beside the model; the data file is renamed into place before the model that
    references it. The model in memory is left unchanged and its weights are not copied as a whole."""
    path = writable_target(path)
    if external_data is None:
        external_data = _meta(model, EXTERNAL_DATA_KEY) == "true" or \
            sum(_tensor_size(t) for t in model.graph.initializer) >= EXTERNAL_ABOVE
    temps: list[Path] = []
    try:
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
            _copy_fields_into(field, value, below if field.number < number else above)
    return below.SerializeToString(), above.SerializeToString()


def _copy_fields_into(field, value, target) -> None:
    if _repeated(field):
        getattr(target, field.name).extend(value)
    elif field.type == field.TYPE_MESSAGE:
        getattr(target, field.name).CopyFrom(value)
    else:
        setattr(target, field.name, value)


def _field_tag(message, name: str) -> bytes:
    return _varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | 2)  # wire type 2: length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _meta(model: onnx.ModelProto, key: str) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == key), None)


def _set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file beside the target, then rename (see save_model)."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside the target, then rename (see save_model)."""
    path = writable_target(path)
    temps: list[Path] = []
    try:
        tmp = _temp_beside(path, temps)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException as exc:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]

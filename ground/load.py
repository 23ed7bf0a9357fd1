"""Loading an ONNX model and checking it before anything is allocated from it: every failure names the file."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from ground.errors import InputFileError, ModelError, first_line
from ground.protos import (EXTERNAL_DATA_KEY, FLOAT_TYPES, INT32_STORED, MAX_ELEMENTS, PACKED, TYPED_FIELD, all_tensors,
                           check_inferred_sizes, default_opset, is_repeated, set_meta, tensor_nbytes,
                           uses_external_data, without_weights)


MIN_OPSET = 11




def load_model(path: str | os.PathLike, strict_domains: Collection[str] = ()) -> onnx.ModelProto:
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
        raise InputFileError(f"{path}: not a readable ONNX model ({first_line(exc)})",
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
        raise ModelError(f"{path}: invalid ONNX model: {first_line(checker_error)}",
                         "re-export the model") from checker_error
    if uses_external_data(model):
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # checked above; this catches what the file system does in between
            raise InputFileError(f"{path}: cannot read external data ({first_line(exc)})") from exc
        set_meta(model, EXTERNAL_DATA_KEY, "true")
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ModelError(f"{path}: opset {opset} is older than {MIN_OPSET}",
                         f"re-export with opset_version >= {MIN_OPSET}")
    non_finite_constants(model, path)
    # A file of a tool's own domain (`strict_domains`: its exports passed strict inference when written) must
    # pass it again; for other models, strict mode could refuse files onnxruntime runs.
    strict = any(op.domain in strict_domains for op in model.opset_import)
    try:
        shapes = onnx.shape_inference.infer_shapes(without_weights(model), strict_mode=strict, data_prop=True)
    except Exception as exc:  # shape inference raises several unrelated types
        raise ModelError(f"{path}: shape inference failed: {first_line(exc)}",
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


def check_text(message, where: str = "model") -> None:
    """Every string field must be valid UTF-8 (protobuf hands a damaged one back as bytes, which fails much
    later, deep inside a rewrite). Raises ValueError naming the field. Tensors' data is not touched."""
    if isinstance(message, onnx.TensorProto):
        fields = [("name", [message.name]), ("doc_string", [message.doc_string]),
                  ("external_data", [e.key for e in message.external_data] + [e.value for e in message.external_data])]
    else:
        fields = [(f.name, list(v) if is_repeated(f) else [v]) for f, v in message.ListFields()]
        for field, value in message.ListFields():
            if field.type == field.TYPE_MESSAGE:
                for item in (value if is_repeated(field) else [value]):
                    check_text(item, f"{where}.{field.name}")
    for name, values in fields:
        for value in values:
            if isinstance(value, bytes) and message.DESCRIPTOR.fields_by_name[name].type == 9:  # TYPE_STRING
                raise ValueError(f"{where}.{name} {value[:40]!r} is not valid UTF-8")


INT32_STORED |= {getattr(onnx.TensorProto, name) for name in (  # one byte each, held like the small ints
    "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0") if hasattr(onnx.TensorProto, name)}


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
    if tensor.data_type in PACKED and tensor.HasField("raw_data"):
        nbytes = -(-count // PACKED[tensor.data_type])
        if len(tensor.raw_data) != nbytes:
            raise ModelError(f"{where} declares dims {dims} ({nbytes:,} packed bytes) but holds "
                             f"{len(tensor.raw_data):,} bytes", "the file is damaged; re-export the model")
        return
    if tensor.HasField("raw_data"):
        if nbytes is not None and len(tensor.raw_data) != nbytes:
            raise ModelError(f"{where} declares dims {dims} ({nbytes:,} bytes) but holds "
                             f"{len(tensor.raw_data):,} bytes", "the file is damaged; re-export the model")
        return
    field = TYPED_FIELD.get(tensor.data_type, "int32_data" if tensor.data_type in INT32_STORED else None)
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
        if tensor.data_type not in FLOAT_TYPES:
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

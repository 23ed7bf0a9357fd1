"""Facts about ONNX models and light copies of them: weightless skeletons, content fingerprints, inferred
shapes, tensor sizes, metadata. Nothing here reads or writes a file."""
from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from ground.errors import ModelError, first_line


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
            copy_field(field, value, target)


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


def is_repeated(field) -> bool:
    """FieldDescriptor.is_repeated, or its label before protobuf 5 had the property (tf2onnx pins 3.20)."""
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == field.LABEL_REPEATED


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in all_tensors(model))


TYPED_FIELD = {onnx.TensorProto.FLOAT: "float_data", onnx.TensorProto.DOUBLE: "double_data",
                onnx.TensorProto.INT64: "int64_data", onnx.TensorProto.UINT64: "uint64_data",
                onnx.TensorProto.UINT32: "uint64_data"}


INT32_STORED = {onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8, onnx.TensorProto.UINT16,
                 onnx.TensorProto.UINT8, onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


PACKED = {getattr(onnx.TensorProto, name): per_byte  # values a byte of raw data holds
           for name, per_byte in (("UINT4", 2), ("INT4", 2), ("FLOAT4E2M1", 2), ("UINT2", 4), ("INT2", 4))
           if hasattr(onnx.TensorProto, name)}


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the declared dims and type need, or None for types without a fixed item size."""
    if tensor.data_type not in TYPED_FIELD and tensor.data_type not in INT32_STORED:
        return None
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return math.prod(tensor.dims) * itemsize


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


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
        raise ModelError(f"shape inference failed: {first_line(exc)}") from exc
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


def copy_field(field, value, target) -> None:
    if is_repeated(field):
        getattr(target, field.name).extend(value)
    elif field.type == field.TYPE_MESSAGE:
        getattr(target, field.name).CopyFrom(value)
    else:
        setattr(target, field.name, value)


def get_meta(model: onnx.ModelProto, key: str) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == key), None)


def set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def add_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """The model (changed in place) with these tensors among its graph outputs, typed where the graph knows them."""
    existing = {o.name for o in model.graph.output}
    types = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.input)}
    for name in tensors:
        if name in existing:
            continue
        if name in types:
            model.graph.output.append(types[name])
        else:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model

"""What one sample costs a runtime per call, read from the shapes of a model: the state it carries between
steps and every tensor one call computes (an upper bound on its working memory: a runtime that reuses
buffers needs less)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ground.protos import without_weights
from snnfile import is_state, NEXT_SUFFIX



@dataclass(frozen=True)
class Footprint:
    state_bytes: int  # per sample, the state.* inputs (their .next outputs are as many again)
    tensor_bytes: int  # per sample, every input, output and intermediate tensor of one call
    unknown: int  # tensors whose shape inference left a non-batch dim unknown (not counted)

    def to_json(self) -> dict:
        return {"state_bytes": self.state_bytes, "tensor_bytes": self.tensor_bytes, "unknown_tensors": self.unknown}


def _per_sample_bytes(value: onnx.ValueInfoProto) -> int | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = list(tensor.shape.dim)
    count = 1
    for k, d in enumerate(dims):
        if d.HasField("dim_value"):
            count *= d.dim_value if k else 1  # the batch dim counts as one sample
        elif k:
            return None
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize


INFER_BELOW = 2 ** 30  # bytes of the model less its large weights (Constant nodes keep theirs)


def footprint(model: onnx.ModelProto, input_shapes: dict[str, list] | None = None) -> Footprint | None:
    """`input_shapes`: dims to read the graph inputs at (a string for the batch), where the file leaves them
    dynamic (a conversion's bound shapes). None for a model too large to infer shapes of in memory."""
    skeleton = without_weights(model)  # shape inference copies what it reads: not the weights
    if skeleton.ByteSize() > INFER_BELOW:
        return None
    if input_shapes:
        skeleton = _with_input_shapes(skeleton, input_shapes)
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    graph = inferred.graph
    weights = {t.name for t in graph.initializer}
    values = {v.name: v for v in list(graph.input) + list(graph.value_info) + list(graph.output)
              if v.name not in weights}
    state = tensors = unknown = 0
    for name, value in values.items():
        size = _per_sample_bytes(value)
        if size is None:
            unknown += 1
            continue
        tensors += size
        if is_state(name) and not name.endswith(NEXT_SUFFIX):
            state += size
    return Footprint(state, tensors, unknown)


def _with_input_shapes(model: onnx.ModelProto, input_shapes: dict[str, list]) -> onnx.ModelProto:
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    del bound.graph.value_info[:]
    for value in bound.graph.input:
        if value.name not in input_shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        for d, want in zip(dims, input_shapes[value.name]):
            if isinstance(want, int):
                d.dim_value = want
            else:
                d.dim_param = str(want)
    return bound

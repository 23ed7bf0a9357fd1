"""onnxruntime's channel-blocked (NCHWc) kernels for the NumPy engine.

In a whole graph onnxruntime runs Conv and pooling on a channel-blocked layout: [N, C/b, H, W, b] in memory,
b = 8 or 16 channels (its SIMD width), reordered once at the graph's input and once at its output. A one-node
Conv session pays both reorders on every call, a quarter of its time. The engine instead keeps a tensor in
the blocked layout from one such Conv to the next: the neurons and elementwise operators between them do not
care about the order of elements, as long as their per-channel constants are blocked the same way.

The blocked Conv is the node onnxruntime's own optimiser writes for a one-node Conv model (found in the model
it saves), with the reorders around it left out, so it computes the same floats as the plain session. These
are internal onnxruntime operators (domain com.microsoft.nchwc): when the optimised model does not have the
expected form (another CPU, another onnxruntime), `blocked_conv` returns None and the engine runs the plain
session."""
from __future__ import annotations

import functools
import os
import tempfile
import threading

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from ground.sessions import make_session

NCHWC_DOMAIN = "com.microsoft.nchwc"


def _session(proto: onnx.ModelProto, threads: int, optimise: bool = False,
             optimised_path: str | None = None) -> ort.InferenceSession:
    return make_session(proto, threads, optimize=optimise, optimized_path=optimised_path)


def _optimised(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model as onnxruntime's full optimisation rewrites it for this CPU."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "optimised.onnx")
        _session(proto, 1, optimise=True, optimised_path=path)
        return onnx.load(path)


def _conv_model(node: onnx.NodeProto, inits: list[onnx.TensorProto], channels: int, opsets) -> onnx.ModelProto:
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT,
                                                                             [None, channels, None, None])],
                              [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=opsets)


@functools.cache
def block_size() -> int:
    """Channels per block of onnxruntime's NCHWc layout on this machine (0 when it does not use one): the
    padded output channels of a one-channel Conv."""
    try:
        w = onnx.numpy_helper.from_array(np.ones((1, 16, 1, 1), np.float32), "w")
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])
        proto = _optimised(_conv_model(node, [w], 16, [helper.make_opsetid("", 17)]))
        conv = [n for n in proto.graph.node if n.domain == NCHWC_DOMAIN and n.op_type == "Conv"]
        weights = {t.name: t for t in proto.graph.initializer}
        return int(weights[conv[0].input[1]].dims[0]) if conv else 0
    except Exception:  # onnxruntime raises untyped errors; no blocked layout then
        return 0


class _Lazy:
    """A one-node model run by a session built on first use (so that `threads` can still be set)."""

    def __init__(self, model: onnx.ModelProto, threads: int):
        self.model, self.threads = model, threads
        self.input = model.graph.input[0].name
        self.session: ort.InferenceSession | None = None
        self.lock = threading.Lock()

    def __call__(self, inputs: list, attrs: dict) -> list:
        with self.lock:
            if self.session is None:
                self.session = _session(self.model, self.threads)
        return self.session.run(None, {self.input: np.ascontiguousarray(inputs[0])})


class BlockedKernel(_Lazy):
    """A node as onnxruntime's NCHWc kernel: blocked output, input blocked or plain (`input_blocked`; the
    optimiser feeds a Conv of fewer input channels than a block with plain NCHW)."""

    def __init__(self, model: onnx.ModelProto, threads: int, input_blocked: bool, block: int):
        super().__init__(model, threads)
        self.input_blocked, self.block = input_blocked, block


def blocked_conv(node: onnx.NodeProto, constants: dict[str, np.ndarray], opsets, threads: int) -> BlockedKernel | None:
    """The node as a blocked Conv, or None when onnxruntime does not block it whole (output channels not a
    multiple of the block, 1-D or 3-D convolution, ...)."""
    block = block_size()
    weight = constants.get(node.input[1]) if len(node.input) > 1 else None
    if not block or node.op_type != "Conv" or weight is None or weight.ndim != 4 or weight.shape[0] % block:
        return None
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    inits = [onnx.numpy_helper.from_array(constants[n], n) for n in dict.fromkeys(node.input[1:]) if n]
    try:
        proto = _optimised(_conv_model(node, inits, weight.shape[1] * group, opsets))
    except Exception:  # onnxruntime raises untyped errors
        return None
    nodes = [(n.domain, n.op_type) for n in proto.graph.node]
    reorder_in = nodes == [(NCHWC_DOMAIN, "ReorderInput"), (NCHWC_DOMAIN, "Conv"), (NCHWC_DOMAIN, "ReorderOutput")]
    if not reorder_in and nodes != [(NCHWC_DOMAIN, "Conv"), (NCHWC_DOMAIN, "ReorderOutput")]:
        return None
    if any(a.name == "channels_last" and a.i for n in proto.graph.node for a in n.attribute):
        return None
    if reorder_in and (weight.shape[1] * group) % block:  # the reorder would pad the input channels
        return None
    conv = proto.graph.node[1 if reorder_in else 0]
    used = set(conv.input[1:])
    x, y = (next(f"{base}{k}" for k in range(len(used) + 1) if f"{base}{k}" not in used) for base in ("x", "y"))
    conv.input[0], conv.output[0] = x, y
    graph = helper.make_graph([conv], "blocked_conv", [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)],
                              [t for t in proto.graph.initializer if t.name in used])
    model = helper.make_model(graph, opset_imports=list(opsets) + [helper.make_opsetid(NCHWC_DOMAIN, 1)])
    kernel = BlockedKernel(model, threads, reorder_in, block)
    try:  # built now, so that a model onnxruntime refuses runs plain instead of failing at the first call
        kernel.session = _session(model, threads)
    except Exception:  # onnxruntime raises untyped errors
        return None
    return kernel


# Max pooling only: a maximum is the same float in any order, while onnxruntime's blocked AveragePool and
# GlobalAveragePool add in another order than its plain ones (a few ulps; tests/sim/test_nchwc.py).
POOL_ATTRIBUTES = {"MaxPool": ("auto_pad", "kernel_shape", "dilations", "strides", "pads", "ceil_mode"),
                   "GlobalMaxPool": ()}


def blocked_pool(node: onnx.NodeProto, threads: int, op: str | None = None) -> BlockedKernel | None:
    """A 2-D max pooling node (or, with op="MaxPool", the pooling of a MaxPool neuron's running sums) as
    onnxruntime's NCHWc pooling of blocked input; None for other pools (averages, 1-D, 3-D, MaxPool indices)."""
    op = op or node.op_type
    block = block_size()
    kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
    storage = next((a.i for a in node.attribute if a.name == "storage_order"), 0)
    if not block or op not in POOL_ATTRIBUTES or (kernel is not None and len(kernel) != 2) or storage \
            or (op == "MaxPool" and not node.domain and len([o for o in node.output if o]) != 1):
        return None
    pool = helper.make_node(op, ["x"], ["y"], domain=NCHWC_DOMAIN)
    pool.attribute.extend(a for a in node.attribute if a.name in POOL_ATTRIBUTES[op])
    graph = helper.make_graph([pool], "blocked_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(NCHWC_DOMAIN, 1)])
    return BlockedKernel(model, threads, True, block)


def to_blocked(x: np.ndarray, block: int) -> np.ndarray:
    """[..., C, H, W] in plain order -> the same shape holding the blocked order [..., C/b, H, W, b]."""
    *lead, c, h, w = x.shape
    blocked = x.reshape(*lead, c // block, block, h, w)
    return np.ascontiguousarray(np.moveaxis(blocked, -3, -1)).reshape(x.shape)


def from_blocked(x: np.ndarray, block: int) -> np.ndarray:
    *lead, c, h, w = x.shape
    blocked = x.reshape(*lead, c // block, h, w, block)
    return np.ascontiguousarray(np.moveaxis(blocked, -1, -3)).reshape(x.shape)


def blocked_view(x: np.ndarray, block: int) -> np.ndarray:
    """A blocked [..., C, H, W] tensor as its memory order [..., C/b, H, W, b] (a view)."""
    *lead, c, h, w = x.shape
    return x.reshape(*lead, c // block, h, w, block)


def blocked_constant(value: np.ndarray, per_step: tuple[int, ...], block: int) -> np.ndarray | None:
    """A constant operand of an elementwise op on a blocked tensor of per-step shape [N, C, H, W], shaped to
    broadcast against its memory-order view [..., C/b, H, W, b]; None when it also varies over the batch."""
    value = np.asarray(value)
    if value.ndim > len(per_step):  # it would add axes in front of the batch
        return None
    if value.size == 1:
        return value.reshape(())
    if value.ndim == 4:
        if value.shape[0] != 1:
            return None
        value = value[0]
    if value.ndim > 3:
        return None
    try:
        full = np.broadcast_to(value, per_step[1:])
    except ValueError:
        return None
    return np.ascontiguousarray(np.moveaxis(full.reshape(per_step[1] // block, block, *per_step[2:]), 1, -1))

"""An exported spiking file as a NIR graph (the `nir` package, `pip install 'ann2snn[nir]'`; docs/nir.md).

Reads only the exported file. A chain of Conv / Gemm / MatMul(+Add) / IFNeuron / AveragePool / Flatten becomes
Input, Conv2d, Affine, IF, SumPool2d, Flatten, Output. IF nodes fire unit spikes at v_threshold: each value the
file scales (an IF's threshold on its spikes, an average pool's 1/k^2, a constant Mul) is carried as a factor
on the signal and folded into the weights of the next Conv / Affine, or into the next IF's v_threshold. What
NIR cannot hold is refused, every node with its reason."""
from __future__ import annotations

import importlib.util
import io
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ground.errors import Ann2SnnError, UnsupportedNode, UnsupportedNodesError
from ground.save import writable_target, write_bytes_atomic
from sim.model import load_spiking, SpikingModel
from snnfile import DEFAULT_DOMAINS, DOMAIN, Meta
from sim.ops import attributes
from snnfile.operators import OPERATORS

INSTALL_HINT = "pip install 'ann2snn[nir]'"
DT = 1.0  # one step of the file is one unit of NIR time; the IF integrates v += r * dt * I with r = 1
RESET = "subtract"  # IFNeuron subtracts the threshold; NIR's IF spec resets to v_reset (metadata says which)
PASS_THROUGH = ("Identity", "Dropout")
LISTED = 20  # nodes named in the error message; every one is in UnsupportedNodesError.nodes

def require_nir():
    """The `nir` module, or a one-line error naming the extra (checked before any work)."""
    if importlib.util.find_spec("nir") is None:
        raise Ann2SnnError("export-nir needs the nir package", INSTALL_HINT)
    import nir
    return nir


@dataclass
class NirNode:
    name: str
    type: str
    shape: list[int]  # output shape, no batch dimension
    source: str  # the ONNX node(s) it came from
    note: str = ""


@dataclass
class NirExport:
    graph: Any  # nir.NIRGraph
    nodes: list[NirNode]
    source: Path
    path: Path | None = None

    def to_json(self) -> dict:
        return {"source": str(self.source), "output": str(self.path) if self.path else None,
                "reset": RESET, "v0": 0.0, "dt": DT,
                "nodes": [{"name": n.name, "type": n.type, "shape": n.shape, "from": n.source, "note": n.note}
                          for n in self.nodes],
                "edges": [list(e) for e in self.graph.edges]}


def export_nir(snn_path: str | Path, out_path: str | Path, node_metadata: bool = True) -> NirExport:
    """Write the NIR graph of the exported spiking file `snn_path` to `out_path` (temporary file, then rename).
    `node_metadata` False: a file that nir <= 1.0.4 reads (sinabs 3.1)."""
    nir = require_nir()
    out_path = writable_target(out_path)
    result = to_nir(snn_path)
    buffer = io.BytesIO()
    nir.write(buffer, result.graph)
    _for_old_readers(buffer, node_metadata)
    write_bytes_atomic(out_path, buffer.getvalue())
    result.path = out_path
    return result


@dataclass
class _Signal:
    """A tensor of the chain: the NIR node that produces it, and the factor f with onnx value = f * nir value
    (float64, broadcast to the sample shape, no batch)."""
    node: str
    scale: np.ndarray
    folded: list[str] = field(default_factory=list)  # what the factor holds, for the node that folds it
    refused: bool = False  # a stand-in after a refused node


def to_nir(snn_path: str | Path) -> NirExport:
    """The NIR graph of an exported spiking file; UnsupportedNodesError listing all it cannot hold."""
    nir = require_nir()
    model = load_spiking(snn_path)
    return _Builder(nir, model).build()


class _Builder:
    def __init__(self, nir, model: SpikingModel):
        self.nir = nir
        self.model = model
        self.graph = model.proto.graph
        self.shapes = _shapes(model.proto)
        self.consts = model.constants
        self.nodes: dict[str, Any] = {}
        self.info: list[NirNode] = []
        self.edges: list[tuple[str, str]] = []
        self.signals: dict[str, _Signal] = {}
        self.refused: list[UnsupportedNode] = []
        self.file_reasons: list[str] = []
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.state = set(model.state_inputs)
        self.fused: dict[str, onnx.NodeProto] = {}  # an Add folded into the bias of the MatMul before it
        self.ugo = {layer["node"]: layer for layer in model.layers if layer.get("nonlinear") == "ugo"}
        self.ugo_listed: set[str] = set()

    def build(self) -> NirExport:
        m = self.model
        meta = m.metadata
        if meta.get(Meta.CODING, "direct") != "direct":
            self.file_reasons.append(f"coding {meta['ann2snn.coding']!r}: NIR's IF has no time-dependent "
                                     "thresholds (FS neurons); only direct coding exports")
        if meta.get(Meta.DECODING, "mean") != "mean":
            self.file_reasons.append(f"decoding {meta['ann2snn.decoding']!r}: only the running mean exports")
        if m.drain_steps:
            self.file_reasons.append(f"it is read after {m.drain_steps} drain steps (snn.drive = 0): NIR has no "
                                     "gate on the input and the biases (convert with --drain-steps 0)")
        if len(m.inputs) != 1 or len(m.outputs) != 1:
            self.file_reasons.append(f"{len(m.inputs)} data inputs and {len(m.outputs)} outputs: one of each exports")
        if m.inputs:
            spec = m.inputs[0]
            dims = list(spec.shape[1:])
            if any(not isinstance(d, int) for d in dims):
                self.file_reasons.append(f"input '{spec.name}' has dynamic dims {spec.shape}")
            else:
                self._add("input", self.nir.Input(input_type={"input": np.array(dims)}), dims, spec.name, "Input")
                self.signals[spec.name] = _Signal("input", np.ones(dims))
        if not self.file_reasons:
            for node in self.graph.node:
                if node.name not in self.fused:
                    self._node(node)
        if not self.file_reasons and not self.refused:
            self._output(m.outputs[0])
        if self.file_reasons or self.refused:
            raise self._error()
        metadata = {"source": m.path.name, "ann2snn_version": meta.get(Meta.VERSION, ""),
                    "source_fingerprint": meta.get(Meta.SOURCE_FINGERPRINT, ""), "coding": "direct",
                    "decoding": "mean of the output over the steps", "dt": DT, "reset": RESET, "v0": 0.0,
                    "default_T": int(m.default_T or 0),
                    "onnx_nodes": {n.name: n.source for n in self.info}}
        graph = self.nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=metadata)
        return NirExport(graph, self.info, m.path)

    def _error(self) -> UnsupportedNodesError:
        path = self.model.path
        parts = list(self.file_reasons)
        if self.refused:
            listing = "; ".join(n.describe() for n in self.refused[:LISTED])
            more = f" and {len(self.refused) - LISTED} more" if len(self.refused) > LISTED else ""
            parts.append(f"{len(self.refused)} node(s) have no NIR form: {listing}{more}")
        return UnsupportedNodesError(f"{path}: cannot be exported to NIR: " + "; ".join(parts), self.refused,
                                     "docs/nir.md says what NIR holds: IF neurons from `convert --phi 0 "
                                     "--neuron if`, average pooling, chains of Conv and Gemm")

    # nodes

    def _add(self, name: str, node, shape: list[int], source: str, kind: str, note: str = "",
             after: str | None = None, meta: dict | None = None) -> str:
        name = _unique(_clean(name), self.nodes)
        if "metadata" in {f.name for f in fields(node)}:  # nir 1.0.4: only neurons have metadata
            node.metadata = {**(meta or {}), "onnx_node": source, **({"note": note} if note else {})}
        self.nodes[name] = node
        self.info.append(NirNode(name, kind, [int(d) for d in shape], source, note))
        if after is not None:
            self.edges.append((after, name))
        return name

    def _refuse(self, node: onnx.NodeProto, reason: str) -> None:
        shapes = [self.shapes.get(i) for i in self._signal_inputs(node)]
        self.refused.append(UnsupportedNode(node.name, node.op_type, shapes, reason))

    def _node(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        signal_inputs = self._signal_inputs(node)
        after_refused = any(self.signals[i].refused for i in signal_inputs if i in self.signals)
        ugo = self._ugo_of(node)
        if ugo:
            if ugo not in self.ugo_listed:
                self.ugo_listed.add(ugo)
                layer = self.ugo[ugo]
                self.refused.append(UnsupportedNode(ugo, f"UGO of {layer.get('op', '?')}",
                                                    [self.shapes.get(layer.get("input"))],
                                                    "a subnet of signed IF neurons standing for the "
                                                    "nonlinearity: NIR's IF fires positive spikes only and no "
                                                    "NIR node computes it"))
            return self._stand_in(node)
        if node.domain == DOMAIN and op != "IFNeuron":
            self._refuse(node, OPERATORS[op].nir if op in OPERATORS else "no NIR node for this operator")
            return self._stand_in(node)
        handler = getattr(self, f"_op_{op}", None) \
            if node.domain in DEFAULT_DOMAINS or (node.domain == DOMAIN and op == "IFNeuron") else None
        missing = [i for i in signal_inputs if i not in self.signals]
        if handler is None or missing:
            self._refuse(node, f"reads '{missing[0]}', which no exported node produces" if handler and missing
                         else f"no NIR node for ONNX op {op}" + (f" of domain {node.domain!r}" if node.domain
                                                                 not in DEFAULT_DOMAINS else ""))
            return self._stand_in(node)
        try:
            reason = handler(node, attributes(node))
        except (ValueError, IndexError):
            if not after_refused:
                raise
            reason = None  # read a stand-in: the refused node before it is the one to fix
        if reason:
            self._refuse(node, reason)
            self._stand_in(node)
        elif after_refused:
            for out in node.output:
                if out in self.signals:
                    self.signals[out].refused = True

    def _signal_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and i not in self.consts and i not in self.state]

    def _stand_in(self, node: onnx.NodeProto) -> None:
        """Outputs of a refused node, so that the nodes after it are still checked on their own."""
        for out in node.output:
            shape = self._sample_shape(out)
            self.signals[out] = _Signal("", np.ones(shape if shape is not None else [1]), refused=True)

    def _ugo_of(self, node: onnx.NodeProto) -> str | None:
        return next((name for name in self.ugo if node.name == name or node.name.startswith(name + ".")), None)

    def _sample_shape(self, tensor: str) -> list[int] | None:
        shape = self.shapes.get(tensor)
        if shape is None or any(not isinstance(d, int) for d in shape[1:]):
            return None
        return [int(d) for d in shape[1:]]

    def _emit(self, node: onnx.NodeProto, nir_node, kind: str, source: _Signal, scale: np.ndarray,
              note: str = "", folded: list[str] | None = None, meta: dict | None = None) -> None:
        shape = self._sample_shape(node.output[0])
        name = self._add(node.name or node.output[0], nir_node, shape, node.name, kind, note, source.node, meta)
        self.signals[node.output[0]] = _Signal(name, scale, folded or [])

    def _op_Identity(self, node, attrs) -> str | None:
        self.signals[node.output[0]] = self.signals[node.input[0]]
        return None

    _op_Dropout = _op_Identity

    def _channel_scale(self, signal: _Signal) -> np.ndarray | None:
        """The factor per channel (axis 0 of the sample), None where it varies within a channel."""
        s = signal.scale
        per = s.reshape(s.shape[0], -1)
        return per[:, 0] if np.all(per == per[:, :1]) else None

    def _op_Conv(self, node, attrs) -> str | None:
        x = self.signals[node.input[0]]
        if len(node.input) < 2 or node.input[1] not in self.consts or \
                (len(node.input) > 2 and node.input[2] and node.input[2] not in self.consts):
            return "weights or bias are not constants"
        w = self.consts[node.input[1]].astype(np.float64)
        if w.ndim != 4:
            return f"a {w.ndim - 2}-d convolution: only Conv2d exports"
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return f"auto_pad {attrs['auto_pad']}: give explicit pads"
        pads = list(attrs.get("pads", [0, 0, 0, 0])) if attrs.get("auto_pad", "NOTSET") == "NOTSET" else [0] * 4
        if pads[:2] != pads[2:]:
            return f"asymmetric pads {pads}: NIR's Conv2d pads both sides alike"
        in_shape = self._sample_shape(node.input[0])
        out_shape = self._sample_shape(node.output[0])
        if in_shape is None or out_shape is None:
            return "shapes are not static"
        scale = self._channel_scale(x)
        if scale is None:
            return "its input carries a factor that varies within a channel"
        groups = int(attrs.get("group", 1))
        if groups != 1:  # nir (1.0.8) types a Conv2d's input as C_in / groups channels: nir.read then fails
            return f"a grouped convolution ({groups} groups): nir.read refuses its input type"
        cout, cin_g = w.shape[:2]
        per_group = cout // groups
        channel = (np.arange(cout)[:, None] // per_group) * cin_g + np.arange(cin_g)[None, :]  # input channel of w[o, j]
        w = w * scale[channel][:, :, None, None]
        bias = self.consts[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] \
            else np.zeros(cout)
        conv = self.nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=w.astype(np.float32),
                               stride=tuple(int(v) for v in attrs.get("strides", [1, 1])),
                               padding=(int(pads[0]), int(pads[1])),
                               dilation=tuple(int(v) for v in attrs.get("dilations", [1, 1])),
                               groups=groups, bias=bias.astype(np.float32))
        self._emit(node, conv, "Conv2d", x, np.ones(out_shape), _folded_note(x))
        return None

    def _affine(self, node, x: _Signal, w: np.ndarray, bias: np.ndarray, fused: onnx.NodeProto | None = None):
        """w [out, in] in onnx units of the input."""
        in_shape = self._sample_shape(node.input[0])
        if in_shape is None or len(in_shape) != 1:
            return f"input of shape {self.shapes.get(node.input[0])}: Affine takes [batch, features]"
        w = w * x.scale[None, :]
        affine = self.nir.Affine(weight=w.astype(np.float32), bias=np.broadcast_to(bias, w.shape[:1]).astype(np.float32))
        last = fused or node
        shape = self._sample_shape(last.output[0])
        source = node.name + (f" + {fused.name}" if fused else "")
        name = self._add(node.name or node.output[0], affine, shape, source, "Affine", _folded_note(x), x.node)
        self.signals[last.output[0]] = _Signal(name, np.ones(shape))
        return None

    def _op_Gemm(self, node, attrs) -> str | None:
        x = self.signals[node.input[0]]
        if node.input[1] not in self.consts or (len(node.input) > 2 and node.input[2] and
                                                 node.input[2] not in self.consts):
            return "weights or bias are not constants"
        if attrs.get("transA", 0):
            return "transA = 1: the signal must be the left operand as is"
        w = self.consts[node.input[1]].astype(np.float64) * float(attrs.get("alpha", 1.0))
        w = w if attrs.get("transB", 0) else w.T
        bias = self.consts[node.input[2]].astype(np.float64).reshape(-1) * float(attrs.get("beta", 1.0)) \
            if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
        if bias.size not in (1, w.shape[0]):
            return f"bias of shape {list(bias.shape)}: one per output feature needed"
        return self._affine(node, x, w, bias)

    def _op_MatMul(self, node, attrs) -> str | None:
        if node.input[0] not in self.signals or node.input[1] not in self.consts:
            return "a product of two signals, or a constant on the left: Affine needs x @ W with W constant"
        w = self.consts[node.input[1]].astype(np.float64)
        if w.ndim != 2:
            return f"weights of rank {w.ndim}: Affine takes a matrix"
        readers = self.readers.get(node.output[0], [])
        add = readers[0] if len(readers) == 1 else None
        bias = np.zeros(w.shape[1])
        if add is not None and add.op_type == "Add" and add.domain in DEFAULT_DOMAINS and \
                node.output[0] not in [o.name for o in self.graph.output]:
            other = next((i for i in add.input if i != node.output[0]), None)
            b = self.consts.get(other)
            if b is not None and b.size == w.shape[1] and b.shape[-1] == w.shape[1]:
                bias = b.astype(np.float64).reshape(-1)
                self.fused[add.name] = add
            else:
                add = None
        else:
            add = None
        return self._affine(node, self.signals[node.input[0]], w.T, bias, add)

    def _scaled(self, node, factor: np.ndarray, what: str) -> str | None:
        x = self.signals[node.input[0]]
        shape = self._sample_shape(node.output[0])
        if shape is None or list(x.scale.shape) != shape:
            return "a constant that changes the shape of the signal"
        if factor.ndim > len(shape) + 1 or (factor.ndim == len(shape) + 1 and factor.shape[0] != 1):
            return "a constant with a batch axis"
        if not np.all(np.isfinite(factor)) or np.any(factor <= 0):
            return f"{what} by a constant that is not positive everywhere: unit spikes cannot carry its sign"
        scale = x.scale * np.broadcast_to(factor.reshape(factor.shape[-len(shape):] if factor.ndim else ()), shape)
        lo, hi = float(np.min(factor)), float(np.max(factor))
        text = f"{lo:.4g}" if lo == hi else f"({lo:.4g}..{hi:.4g} of {node.name})"
        self.signals[node.output[0]] = _Signal(x.node, scale, x.folded + [text])
        return None

    def _op_Mul(self, node, attrs) -> str | None:
        if len(node.input) != 2 or sum(i in self.consts for i in node.input) != 1:
            return "a product of two signals: NIR has no product node"
        signal, const = (node.input[0], node.input[1]) if node.input[1] in self.consts else node.input[::-1]
        if signal != node.input[0]:
            node = _swapped(node)
        return self._scaled(node, self.consts[const].astype(np.float64), "factor")

    def _op_Div(self, node, attrs) -> str | None:
        if node.input[1] not in self.consts or node.input[0] in self.consts:
            return "a division by a signal: NIR has no such node"
        return self._scaled(node, 1.0 / self.consts[node.input[1]].astype(np.float64), "1/divisor")

    def _op_Add(self, node, attrs) -> str | None:
        if all(i not in self.consts for i in node.input):
            return "a sum of two signals (a residual branch): only chains export"
        return "a constant added to a signal that is not the output of a MatMul: NIR has no bias node"

    _op_Sub = _op_Add

    def _op_IFNeuron(self, node, attrs) -> str | None:
        x = self.signals[node.input[0]]
        shape = self._sample_shape(node.output[0])
        if shape is None:
            return "shape is not static"
        if node.input[1] not in self.consts or node.input[2] not in self.consts:
            return "threshold or fire level is not a constant"
        theta = _per_sample(self.consts[node.input[1]], shape)
        fire = _per_sample(self.consts[node.input[2]], shape)
        if theta is None or fire is None:
            return "a threshold with a batch axis"
        if not np.allclose(fire, theta, rtol=1e-6, atol=0):
            phi = float(np.max(np.abs(1 - fire / np.where(theta == 0, 1, theta))))
            return (f"membrane starts at phi = {phi:.3g} of the threshold: NIR's IF starts at 0 and has no initial "
                    "value (convert with --phi 0)")
        if np.any(theta <= 0):
            return "a threshold that is not positive"
        if np.any(x.scale <= 0):
            return "its input carries a factor that is not positive"
        v_threshold = theta / x.scale
        neuron = self.nir.IF(r=np.ones(shape, np.float32), v_threshold=v_threshold.astype(np.float32))
        neuron_meta = {"reset": RESET, "v0": 0.0, "dt": DT, "fires_when": "v >= v_threshold",
                       "spikes": "unit (the threshold is folded into the next layer's weights)"}
        lo, hi = float(v_threshold.min()), float(v_threshold.max())
        note = f"v_threshold {lo:.4g}" + (f"..{hi:.4g}" if hi > lo else "")
        if x.folded:
            note += f" (input {_folded_note(x)})"
        th_lo, th_hi = float(theta.min()), float(theta.max())
        self._emit(node, neuron, "IF", x, theta, note, meta=neuron_meta, folded=
                   [f"{th_lo:.4g}" if th_hi == th_lo else f"({th_lo:.4g}..{th_hi:.4g})"])
        return None

    def _pool(self, node, kernel: list[int], strides: list[int], pads: list[int]) -> str | None:
        x = self.signals[node.input[0]]
        in_shape, out_shape = self._sample_shape(node.input[0]), self._sample_shape(node.output[0])
        if in_shape is None or out_shape is None or len(in_shape) != 3:
            return "only 2-d pooling of static shape exports"
        if pads[:2] != pads[2:]:
            return f"asymmetric pads {pads}: NIR's SumPool2d pads both sides alike"
        expected = [(in_shape[1 + i] + 2 * pads[i] - kernel[i]) // strides[i] + 1 for i in range(2)]
        if expected != out_shape[1:]:
            return "ceil_mode windows past the border: SumPool2d's windows are whole"
        scale = self._channel_scale(x)
        if scale is None:
            return "its input carries a factor that varies within a channel"
        area = kernel[0] * kernel[1]
        pool = self.nir.SumPool2d(kernel_size=np.array(kernel), stride=np.array(strides),
                                  padding=np.array(pads[:2]))
        pool.input_type = {"input": np.array(in_shape)}
        pool.output_type = {"output": np.array(out_shape)}
        out_scale = np.broadcast_to((scale / area)[:, None, None], out_shape).copy()
        self._emit(node, pool, "SumPool2d", x, out_scale, f"1/{area} folded on",
                   x.folded + [f"1/{area}"])
        return None

    def _op_AveragePool(self, node, attrs) -> str | None:
        kernel = [int(k) for k in attrs.get("kernel_shape", [])]
        if len(kernel) != 2:
            return f"{len(kernel)}-d pooling: only 2-d exports"
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        if attrs.get("auto_pad", "NOTSET") != "NOTSET":
            return f"auto_pad {attrs['auto_pad']}: give explicit pads"
        if any(pads) and not attrs.get("count_include_pad", 0):
            return "padding not counted in the average (count_include_pad = 0): border windows divide by less " \
                   "than k^2, which a SumPool2d cannot"
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            return "dilated pooling: SumPool2d has no dilation"
        return self._pool(node, kernel, [int(s) for s in attrs.get("strides", [1, 1])], pads)

    def _op_GlobalAveragePool(self, node, attrs) -> str | None:
        shape = self._sample_shape(node.input[0])
        if shape is None or len(shape) != 3:
            return "only 2-d pooling of static shape exports"
        return self._pool(node, shape[1:], shape[1:], [0, 0, 0, 0])

    def _flatten(self, node) -> str | None:
        x = self.signals[node.input[0]]
        in_shape, out_shape = self._sample_shape(node.input[0]), self._sample_shape(node.output[0])
        if in_shape is None or out_shape is None or out_shape != [int(np.prod(in_shape))]:
            return f"output {self.shapes.get(node.output[0])}: only [batch, all the rest] exports"
        if len(in_shape) == 1:
            self.signals[node.output[0]] = x
            return None
        flat = self.nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1)
        self._emit(node, flat, "Flatten", x, x.scale.reshape(-1), "", x.folded)
        return None

    def _op_Flatten(self, node, attrs) -> str | None:
        if int(attrs.get("axis", 1)) != 1:
            return f"axis {attrs['axis']}: only axis 1 (keep the batch) exports"
        return self._flatten(node)

    def _op_Reshape(self, node, attrs) -> str | None:
        if len(node.input) < 2 or node.input[1] not in self.consts:
            return "a shape that is not constant"
        return self._flatten(node)

    def _output(self, tensor: str) -> None:
        x = self.signals.get(tensor)
        if x is None:
            self.file_reasons.append(f"output '{tensor}' is not produced by the exported chain")
            return
        shape = list(x.scale.shape)
        last = x.node
        if not np.all(x.scale == 1):
            scale = self.nir.Scale(scale=x.scale.astype(np.float32))
            last = self._add(f"{tensor}_scale", scale, shape, tensor, "Scale", _folded_note(x), last)
        self._add("output", self.nir.Output(output_type={"output": np.array(shape)}), shape, tensor, "Output",
                  after=last)


def _for_old_readers(buffer: io.BytesIO, node_metadata: bool) -> None:
    """Leave out each IF's v_reset when it is 0, NIR's default (nir <= 1.0.4, which sinabs 3.1 pins, refuses
    the field; later versions read a missing v_reset as 0), and without `node_metadata` the nodes' metadata,
    which nir <= 1.0.4 refuses too (the graph's metadata keeps what applies to every node)."""
    import h5py
    with h5py.File(buffer, "r+") as f:
        for group in f["node/nodes"].values():
            if group["type"][()] in (b"IF", "IF") and "v_reset" in group and not np.any(group["v_reset"][()]):
                del group["v_reset"]
            if not node_metadata and "metadata" in group:
                del group["metadata"]


def _per_sample(value: np.ndarray, shape: list[int]) -> np.ndarray | None:
    """A neuron parameter broadcast to the sample shape (float64), None if it has a batch axis."""
    value = np.asarray(value, np.float64)
    if value.ndim == len(shape) + 1:
        if value.shape[0] != 1:
            return None
        value = value[0]
    try:
        return np.broadcast_to(value, shape).copy()
    except ValueError:
        return None


def _folded_note(x: _Signal) -> str:
    return ("w x " + " x ".join(x.folded)) if x.folded else ""


def _swapped(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.input[0], copy.input[1] = node.input[1], node.input[0]
    return copy


def _clean(name: str) -> str:
    """A NIR node key: letters, digits and '_' (HDF5 reads '/' as a group, torch refuses '.')."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "node"


def _unique(name: str, taken: dict) -> str:
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


def _shapes(proto: onnx.ModelProto) -> dict[str, list]:
    """Declared shapes of every tensor (inferred where the file does not declare them)."""
    infos = list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info)
    known = {vi.name for vi in infos}
    if any(o not in known for n in proto.graph.node for o in n.output):
        try:
            inferred = onnx.shape_inference.infer_shapes(proto)
            infos += list(inferred.graph.value_info)
        except Exception:  # noqa: BLE001 - shapes stay unknown; the nodes that need them are refused
            pass
    shapes = {}
    for vi in infos:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                               for d in vi.type.tensor_type.shape.dim]
    for t in proto.graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes

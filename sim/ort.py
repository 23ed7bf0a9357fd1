"""The onnxruntime engine: steps the exported file one time step per call, exactly as the contract says
(state fed zeros at t = 0, the .next outputs fed back). The outputs of the IF neurons are exposed as extra
outputs of an in-memory copy so that their spikes can be counted."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from rewrites.errors import SpikingModelError
from sim.drain import bias_terms, without_biases
from sim.engine import ORT_ERRORS, LayerSpikes, WindowResult
from sim.model import SPIKING_DOMAIN, SpikingModel
from sim.neurons import NON_FIRING

_NP = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64}


class OrtEngine:
    name = "onnxruntime"

    def __init__(self, model: SpikingModel, threads: int = 0):
        self.model = model
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        self.firing = [n for n in proto.graph.node if n.domain == SPIKING_DOMAIN and n.op_type not in NON_FIRING]
        known = {o.name for o in proto.graph.output}
        for node in self.firing:
            if node.output[0] not in known:
                proto.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT,
                                                                             None))
        self.proto, self.threads = proto, threads
        self.session = self._session(proto)
        self.drained: ort.InferenceSession | None = None
        self.state = [i for i in self.session.get_inputs() if i.name.startswith("state.")]
        self.fetch = model.outputs + [s.name + ".next" for s in self.state] + [n.output[0] for n in self.firing]

    def run(self, feeds: dict[str, np.ndarray], T: int, extra_t: int = 0, observe: int = 0,
            drain: bool = False) -> WindowResult:
        """Step a batch from zero state: T steps with input, extra_t with zero input (and, with `drain`, the
        copy of the model without biases: sim/drain.py)."""
        silent_session = self._drain_session() if drain and extra_t else self.session
        batch = len(next(iter(feeds.values())))
        state = {s.name: np.zeros([d if isinstance(d, int) else batch for d in s.shape], _NP.get(s.type, np.float32))
                 for s in self.state}
        zeros = {k: np.zeros_like(v) for k, v in feeds.items()} if extra_t else {}
        n_out, n_state = len(self.model.outputs), len(self.state)
        per_step: list[list[np.ndarray]] = [[] for _ in range(n_out)]
        counts: dict[str, np.ndarray] = {}
        sums: dict[str, np.ndarray] = {}
        active = np.zeros((T + extra_t, batch), bool) if observe else None
        for t in range(T + extra_t):
            try:
                session = self.session if t < T else silent_session
                values = session.run(self.fetch, {**(feeds if t < T else zeros), **state})
            except ORT_ERRORS as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise SpikingModelError(f"{self.model.path}: onnxruntime cannot step it: {first}",
                                        "the file does not hold together; export it again with "
                                        "`ann2snn convert`") from exc
            for k in range(n_out):
                per_step[k].append(values[k])
            for s, v in zip(self.state, values[n_out:n_out + n_state]):
                state[s.name] = v
            for node, y in zip(self.firing, values[n_out + n_state:]):
                fired = y != 0
                if node.name in counts:
                    counts[node.name] += fired
                else:
                    counts[node.name] = fired.astype(np.int32)
                if observe and t < observe:
                    sums[node.name] = sums.get(node.name, 0.0) + y.astype(np.float64)
                if observe:
                    active[t] |= fired.reshape(batch, -1).any(axis=1)
        spikes = {n.name: LayerSpikes(n.name, n.op_type, 0) for n in self.firing}
        for name, c in counts.items():
            spikes[name].add_counts(c, T + extra_t)
        outputs = {name: np.stack(steps) for name, steps in zip(self.model.outputs, per_step)}
        return WindowResult(outputs, spikes, sums, active)

    def _session(self, proto: onnx.ModelProto) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise SpikingModelError(f"{self.model.path}: onnxruntime cannot load it: "
                                    f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from exc

    def _drain_session(self) -> ort.InferenceSession:
        if self.drained is None:
            self.drained = self._session(without_biases(self.proto, bias_terms(self.model)))
        return self.drained

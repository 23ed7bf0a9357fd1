"""The onnxruntime engine: runs the exported file as the contract says (state fed zeros at t = 0, the .next
outputs fed back) and counts the spikes of every firing node.

Two ways, same results (tests/sim/test_ort_engine.py):

- `loop=True` (the default): the step graph wrapped into ONNX `Loop`s in memory (sim/ort_loop.py), so one
  session call runs the whole window; the input-only prefix runs once and the spikes are counted inside
  onnxruntime. Faster: docs/benchmarks.md, "The onnxruntime engine".
- `loop=False`: the file itself stepped from Python, one session call per step, its firing nodes' outputs
  exposed as extra outputs of an in-memory copy and counted in NumPy.

If onnxruntime cannot load the Loop model but can load the file, the engine steps the file (`loop_reason`
says why). So it does for a model of more than LOOP_WEIGHTS_LIMIT bytes of weights: each Loop body holds its
own copy of the weights (one per kind of window, two with silent steps), the stepped file one."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from ground.errors import first_line, SpikingModelError
from sim.drain import bias_terms, without_biases
from sim.engine import ORT_ERRORS, LayerSpikes, WindowResult
from sim.model import SpikingModel
from snnfile.operators import NON_FIRING
from sim.ort_loop import EXTRA_INPUT, MAX_NARROW, OBSERVE_INPUT, T_INPUT, LoopOutputs, firing_nodes, loop_model
from snnfile import is_state, next_name
from ground.sessions import make_session

LOOP_WEIGHTS_LIMIT = 256 * 2**20
_NP = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64}


class OrtEngine:
    name = "onnxruntime"

    def __init__(self, model: SpikingModel, threads: int = 0, loop: bool = True):
        self.model, self.threads = model, threads
        self.firing = firing_nodes(model, NON_FIRING)
        self.loop_reason = ""
        # (silent steps, drain, observe, uint8 counts) -> the Loop session and its output names
        self.loops: dict[tuple[bool, bool, bool, bool], tuple[ort.InferenceSession, LoopOutputs]] = {}
        self.session: ort.InferenceSession | None = None
        self.drained: ort.InferenceSession | None = None
        weights = sum(a.nbytes for a in model.constants.values())
        if loop and weights > LOOP_WEIGHTS_LIMIT:
            self.loop_reason = (f"{weights / 2**20:,.0f} MiB of weights, over {LOOP_WEIGHTS_LIMIT // 2**20} MiB: "
                                "each Loop would hold its own copy")
        elif loop:
            try:
                self._loop_session(False, False, False, True)
            except SpikingModelError as exc:
                self.loop_reason = exc.message
        self.loop = loop and not self.loop_reason
        if not self.loop:
            self._stepping()

    def run(self, feeds: dict[str, np.ndarray], T: int, extra_t: int = 0, observe: int = 0,
            drain: bool = False) -> WindowResult:
        """Run a batch from zero state: T steps with input, extra_t with zero input (and, with `drain`, the
        copy of the model without biases: sim/drain.py). `observe` > 0 also returns each firing layer's output
        summed over that many leading steps, and per-step activity."""
        if self.loop:
            return self._run_loop(feeds, T, extra_t, observe, drain)
        return self._run_steps(feeds, T, extra_t, observe, drain)

    # ------------------------------------------------------------------------------ the window in one call

    def _run_loop(self, feeds: dict[str, np.ndarray], T: int, extra_t: int, observe: int,
                  drain: bool) -> WindowResult:
        session, names = self._loop_session(extra_t > 0, drain and extra_t > 0, observe > 0,
                                            T + extra_t <= MAX_NARROW)
        loop_feeds = {**feeds, T_INPUT: np.array(T, np.int64)}
        if extra_t:
            loop_feeds[EXTRA_INPUT] = np.array(extra_t, np.int64)
        if observe:
            loop_feeds[OBSERVE_INPUT] = np.array(observe, np.int64)
        values = dict(zip(names.names(), self._call(session, names.names(), loop_feeds)))
        steps = T + extra_t
        outputs = {name: np.concatenate([values[loop[k]] for loop in names.outputs]) if extra_t
                   else values[names.outputs[0][k]] for k, name in enumerate(self.model.outputs)}
        spikes = {n.name: LayerSpikes(n.name, n.op_type, 0) for n in self.firing}
        for node, count in zip(self.firing, names.counts):
            spikes[node.name].add_counts(values[count].astype(np.int32), steps)
        sums = {node.name: values[s] for node, s in zip(self.firing, names.sums)}
        active = None
        if observe:
            batch = len(next(iter(feeds.values())))
            active = np.concatenate([values[a] for a in names.active]) if names.active \
                else np.zeros((steps, batch), bool)
        return WindowResult(outputs, spikes, sums, active)

    def _loop_session(self, extra: bool, drain: bool, observe: bool,
                      narrow: bool) -> tuple[ort.InferenceSession, LoopOutputs]:
        key = (extra, drain, observe, narrow)
        if key not in self.loops:
            silent = without_biases(self.model.proto, bias_terms(self.model)) if drain else None
            try:
                proto, names = loop_model(self.model, self.firing, extra, observe, silent, narrow)
            except (ValueError, KeyError, IndexError) as exc:  # a graph the wrapping does not understand
                raise SpikingModelError(f"{self.model.path}: cannot wrap the step into an ONNX Loop: "
                                        f"{type(exc).__name__}: {exc}") from exc
            self.loops[key] = (self._session(proto), names)
        return self.loops[key]

    # ------------------------------------------------------------------------------ the file, step by step

    def _stepping(self) -> None:
        proto = onnx.ModelProto()
        proto.CopyFrom(self.model.proto)
        known = {o.name for o in proto.graph.output}
        for node in self.firing:
            if node.output[0] not in known:
                proto.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT,
                                                                             None))
        self.proto = proto
        self.session = self._session(proto)
        self.state = [i for i in self.session.get_inputs() if is_state(i.name)]
        self.fetch = self.model.outputs + [next_name(s.name) for s in self.state] + [n.output[0] for n in self.firing]

    def _run_steps(self, feeds: dict[str, np.ndarray], T: int, extra_t: int, observe: int,
                   drain: bool) -> WindowResult:
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
            session = self.session if t < T else silent_session
            values = self._call(session, self.fetch, {**(feeds if t < T else zeros), **state})
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

    def _drain_session(self) -> ort.InferenceSession:
        if self.drained is None:
            self.drained = self._session(without_biases(self.proto, bias_terms(self.model)))
        return self.drained

    # ------------------------------------------------------------------------------------------- shared

    def _call(self, session: ort.InferenceSession, fetch: list[str], feeds: dict[str, np.ndarray]) -> list:
        try:
            return session.run(fetch, feeds)
        except ORT_ERRORS as exc:
            first = first_line(exc)
            raise SpikingModelError(f"{self.model.path}: onnxruntime cannot step it: {first}",
                                    "the file does not hold together; export it again with "
                                    "`ann2snn convert`") from exc

    def _session(self, proto: onnx.ModelProto) -> ort.InferenceSession:
        try:
            return make_session(proto, self.threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise SpikingModelError(f"{self.model.path}: onnxruntime cannot load it: "
                                    f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from exc

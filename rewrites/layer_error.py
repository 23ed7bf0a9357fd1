"""How much of the output error each UGO subnet causes once time has done its part.

A UGO's rate converges to its piecewise-linear fit as T grows, so the error that does not shrink with T is
the fits' error carried through the network. This runs the ANN as the spiking pipeline sees it (normalised,
each Softmax rewritten as softmax_to_spiking writes it): once exactly, reading every subnet's input x and
value f(x); once per subnet with fit(x) - f(x) added to its value alone (that subnet's own error); and once
with every fit in the graph (the spiking file's limit)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ground.sessions import Session
from rewrites.config import ConvertOptions
from rewrites.convert import normalise, to_model
from rewrites.emit import Emitter
from rewrites.passes import CLAIMS, SPIKING, nonlinear_to_spiking, softmax_to_spiking
from rewrites.passes.base import PassContext
from rewrites.patterns.regions import find_regions

SAMPLES = 32
BATCH = 8


@dataclass
class SubnetError:
    node: str
    function: str
    size: int
    fit_error: float  # max over its calibrated inputs: of |f| for relative fits, else of the output range
    output_error: float  # relative error of the output with only this subnet in place of its function

    def to_dict(self) -> dict:
        return vars(self).copy()


@dataclass
class LayerErrors:
    subnets: list[SubnetError]
    together: float  # every subnet in place: the spiking file's limit as T grows
    samples: int
    output: str

    def share(self, subnet: SubnetError) -> float:
        total = sum(s.output_error for s in self.subnets)
        return subnet.output_error / total if total > 0 else 0.0

    def to_dict(self) -> dict:
        return {"output": self.output, "samples": self.samples, "together": self.together,
                "subnets": [{**s.to_dict(), "share": self.share(s)} for s in self.subnets]}


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Of the input-dependent part: both centred on their mean over the samples, so that an output that is
    mostly the same for every input does not hide an error in what tells the inputs apart."""
    got, want = got - got.mean(0), want - want.mean(0)
    return float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30))


def _claimed_before(graph: gs.Graph, ctx: PassContext) -> list[str]:
    """Nodes the passes before nonlinear_to_spiking take out of reach of the UGO fits (a decoded head, QCFS
    chains), found by running each on a copy; softmax_to_spiking runs on the graph itself."""
    claimed: list[str] = []
    for p in SPIKING[:SPIKING.index(nonlinear_to_spiking.PASS)]:
        if p is not softmax_to_spiking.PASS:
            claimed += p.run(graph.copy(), PassContext(ctx.options, ctx.calibration, claims=CLAIMS)).converted
    return claimed


def _interpolant(emit: Emitter, x: gs.Variable, result) -> gs.Variable:
    """The fit as float operators: the rate each hidden unit converges to, clip(x - k_j, 0, theta_j)."""
    shape = list(x.shape) + [result.size]
    z = emit("Sub", [emit("Unsqueeze", [x, np.array([-1], np.int64)], "unsqueeze", shape=list(x.shape) + [1]),
                     result.knots[:-1].astype(np.float32)], "hidden_input", shape=shape)
    h = emit("Min", [emit("Relu", [z], "floor", shape=shape), result.thresholds.astype(np.float32)], "rate",
             shape=shape)
    total = emit("MatMul", [h, result.slopes.astype(np.float32)], "sum", shape=list(x.shape))
    return emit("Add", [total, np.array(result.values[0], np.float32)], "offset", shape=list(x.shape))


@dataclass
class _Subnet:
    name: str
    root: str  # the input of its function
    output: str  # the function's value, before anything is added to it
    shape: list  # of its value: the batch, then static dims
    fit: object  # rewrites.ugo.UgoFit
    error: SubnetError


def _readers_take(graph: gs.Graph, readers: list[gs.Node], y: gs.Variable, replacement: gs.Variable) -> None:
    for reader in readers:
        for i, t in enumerate(reader.inputs):
            if t is y:
                reader.inputs[i] = replacement
    graph.outputs = [replacement if t is y else t for t in graph.outputs]


def _subnets(graph: gs.Graph, ctx: PassContext, fits: dict | None = None, fitted: bool = False) -> list[_Subnet]:
    """Each output of each region gets an addend: an input `<name>.layer_error` (fitted=False) that the caller
    sets to fit(x) - f(x) for one subnet at a time, or the fit's own error computed in the graph
    (fitted=True: every subnet in place at once). `fits`: from an earlier call on a copy of the graph."""
    subnets = []
    for region in find_regions(graph, frozenset(ctx.kept_float)):
        outputs = [(name, y, fits[name].fit) for name, y in _named_outputs(region)] if fits is not None else \
            nonlinear_to_spiking.fit_region(region, graph.opset, ctx)
        for name, y, result in outputs:
            readers = [n for n in y.outputs if n not in region.nodes]
            emit = Emitter(graph, f"{name}.layer_error")
            if fitted:
                addend = emit("Sub", [_interpolant(emit, region.root, result), y], "delta", shape=y.shape)
            else:
                addend = gs.Variable(f"{name}.layer_error", np.float32, y.shape)
                graph.inputs.append(addend)
            _readers_take(graph, readers, y, emit("Add", [y, addend], "mixed", shape=y.shape))
            graph.outputs.extend(t for t in (region.root, y) if t not in graph.outputs)
            subnets.append(_Subnet(name, region.root.name, y.name, list(y.shape), result, SubnetError(
                name, "+".join(dict.fromkeys(region.ops)), result.size, result.max_relative_error, 0.0)))
    return subnets


def _named_outputs(region) -> list[tuple[str, gs.Variable]]:
    return [(region.name if len(region.outputs) == 1 else f"{region.name}.out{k}", y)
            for k, y in enumerate(region.outputs)]


def _prepared(model: onnx.ModelProto, calibration, options: ConvertOptions) -> tuple[gs.Graph, PassContext]:
    graph, _ = normalise(model, options)
    ctx = PassContext(options, calibration, claims=CLAIMS)
    ctx.kept_float.extend(_claimed_before(graph, ctx))
    softmax_to_spiking.run(graph, ctx)
    return graph, ctx


def layer_errors(model: onnx.ModelProto, calibration, options: ConvertOptions,
                 data, limit: int = SAMPLES, batch: int = BATCH) -> LayerErrors | None:
    """Each UGO subnet's error at the model's first output, alone and all together, on the first `limit`
    samples of `data` (ground.data's Dataset); None when the model has no UGO.

    Alone: the ANN is run once to read each subnet's input x and exact value f(x), then once per subnet with
    fit(x) - f(x) added to that value only. Together: once more with every fit computed in the graph."""
    graph, ctx = _prepared(model, calibration, options)
    subnets = _subnets(graph, ctx)
    if not subnets:
        return None
    together_graph, together_ctx = _prepared(model, calibration, options)
    _subnets(together_graph, together_ctx, {s.name: s for s in subnets}, fitted=True)
    output, together_output = graph.outputs[0].name, together_graph.outputs[0].name
    alone = Session(to_model(graph.cleanup().toposort(), model), "the model with its subnets' errors as inputs")
    together = Session(to_model(together_graph.cleanup().toposort(), model), "the model with its subnets' fits")
    probes = list(dict.fromkeys(t for s in subnets for t in (s.root, s.output)))
    samples = next(data.batches(limit))
    count = len(next(iter(samples.values())))
    exact, together_out, alone_out = [], [], [[] for _ in subnets]
    for start in range(0, count, batch):
        feeds = {k: v[start:start + batch] for k, v in samples.items()}
        size = len(next(iter(feeds.values())))
        zeros = {f"{s.name}.layer_error": np.zeros([size] + s.shape[1:], np.float32) for s in subnets}
        values = dict(zip([output] + probes, alone.run([output] + probes, {**feeds, **zeros})))
        exact.append(values[output])
        for k, s in enumerate(subnets):
            addend = (s.fit(values[s.root]) - values[s.output]).astype(np.float32)
            alone_out[k].append(alone.run([output], {**feeds, **zeros, f"{s.name}.layer_error": addend})[0])
        together_out.append(together.run([together_output], feeds)[0])
    want = np.concatenate(exact)
    for s, got in zip(subnets, alone_out):
        s.error.output_error = relative_error(np.concatenate(got), want)
    return LayerErrors([s.error for s in subnets], relative_error(np.concatenate(together_out), want), count,
                       output)

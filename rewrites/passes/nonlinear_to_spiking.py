"""nonlinear_to_spiking: every elementwise function of one signal (rewrites/patterns/regions.py) -> a UGO subnet of
signed IF neurons (--nonlinear ugo), or one exact float operator with estimate-and-correct (--nonlinear exact).

UGO for y = f(x), fitted by rewrites/ugo.py on the calibrated distribution of x: h = UGOHidden(x), N signed
IF neurons per element fed x - k_j (the N left knots, a new last axis) with thresholds k_{j+1} - k_j, initial
membrane theta/2 and a count within [0, t] (a hidden unit is a ReLU clipped at its threshold), y = h @ slopes
+ f(k_0). The neurons share their input, so the state is its sum and the step count, not N membranes: a
neuron's count is a function of them (snnfile/operators.py). Taking back spikes fired early, and firing as
many as the membrane holds, their rates follow clip(mean x - k_j, 0, theta_j) whatever the order and size of
the input. Runs before relu_to_if: a ReLU-like node inside a region is part of its function."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.config import Nonlinear
from ground.errors import CalibrationError, PassError
from snnfile.operators import FS_NEURON, UGO_HIDDEN
from rewrites.drive import step_counter
from rewrites.emit import Emitter
from rewrites.optable import Conversion, NodeConversion, Verdict
from rewrites.passes.base import Pass, PassContext, PassReport
from rewrites.fs import fit_tables, neuron_inputs
from rewrites.passes.spiking import shaped_like, spiking_node, step_like, wrap_exact
from rewrites.patterns.regions import find_regions, Region
from rewrites.patterns.tensors import is_relu_like
from ground.sessions import Session
from rewrites.ugo import default_size, fit, samples_from_stats

SAMPLES = 20000
PHI = 0.5


def _function(region: Region, output: gs.Variable, opset: int):
    session = Session(region.function_model(output, opset), f"the function of region '{region.name}'",
                      optimize=False)
    return lambda x: session.run(None, {region.root.name: np.asarray(x, np.float32).reshape(-1)})[0] \
        .astype(np.float64).reshape(np.shape(x))


def _samples(region: Region, ctx: PassContext) -> np.ndarray:
    if region.root.name in ctx.distributions:
        return ctx.distributions[region.root.name]
    if ctx.calibration is None:
        raise CalibrationError("nonlinear_to_spiking needs a calibration", "pass --calib FILE")
    stats = ctx.calibration.stats(region.root.name, region.name)
    return samples_from_stats(stats, SAMPLES, np.random.default_rng(0))


TARGET_ERROR = 0.01
MAX_SIZE = 64


def _fit(f, samples: np.ndarray, region: Region, ctx: PassContext):
    """With --ugo-size, that size; else STA's size for the function, doubled while the fit's max error
    exceeds 1% (of |f| for relative fits, of the output range otherwise) up to 64 hidden neurons."""
    if ctx.options.ugo_size:
        return fit(f, samples, ctx.options.ugo_size)
    size = default_size(region.ops)
    result = fit(f, samples, size)
    while result.max_relative_error > TARGET_ERROR and size < MAX_SIZE:
        size = min(2 * size, MAX_SIZE)
        result = fit(f, samples, size)
    return result


def fit_region(region: Region, opset: int, ctx: PassContext) -> list[tuple[str, gs.Variable, object]]:
    """(name, output, fit) for each output of the region: the UGOs the pass writes, deterministic."""
    samples = _samples(region, ctx)
    return [(region.name if len(region.outputs) == 1 else f"{region.name}.out{k}", y,
             _fit(_function(region, y, opset), samples, region, ctx)) for k, y in enumerate(region.outputs)]


def _unsqueeze_last(emit: Emitter, x: gs.Tensor, opset: int) -> gs.Variable:
    shape = list(x.shape) + [1]
    if opset >= 13:
        return emit("Unsqueeze", [x, np.array([-1], np.int64)], "unsqueeze", shape=shape)
    return emit("Unsqueeze", [x], "unsqueeze", shape=shape, axes=[len(x.shape)])


def build_ugo(graph: gs.Graph, name: str, x: gs.Variable, y: gs.Variable, result) -> str:
    """Write the UGO of `result` from x to y; returns the name of its output sum (a MatMul fed by spikes)."""
    emit = Emitter(graph, name)
    column = _unsqueeze_last(emit, x, graph.opset)
    theta = result.thresholds
    h = gs.Variable(f"{name}.hidden.out", np.float32, list(x.shape) + [result.size])
    neuron_inputs = [column] + [gs.Constant(f"{name}.hidden.{k}", np.asarray(v, np.float32)) for k, v in (
        ("threshold", theta), ("fire_level", theta * (1 - PHI)), ("knots", result.knots[:-1]))]
    graph.nodes.append(spiking_node(UGO_HIDDEN, f"{name}.hidden", neuron_inputs + [step_counter(graph)], h,
                                    [column, step_like()]))
    total = emit("MatMul", [h, result.slopes.astype(np.float32)], "output", shape=list(x.shape))
    emit("Add", [total, np.array(result.values[0], np.float32)], "offset", out=y)
    return total.inputs[0].name


FS_FIT_K = 16  # the reference's K for Swish (Stoeckl & Maass 2021); 12 (its Sigmoid's) erred by 6.6% on a ViT
_FS_FITS: dict[tuple, object] = {}  # one fit per function and samples per process


def fitted_neuron(f, samples: np.ndarray, ops: list[str]):
    """A few-spikes neuron fitted to the region's function on its calibrated inputs (rewrites/fs.py), cached by
    the function (its ops and its values on a probe grid of the range), K and the samples."""
    samples = np.ascontiguousarray(samples, np.float64)
    probe = np.asarray(f(np.linspace(samples.min(), samples.max(), 17)), np.float64)
    key = (tuple(ops), FS_FIT_K, hashlib.sha256(samples.tobytes()).hexdigest(), probe.tobytes())
    if key not in _FS_FITS:
        _FS_FITS[key] = fit_tables(f, samples, FS_FIT_K)
    return _FS_FITS[key]


def build_fs(graph: gs.Graph, name: str, x: gs.Variable, y: gs.Variable, fitted) -> None:
    """y = FSNeuron(x) + offset (the offset is a constant term: FS coding gates it to the first step)."""
    sent = shaped_like(f"{name}.fs", y)
    graph.nodes.append(spiking_node(FS_NEURON, name, [x] + neuron_inputs(name, fitted.tables), sent,
                                    [y, step_like()]))
    Emitter(graph, name)("Add", [sent, np.array(fitted.offset, np.float32)], "offset", out=y)


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("nonlinear_to_spiking")
    exact = ctx.options.nonlinear is Nonlinear.EXACT
    for region in find_regions(graph, frozenset(ctx.kept_float)):
        x = region.root
        if not x.shape or any(not isinstance(d, int) for d in list(x.shape)[1:]):
            raise PassError(f"node '{region.name}': the shape of '{x.name}' is not static ({x.shape})",
                            "export the model with static non-batch dimensions")
        entry = {"node": region.name, "op": "+".join(dict.fromkeys(region.ops)), "input": x.name,
                 "nonlinear": "exact" if exact else "ugo"}
        if exact:
            wrap_exact(graph, region.name, region.nodes, [x], region.outputs, summed=ctx.options.fs)
            ctx.kept_float.extend(n.name for n in region.nodes)
        elif ctx.options.fs:
            samples = _samples(region, ctx)
            for k, y in enumerate(region.outputs):
                name = region.name if len(region.outputs) == 1 else f"{region.name}.out{k}"
                fitted = fitted_neuron(_function(region, y, graph.opset), samples, region.ops)
                build_fs(graph, name, x, y, fitted)
                fit_entry = {**entry, "node": name, "output": y.name, "nonlinear": "fs", "K": fitted.tables.K,
                             "range": [fitted.lo, fitted.hi], "max_error": fitted.max_error,
                             "mean_error": fitted.mean_error}
                ctx.fs_fits.append(fit_entry)
                report.layers.append(fit_entry)
            for node in region.nodes:
                node.inputs.clear()
                node.outputs.clear()
        else:
            for name, y, result in fit_region(region, graph.opset, ctx):
                sum_node = build_ugo(graph, name, x, y, result)
                fit_entry = {**entry, "node": name, "output": y.name, "sum_node": sum_node, "size": result.size,
                             "range": [float(result.knots[0]), float(result.knots[-1])],
                             "max_error": result.max_error, "mean_error": result.mean_error,
                             "relative": result.relative, "max_relative_error": result.max_relative_error}
                ctx.ugo_fits.append(fit_entry)
                report.layers.append(fit_entry)
            for node in region.nodes:
                node.inputs.clear()
                node.outputs.clear()
        if exact:
            report.layers.append(entry)
        report.converted.extend(n.name for n in region.nodes)
    return report


def observes(graph: gs.Graph, verdicts: list[NodeConversion]) -> list[str]:
    """The input of every region: the range its UGO is fitted on."""
    return [region.root.name for region in find_regions(graph)]


UGO_OPS = frozenset({
    "Gelu", "Erf", "Exp", "Sigmoid", "Tanh", "Softplus", "Elu", "Selu", "LeakyRelu", "PRelu", "Abs", "Reciprocal",
    "Sqrt", "Pow", "Log", "Mish", "Sin", "Cos", "Celu", "ThresholdedRelu",
})  # HardSigmoid and HardSwish: hard_activations


def claim(node: gs.Node, ins: list, is_dynamic: list[bool]) -> Verdict | None:
    """Elementwise functions of one input-dependent tensor: the ops above, a Clip that is not ReLU-like and a
    division by a tensor that depends on the input."""
    op = node.op
    if op == "Div" and sum(is_dynamic) == 1 and is_dynamic[-1]:
        return Conversion.UGO, "divides by a tensor that depends on the input (reciprocal)"
    if op == "Clip" and not is_relu_like(node):
        return Conversion.UGO, "Clip that is not ReLU-like (min != 0 or bounds not constant)"
    if op in UGO_OPS:
        if op == "Pow" and not (len(ins) > 1 and not is_dynamic[1]):
            return Conversion.UNSUPPORTED, "Pow with an exponent that depends on the input"
        return Conversion.UGO, "elementwise nonlinearity"
    return None


PASS = Pass("nonlinear_to_spiking", run, spiking=True,
            doc="Elementwise nonlinearities -> UGO subnets of signed IF neurons, or exact float operators.",
            converts=frozenset({Conversion.UGO}), observes=observes, claims=claim)

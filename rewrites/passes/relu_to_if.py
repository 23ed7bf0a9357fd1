"""relu_to_if: ReLU and Clip(0, a) (ReLU6 and the like) -> scaled integrate-and-fire neuron.

Matches Relu, and Clip whose min is the constant 0 and whose max is a positive constant or absent.
The threshold theta comes from the calibrated statistics of the node's input under the chosen rule (max,
a percentile of the post-ReLU distribution, or mmse; rewrites/thresholds.py), per layer or with
--per-channel per channel, capped at a for Clip(0, a). The neuron's initial
membrane is phi * theta. `options.neuron` picks the neuron: IFNeuron (positive spikes), or SignedIFNeuron
(positive and negative spikes, net count in [0, tmax], tmax = options.tmax or the conversion's T).
Needs shapes: the state has the input's shape."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from rewrites.calibration.stats import TensorStats
from rewrites.config import LayerSetting, Neuron
from ground.errors import CalibrationError
from snnfile.operators import IF_NEURON, SIGNED_IF_NEURON
from rewrites.patterns.tensors import clip_bounds, is_relu_like
from rewrites.passes.base import Pass, PassContext, PassReport, inputs_of
from rewrites.optable import Conversion, Verdict
from rewrites.passes.spiking import replace_node, spiking_node
from rewrites.thresholds import threshold

DEAD_THRESHOLD = 1.0  # used when a ReLU never saw a positive input: it never fires, any theta works


def thresholds(stats: TensorStats, setting: LayerSetting, T: int, rank: int, node: str) -> np.ndarray:
    """The layer's threshold (a scalar), or per channel one per channel shaped to broadcast along axis 1 of a
    tensor of rank `rank`."""
    rule = (setting.norm.kind.value, setting.norm.percentile, T, setting.phi)
    if not setting.per_channel:
        return np.array(threshold(stats, *rule))
    if stats.channels is None or stats.channel_axis != 1:
        raise CalibrationError(f"calibration has no per-channel statistics for '{stats.name}' (node '{node}')",
                               "recalibrate with this version of `ann2snn calibrate`")
    values = np.array([threshold(c, *rule) for c in stats.channels])
    return values.reshape((-1,) + (1,) * (rank - 2))


def layer_threshold(stats: TensorStats, setting: LayerSetting, T: int, rank: int, node: str,
                    cap: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The threshold the neuron gets (float64, capped at a Clip's max; DEAD_THRESHOLD where the layer never
    saw a positive input, so it never fires) and where it is dead."""
    theta = thresholds(stats, setting, T, rank, node)
    if cap is not None:
        theta = np.minimum(theta, cap)
    dead = theta <= 0.0
    return np.asarray(np.where(dead, DEAD_THRESHOLD, theta), np.float64), dead


def neuron_constants(node: str, theta: np.ndarray, setting: LayerSetting, tmax: float | None) -> list[gs.Constant]:
    """threshold, fire_level (and for the signed neuron unfire_level, tmax) of a neuron with threshold theta
    and initial membrane phi * theta, stored relative to it (docs/contract.md)."""
    phi = setting.phi
    constants = [gs.Constant(f"{node}.threshold", np.asarray(theta, np.float32)),
                 gs.Constant(f"{node}.fire_level", np.asarray(theta * (1.0 - phi), np.float32))]
    if setting.neuron is Neuron.SIGNED:  # the membrane theta*phi + v is negative when the stored v is below -theta*phi
        constants += [gs.Constant(f"{node}.unfire_level", np.array(-theta * phi, np.float32)),
                      gs.Constant(f"{node}.tmax", np.array(tmax, np.float32))]
    return constants


def run(graph: gs.Graph, ctx: PassContext) -> PassReport:
    report = PassReport("relu_to_if")
    if ctx.calibration is None:
        raise CalibrationError("relu_to_if needs a calibration", "pass --calib FILE from `ann2snn calibrate`")
    options = ctx.options
    for node in [n for n in graph.nodes if is_relu_like(n) and n.name not in ctx.kept_float]:
        setting = options.setting(node.name)
        signed = setting.neuron is Neuron.SIGNED
        spec = SIGNED_IF_NEURON if signed else IF_NEURON
        tmax = options.tmax if options.tmax is not None else options.default_T if signed else None
        x, y = node.inputs[0], node.outputs[0]
        stats = ctx.calibration.stats(x.name, node.name)
        cap = clip_bounds(node)[1] if node.op == "Clip" else None
        theta, dead = layer_threshold(stats, setting, options.default_T, len(x.shape or ()), node.name, cap)
        neuron = spiking_node(spec, node.name, [x] + neuron_constants(node.name, theta, setting, tmax), y,
                              [y] * len(spec.state))
        replace_node(graph, node, neuron)
        report.converted.append(node.name)
        report.layers.append(layer_entry(node, x, spec.op_type, {"neuron": setting.neuron.value, "tmax": tmax},
                                         theta, setting, stats, cap, dead))
    return report


def layer_entry(node: gs.Node, x: gs.Tensor, op: str, kind: dict, theta: np.ndarray, setting: LayerSetting,
                stats: TensorStats, cap: float | None, dead: np.ndarray) -> dict:
    """The `ann2snn.layers` entry of a neuron made from a ReLU-like node (`kind`: what its neuron adds)."""
    return {"node": node.name, "op": op, "from": node.op, **kind,
            "threshold": float(theta) if theta.ndim == 0 else theta.reshape(-1).tolist(),
            "phi": setting.phi, "norm": str(setting.norm), "per_channel": setting.per_channel,
            "input": x.name, "calibrated_max": stats.maximum, "cap": cap,
            "dead": bool(np.all(dead))}


def claim(node: gs.Node, ins: list, is_dynamic: list[bool]) -> Verdict | None:
    return (Conversion.IF_NEURON, "") if is_relu_like(node) else None


PASS = Pass("relu_to_if", run, spiking=True, doc="ReLU / Clip(0, a) -> IF neuron (or signed IF neuron).",
            converts=frozenset({Conversion.IF_NEURON}), observes=inputs_of(Conversion.IF_NEURON), claims=claim)

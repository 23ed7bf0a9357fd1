"""The spiking operators of domain ai.ann2snn: their state variables and their ONNX function bodies.

Each operator computes ONE time step. Its state is passed explicitly: the node's trailing inputs are the
state at the start of the step, its trailing outputs the state after it, in the order of `state`. Every
state variable starts at zero, so a runtime needs no initial values.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

DOMAIN = "ai.ann2snn"
DOMAIN_VERSION = 1


@dataclass(frozen=True)
class OperatorSpec:
    op_type: str
    inputs: tuple[str, ...]  # non-state inputs, in order
    state: tuple[str, ...]  # state variable names
    attributes: tuple[str, ...]
    doc: str

    def function(self, opset: int) -> onnx.FunctionProto:
        """The ONNX function body, written in the model's default-domain opset."""
        return _BODIES[self.op_type](self, opset)


IF_NEURON = OperatorSpec(
    "IFNeuron",
    inputs=("X", "threshold", "fire_level"),
    state=("v",),
    attributes=(),
    doc=(
        "Integrate-and-fire neuron with soft reset, scaled output. State v = membrane - v_init "
        "(v_init = phi*threshold). m = v + X; spike = m >= fire_level (= threshold - v_init); "
        "Y = spike * threshold; v_next = m - Y."
    ),
)

SIGNED_IF_NEURON = OperatorSpec(
    "SignedIFNeuron",
    inputs=("X", "threshold", "fire_level", "unfire_level", "tmax"),
    state=("v", "count"),
    attributes=(),
    doc=(
        "Two-type (signed) integrate-and-fire neuron with soft reset, scaled output (seed 000's "
        "TwotypeSpikeIFNode, ST-BIF). State v = membrane - v_init (v_init = phi*threshold), count = net "
        "spikes so far. m = v + X; s = +1 if m >= fire_level (= threshold - v_init) and count < tmax, -1 if "
        "m < unfire_level (= -v_init, the membrane is negative) and count > 0, else 0; Y = s * threshold; "
        "v_next = m - Y; count_next = count + s."
    ),
)

MAXPOOL_NEURON = OperatorSpec(
    "MaxPoolNeuron",
    inputs=("X",),
    state=("acc", "pooled"),
    attributes=("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad"),
    doc=(
        "Max pooling of accumulated input: acc_next = acc + X; M = MaxPool(acc_next); Y = M - pooled; "
        "pooled_next = M. The outputs sum to MaxPool of the summed input, so their running mean is "
        "MaxPool of the input's running mean."
    ),
)

RUNNING_MEAN = OperatorSpec(
    "RunningMean",
    inputs=("X",),
    state=("sum", "step"),
    attributes=(),
    doc=(
        "The running mean of the input: the estimate of the ANN value that a float operator reads under "
        "--nonlinear exact. sum_next = sum + X; step_next = step + 1 (shape [1]); Y = sum_next / step_next."
    ),
)

RATE_CORRECT = OperatorSpec(
    "RateCorrect",
    inputs=("X",),
    state=("emitted", "step"),
    attributes=(),
    doc=(
        "Estimate-and-correct: X is f(running mean) at this step; emit what makes the running mean of the "
        "output equal X. step_next = step + 1; total = X * step_next; Y = total - emitted; emitted_next = total."
    ),
)


def _max_spec(op: str, reduce: bool) -> OperatorSpec:
    verb = "largest" if op == "Max" else "smallest"
    if reduce:
        return OperatorSpec(
            f"SpikeReduce{op}", inputs=("X",), state=("sum", "prev"), attributes=("axes", "keepdims"),
            doc=(f"Spiking Reduce{op}: sum_next = sum + X; M = Reduce{op}(sum_next, axes, keepdims); Y = M - prev; "
                 f"prev_next = M. The outputs sum to the {verb} of the summed input, so their running mean is "
                 f"Reduce{op} of the input's running mean (a {op.lower()} of sums is t times the {op.lower()} of "
                 "means)."))
    return OperatorSpec(
        f"Spike{op}", inputs=("A", "B"), state=("sum_a", "sum_b", "prev"), attributes=(),
        doc=(f"Spiking elementwise {op} (broadcasting): sum_a_next = sum_a + A; sum_b_next = sum_b + B; "
             f"M = {op}(sum_a_next, sum_b_next); Y = M - prev; prev_next = M. The outputs sum to the {op.lower()} "
             f"of the summed inputs, so their running mean is the {op.lower()} of the inputs' running means."))


SPIKE_MAX, SPIKE_MIN = _max_spec("Max", False), _max_spec("Min", False)
SPIKE_REDUCE_MAX, SPIKE_REDUCE_MIN = _max_spec("Max", True), _max_spec("Min", True)

STEP_COUNT = OperatorSpec(
    "StepCount",
    inputs=("drive",),
    state=("count",),
    attributes=(),
    doc=(
        "The number of steps with drive so far (shape [1]): Y = count + drive; count_next = Y. Fed the file's "
        "snn.drive, it counts the input steps and stays put in drain steps: the spike budget of the signed "
        "neurons, so that a file run longer than its T keeps its meaning."
    ),
)


def _product_spec(op: str, how: str) -> OperatorSpec:
    return OperatorSpec(
        f"Spike{op}",
        inputs=("A", "B"),
        state=("sum_a", "sum_b", "emitted", "step"),
        attributes=(),
        doc=(
            f"Spiking product (TCSA) of two signals, {how}: with running sums sum_a, sum_b, the increment "
            f"delta = {op}(A, sum_b + B) + {op}(sum_a, B) = {op}(sum_a', sum_b') - {op}(sum_a, sum_b); "
            "step_next = step + 1; Y = (delta - emitted) / step_next; emitted_next = emitted + Y. The outputs "
            "up to step t sum to {op}(sum_a', sum_b') / t, so their running mean is the product of the inputs' "
            "running means."
        ).replace("{op}", op),
    )


SPIKE_MATMUL = _product_spec("MatMul", "a matrix product")
SPIKE_MUL = _product_spec("Mul", "elementwise")

OPERATORS: dict[str, OperatorSpec] = {spec.op_type: spec for spec in (
    IF_NEURON, SIGNED_IF_NEURON, MAXPOOL_NEURON, RUNNING_MEAN, RATE_CORRECT, SPIKE_MATMUL, SPIKE_MUL, STEP_COUNT, SPIKE_MAX, SPIKE_MIN,
    SPIKE_REDUCE_MAX, SPIKE_REDUCE_MIN)}
# operators whose output divides by the step count: steps without charge (drain) would dilute them
TIME_NORMALISED = frozenset({"SpikeMatMul", "SpikeMul", "RunningMean", "RateCorrect"})
STEP_STATE = "step"  # the per-node step counter, shape [1]


def state_outputs(spec: OperatorSpec) -> tuple[str, ...]:
    return tuple(f"{s}_next" for s in spec.state)


def _attribute_ref(name: str, kind: int) -> onnx.AttributeProto:
    """A reference to the function's attribute of that name (onnx 1.17's helper.make_attribute_ref leaves
    ref_attr_name unset, so the body would read an empty value)."""
    return onnx.AttributeProto(name=name, ref_attr_name=name, type=kind)


def _at_least(a: str, b: str, out: str, opset: int) -> list[onnx.NodeProto]:
    """out = a >= b: GreaterOrEqual from opset 12, Not(Less) before it."""
    if opset >= 12:
        return [helper.make_node("GreaterOrEqual", [a, b], [out])]
    return [helper.make_node("Less", [a, b], [out + "_not"]), helper.make_node("Not", [out + "_not"], [out])]


def _if_neuron_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    nodes = [
        helper.make_node("Add", ["v", "X"], ["m"]),
        *_at_least("m", "fire_level", "fired", opset),
        helper.make_node("Cast", ["fired"], ["spike"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["spike", "threshold"], ["Y"]),
        helper.make_node("Sub", ["m", "Y"], ["v_next"]),
    ]
    return _function(spec, nodes, opset)


def _signed_if_neuron_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [
        helper.make_node("Add", ["v", "X"], ["m"]),
        *_at_least("m", "fire_level", "reached", opset),
        helper.make_node("Less", ["count", "tmax"], ["room"]),
        helper.make_node("And", ["reached", "room"], ["up"]),
        helper.make_node("Less", ["m", "unfire_level"], ["negative"]),
        helper.make_node("Constant", [], ["zero"], value=zero),
        helper.make_node("Greater", ["count", "zero"], ["held"]),
        helper.make_node("And", ["negative", "held"], ["down"]),
        helper.make_node("Cast", ["up"], ["up_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["down"], ["down_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["up_f", "down_f"], ["spike"]),
        helper.make_node("Mul", ["spike", "threshold"], ["Y"]),
        helper.make_node("Sub", ["m", "Y"], ["v_next"]),
        helper.make_node("Add", ["count", "spike"], ["count_next"]),
    ]
    return _function(spec, nodes, opset)


def _maxpool_neuron_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    pool = helper.make_node("MaxPool", ["acc_next"], ["M"])
    for name in spec.attributes:
        kind = onnx.AttributeProto.STRING if name == "auto_pad" else (
            onnx.AttributeProto.INT if name == "ceil_mode" else onnx.AttributeProto.INTS)
        pool.attribute.append(_attribute_ref(name, kind))
    nodes = [
        helper.make_node("Add", ["acc", "X"], ["acc_next"]),
        pool,
        helper.make_node("Sub", ["M", "pooled"], ["Y"]),
        helper.make_node("Identity", ["M"], ["pooled_next"]),
    ]
    return _function(spec, nodes, opset)


def _one() -> onnx.NodeProto:
    return helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))


def _running_mean_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    nodes = [
        helper.make_node("Add", ["sum", "X"], ["sum_next"]),
        _one(),
        helper.make_node("Add", ["step", "one"], ["step_next"]),
        helper.make_node("Div", ["sum_next", "step_next"], ["Y"]),
    ]
    return _function(spec, nodes, opset)


def _rate_correct_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    nodes = [
        _one(),
        helper.make_node("Add", ["step", "one"], ["step_next"]),
        helper.make_node("Mul", ["X", "step_next"], ["emitted_next"]),
        helper.make_node("Sub", ["emitted_next", "emitted"], ["Y"]),
    ]
    return _function(spec, nodes, opset)


def _product_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    op = spec.op_type.removeprefix("Spike")
    nodes = [
        helper.make_node("Add", ["sum_a", "A"], ["sum_a_next"]),
        helper.make_node("Add", ["sum_b", "B"], ["sum_b_next"]),
        helper.make_node(op, ["A", "sum_b_next"], ["new_a"]),
        helper.make_node(op, ["sum_a", "B"], ["new_b"]),
        helper.make_node("Add", ["new_a", "new_b"], ["delta"]),
        _one(),
        helper.make_node("Add", ["step", "one"], ["step_next"]),
        helper.make_node("Sub", ["delta", "emitted"], ["excess"]),
        helper.make_node("Div", ["excess", "step_next"], ["Y"]),
        helper.make_node("Add", ["emitted", "Y"], ["emitted_next"]),
    ]
    return _function(spec, nodes, opset)


def _step_count_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    nodes = [
        helper.make_node("Add", ["count", "drive"], ["Y"]),
        helper.make_node("Identity", ["Y"], ["count_next"]),
    ]
    return _function(spec, nodes, opset)


def _max_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    op = spec.op_type.removeprefix("Spike")
    nodes = [helper.make_node("Add", ["sum_a", "A"], ["sum_a_next"]),
             helper.make_node("Add", ["sum_b", "B"], ["sum_b_next"]),
             helper.make_node(op, ["sum_a_next", "sum_b_next"], ["M"]),
             helper.make_node("Sub", ["M", "prev"], ["Y"]),
             helper.make_node("Identity", ["M"], ["prev_next"])]
    return _function(spec, nodes, opset)


def _reduce_max_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    op = spec.op_type.removeprefix("Spike")
    keepdims = _attribute_ref("keepdims", onnx.AttributeProto.INT)
    if opset >= 18:  # axes became an input
        axes = onnx.AttributeProto(name="value_ints", ref_attr_name="axes", type=onnx.AttributeProto.INTS)
        constant = helper.make_node("Constant", [], ["axes_t"])
        constant.attribute.append(axes)
        reduce = [constant, helper.make_node(op, ["sum_next", "axes_t"], ["M"])]
    else:
        reduce = [helper.make_node(op, ["sum_next"], ["M"])]
        reduce[0].attribute.append(_attribute_ref("axes", onnx.AttributeProto.INTS))
    reduce[-1].attribute.append(keepdims)
    nodes = [helper.make_node("Add", ["sum", "X"], ["sum_next"]), *reduce,
             helper.make_node("Sub", ["M", "prev"], ["Y"]),
             helper.make_node("Identity", ["M"], ["prev_next"])]
    return _function(spec, nodes, opset)


def _function(spec: OperatorSpec, nodes: list[onnx.NodeProto], opset: int) -> onnx.FunctionProto:
    return helper.make_function(
        DOMAIN, spec.op_type,
        inputs=list(spec.inputs) + list(spec.state),
        outputs=["Y"] + list(state_outputs(spec)),
        nodes=nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(spec.attributes),
        doc_string=spec.doc,
    )


_BODIES = {"IFNeuron": _if_neuron_body, "SignedIFNeuron": _signed_if_neuron_body,
           "MaxPoolNeuron": _maxpool_neuron_body, "RunningMean": _running_mean_body,
           "RateCorrect": _rate_correct_body, "SpikeMatMul": _product_body, "SpikeMul": _product_body,
           "StepCount": _step_count_body, "SpikeMax": _max_body, "SpikeMin": _max_body,
           "SpikeReduceMax": _reduce_max_body, "SpikeReduceMin": _reduce_max_body}

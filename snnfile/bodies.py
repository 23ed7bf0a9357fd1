"""The ONNX function bodies of the contract's spiking operators (snnfile/operators.py), written in the model's
default-domain opset: what an exported file ships so that a stock runtime steps it."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from snnfile import DOMAIN
from snnfile.operators import OperatorSpec



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


def _ugo_count(s: str, t: str, out: str, opset: int) -> list[onnx.NodeProto]:
    """out = Clip(Floor((s + (lift - t * knots)) / threshold), 0, t), lift = threshold - fire_level: the
    offsets on the N knots first, so that three operators, not five, read the [.., N] tensors before the clip."""
    nodes = [
        helper.make_node("Mul", [t, "knots"], [out + "_charge"]),
        helper.make_node("Sub", ["lift", out + "_charge"], [out + "_offset"]),
        helper.make_node("Add", [s, out + "_offset"], [out + "_membrane"]),
        helper.make_node("Div", [out + "_membrane", "threshold"], [out + "_level"]),
        helper.make_node("Floor", [out + "_level"], [out + "_floor"]),
    ]
    if opset < 11:  # Clip's bounds are attributes there
        return nodes + [helper.make_node("Max", [out + "_floor", "zero"], [out + "_held"]),
                        helper.make_node("Min", [out + "_held", t], [out])]
    return nodes + [helper.make_node("Reshape", [t, "scalar"], [out + "_bound"]),
                    helper.make_node("Clip", [out + "_floor", "zero", out + "_bound"], [out])]


def _ugo_hidden_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    scalar = helper.make_tensor("scalar", TensorProto.INT64, [0], [])
    nodes = [
        helper.make_node("Constant", [], ["zero"], value=zero),
        helper.make_node("Constant", [], ["scalar"], value=scalar),
        helper.make_node("Sub", ["threshold", "fire_level"], ["lift"]),
        helper.make_node("Add", ["sum", "X"], ["sum_next"]),
        *_ugo_count("sum_next", "steps", "count", opset),
        # sum + 0 * X is sum: it makes the counts before wait for X, so that a runtime does not compute (and
        # hold) every subnet's [.., N] counts before at the start of the step
        helper.make_node("Mul", ["X", "zero"], ["no_charge"]),
        helper.make_node("Add", ["sum", "no_charge"], ["sum_before"]),
        *_ugo_count("sum_before", "step", "count_before", opset),
        helper.make_node("Sub", ["count", "count_before"], ["spikes"]),
        helper.make_node("Mul", ["spikes", "threshold"], ["Y"]),
        helper.make_node("Identity", ["steps"], ["step_next"]),
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
        helper.make_node(op, ["sum_a_next", "sum_b_next"], ["total"]),
        _one(),
        helper.make_node("Add", ["step", "one"], ["step_next"]),
        helper.make_node("Reciprocal", ["step_next"], ["inverse"]),  # one value: a Mul, not a Div, per element
        helper.make_node("Mul", ["total", "inverse"], ["emitted_next"]),
        helper.make_node("Sub", ["emitted_next", "emitted"], ["Y"]),
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


def _fs_neuron_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    nodes = [
        _one(),
        helper.make_node("Add", ["step", "one"], ["step_next"]),
        helper.make_node("Min", ["step", "last"], ["at"]),
        helper.make_node("Cast", ["at"], ["row"], to=TensorProto.INT64),
        helper.make_node("Gather", ["thresholds", "row"], ["threshold"], axis=0),
        helper.make_node("Gather", ["resets", "row"], ["reset"], axis=0),
        helper.make_node("Gather", ["weights", "row"], ["weight"], axis=0),
        helper.make_node("Add", ["v", "X"], ["m"]),
        *_at_least("m", "threshold", "fired", opset),
        helper.make_node("Cast", ["fired"], ["z"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["z", "weight"], ["Y"]),
        helper.make_node("Mul", ["z", "reset"], ["taken"]),
        helper.make_node("Sub", ["m", "taken"], ["v_next"]),
    ]
    return _function(spec, nodes, opset)


def _first_step_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    nodes = [
        helper.make_node("Constant", [], ["ones"], value=helper.make_tensor("ones", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("Sub", ["ones", "seen"], ["Y"]),
        helper.make_node("Identity", ["ones"], ["seen_next"]),
    ]
    return _function(spec, nodes, opset)


def _running_sum_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    nodes = [helper.make_node("Add", ["sum", "X"], ["Y"]), helper.make_node("Identity", ["Y"], ["sum_next"])]
    return _function(spec, nodes, opset)


def _release_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    nodes = [
        _one(),
        helper.make_node("Add", ["step", "one"], ["step_next"]),
        helper.make_node("Equal", ["step", "at"], ["now"]),
        helper.make_node("Cast", ["now"], ["gate"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["X", "gate"], ["Y"]),
    ]
    return _function(spec, nodes, opset)


def _function(spec: OperatorSpec, nodes: list[onnx.NodeProto], opset: int) -> onnx.FunctionProto:
    return helper.make_function(
        DOMAIN, spec.op_type,
        inputs=list(spec.inputs) + list(spec.state),
        outputs=["Y"] + list(spec.state_outputs),
        nodes=nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(spec.attributes),
        doc_string=spec.doc,
    )


BODIES = {"IFNeuron": _if_neuron_body, "SignedIFNeuron": _signed_if_neuron_body, "UGOHidden": _ugo_hidden_body,
           "MaxPoolNeuron": _maxpool_neuron_body, "RunningMean": _running_mean_body,
           "RateCorrect": _rate_correct_body, "SpikeMatMul": _product_body, "SpikeMul": _product_body,
           "StepCount": _step_count_body, "SpikeMax": _max_body, "SpikeMin": _max_body,
           "SpikeReduceMax": _reduce_max_body, "SpikeReduceMin": _reduce_max_body, "FSNeuron": _fs_neuron_body,
           "FirstStep": _first_step_body, "RunningSum": _running_sum_body, "Release": _release_body}


def function_body(spec: OperatorSpec, opset: int) -> onnx.FunctionProto:
    """The operator's ONNX function, written in the model's default-domain opset."""
    return BODIES[spec.op_type](spec, opset)

"""The spiking operators of the contract's domain: ONE table of what each computes and its traits.

Each operator computes ONE time step. Its state is passed explicitly: the node's trailing inputs are the
state at the start of the step, its trailing outputs the state after it, in the order of `state`. Every
state variable starts at zero, so a runtime needs no initial values. The compiler ships each as a model-local
ONNX function (snnfile/bodies.py: its body) and the simulator runs each natively (sim/neurons.py: its
kernel); tests/snnfile/test_contract.py fails when an operator lacks either.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Energy(enum.Enum):
    SPIKES = "spikes"  # its output is events: a layer reading it costs an accumulate per spike
    TRANSPARENT = "transparent"  # passes on the events of its input (max pooling of spikes)
    ANALOG = "analog"  # emits values, not events: a layer reading it costs dense multiply-accumulates
    CONTROL = "control"  # a counter read by neurons, no layer's input


@dataclass(frozen=True)
class OperatorSpec:
    op_type: str
    inputs: tuple[str, ...]  # non-state inputs, in order
    state: tuple[str, ...]  # state variable names
    attributes: tuple[str, ...]
    doc: str
    fires: bool  # emits spikes (of +-threshold): counted as spikes, and what a weighted layer reads as events
    time_normalised: bool  # divides by the step count: steps without charge (drain) would dilute it
    energy: Energy  # how the energy estimate reads its output
    nir: str | None  # why it has no NIR form (None: it exports)

    @property
    def state_outputs(self) -> tuple[str, ...]:
        return tuple(f"{s}_next" for s in self.state)

    @property
    def drainable(self) -> bool:
        return not self.time_normalised


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
    fires=True, time_normalised=False, energy=Energy.SPIKES,
    nir=None,
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
    fires=True, time_normalised=False, energy=Energy.SPIKES,
    nir="signed IF neuron (negative spikes, a spike budget): NIR's IF fires positive spikes only",
)

UGO_HIDDEN = OperatorSpec(
    "UGOHidden",
    inputs=("X", "threshold", "fire_level", "knots", "steps"),
    state=("sum", "step"),
    attributes=(),
    doc=(
        "The hidden layer of a UGO subnet: along a last axis of size N (X has size 1 there), N signed IF "
        "neurons j fed X - knots[j], with threshold[j], initial membrane threshold[j] - fire_level[j], soft "
        "reset and a net count in [0, t], t = steps (the steps with drive so far, shape [1]). They share their "
        "input, so their state is its sum: a neuron's net count after the input sums to s is "
        "n(s, t) = Clip(Floor((s + ((threshold - fire_level) - t * knots)) / threshold), 0, t), the count of a "
        "signed IF neuron that may fire several spikes in one step (a graded spike of n(s', t) - n(s, step) "
        "threshold units). sum_next = sum + X; Y = (n(sum_next, steps) - n(sum, step)) * threshold; "
        "step_next = steps. The outputs sum to n * threshold, whose mean over t steps is "
        "clip(mean X - knots, 0, threshold) to within threshold / t."
    ),
    fires=True, time_normalised=False, energy=Energy.SPIKES,
    nir="UGO hidden layer (signed, graded spikes): NIR's IF fires positive spikes only",
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
    fires=False, time_normalised=False, energy=Energy.TRANSPARENT,
    nir='max pooling of the accumulated input: NIR has no such node (average pooling exports)',
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
    fires=False, time_normalised=True, energy=Energy.ANALOG,
    nir="float operator on running means (estimate-and-correct): NIR has no such node",
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
    fires=False, time_normalised=True, energy=Energy.ANALOG,
    nir="float operator on running means (estimate-and-correct): NIR has no such node",
)


def _max_spec(op: str, reduce: bool) -> OperatorSpec:
    verb = "largest" if op == "Max" else "smallest"
    if reduce:
        return OperatorSpec(
            f"SpikeReduce{op}", inputs=("X",), state=("sum", "prev"), attributes=("axes", "keepdims"),
            doc=(f"Spiking Reduce{op}: sum_next = sum + X; M = Reduce{op}(sum_next, axes, keepdims); Y = M - prev; "
                 f"prev_next = M. The outputs sum to the {verb} of the summed input, so their running mean is "
                 f"Reduce{op} of the input's running mean (a {op.lower()} of sums is t times the {op.lower()} of "
                 "means)."),
            fires=False, time_normalised=False, energy=Energy.ANALOG, nir=f"{op.lower()} of accumulated inputs: NIR has no such node")
    return OperatorSpec(
        f"Spike{op}", inputs=("A", "B"), state=("sum_a", "sum_b", "prev"), attributes=(),
        doc=(f"Spiking elementwise {op} (broadcasting): sum_a_next = sum_a + A; sum_b_next = sum_b + B; "
             f"M = {op}(sum_a_next, sum_b_next); Y = M - prev; prev_next = M. The outputs sum to the {op.lower()} "
             f"of the summed inputs, so their running mean is the {op.lower()} of the inputs' running means."),
        fires=False, time_normalised=False, energy=Energy.ANALOG, nir=f"{op.lower()} of accumulated inputs: NIR has no such node")


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
    fires=False, time_normalised=False, energy=Energy.CONTROL,
    nir="step counter (a signed neuron's spike budget): NIR has no such node",
)


def _product_spec(op: str, how: str) -> OperatorSpec:
    return OperatorSpec(
        f"Spike{op}",
        inputs=("A", "B"),
        state=("sum_a", "sum_b", "emitted", "step"),
        attributes=(),
        doc=(
            f"Spiking product (TCSA) of two signals, {how}: with running sums sum_a' = sum_a + A, "
            f"sum_b' = sum_b + B and step_next = step + 1, emitted_next = {op}(sum_a', sum_b') * (1 / step_next) and "
            "Y = emitted_next - emitted. The outputs up to step t sum to {op}(sum_a', sum_b') / t, so their "
            "running mean is the product of the inputs' running means."
        ).replace("{op}", op),
        fires=False, time_normalised=True, energy=Energy.ANALOG,
        nir="spiking product of two signals (TCSA): NIR has no product node",
    )


SPIKE_MATMUL = _product_spec("MatMul", "a matrix product")
SPIKE_MUL = _product_spec("Mul", "elementwise")

FS_SILENT_THRESHOLD = 3.4028234663852886e38  # float32's largest: an FSNeuron table row at which it does not fire

FS_NEURON = OperatorSpec(
    "FSNeuron",
    inputs=("X", "thresholds", "resets", "weights", "last"),
    state=("v", "step"),
    attributes=(),
    doc=(
        "Few-spikes neuron (seed 003, Stoeckl & Maass 2021) on the file's step clock. The tables thresholds, "
        "resets and weights hold one row per step (a row may broadcast per channel); row i is read at step i "
        "(0-based) and the last row, index `last` (shape [1]), from then on. Rows outside the neuron's K firing "
        "steps hold the largest float32 threshold: there it only integrates. i = Min(step, last); "
        "m = v + X; z = m >= thresholds[i]; Y = z * weights[i]; v_next = m - z * resets[i]; "
        "step_next = step + 1 (shape [1])."
    ),
    fires=True, time_normalised=False, energy=Energy.SPIKES,
    nir="few-spikes neuron (time-varying threshold, reset and output weight): NIR has no such node",
)

FIRST_STEP = OperatorSpec(
    "FirstStep",
    inputs=(),
    state=("seen",),
    attributes=(),
    doc=(
        "1 at the first step, 0 after it (shape [1]): Y = 1 - seen; seen_next = 1. The gate of an FS file's "
        "data inputs and constant terms: the input and the biases enter once, as the sum decoding needs."
    ),
    fires=False, time_normalised=False, energy=Energy.CONTROL,
    nir="step clock of a few-spikes file: NIR has no such node",
)

RUNNING_SUM = OperatorSpec(
    "RunningSum",
    inputs=("X",),
    state=("sum",),
    attributes=(),
    doc=(
        "The sum of the input so far: the value a float operator reads in a file decoded by `sum` (FS coding). "
        "Y = sum + X; sum_next = Y."
    ),
    fires=False, time_normalised=False, energy=Energy.ANALOG,
    nir="float operator on running sums: NIR has no such node",
)

RELEASE = OperatorSpec(
    "Release",
    inputs=("X", "at"),
    state=("step",),
    attributes=(),
    doc=(
        "X at step `at` (0-based, shape [1]), 0 at every other step: Y = X * (step == at); step_next = step + 1. "
        "After a float operator on running sums (RunningSum) it emits f(sums) once, at the step its inputs are "
        "final, so the outputs sum to f of the summed inputs."
    ),
    fires=False, time_normalised=False, energy=Energy.ANALOG,
    nir="float operator on running sums: NIR has no such node",
)

OPERATORS: dict[str, OperatorSpec] = {spec.op_type: spec for spec in (
    IF_NEURON, SIGNED_IF_NEURON, UGO_HIDDEN, MAXPOOL_NEURON, RUNNING_MEAN, RATE_CORRECT, SPIKE_MATMUL, SPIKE_MUL, STEP_COUNT, SPIKE_MAX,
    SPIKE_MIN, SPIKE_REDUCE_MAX, SPIKE_REDUCE_MIN, FS_NEURON, FIRST_STEP, RUNNING_SUM, RELEASE)}
TIME_NORMALISED = frozenset(op for op, spec in OPERATORS.items() if spec.time_normalised)
FIRING = frozenset(op for op, spec in OPERATORS.items() if spec.fires)
NON_FIRING = frozenset(OPERATORS) - FIRING

"""UGOHidden, the hidden layer of a UGO subnet: its state is the sum of its shared input, not N membranes.
Checked against the signed IF neurons it stands for, against its closed form, and across the two engines
(the NumPy kernel and onnxruntime stepping the ONNX function body)."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from snnfile import DOMAIN
from snnfile.bodies import function_body
from snnfile.operators import UGO_HIDDEN
from sim.neurons import signed_if_neuron, ugo_hidden

PHI = 0.5


def _kernel(x: np.ndarray, threshold, knots, steps=None):
    """x: [T, B, k, 1]; one neuron per knot along the last axis."""
    T = len(x)
    threshold = np.asarray(threshold, np.float32)
    steps = np.arange(1, T + 1, dtype=np.float32).reshape(T, 1) if steps is None else steps
    return ugo_hidden([x, threshold, threshold * np.float32(1 - PHI), np.asarray(knots, np.float32), steps], {}, T)


def test_equals_signed_if_neurons_when_each_step_moves_the_membrane_by_at_most_a_threshold():
    """With |x - k_j| <= theta_j at every step a signed IF neuron fires at most one spike a step and its count
    is the closed form, so the two agree spike for spike. Dyadic inputs and thresholds: float32 is exact."""
    rng = np.random.default_rng(3)
    T, theta = 48, np.array([0.5, 1.0, 2.0], np.float32)
    x = (rng.integers(-16, 17, size=(T, 4, 5, 1)) / 32.0).astype(np.float32)  # in [-0.5, 0.5]
    out, events = _kernel(x, theta, np.zeros(3))
    z = np.broadcast_to(x, (T, 4, 5, 3)).copy()
    want, _ = signed_if_neuron([z, theta, theta * (1 - PHI), -theta * PHI, np.array(2.0 ** 24, np.float32)], {}, T)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(events, np.count_nonzero(want, axis=0))


def test_rate_follows_the_clipped_mean_whatever_the_size_of_the_input_steps():
    """4 steps of 3, then 4 of -3, k = 0, theta = 1: the mean input is 0 at step 8. A signed IF neuron that
    fires one spike a step stores the charge it could not fire and still holds 4 spikes at step 8 (rate 0.5);
    the closed form's rate is within theta / (2t) of clip(mean, 0, theta) at every step."""
    T = 8
    x = np.zeros((T, 1, 1, 1), np.float32)
    x[:4], x[4:] = 3.0, -3.0
    out, _ = _kernel(x, [1.0], [0.0])
    steps = np.arange(1, T + 1)
    rate = np.cumsum(out[:, 0, 0, 0]) / steps
    want = np.clip(np.cumsum(x[:, 0, 0, 0]) / steps, 0, 1)
    assert np.all(np.abs(rate - want) <= 1 / (2 * steps) + 1e-7)
    assert rate[-1] == 0.0
    lagging, _ = signed_if_neuron([x, np.ones(1, np.float32), np.full(1, 0.5, np.float32),
                                   np.full(1, -0.5, np.float32), np.array(2.0 ** 24, np.float32)], {}, T)
    assert lagging[:, 0, 0, 0].sum() / T == 0.5  # what the closed form removes


def test_counts_stay_in_zero_to_t_and_stop_in_drain_steps():
    """Steps with drive 0 (the StepCount holds at 6): the offsets -k t stop charging, so a zero input leaves
    the counts where they are; a negative input takes spikes back, never below zero."""
    T = 10
    steps = np.minimum(np.arange(1, T + 1), 6).astype(np.float32).reshape(T, 1)
    x = np.zeros((T, 1, 1, 1), np.float32)
    x[:6] = 2.0
    x[8:] = -50.0
    out, _ = _kernel(x, [1.0, 1.0], [0.5, 3.0], steps)
    counts = np.cumsum(out[:, 0, 0], axis=0)
    np.testing.assert_array_equal(counts[:, 0], [1, 2, 3, 4, 5, 6, 6, 6, 0, 0])  # clip(2 - 0.5, 0, 1): one a step
    np.testing.assert_array_equal(counts[:, 1], 0)  # 2 < 3: never


def test_function_body_steps_like_the_kernel():
    """onnxruntime stepping the ONNX body with state fed back emits the kernel's floats, for inputs whose
    steps are far larger than the thresholds."""
    rng = np.random.default_rng(5)
    T, shape = 12, [2, 3, 1]
    theta = np.array([0.25, 0.5, 0.3, 1.0], np.float32)
    knots = np.array([-1.0, -0.75, -0.25, 0.05], np.float32)
    x = rng.normal(scale=2.0, size=(T, *shape)).astype(np.float32)
    want, _ = _kernel(x, theta, knots)
    names = list(UGO_HIDDEN.inputs) + list(UGO_HIDDEN.state)
    node = helper.make_node(UGO_HIDDEN.op_type, names, ["Y", "sum_next", "step_next"], domain=DOMAIN)
    const = {"threshold": theta, "fire_level": theta * np.float32(1 - PHI), "knots": knots}
    graph = helper.make_graph(
        [node], "ugo_hidden",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in
         (("X", shape), ("steps", [1]), ("sum", shape), ("step", [1]))],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in ("Y", "sum_next", "step_next")],
        [onnx.numpy_helper.from_array(v, k) for k, v in const.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
                              functions=[function_body(UGO_HIDDEN, 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    state = {"sum": np.zeros(shape, np.float32), "step": np.zeros(1, np.float32)}
    for t in range(T):
        y, state["sum"], state["step"] = session.run(
            None, {"X": x[t], "steps": np.array([t + 1], np.float32), **state})
        np.testing.assert_array_equal(y, want[t])

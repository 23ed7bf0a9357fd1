"""maxpool_to_neuron: MaxPool -> the MaxPool neuron, whose outputs sum to MaxPool of the summed input.

Fed the same input at every step, its decoded output is MaxPool of the input exactly at every t (a max of
sums is t times the max of the means); behind IF neurons it converges to the ANN's as T grows. Stepped by the
public contract alone."""
import numpy as np

from builders import ModelBuilder
from conftest import run_ort
from rewrites.convert import import_graph
from rewrites.passes import PassContext, maxpool_to_neuron, run_passes
from spiking_helpers import convert_with_data, step_by_contract


def test_on_the_presented_input_the_neuron_is_maxpool_at_every_step(tmp_path, rng):
    b = ModelBuilder(7)
    model = b.build({"input": [2, 6, 6]}, [b.node("MaxPool", ["input"], kernel_shape=[3, 3], strides=[2, 2],
                                                  pads=[1, 1, 1, 1])])
    x = rng.normal(0, 1, (4, 2, 6, 6)).astype(np.float32)
    snn, result = convert_with_data(model, x, tmp_path)
    assert result.ops_after.get("MaxPoolNeuron") == 1 and "MaxPool" not in result.ops_after
    ann = run_ort(model, {"input": x})[0]
    for T in (1, 3, 8):
        np.testing.assert_allclose(step_by_contract(snn, {"input": x}, T), ann, rtol=0, atol=1e-5)


def test_behind_if_neurons_it_converges_to_the_ann(tmp_path, rng):
    b = ModelBuilder(8)
    y = b.node("MaxPool", [b.node("Relu", [b.conv("input", 1, 4)])], kernel_shape=[2, 2], strides=[2, 2])
    model = b.build({"input": [1, 8, 8]}, [y])
    x = rng.uniform(0, 1, (16, 1, 8, 8)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path)
    ann = run_ort(model, {"input": x})[0]
    errors = [np.abs(step_by_contract(snn, {"input": x}, T) - ann).mean() / np.abs(ann).mean() for T in (4, 64)]
    # IF rates quantise to threshold / T (phi = 1/2 halves it); the max of rates is at most that far off
    assert errors[1] < errors[0] / 4 and errors[1] < 0.02, errors


def test_a_maxpool_with_indices_is_left_alone():
    b = ModelBuilder(9)
    values, _ = b.node("MaxPool", ["input"], n_out=2, kernel_shape=[2, 2], strides=[2, 2])
    graph = import_graph(b.build({"input": [1, 4, 4]}, [values]))
    graph.nodes[0].outputs[1].name = "indices"  # read by nobody, but declared
    report, = run_passes(graph, (maxpool_to_neuron.PASS,), PassContext())
    assert [n.op for n in graph.nodes] == ["MaxPool"]
    assert [why for _, why in report.skipped] == ["MaxPool with an Indices output"]

"""The onnxruntime engine's two ways of running a window: the step graph wrapped into ONNX Loops (the default,
sim/ort_loop.py) and the file stepped from Python (`loop=False`). Same file, same arithmetic, so the per-step
outputs, spike counts, observed sums and activity must agree to float rounding (1e-5), with silent steps,
drain steps, signed neurons and the spiking products of a transformer."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bert_builder import bert_input, build_bert
from builders import ModelBuilder, resnet_model, small_cnn
from rewrites.calibration.collect import calibrate
from rewrites.config import ConvertOptions, Nonlinear
from rewrites.convert import convert_model
from ground.errors import SpikingModelError
from ground.save import save_model
from sim.model import load_spiking, spiking_from_proto
from sim.ort import OrtEngine
from sim.ort_loop import loop_model
from spiking_helpers import convert_with_data


def _same(looped, stepped, steps):
    assert looped.outputs.keys() == stepped.outputs.keys()
    for name in stepped.outputs:
        assert looped.outputs[name].shape == stepped.outputs[name].shape
        np.testing.assert_allclose(looped.outputs[name], stepped.outputs[name], atol=1e-5)
    assert looped.spikes.keys() == stepped.spikes.keys()
    for name, layer in stepped.spikes.items():
        assert (looped.spikes[name].neurons, looped.spikes[name].spikes, looped.spikes[name].silent,
                looped.spikes[name].saturated) == (layer.neurons, layer.spikes, layer.silent, layer.saturated), name
    assert looped.sums.keys() == stepped.sums.keys()
    for name in stepped.sums:
        np.testing.assert_allclose(looped.sums[name], stepped.sums[name], atol=1e-5)
    if stepped.active is None:
        assert looped.active is None
    else:
        assert looped.active.shape == (steps, len(next(iter(stepped.outputs.values()))[0]))
        np.testing.assert_array_equal(looped.active, stepped.active)


def _both(path, feeds, T, extra_t=0, observe=0, drain=False):
    model = load_spiking(path)
    looped_engine = OrtEngine(model)
    assert looped_engine.loop, looped_engine.loop_reason
    looped = looped_engine.run(feeds, T, extra_t, observe, drain)
    stepped = OrtEngine(model, loop=False).run(feeds, T, extra_t, observe, drain)
    _same(looped, stepped, T + extra_t)
    return looped, stepped


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """small_cnn converted with IF neurons and with signed neurons; its data."""
    tmp = tmp_path_factory.mktemp("cnn")
    x = np.random.default_rng(1).uniform(0, 1, (12, 1, 12, 12)).astype(np.float32)
    if_path, _ = convert_with_data(small_cnn(), x, tmp, name="if", T=8)
    signed_path, _ = convert_with_data(small_cnn(), x, tmp, name="signed", neuron="signed", T=8)
    return {"if": if_path, "signed": signed_path, "x": x}


def _body_ops(model) -> list[str]:
    proto, _ = loop_model(model, OrtEngine(model).firing, extra=False, observe=False)
    return [n.op_type for n in next(n for n in proto.graph.node if n.op_type == "Loop").attribute[0].g.node]


@pytest.mark.parametrize("neuron", ["if", "signed"])
def test_loop_equals_stepping_on_a_cnn(cnn, neuron):
    looped, _ = _both(cnn[neuron], {"input": cnn["x"]}, 8)
    assert sum(layer.spikes for layer in looped.spikes.values()) > 0
    ops = _body_ops(load_spiking(cnn[neuron]))
    assert "IFNeuron" not in ops and "SignedIFNeuron" not in ops  # expanded, their spike tensors counted
    assert ops.count("Xor") == (4 if neuron == "signed" else 0)  # a signed spike: up xor down


def test_a_threshold_with_a_zero_counts_the_output(cnn, tmp_path):
    """Where a threshold is 0 the neuron's spike tensor can be 1 while its output is 0: that layer keeps its
    function call and its output is counted (y != 0), as the stepping engine counts it."""
    proto = onnx.load(cnn["if"])
    first = next(n for n in proto.graph.node if n.op_type == "IFNeuron")
    threshold = next(t for t in proto.graph.initializer if t.name == first.input[1])
    value = np.broadcast_to(numpy_helper.to_array(threshold), (8, 1, 1)).copy()
    value[3] = 0
    threshold.CopyFrom(numpy_helper.from_array(value, threshold.name))
    onnx.save(proto, tmp_path / "zero.onnx")
    model = load_spiking(tmp_path / "zero.onnx")
    assert _body_ops(model).count("IFNeuron") == 1
    _both(tmp_path / "zero.onnx", {"input": cnn["x"]}, 8, 2, observe=10)


@pytest.mark.parametrize("neuron", ["if", "signed"])
@pytest.mark.parametrize("observe", [0, 5, 10, 14])  # none, inside the input steps, across, all
def test_loop_equals_stepping_with_silent_steps_and_observe(cnn, neuron, observe):
    _both(cnn[neuron], {"input": cnn["x"]}, 8, 6, observe)


@pytest.mark.parametrize("neuron", ["if", "signed"])
def test_loop_equals_stepping_with_drain(cnn, neuron):
    drained, _ = _both(cnn[neuron], {"input": cnn["x"]}, 8, 6, observe=14, drain=True)
    plain, _ = _both(cnn[neuron], {"input": cnn["x"]}, 8, 6, observe=14)
    name = next(iter(plain.outputs))
    np.testing.assert_allclose(drained.outputs[name][:8], plain.outputs[name][:8], atol=1e-5)
    assert np.abs(drained.outputs[name][8:] - plain.outputs[name][8:]).max() > 1e-3  # the biases left out


def test_one_engine_runs_windows_of_any_length(cnn):
    """T, extra_t and observe are inputs of the Loop model: one session per kind of window."""
    model = load_spiking(cnn["if"])
    looped, stepped = OrtEngine(model), OrtEngine(model, loop=False)
    for T, extra_t in [(1, 0), (3, 0), (2, 1), (5, 3)]:
        _same(looped.run({"input": cnn["x"][:3]}, T, extra_t), stepped.run({"input": cnn["x"][:3]}, T, extra_t),
              T + extra_t)
    assert set(looped.loops) == {(False, False, False, True), (True, False, False, True)}


def test_windows_longer_than_255_steps_count_in_float(cnn):
    """Spike counts are uint8 up to 255 steps, float32 beyond: at 4x the calibrated input some neurons fire
    at every one of 300 steps (counted 300, not 300 - 256)."""
    model = load_spiking(cnn["if"])
    looped, _ = _both(cnn["if"], {"input": 4 * cnn["x"][:2]}, 300)
    assert max(layer.saturated for layer in looped.spikes.values()) > 0
    engine = OrtEngine(model)
    engine.run({"input": cnn["x"][:2]}, 255)
    engine.run({"input": cnn["x"][:2]}, 256)
    assert set(engine.loops) == {(False, False, False, True), (False, False, False, False)}


def test_the_input_only_prefix_runs_outside_the_loop(cnn):
    """Under direct coding the first conv sees the same input at every step: it is hoisted; the neurons and
    everything after the first one stay in the body, and the body holds its own weights. The IF neurons are
    expanded into their function bodies, and their 0/1 spike tensors are counted."""
    model = load_spiking(cnn["if"])
    engine = OrtEngine(model)
    proto, _ = loop_model(model, engine.firing, extra=False, observe=False)
    outer = [n.op_type for n in proto.graph.node]
    (loop,) = [n for n in proto.graph.node if n.op_type == "Loop"]
    body = loop.attribute[0].g
    assert outer.count("Conv") == 1 and "IFNeuron" not in outer
    ops = [n.op_type for n in body.node]
    assert "IFNeuron" not in ops and ops.count("GreaterOrEqual") == 4
    fired = {n.output[0] for n in body.node if n.op_type == "GreaterOrEqual"}
    cast = {n.output[0]: n.input[0] for n in body.node if n.op_type == "Cast"}
    counted = [n for n in body.node if n.op_type == "Add" and n.input[0].startswith("count.")]
    assert len(counted) == 4 and {cast[n.input[1]] for n in counted} == fired


def test_loop_equals_stepping_on_a_gemm_network_fed_straight_into_a_neuron(tmp_path):
    """No prefix: the data input is read by the body itself (Gemm then IF neuron), a second output."""
    b = ModelBuilder(2)
    h = b.node("Relu", [b.gemm("input", 6, 10)])
    model = b.build({"input": [6]}, [b.gemm(h, 10, 3), b.gemm(h, 10, 2)])
    x = np.random.default_rng(3).normal(0, 1, (20, 6)).astype(np.float32)
    path, _ = convert_with_data(model, x, tmp_path, T=16)
    _both(path, {"input": x}, 16, 4, observe=20, drain=True)


@pytest.mark.parametrize("nonlinear", [Nonlinear.EXACT, Nonlinear.UGO])
def test_loop_equals_stepping_on_a_transformer(tmp_path, nonlinear):
    """Spiking products (SpikeMatMul, SpikeMul), RunningMean / RateCorrect or UGOs (signed neurons on a new
    last axis), per-node step counters of shape [1]."""
    model = build_bert(layers=1, dim=16, heads=2, seq=4, form="fused", eps=1e-5)
    x = bert_input(model, 24)["input"]
    save_model(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x)
    result = convert_model(model, calibrate(tmp_path / "m.onnx", tmp_path / "d.npz"),
                           ConvertOptions(nonlinear=nonlinear))
    save_model(result.model, tmp_path / "s.onnx")
    _both(tmp_path / "s.onnx", {"input": x[:6]}, 12, 3, observe=15)


def test_a_broken_model_is_a_one_line_error(cnn, tmp_path):
    proto = onnx.load(cnn["if"])
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    weight = next(t for t in proto.graph.initializer if t.name == conv.input[1])
    bad = numpy_helper.from_array(np.ones([3] + list(weight.dims[1:]), np.float32), weight.name)
    weight.CopyFrom(bad)  # 3 output channels where 8 are read: load_spiking's shape inference would refuse it
    model = spiking_from_proto(proto, tmp_path / "broken.onnx")
    for loop in (True, False):
        with pytest.raises(SpikingModelError) as info:
            OrtEngine(model, loop=loop).run({"input": cnn["x"][:2]}, 4)
        assert "onnxruntime cannot" in info.value.message and "\n" not in info.value.message


def test_a_wrong_input_is_a_one_line_error(cnn):
    model = load_spiking(cnn["if"])
    for loop in (True, False):
        with pytest.raises(SpikingModelError, match="onnxruntime cannot step it") as info:
            OrtEngine(model, loop=loop).run({"input": cnn["x"][:2, :, :6]}, 4)
        assert "\n" not in info.value.message


def test_a_model_onnxruntime_cannot_loop_is_stepped(cnn, monkeypatch):
    """If the Loop model cannot be built or loaded, the engine steps the file and says why."""
    import sim.ort

    def refuse(*args, **kwargs):
        raise ValueError("no loop here")

    monkeypatch.setattr(sim.ort, "loop_model", refuse)
    model = load_spiking(cnn["if"])
    engine = OrtEngine(model)
    assert not engine.loop and "no loop here" in engine.loop_reason
    reference = OrtEngine(model, loop=False).run({"input": cnn["x"]}, 4)
    _same(engine.run({"input": cnn["x"]}, 4), reference, 4)


def test_loop_equals_stepping_where_onnxruntime_fuses_a_residual_add(tmp_path):
    """The body's state inputs carry their declared shapes, so that onnxruntime optimises the body as it does
    the file. With unknown shapes it fused this graph's projection Adds differently, and on bench_simulate's
    batch a spike moved by float rounding at step 16 (outputs 0.26 apart); on this batch the rounding happens
    to agree either way, hence the check of the declarations."""
    x = np.random.default_rng(5).uniform(0, 1, (48, 3, 32, 32)).astype(np.float32)
    path, _ = convert_with_data(resnet_model(), x, tmp_path, T=32)
    _both(path, {"input": x[:16]}, 32)
    model = load_spiking(path)
    proto, _ = loop_model(model, OrtEngine(model).firing, extra=False, observe=False)
    body = next(n for n in proto.graph.node if n.op_type == "Loop").attribute[0].g
    declared = {i.name: i for i in model.proto.graph.input}
    assert all(i == declared[i.name] for i in body.input if i.name.startswith("state."))


def test_the_report_says_when_the_loop_fell_back(cnn, monkeypatch, tmp_path):
    """simulate's report and JSON carry the reason the onnxruntime engine stepped the file instead."""
    import json

    import sim.ort
    from test_cli import invoke

    def refuse(*args, **kwargs):
        raise ValueError("no loop here")

    np.savez(tmp_path / "d.npz", input=cnn["x"])
    plain = json.loads(invoke("simulate", cnn["if"], "--data", tmp_path / "d.npz", "--T", 4, "--engine",
                              "onnxruntime", "--json", "-").stdout)
    assert plain["engine_note"] is None
    monkeypatch.setattr(sim.ort, "loop_model", refuse)
    result = invoke("simulate", cnn["if"], "--data", tmp_path / "d.npz", "--T", 4, "--engine", "onnxruntime",
                    "--json", tmp_path / "r.json")
    assert result.exit_code == 0 and "note: onnxruntime engine stepped the file" in result.stdout
    assert "no loop here" in json.loads((tmp_path / "r.json").read_text())["engine_note"]


def test_a_state_input_of_a_non_number_type_is_refused(tmp_path):
    """Found by the spiking fuzz run: a state input whose type was cleared (tests/fuzzing.py retype_input,
    case cnn_opset11/retype_input/11000243; 11000002 since the inputs end with snn.drive) passed shape
    inference and crashed the Loop builder. Both engines now refuse it with one of our errors."""
    import fuzzing
    data = fuzzing.write_data(tmp_path)
    seeds = fuzzing.spiking_seeds(tmp_path, data)
    case = fuzzing.Case("cnn_opset11", "retype_input", 11000002)
    outcome = fuzzing.run_spiking_case(case, tmp_path, data, seeds)
    assert not outcome.crash and "SpikingModelError" in outcome.error and "not a number type" in outcome.error


def test_a_model_with_large_weights_is_stepped(cnn, monkeypatch):
    """Each Loop body holds its own copy of the weights; above LOOP_WEIGHTS_LIMIT the engine steps the file
    (one copy) and says why."""
    import sim.ort
    monkeypatch.setattr(sim.ort, "LOOP_WEIGHTS_LIMIT", 1000)
    model = load_spiking(cnn["if"])
    engine = OrtEngine(model)
    assert not engine.loop and not engine.loops and "MiB of weights" in engine.loop_reason
    _same(engine.run({"input": cnn["x"]}, 4), OrtEngine(model, loop=False).run({"input": cnn["x"]}, 4), 4)

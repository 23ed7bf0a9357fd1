"""Few-spikes coding (convert --coding fs, rewrites/fs.py): the neuron against its closed form, its ONNX body
against its kernel, and whole networks against onnxruntime running the ANN.

Why the tolerances hold. A ReLU FS neuron with threshold theta sends round(x / q) q clipped to [0, theta],
q = theta / (2^K - 1): within q / 2 of x wherever x <= theta. With max-norm thresholds the calibration data are
never clipped, so each layer adds at most half a grid step, about 5e-4 of its range at K = 10, and the errors
of a handful of layers add up to about 1e-3 of the output (measured 1.3e-3 to 2.5e-3 on the architectures
below, 8.8e-3 on the two-input net whose test inputs exceed the calibrated maxima; 6.2e-3 on the
EfficientNet-style net, whose sigmoids are fitted neurons, tests/rewrites/test_fs_fit.py). We require below 1.5e-2
at K = 10; each extra bit halves the grid step, so from K = 5 to K = 10 the error must fall at least 4x where
no clipping enters (ideal 32x; measured 9x to 20x from K = 6). The products and max operators are exact on
running sums, so they add nothing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from builders import small_cnn
from conftest import run_ort
from rewrites.calibration.collect import calibrate
from rewrites.config import Coding, ConvertOptions, NormSpec
from rewrites.convert import convert_model
from rewrites.fs import FSTables, SILENT, neuron_inputs, relu_tables
from rewrites.passes.nonlinear_to_spiking import FS_FIT_K
from ground.save import save_model
from sim.engine import NumpyEngine
from sim.model import load_spiking
from sim.neurons import fs_neuron
from sim.ort import OrtEngine
from snnfile.bodies import function_body
from snnfile.operators import FS_NEURON
from test_architectures import ARCHS, samples
from test_cli import assert_bad_input, files, invoke, ok


@pytest.mark.parametrize("K, phi", [(10, 0.5), (4, 0.5), (6, 0.0)])
def test_relu_tables_quantise_to_the_grid(K, phi):
    """round (phi = 1/2) or floor (phi = 0) of x / q, clipped to [0, 2^K - 1] steps of q = theta / (2^K - 1)."""
    theta = 3.0
    q = theta / (2 ** K - 1)
    x = np.linspace(-1.0, 4.0, 20001)
    want = np.clip(np.floor(x / q + phi), 0, 2 ** K - 1) * q
    got = relu_tables(np.array(theta), K, phi).decode(x)
    off_edges = np.abs(x / q + phi - np.round(x / q + phi)) > 1e-6  # not on a rounding edge
    np.testing.assert_allclose(got[off_edges], want[off_edges], rtol=0, atol=1e-9)
    assert got.max() == pytest.approx(theta)


def _fs_body_model(tables, shape):
    inputs = neuron_inputs("n", tables, start=2)
    names = ["x", "thresholds", "resets", "weights", "last", "v", "step"]
    node = helper.make_node("FSNeuron", names, ["y", "v_next", "step_next"], domain="ai.ann2snn")
    inits = [onnx.numpy_helper.from_array(c.values, n) for c, n in zip(inputs, names[1:5])]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
                                            (("x", shape), ("v", shape), ("step", [1]))],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
                               (("y", shape), ("v_next", shape), ("step_next", [1]))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.ann2snn", 1)],
                              functions=[function_body(FS_NEURON, 17)])
    onnx.checker.check_model(model, full_check=True)
    return model, [c.values for c in inputs]


def test_fs_neuron_body_steps_like_the_kernel():
    """Stepped by onnxruntime with a different input at each of the first steps (per-channel tables, firing
    from step 3), the body emits the kernel's values bit for bit, fires only in its K steps, and sends what
    the tables make of the summed input."""
    shape = [2, 3, 4]
    tables = relu_tables(np.array([1.0, 2.0, 0.5]).reshape(3, 1), 5)
    model, constants = _fs_body_model(tables, shape)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    T = 10
    xs = rng.normal(size=[T] + shape).astype(np.float32)
    xs[3:] = 0.0  # the input is final when the neuron starts firing, as fs_schedule places it
    v, step = np.zeros(shape, np.float32), np.zeros([1], np.float32)
    stepped = []
    for x in xs:
        y, v, step = session.run(None, {"x": x, "v": v, "step": step})
        stepped.append(y)
    kernel, counts = fs_neuron([xs] + constants, {}, T)
    np.testing.assert_array_equal(np.stack(stepped), kernel)
    assert not kernel[:2].any() and not kernel[7:].any()
    assert counts.max() <= 5
    np.testing.assert_array_equal(counts, (kernel != 0).sum(0))
    # the input summed over steps 1..3 is what the neuron holds when it starts firing
    held = xs[:3].astype(np.float64).sum(0)
    np.testing.assert_allclose(kernel.sum(0), tables.decode(held), atol=1e-5)


def test_silent_rows_hold_the_largest_threshold():
    c = neuron_inputs("n", relu_tables(np.array(1.0), 3), start=4)
    thresholds = c[0].values
    assert thresholds.shape == (8,) and np.all(thresholds[:4] == SILENT) and thresholds[-1] == SILENT
    assert c[3].values.tolist() == [7.0]


def _convert_fs(model, folder, K=10, norm="max"):
    ann, data, snn = folder / "ann.onnx", folder / "calib.npz", folder / "ann.snn.onnx"
    save_model(model, ann)
    np.savez(data, **samples(model, 24, seed=0))
    calibration = calibrate(ann, data, batch_size=8)
    result = convert_model(model, calibration, ConvertOptions(NormSpec.parse(norm), 0.5, 8, coding=Coding.FS,
                                                              fs_K=K), ann, data)
    save_model(result.model, snn)
    return snn, result


def _decoded(snn, feeds, engine=NumpyEngine):
    model = load_spiking(snn)
    result = engine(model).run(feeds, 1, model.default_T - 1, drain=True)
    return result, result.outputs[model.outputs[0]].sum(0, dtype=np.float64)


def _relative(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_fs_architectures_match_the_ann(tmp_path, arch):
    model = arch.build(17)
    snn, result = _convert_fs(model, tmp_path)
    test = samples(model, 24, seed=1)
    want = run_ort(model, test)[0]
    numpy_run, got = _decoded(snn, test)
    ort_run, got_ort = _decoded(snn, test, OrtEngine)
    error = _relative(got, want)
    assert error < 1.5e-2, error
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.95
    np.testing.assert_allclose(got_ort, got, atol=1e-5 * np.abs(want).max())
    K = max(10, FS_FIT_K)  # ReLU neurons fire at most 10 times, fitted ones (the efficientnet's) FS_FIT_K
    for layer in numpy_run.spikes.values():
        assert layer.op == "FSNeuron" and layer.spikes <= K * layer.neurons * 24


@pytest.mark.parametrize("arch", ["resnet", "mobilenet_v2", "vgg_bn"])
def test_fs_error_halves_with_each_bit(tmp_path, arch):
    """Test inputs are the calibration inputs, so nothing is clipped and the grid step alone errs."""
    model = {a.name: a for a in ARCHS}[arch].build(13)
    x = samples(model, 24, seed=0)
    want = run_ort(model, x)[0]
    errors = []
    for K in (5, 10):
        folder = tmp_path / f"k{K}"
        folder.mkdir()
        snn, _ = _convert_fs(model, folder, K)
        errors.append(_relative(_decoded(snn, x)[1], want))
    assert errors[1] < errors[0] / 4, errors


def test_fs_file_steps_by_the_contract_alone(tmp_path):
    """A runtime that knows only the contract: zeros for state, .next fed back, default_T steps, the sum of the
    outputs (ann2snn.decoding = sum). No snn.drive: the file gates its own input."""
    model = small_cnn()
    snn, _ = _convert_fs(model, tmp_path)
    proto = onnx.load(snn)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (meta["ann2snn.coding"], meta["ann2snn.decoding"], meta["ann2snn.fs_K"]) == ("fs", "sum", "10")
    steps = int(meta["ann2snn.default_T"])
    x = samples(model, 24, seed=1)
    session = ort.InferenceSession(str(snn), providers=["CPUExecutionProvider"])
    assert "snn.drive" not in {i.name for i in session.get_inputs()}
    states = [i for i in session.get_inputs() if i.name.startswith("state.")]
    state = {s.name: np.zeros([d if isinstance(d, int) else 24 for d in s.shape], np.float32) for s in states}
    total = 0.0
    for _ in range(steps + 5):  # steps past default_T add nothing
        values = session.run(None, {**x, **state})
        total = total + values[0].astype(np.float64)
        state = {s.name: v for s, v in zip(states, values[1:])}
    np.testing.assert_allclose(total, _decoded(snn, x)[1], rtol=0, atol=1e-5)
    assert _relative(total, run_ort(model, x)[0]) < 1.5e-2


def test_fs_products_and_heads_are_exact_on_sums(tmp_path):
    """A squeeze-excite product, HardSwish (a clip neuron times its input) and a Softmax head: the only
    error left is the FS neurons' grid."""
    from test_architectures import Net
    b = Net(seed=3, opset=17)
    x = b.conv_bn_relu("x", 3, 8, act="none")
    x = b.node("HardSwish", [x])
    gate = b.node("HardSigmoid", [b.conv(b.node("Relu", [b.conv(b.node("GlobalAveragePool", [x]), 8, 4, k=1, pad=0)]),
                                         4, 8, k=1, pad=0)])
    x = b.node("Mul", [x, gate])
    logits = b.classifier(x, 8)
    model = b.build({"x": [3, 8, 8]}, [b.node("Softmax", [logits], axis=1)])
    snn, result = _convert_fs(model, tmp_path)
    ops = {n.op_type for n in onnx.load(snn).graph.node}
    assert {"FSNeuron", "RunningSum", "Release", "FirstStep"} <= ops and "SpikeMul" not in ops
    test = samples(model, 24, seed=0)
    want = run_ort(model, test)[0]
    got = _decoded(snn, test)[1]
    assert _relative(got, want) < 1.5e-2
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)  # the Softmax of the summed logits


def test_fs_convert_through_the_cli(tmp_path):
    model = small_cnn()
    ann, data, snn = tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "m.snn.onnx"
    onnx.save(model, ann)
    x = samples(model, 24, seed=0)
    np.savez(data, y=run_ort(model, x)[0].argmax(-1), **x)
    report = json.loads(ok(invoke("convert", ann, "--data", data, "--coding", "fs", "--K", 8, "-o", snn,
                                  "--json", "-")).stdout)
    assert report["coding"] == "fs" and report["K"] == 8
    steps = report["default_T"]
    starts = [layer["start"] for layer in report["layers"] if layer["op"] == "FSNeuron"]
    assert starts == sorted(starts) and steps == max(starts) + 8
    sim = json.loads(ok(invoke("simulate", snn, "--data", data, "--ann", ann, "--json", "-")).stdout)
    assert sim["coding"] == "fs" and sim["steps"][-1] == steps and sim["agreement"][-1] >= 0.95
    short = invoke("simulate", snn, "--data", data, "--T", steps - 3)
    assert short.exit_code == 0 and "need" in short.output


@pytest.mark.parametrize("flags, names", [(["--coding", "fs", "--T", "8"], ["--T", "--coding fs"]),
                                          (["--coding", "fs", "--neuron", "signed"], ["--neuron"]),
                                          (["--K", "8"], ["--K", "--coding fs"]),
                                          (["--coding", "fsx"], ["--coding"])])
def test_fs_flags_that_do_not_go_together(tmp_path, flags, names):
    model = small_cnn()
    ann, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(model, ann)
    np.savez(data, **samples(model, 4, seed=0))
    before = files(tmp_path)
    assert_bad_input(invoke("convert", ann, "--data", data, "-o", tmp_path / "o.onnx", *flags), before, tmp_path,
                     names=names)


def test_fs_tables_decode_is_the_kernel():
    """FSTables.decode, the closed form used in the fits, is what the kernel sends for a held input."""
    tables = FSTables(np.array([0.5, -0.25, 0.1]), np.array([0.6, 0.1, 0.2]), np.array([1.0, -2.0, 0.5]))
    x = (np.linspace(-2, 2, 101) + 0.0137).astype(np.float32)  # off the thresholds' edges: float32 = float64
    constants = [c.values for c in neuron_inputs("n", tables)]
    held = np.zeros((4, 1, len(x)), np.float32)
    held[0, 0] = x  # the input at the first step only
    out, _ = fs_neuron([held] + constants, {}, 4)
    np.testing.assert_allclose(out.sum(0)[0], tables.decode(x), atol=1e-6)


@pytest.mark.parametrize("name", ["paddle", "keras", "jax_cnn"])
def test_fs_on_other_producers_graphs(tmp_path, name):
    """paddle2onnx's Constant weights, tf2onnx's NHWC input and softmax head with its -inf max, jax's Max(x, 0),
    MaxPool and GlobalMaxPool (a spiking max of running sums, exact under the sum). K = 10 and max-norm
    thresholds as above; the calibration and test images differ, so a little clipping adds to the grid."""
    from test_producers import write
    ann, calib, test = write(tmp_path, name)
    snn = tmp_path / "m.snn.onnx"
    ok(invoke("convert", ann, "--data", calib, "--coding", "fs", "--K", 10, "-o", snn))
    x = dict(np.load(test))
    model = onnx.load(ann)
    want = run_ort(model, {model.graph.input[0].name: x["x"]})[0]
    got = _decoded(snn, {model.graph.input[0].name: x["x"]})[1]
    assert _relative(got, want) < 3e-2
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.95


def test_fs_gates_what_int_inputs_encode(tmp_path):
    """Token ids cannot be multiplied by the first-step gate; the float tensor they are encoded into (jax's
    one-hot by Equal and Cast) is gated instead, so the encoding enters once like a float input."""
    from test_producers import write
    ann, calib, test = write(tmp_path, "jax")
    snn = tmp_path / "m.snn.onnx"
    ok(invoke("convert", ann, "--data", calib, "--coding", "fs", "--K", 10, "-o", snn))
    ids = dict(np.load(test))["x"]
    model = onnx.load(ann)
    name = model.graph.input[0].name
    want = run_ort(model, {name: ids})[0]
    got = _decoded(snn, {name: ids})[1]
    assert _relative(got, want) < 3e-2
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.95


TORCH = Path(__file__).parents[2] / "fixtures" / "torch"


@pytest.mark.parametrize("model", ["efficientnet_dynamo_op18.onnx", "vit_dynamo_op21.onnx", "bert_classic_op17.onnx"])
def test_fs_on_torch_exports_without_relu(tmp_path, model):
    """SiLU and sigmoid gates, GELU, LayerNorm, attention and a BERT's token ids and mask, as torch's two
    exporters write them: every nonlinearity is a fitted FS neuron (mean error 0.4-0.7% of the function's
    range, tests/rewrites/test_fs_fit.py) or a product or softmax on running sums (exact), so the output errs
    by what the fits add up to over a few blocks: measured 0.68% to 7.3% relative (docs/fs.md), held to 10%
    and 14 of the 16 test samples' top-1."""
    data = "ids" if model.startswith("bert") else "image"
    snn = tmp_path / "m.snn.onnx"
    ok(invoke("convert", TORCH / model, "--data", TORCH / f"{data}.calib.npz", "--coding", "fs", "-o", snn))
    report = json.loads(ok(invoke("simulate", snn, "--data", TORCH / f"{data}.test.npz", "--ann", TORCH / model,
                                  "--json", "-")).stdout)
    assert report["relative_error"][-1] < 0.10 and report["agreement"][-1] >= 14 / 16, report["relative_error"]


def test_fs_per_channel_thresholds(tmp_path):
    model = small_cnn()
    ann, data, snn = tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "m.snn.onnx"
    onnx.save(model, ann)
    x = samples(model, 24, seed=0)
    np.savez(data, **x)
    ok(invoke("convert", ann, "--data", data, "--coding", "fs", "--K", 10, "--per-channel", "-o", snn))
    tables = [t for t in onnx.load(snn).graph.initializer if t.name.endswith(".thresholds")]
    assert tables and all(len(t.dims) == 4 and t.dims[1] == 8 for t in tables)
    assert _relative(_decoded(snn, x)[1], run_ort(model, x)[0]) < 1.5e-2


def test_numpy_engine_runs_only_the_active_steps_of_an_fs_file_exactly(tmp_path, monkeypatch):
    """The engine runs a folded op of an FS file on the steps its input is active (and one zero step);
    the outputs are those of running it on every step, bit for bit."""
    import sim.engine
    model = {a.name: a for a in ARCHS}["resnet"].build(17)
    snn, _ = _convert_fs(model, tmp_path)
    x = samples(model, 8, seed=1)
    sparse = _decoded(snn, x)[0].outputs
    monkeypatch.setattr(sim.engine, "SPARSE_BELOW", 0.0)
    dense = _decoded(snn, x)[0].outputs
    for name in dense:
        np.testing.assert_array_equal(sparse[name], dense[name])


def test_overlap_starts_each_layer_earlier_at_a_bounded_cost(tmp_path):
    """--overlap O starts a neuron O steps before its input is final. The input's last O spikes, each at most
    2^-(K - O) of the upstream range, then still arrive while it fires and reach its later spikes, so a layer
    errs by at most about 2^O grid steps more: at K = 10 and O = 3, 8/1023 of its range. Over the resnet's
    neuron layers the output error stays under 5e-2 (measured 1.4e-3 without overlap, 1.6e-3 with), O fewer steps per
    neuron layer after the first."""
    model = {a.name: a for a in ARCHS}["resnet"].build(17)
    test = samples(model, 24, seed=1)
    want = run_ort(model, test)[0]
    ann, data = tmp_path / "ann.onnx", tmp_path / "calib.npz"
    save_model(model, ann)
    np.savez(data, **samples(model, 24, seed=0))
    calibration = calibrate(ann, data, batch_size=8)
    steps, errors = [], []
    for overlap in (0, 3):
        result = convert_model(model, calibration, ConvertOptions(NormSpec.parse("max"), 0.5, 8, coding=Coding.FS,
                                                                  fs_K=10, fs_overlap=overlap), ann, data)
        snn = tmp_path / f"o{overlap}.snn.onnx"
        save_model(result.model, snn)
        steps.append(load_spiking(snn).default_T)
        errors.append(_relative(_decoded(snn, test)[1], want))
    layers = sum(1 for n in model.graph.node if n.op_type == "Relu")
    assert steps[1] < steps[0] and steps[0] - steps[1] <= 3 * (layers - 1), steps
    assert errors[1] < 5e-2, errors


def test_overlap_must_leave_a_step_of_the_window(tmp_path):
    model = small_cnn()
    ann, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(model, ann)
    np.savez(data, **samples(model, 4, seed=0))
    before = files(tmp_path)
    assert_bad_input(invoke("convert", ann, "--data", data, "--coding", "fs", "--K", 4, "--overlap", 4, "-o",
                            tmp_path / "o.onnx"), before, tmp_path, names=["--overlap"])
    assert_bad_input(invoke("convert", ann, "--data", data, "--overlap", 2, "-o", tmp_path / "o.onnx"), before,
                     tmp_path, names=["--overlap", "--coding fs"])


def test_fs_refuses_a_qcfs_network_naming_rate_coding(tmp_path):
    """Its clip-floor chains have no FS form: one error line that says what converts it, not a calibration
    error that asks to recalibrate."""
    model = Path(__file__).parents[3] / "examples" / "fmnist_qcfs_L4" / "model.onnx"
    data = Path(__file__).parents[3] / "examples" / "fmnist_cnn" / "calib.npz"
    before = files(tmp_path)
    assert_bad_input(invoke("convert", model, "--data", data, "--coding", "fs", "--limit", 8, "-o",
                            tmp_path / "q.snn.onnx"), before, tmp_path, names=["QCFS", "--coding fs"],
                     mentions=["rate coding"])

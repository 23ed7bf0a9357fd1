"""`ann2snn export-nir`: a LeNet-style net converted with --phi 0, written as NIR, read back with nir.read and
stepped by a small NumPy NIR stepper written here (subtract-reset IF, unit spikes), step by step against the
project's NumPy engine on the same spiking file; refusals name every node NIR cannot hold; without the nir
package the command stops before any work. Optional: sinabs (`sinabs.from_nir`) on the same graph."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from typer.testing import CliRunner

nir = pytest.importorskip("nir")

from ann2snn_cli.app import app  # noqa: E402
from builders import ModelBuilder, small_cnn  # noqa: E402
from sim.engine import NumpyEngine  # noqa: E402
from sim.model import load_spiking  # noqa: E402

runner = CliRunner(env={"NO_COLOR": "1", "FORCE_COLOR": None, "COLUMNS": "200"})
T = 16


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def bad_input(result) -> str:
    """Exit 2 and exactly one `error: ` line on stderr, no traceback; returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def lenet_like(seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    """input [N,1,12,12] -> Conv(4, pad 1)-Relu-AvgPool2 -> Conv(6)-Relu-AvgPool2 -> Flatten [N,24]
    -> MatMul+Add(16)-Relu -> Gemm(classes)"""
    b = ModelBuilder(seed)
    x = b.node("AveragePool", [b.node("Relu", [b.conv("input", 1, 4)])], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("AveragePool", [b.node("Relu", [b.conv(x, 4, 6, pad=0)])], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Flatten", [x], axis=1)
    w = b.const(b.rng.normal(0, np.sqrt(2 / 24), (24, 16)), "w")
    x = b.node("Relu", [b.node("Add", [b.node("MatMul", [x, w]), b.const(b.rng.normal(0, 0.1, 16), "b")])])
    return b.build({"input": [1, 12, 12]}, [b.gemm(x, 16, classes)])


def gap_net(seed: int = 0) -> onnx.ModelProto:
    """input [N,1,12,12] -> Conv(4, stride 2)-Relu -> Conv(6)-Relu -> GlobalAveragePool -> Mul 0.5 -> Flatten
    -> Gemm(5)"""
    b = ModelBuilder(seed)
    x = b.node("Relu", [b.conv("input", 1, 4, stride=2)])
    x = b.node("GlobalAveragePool", [b.node("Relu", [b.conv(x, 4, 6)])])
    x = b.node("Flatten", [b.node("Mul", [x, b.const(np.full([1, 6, 1, 1], 0.5), "half")])], axis=1)
    return b.build({"input": [1, 12, 12]}, [b.gemm(x, 6, 5)])


def sigmoid_net(seed: int = 0) -> onnx.ModelProto:
    """input [N,8] -> Gemm(8)-Sigmoid -> Gemm(4): the Sigmoid becomes a UGO subnet."""
    b = ModelBuilder(seed)
    return b.build({"input": [8]}, [b.gemm(b.node("Sigmoid", [b.gemm("input", 8, 8)]), 8, 4)])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nir")
    x = np.random.default_rng(0).random((24, 1, 12, 12)).astype(np.float32)
    np.savez(root / "data.npz", x=x)
    return root, x


def well_conditioned(graph, x: np.ndarray, tries: int = 8):
    """x, or the first of a few batches drawn like it, whose membranes all stay over 1e-6 (relative) from
    their thresholds in the reference stepper: closer, float32 and float64 rounding may move a spike, and the
    comparison could not tell that from a mapping error. Returns (x, reference outputs, margin)."""
    for seed in range(tries):
        batch = x if seed == 0 else np.random.default_rng(100 + seed).random(x.shape).astype(np.float32)
        reference, margin = step_nir(graph, batch, T)
        if margin > 1e-6:
            break
    return batch, reference, margin


def converted(root: Path, proto: onnx.ModelProto, name: str, *flags) -> Path:
    ann, snn = root / f"{name}.onnx", root / f"{name}.snn.onnx"
    onnx.save(proto, ann)
    x = np.random.default_rng(1).random([8] + [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]])
    np.savez(root / f"{name}.npz", x=x.astype(np.float32))
    ok(invoke("convert", ann, "--data", root / f"{name}.npz", "-o", snn, *flags))
    return snn


# ---------------------------------------------------------------- a reference NIR stepper (NumPy, float64)

def _pair(v) -> tuple[int, int]:
    v = np.atleast_1d(np.asarray(v)).astype(int)
    return int(v[0]), int(v[-1])


def _conv2d(x: np.ndarray, n) -> np.ndarray:
    w = np.asarray(n.weight, np.float64)
    (sh, sw), (ph, pw), (dh, dw) = _pair(n.stride), _pair(n.padding), _pair(n.dilation)
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    win = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    g, cin, cout = int(n.groups), w.shape[1], w.shape[0]
    parts = [np.einsum("bchwij,ocij->bohw", win[:, k * cin:(k + 1) * cin], w[k * cout // g:(k + 1) * cout // g])
             for k in range(g)]
    return np.concatenate(parts, axis=1) + np.asarray(n.bias, np.float64)[None, :, None, None]


def _sumpool(x: np.ndarray, n) -> np.ndarray:
    (kh, kw), (sh, sw), (ph, pw) = _pair(n.kernel_size), _pair(n.stride), _pair(n.padding)
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw].sum(axis=(-2, -1))


def step_nir(graph, x: np.ndarray, steps: int) -> tuple[np.ndarray, float]:
    """Per-step outputs [steps, B, ...] of a NIR graph fed x at every step: IF with v += r * I, a unit spike
    where v >= v_threshold, then v -= v_threshold (subtract reset, v0 = 0); the nodes a node's edges come
    from are summed. Also the closest any membrane came to its threshold (relative)."""
    incoming = {k: [a for a, b in graph.edges if b == k] for k in graph.nodes}
    order: list[str] = []
    while len(order) < len(graph.nodes):
        order += [k for k in graph.nodes if k not in order and all(a in order for a in incoming[k])]
    v: dict[str, np.ndarray] = {}
    outputs, margin = [], np.inf
    for _ in range(steps):
        values: dict[str, np.ndarray] = {}
        for k in order:
            n = graph.nodes[k]
            i = sum(values[a] for a in incoming[k]) if incoming[k] else None
            if isinstance(n, nir.Input):
                y = x.astype(np.float64)
            elif isinstance(n, nir.Conv2d):
                y = _conv2d(i, n)
            elif isinstance(n, nir.Affine):
                y = i @ np.asarray(n.weight, np.float64).T + np.asarray(n.bias, np.float64)
            elif isinstance(n, nir.IF):
                threshold = np.asarray(n.v_threshold, np.float64)
                m = v.get(k, 0.0) + np.asarray(n.r, np.float64) * i
                margin = min(margin, float(np.min(np.abs(m - threshold) / threshold)))
                y = (m >= threshold).astype(np.float64)
                v[k] = m - y * threshold
            elif isinstance(n, nir.SumPool2d):
                y = _sumpool(i, n)
            elif isinstance(n, nir.Flatten):
                y = i.reshape(len(i), -1)
            elif isinstance(n, nir.Scale):
                y = i * np.asarray(n.scale, np.float64)
            elif isinstance(n, nir.Output):
                y = i
                outputs.append(y)
            else:
                raise TypeError(f"the test stepper has no rule for {type(n).__name__}")
            values[k] = y
    return np.stack(outputs), margin


# ---------------------------------------------------------------- the exported graph steps like the file

@pytest.mark.parametrize("flags", [[], ["--per-channel"], ["--weight-norm"]], ids=["default", "per-channel",
                                                                                   "weight-norm"])
def test_nir_graph_steps_like_the_spiking_file(data, flags):
    root, x = data
    name = "lenet" + "".join(f.strip("-").replace("-", "_") for f in flags)
    snn = converted(root, lenet_like(), name, "--phi", "0", "--neuron", "if", *flags)
    target, summary = root / f"{name}.nir", root / f"{name}.json"
    ok(invoke("export-nir", snn, "-o", target, "--json", summary))
    graph = nir.read(target)
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert sorted(kinds) == sorted(["Input", "Conv2d", "IF", "SumPool2d", "Conv2d", "IF", "SumPool2d", "Flatten",
                                    "Affine", "IF", "Affine", "Output"])
    ifs = [n for n in graph.nodes.values() if isinstance(n, nir.IF)]
    assert all(n.metadata["reset"] == "subtract" and n.metadata["v0"] == 0 and n.metadata["dt"] == 1 for n in ifs)
    assert graph.metadata["reset"] == "subtract"
    report = json.loads(summary.read_text())
    assert [n["type"] for n in report["nodes"]][0] == "Input" and report["output"] == str(target)

    x, reference, margin = well_conditioned(graph, x)
    model = load_spiking(snn)
    ours = NumpyEngine(model).run({"input": x}, T).outputs[model.outputs[0]]
    # The engine runs float32 (onnxruntime kernels), the stepper float64 on the folded float32 weights (each
    # rounded by 2^-24 when the threshold was folded in): a layer's sum of at most 36 products rounds by at
    # most ~36 * 2^-24 of its scale, under 1e-5 of the largest output (measured: ~1e-7). A spike flips only
    # where a membrane lands closer than that to its threshold; the seeded data comes no closer than `margin`
    # (well_conditioned draws the batch again when one comes closer), so a mismatch is a mapping error.
    assert margin > 1e-6, margin
    assert reference.shape == ours.shape
    tolerance = 1e-5 * np.abs(reference).max()
    for t in range(T):
        assert np.abs(reference[t] - ours[t]).max() <= tolerance, (t, np.abs(reference[t] - ours[t]).max())
    assert np.abs(reference).max() > 0.1  # the comparison is not one of zeros


def test_global_pooling_strides_and_a_constant_factor(data):
    root, x = data
    snn = converted(root, gap_net(), "gap", "--phi", "0", "--neuron", "if")
    ok(invoke("export-nir", snn, "-o", root / "gap.nir"))
    graph = nir.read(root / "gap.nir")
    kinds = sorted(type(n).__name__ for n in graph.nodes.values())
    assert kinds == sorted(["Input", "Conv2d", "IF", "Conv2d", "IF", "SumPool2d", "Flatten", "Affine", "Output"])
    assert any(isinstance(n, nir.Conv2d) and tuple(n.stride) == (2, 2) for n in graph.nodes.values())
    assert any("0.5" in n.metadata.get("note", "") for n in graph.nodes.values() if isinstance(n, nir.Affine))
    x, reference, margin = well_conditioned(graph, x)
    model = load_spiking(snn)
    ours = NumpyEngine(model).run({"input": x}, T).outputs[model.outputs[0]]
    assert margin > 1e-6, margin  # as in the test above
    assert np.abs(reference - ours).max() <= 1e-5 * np.abs(reference).max()


def test_the_stepper_would_see_a_wrong_threshold(data):
    """The comparison can fail: the same graph with one IF's threshold off by 10% steps differently."""
    root, x = data
    snn = converted(root, lenet_like(), "lenet_wrong", "--phi", "0", "--neuron", "if")
    ok(invoke("export-nir", snn, "-o", root / "wrong.nir"))
    graph = nir.read(root / "wrong.nir")
    right, _ = step_nir(graph, x, T)
    first = next(n for n in graph.nodes.values() if isinstance(n, nir.IF))
    first.v_threshold = first.v_threshold * 1.1
    wrong, _ = step_nir(graph, x, T)
    assert np.abs(right - wrong).max() > 1e-3 * np.abs(right).max()


def test_output_honours_the_umask_and_default_name(data):
    root, _ = data
    snn = converted(root, lenet_like(), "named", "--phi", "0", "--neuron", "if")
    old = os.umask(0o022)
    try:
        result = ok(invoke("export-nir", snn))
    finally:
        os.umask(old)
    target = root / "named.nir"
    assert f"wrote {target}" in result.stdout.replace("\n", "")
    assert target.stat().st_mode & 0o777 == 0o644
    assert not list(root.rglob(".*.tmp"))


def test_without_node_metadata_the_graph_keeps_it(data):
    root, x = data
    snn = converted(root, lenet_like(), "bare", "--phi", "0", "--neuron", "if")
    ok(invoke("export-nir", snn, "-o", root / "bare.nir", "--no-node-metadata"))
    graph = nir.read(root / "bare.nir")
    assert all(not getattr(n, "metadata", {}) for n in graph.nodes.values())
    assert graph.metadata["reset"] == "subtract" and graph.metadata["v0"] == 0 and graph.metadata["dt"] == 1
    assert "onnx_nodes" in graph.metadata


# ---------------------------------------------------------------- what NIR cannot hold

def test_maxpool_and_a_residual_branch_are_refused_by_name(data, tmp_path):
    root, _ = data
    snn = converted(root, small_cnn(), "small", "--phi", "0", "--neuron", "if")
    target = tmp_path / "out.nir"
    line = bad_input(invoke("export-nir", snn, "-o", target))
    model = onnx.load(snn)
    pools = [n.name for n in model.graph.node if n.op_type == "MaxPoolNeuron"]
    adds = [n.name for n in model.graph.node if n.op_type == "Add"]
    assert pools and adds
    for name in pools + adds:
        assert name in line, line
    assert "MaxPoolNeuron" in line and "max pooling" in line and "residual" in line
    assert not target.exists() and not list(tmp_path.iterdir())


def test_signed_neurons_are_refused_by_name(data, tmp_path):
    root, _ = data
    snn = converted(root, lenet_like(), "signed", "--phi", "0", "--neuron", "signed")
    line = bad_input(invoke("export-nir", snn, "-o", tmp_path / "out.nir"))
    signed = [n.name for n in onnx.load(snn).graph.node if n.op_type == "SignedIFNeuron"]
    assert len(signed) == 3
    assert all(name in line for name in signed), line
    assert "signed IF neuron" in line and "StepCount" in line


def test_phi_half_is_refused_for_every_neuron(data, tmp_path):
    root, _ = data
    snn = converted(root, lenet_like(), "phi", "--phi", "0.5", "--neuron", "if")
    report = tmp_path / "refused.json"
    line = bad_input(invoke("export-nir", snn, "-o", tmp_path / "out.nir", "--json", report))
    neurons = [n.name for n in onnx.load(snn).graph.node if n.op_type == "IFNeuron"]
    assert len(neurons) == 3 and all(name in line for name in neurons), line
    assert "3 node(s)" in line and "phi = 0.5" in line and "--phi 0" in line
    assert [n["node"] for n in json.loads(report.read_text())["unsupported_nodes"]] == neurons
    assert not (tmp_path / "out.nir").exists()


def test_a_ugo_subnet_is_refused_once_by_its_name(data, tmp_path):
    root, _ = data
    snn = converted(root, sigmoid_net(), "ugo", "--phi", "0", "--neuron", "if")
    line = bad_input(invoke("export-nir", snn, "-o", tmp_path / "out.nir"))
    ugo = [e["node"] for e in load_spiking(snn).layers if e.get("nonlinear") == "ugo"]
    assert len(ugo) == 1 and ugo[0] in line and line.count("UGO of") == 1, line


def test_a_file_read_after_drain_steps_is_refused(data, tmp_path):
    root, _ = data
    snn = converted(root, lenet_like(), "drained", "--phi", "0", "--neuron", "if", "--drain-steps", "2")
    line = bad_input(invoke("export-nir", snn, "-o", tmp_path / "out.nir"))
    assert "drain steps" in line and "--drain-steps 0" in line


def test_an_ann_is_refused(data, tmp_path):
    root, _ = data
    ann = root / "plain.onnx"
    onnx.save(lenet_like(), ann)
    line = bad_input(invoke("export-nir", ann, "-o", tmp_path / "out.nir"))
    assert "not a spiking model" in line


def test_a_missing_output_folder_is_refused_before_the_work(data, tmp_path):
    root, _ = data
    snn = converted(root, lenet_like(), "nofolder", "--phi", "0", "--neuron", "if")
    line = bad_input(invoke("export-nir", snn, "-o", tmp_path / "missing" / "out.nir"))
    assert "does not exist" in line and not (tmp_path / "missing").exists()


def test_without_the_nir_package_it_stops_before_any_work(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nir" else real(name, *a))
    line = bad_input(invoke("export-nir", tmp_path / "absent.snn.onnx", "-o", tmp_path / "out.nir"))
    assert "pip install 'ann2snn[nir]'" in line and "absent" not in line
    assert not list(tmp_path.iterdir())


def test_help_names_the_extra_and_every_option():
    result = ok(invoke("export-nir", "--help"))
    for word in ("the nir package", "'ann2snn[nir]'", "--output", "--no-node-metadata", "--json"):
        assert word in result.output


# ---------------------------------------------------------------- optional: sinabs

def test_sinabs_steps_the_graph_like_the_file(data):
    """sinabs.from_nir: with sinabs' IAF set to our neuron (one spike per step, no lower bound on v) its outputs
    are ours to float tolerance; with its defaults (several spikes per step, v >= -threshold) the top-1 after
    T steps agrees with ours on most samples."""
    torch = pytest.importorskip("torch")
    sinabs_nir = pytest.importorskip("sinabs.nir")
    from sinabs.activation import SingleSpike
    import sinabs.layers as sl
    root, x = data
    snn = converted(root, lenet_like(), "sinabs", "--phi", "0", "--neuron", "if")
    ok(invoke("export-nir", snn, "-o", root / "sinabs.nir", "--no-node-metadata"))
    model = load_spiking(snn)
    ours = NumpyEngine(model).run({"input": x}, T).outputs[model.outputs[0]]

    def run(exact: bool) -> np.ndarray:
        net = sinabs_nir.from_nir(nir.read(root / "sinabs.nir"), batch_size=len(x), num_timesteps=T)
        for layer in net.modules():
            if isinstance(layer, sl.StatefulLayer):
                layer.reset_states()
                if exact:
                    layer.spike_fn, layer.min_v_mem = SingleSpike, None
        xs = torch.from_numpy(x).unsqueeze(1).expand(-1, T, *x.shape[1:]).reshape(-1, *x.shape[1:])
        with torch.no_grad():
            out = net(xs)
        out = out[0] if isinstance(out, tuple) else out
        return out.reshape(len(x), T, -1).transpose(0, 1).numpy()

    exact = run(True)
    assert np.abs(exact - ours).max() <= 1e-4 * np.abs(ours).max()
    default = run(False)
    agree = np.mean(default.mean(0).argmax(-1) == ours.mean(0).argmax(-1))
    assert agree >= 0.9, agree

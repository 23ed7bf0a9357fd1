"""The CLI end to end through typer's CliRunner (in process): the happy path of every command, bad input
(exit 2, one `error: ` line on stderr naming the file at fault, no traceback, nothing written), --debug,
and --help. Every file lives under pytest's temporary folders."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from typer.main import get_command
from typer.testing import CliRunner

from ann2snn_cli.app import app
from builders import small_cnn
from rewrites.calibration.stats import Calibration
from rewrites.config import DEFAULT_NORM
from ground.errors import Ann2SnnError, CalibrationError
from ground.protos import fingerprint

# typer's CliRunner keeps stderr apart from stdout (result.stdout / result.stderr; result.output has both).
runner = CliRunner(env={"NO_COLOR": "1", "FORCE_COLOR": None, "COLUMNS": "200"})
N = 24
COMMANDS = ("inspect", "calibrate", "convert", "simulate", "demo")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def assert_bad_input(result, before: set[str], folder: Path, names=(), targets=(), mentions=()) -> str:
    """Exit 2, stderr exactly one `error: ` line naming each of `names`, no traceback, and no file written."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    line = lines[0]
    assert "internal error" not in line
    for name in names:
        assert str(name) in line, line
    for word in mentions:
        assert word.lower() in line.lower(), line
    assert "error:" not in result.stdout
    for target in targets:
        assert not Path(target).exists(), target
    assert files(folder) == before, "stray files written"
    assert not list(folder.rglob(".*.tmp"))
    return line


@dataclass
class Artifacts:
    model: Path  # small_cnn(seed=0)
    other: Path  # small_cnn(seed=1)
    data: Path  # x [N,1,12,12] float32, y = the ANN's top-1
    calib: Path  # of model, --max
    other_calib: Path  # of other
    snn: Path  # model converted with --T 4
    x: np.ndarray
    y: np.ndarray


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Artifacts:
    root = tmp_path_factory.mktemp("cli_shared")
    model, other = root / "model.onnx", root / "other.onnx"
    proto = small_cnn()
    onnx.save(proto, model)
    onnx.save(small_cnn(seed=1), other)
    x = np.random.default_rng(0).random((N, 1, 12, 12)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": x})[0].argmax(axis=1).astype(np.int64)
    data = root / "data.npz"
    np.savez(data, x=x, y=y)
    calib, other_calib, snn = root / "model.calib.json", root / "other.calib.json", root / "model.snn.onnx"
    ok(invoke("calibrate", model, "--data", data, "-o", calib, "--max"))
    ok(invoke("calibrate", other, "--data", data, "-o", other_calib, "--max"))
    ok(invoke("convert", model, "--calib", calib, "-o", snn, "--T", 4))
    return Artifacts(model, other, data, calib, other_calib, snn, x, y)


# ---------------------------------------------------------------- happy path

def test_inspect_json_file(tmp_path, art):
    target = tmp_path / "inspect.json"
    result = ok(invoke("inspect", art.model, "--json", target))
    assert "Relu" in result.stdout and "IF neuron" in result.stdout  # the tables still go to stdout
    report = json.loads(target.read_text())
    rows = {row["op"]: row for row in report["ops"]}
    assert rows["Relu"]["conversion"] == "IF neuron" and rows["Relu"]["count"] == 4
    assert rows["MaxPool"]["conversion"] == "MaxPool neuron" and rows["MaxPool"]["count"] == 1
    assert all(row["converts"] for row in report["ops"])
    inits = onnx.load(str(art.model)).graph.initializer
    assert report["parameters"] == sum(numpy_helper.to_array(t).size for t in inits)
    assert report["opset"] == 17
    assert report["inputs"] == [{"name": "input", "shape": ["N", 1, 12, 12], "dtype": "float32"}]


def test_inspect_json_stdout_is_pure_json(art):
    result = ok(invoke("inspect", art.model, "--json", "-"))
    assert json.loads(result.stdout)["model"] == str(art.model)


@pytest.mark.parametrize("flags, method", [(["--max"], "max"), (["--percentile", "99"], "percentile:99"),
                                           ([], DEFAULT_NORM)])
def test_calibrate_records_method(tmp_path, art, flags, method):
    target, summary = tmp_path / "c.json", tmp_path / "summary.json"
    ok(invoke("calibrate", art.model, "--data", art.data, "-o", target, "--json", summary, *flags))
    calibration = Calibration.read(target)
    assert calibration.method == method
    assert calibration.samples == N
    assert calibration.fingerprint == fingerprint(onnx.load(str(art.model)))
    assert calibration.tensors and all(s.count > 0 for s in calibration.tensors.values())
    report = json.loads(summary.read_text())
    assert report["method"] == method and report["output"] == str(target) and report["samples"] == N
    assert not list(tmp_path.rglob(".*.tmp"))


def test_calibrate_default_output_and_limit(tmp_path, art):
    model = tmp_path / "net.onnx"
    model.write_bytes(art.model.read_bytes())
    ok(invoke("calibrate", model, "--data", art.data, "--limit", 5, "--batch-size", 2))
    assert Calibration.read(tmp_path / "net.calib.json").samples == 5


def test_calibrate_max_with_percentile_is_bad_input(tmp_path, art):
    before, target = files(tmp_path), tmp_path / "c.json"
    result = invoke("calibrate", art.model, "--data", art.data, "-o", target, "--max", "--percentile", "99")
    assert_bad_input(result, before, tmp_path, targets=[target], mentions=["--max", "--percentile"])


def test_convert_json_and_valid_onnx(tmp_path, art):
    target, summary = tmp_path / "s.snn.onnx", tmp_path / "convert.json"
    ok(invoke("convert", art.model, "--calib", art.calib, "-o", target, "--json", summary, "--phi", "0"))
    report = json.loads(summary.read_text())
    after, before = report["ops_after"], report["ops_before"]
    assert after.get("IFNeuron") == 4 and after.get("MaxPoolNeuron") == 1
    assert not {"Relu", "MaxPool", "BatchNormalization"} & set(after)
    assert before["Relu"] == 4 and before["MaxPool"] == 1 and before["BatchNormalization"] == 4
    assert report["norm"] == "max" and report["phi"] == 0 and report["output"] == str(target)
    snn = onnx.load(str(target))
    onnx.checker.check_model(snn, full_check=True)
    assert files(tmp_path) == {"s.snn.onnx", "convert.json"}
    from rewrites.footprint import footprint
    memory = report["step_memory_per_sample"]
    assert memory == footprint(snn).to_json() and memory["state_bytes"] > 0
    assert report["ann_memory_per_sample"]["tensor_bytes"] < memory["tensor_bytes"]


def test_convert_refits_the_linear_layers_unless_told_not_to(tmp_path, art):
    """With --data and no tuning flag the search refits the linear layers: --json lists each under `refits`,
    the file records them and holds other weights than the --no-refit file where they were refitted."""
    from onnx import numpy_helper
    runs = {}
    for flags in ((), ("--no-refit",)):
        target, summary = tmp_path / f"s{len(flags)}.onnx", tmp_path / f"s{len(flags)}.json"
        ok(invoke("convert", art.model, "--data", art.data, "-o", target, "--json", summary, *flags))
        snn = onnx.load(str(target))
        runs[flags] = (json.loads(summary.read_text())["refits"], {p.key for p in snn.metadata_props},
                       {t.name: numpy_helper.to_array(t) for t in snn.graph.initializer}, snn)
    refits, keys, weights, snn = runs[()]
    plain_refits, plain_keys, plain_weights, _ = runs[("--no-refit",)]
    assert plain_refits == [] and "ann2snn.refits" not in plain_keys and "ann2snn.refits" in keys
    refitted = {r["node"] for r in refits if r["refitted"]}
    assert refitted
    changed = {name for name, value in weights.items() if not np.array_equal(value, plain_weights.get(name))}
    nodes = {n.name: n for n in snn.graph.node}
    assert {nodes[name].input[1] for name in refitted} <= changed


def test_convert_default_output(tmp_path, art):
    model = tmp_path / "net.onnx"
    model.write_bytes(art.model.read_bytes())
    ok(invoke("convert", model, "--calib", art.calib, "--norm", "percentile:99.5", "--no-check"))
    assert (tmp_path / "net.snn.onnx").exists()


@pytest.mark.parametrize("flag", ["-o", "--save-calib"])
def test_convert_refuses_a_missing_output_folder_before_the_work(tmp_path, art, monkeypatch, flag):
    import ann2snn
    monkeypatch.setattr(ann2snn, "convert", lambda *a, **k: pytest.fail("converted before checking the output"))
    missing = tmp_path / "no such folder" / "out.file"
    before = files(tmp_path)
    result = invoke("convert", art.model, "--data", art.data, flag, missing)
    assert_bad_input(result, before, tmp_path, names=[missing.parent])


def _simulate(art, *extra):
    result = ok(invoke("simulate", art.snn, "--data", art.data, "--ann", art.model, "--json", "-", *extra))
    return json.loads(result.stdout)  # nothing else on stdout


def test_simulate_json_stdout_and_engines_agree(art):
    report = _simulate(art, "--T", 8)
    assert report["steps"] == [1, 2, 4, 8] and report["T"] == 8 and report["samples"] == N
    for key in ("accuracy", "agreement", "relative_error"):
        assert len(report[key]) == len(report["steps"]), key
    assert len(report["accuracy_all"]) == len(report["agreement_all"]) == 8
    assert report["ann_accuracy"] == 1.0  # the labels are the ANN's own top-1
    assert report["accuracy"] == report["agreement"]
    assert report["layers"] and report["total_spikes_per_sample"] > 0
    ort_report = _simulate(art, "--T", 8, "--engine", "onnxruntime")
    assert ort_report["engine"] == "onnxruntime" and report["engine"] == "numpy"
    assert ort_report["accuracy_all"] == report["accuracy_all"]


def test_simulate_extra_t(art):
    report = _simulate(art, "--T", 8, "--extra-t", 2)
    assert report["steps"][-1] == 10 and report["T"] == 8 and report["extra_t"] == 2
    assert len(report["accuracy_all"]) == 10


def test_simulate_default_t_from_model_and_tables(tmp_path, art):
    target = tmp_path / "sim.json"
    result = ok(invoke("simulate", art.snn, "--data", art.data, "--json", target, "--limit", 10))
    assert "spikes per sample" in result.stdout
    report = json.loads(target.read_text())
    assert report["T"] == 4 and report["steps"] == [1, 2, 4] and report["samples"] == 10


# ---------------------------------------------------------------- bad model files

def _bad_model(kind: str, folder: Path, good: Path) -> Path:
    path = folder / f"{kind}.onnx"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(1000))
    elif kind == "truncated":
        raw = good.read_bytes()
        path.write_bytes(raw[:len(raw) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    return path  # "missing": not created


@pytest.mark.parametrize("command", ["inspect", "calibrate", "convert", "simulate"])
@pytest.mark.parametrize("kind", ["missing", "random", "truncated", "empty"])
def test_bad_model_file(tmp_path, art, kind, command):
    bad = _bad_model(kind, tmp_path, art.model)
    target = tmp_path / ("out.onnx" if command == "convert" else "out.json")
    args = {"inspect": ["--json", target], "calibrate": ["--data", art.data, "-o", target],
            "convert": ["--calib", art.calib, "-o", target], "simulate": ["--data", art.data, "--json", target]}
    before = files(tmp_path)
    assert_bad_input(invoke(command, bad, *args[command]), before, tmp_path, names=[bad], targets=[target])


# ---------------------------------------------------------------- bad data files

def _bad_data(kind: str, folder: Path) -> tuple[Path, list[str]]:
    """(path, words the message must contain)"""
    rng = np.random.default_rng(1)
    x = rng.random((6, 1, 12, 12)).astype(np.float32)
    path = folder / f"{kind}.npz"
    if kind == "wrong_shape":
        np.savez(path, x=x[:, :, :10, :10])
        return path, ["[6, 1, 10, 10]"]
    if kind == "nhwc":
        np.savez(path, x=x.transpose(0, 2, 3, 1))
        return path, ["channels-last"]
    if kind == "uint8":
        np.savez(path, x=(x * 255).astype(np.uint8))
        return path, ["uint8"]
    if kind == "nan":
        x[2, 0, 3, 3] = np.nan
        np.savez(path, x=x)
        return path, ["NaN"]
    if kind == "pickled_npy":
        path = folder / "pickled.npy"
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        return path, ["pickle"]
    if kind == "pickled_npz":
        np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
        return path, ["pickle"]
    if kind == "csv":
        path = folder / "data.csv"
        path.write_text("1,2,3\n")
        return path, [".csv"]
    if kind == "no_input_array":
        np.savez(path, z=x)
        return path, ["input"]
    if kind == "y_length":
        np.savez(path, x=x, y=np.arange(5))
        return path, ["5 labels", "6 samples"]
    if kind == "missing":
        return path, ["no such file"]
    raise AssertionError(kind)


DATA_KINDS = ["wrong_shape", "nhwc", "uint8", "nan", "pickled_npy", "pickled_npz", "csv", "no_input_array",
              "y_length", "missing"]


@pytest.mark.parametrize("command", ["calibrate", "simulate"])
@pytest.mark.parametrize("kind", DATA_KINDS)
def test_bad_data_file(tmp_path, art, kind, command):
    bad, words = _bad_data(kind, tmp_path)
    before = files(tmp_path)
    if command == "calibrate":
        target = tmp_path / "out.calib.json"
        result = invoke("calibrate", art.model, "--data", bad, "-o", target)
    else:
        target = tmp_path / "sim.json"
        result = invoke("simulate", art.snn, "--data", bad, "--ann", art.model, "--json", target)
    assert_bad_input(result, before, tmp_path, names=[bad], targets=[target], mentions=words)


# ---------------------------------------------------------------- bad calibration files and options

def _edit_calibration(kind: str, folder: Path, good: Path, model: Path) -> tuple[Path, list[str]]:
    path = folder / f"{kind}.calib.json"
    data = json.loads(good.read_text())
    if kind == "no_tensors":
        del data["tensors"]
    elif kind == "tensors_list":
        data["tensors"] = []
    elif kind == "missing_tensor":
        relu_inputs = {n.input[0] for n in onnx.load(str(model)).graph.node if n.op_type == "Relu"}
        del data["tensors"][sorted(relu_inputs & set(data["tensors"]))[0]]
        path.write_text(json.dumps(data))
        return path, ["no statistics"]
    elif kind == "schema_version":
        data["schema_version"] = 99
        path.write_text(json.dumps(data))
        return path, ["version 99"]
    elif kind == "no_schema":
        del data["schema"]
        path.write_text(json.dumps(data))
        return path, ["not an ann2snn calibration"]
    elif kind == "bad_counts":
        name = sorted(data["tensors"])[0]
        data["tensors"][name]["count"] += 1
    elif kind == "bad_method":
        data["method"] = "bogus"
    elif kind == "invalid_json":
        path.write_text(good.read_text()[:-40])
        return path, ["invalid JSON"]
    elif kind == "not_utf8":
        path.write_bytes(b"\xff\xfe\x00garbage")
        return path, ["not a calibration file"]
    elif kind == "missing":
        return path, ["no such file"]
    else:
        raise AssertionError(kind)
    path.write_text(json.dumps(data))
    return path, ["malformed"]


@pytest.mark.parametrize("kind", ["no_tensors", "tensors_list", "missing_tensor", "schema_version", "no_schema",
                                  "bad_counts", "bad_method", "invalid_json", "not_utf8", "missing"])
def test_convert_bad_calibration(tmp_path, art, kind):
    calib, words = _edit_calibration(kind, tmp_path, art.calib, art.model)
    before, target = files(tmp_path), tmp_path / "out.snn.onnx"
    result = invoke("convert", art.model, "--calib", calib, "-o", target)
    assert_bad_input(result, before, tmp_path, names=[calib], targets=[target], mentions=words)


def test_convert_calibration_of_another_model(tmp_path, art):
    before, target = files(tmp_path), tmp_path / "out.snn.onnx"
    result = invoke("convert", art.model, "--calib", art.other_calib, "-o", target)
    assert_bad_input(result, before, tmp_path, names=[art.other_calib, art.model], targets=[target],
                     mentions=["another model"])


@pytest.mark.parametrize("option, value", [("--norm", "garbage"), ("--norm", "percentile:0"), ("--phi", "1.5"),
                                           ("--skip-pass", "no_such_pass"), ("--skip-pass", "relu_to_if")])
def test_convert_bad_option(tmp_path, art, option, value):
    before, target = files(tmp_path), tmp_path / "out.snn.onnx"
    result = invoke("convert", art.model, "--calib", art.calib, "-o", target, option, value)
    assert_bad_input(result, before, tmp_path, targets=[target], mentions=[value])


# ---------------------------------------------------------------- bad simulate input

def test_simulate_given_the_ann(tmp_path, art):
    before, target = files(tmp_path), tmp_path / "sim.json"
    result = invoke("simulate", art.model, "--data", art.data, "--json", target)
    assert_bad_input(result, before, tmp_path, names=[art.model], targets=[target], mentions=["not a spiking model"])


def test_simulate_missing_files(tmp_path, art):
    missing = tmp_path / "nope.snn.onnx"
    before = files(tmp_path)
    assert_bad_input(invoke("simulate", missing, "--data", art.data), before, tmp_path, names=[missing])
    missing_ann = tmp_path / "nope.onnx"
    result = invoke("simulate", art.snn, "--data", art.data, "--ann", missing_ann)
    assert_bad_input(result, before, tmp_path, names=[missing_ann])


def test_simulate_unknown_engine(tmp_path, art):
    before = files(tmp_path)
    result = invoke("simulate", art.snn, "--data", art.data, "--engine", "tensorflow")
    assert_bad_input(result, before, tmp_path, mentions=["tensorflow"])


# ---------------------------------------------------------------- --debug

def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path, art):
    target = tmp_path / "out.snn.onnx"
    result = invoke("--debug", "convert", art.model, "--calib", art.other_calib, "-o", target)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "Traceback" in result.stderr and "CalibrationError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not target.exists()
    result = invoke("--debug", "calibrate", art.model, "--data", tmp_path / "nope.npz", "-o", tmp_path / "c.json")
    assert result.exit_code == 2 and "Traceback" in result.stderr
    # --debug is per invocation: the next run without it has no traceback
    result = invoke("convert", art.model, "--calib", art.other_calib, "-o", target)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert files(tmp_path) == set()


def test_debug_is_taken_after_the_command_too(tmp_path, art, capsys):
    from ann2snn_cli.app import main
    with pytest.raises(SystemExit) as info:
        main(["convert", str(art.model), "--calib", str(art.other_calib), "-o", str(tmp_path / "o.onnx"), "--debug"])
    assert info.value.code == 2
    assert "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------- --help

EXPECTED_OPTIONS = {
    "inspect": ["--json"],
    "calibrate": ["--data", "-o", "--output", "--percentile", "--max", "--batch-size", "--limit", "--json"],
    "convert": ["--calib", "-o", "--output", "--norm", "--phi", "--T", "--skip-pass", "--no-check", "--json"],
    "simulate": ["--data", "--T", "--extra-t", "--engine", "--ann", "--batch-size", "--limit", "--json"],
    "demo": ["--T", "--engine", "--out-dir", "--limit"],
}


@pytest.mark.parametrize("name", COMMANDS)
def test_help_mentions_every_option(name):
    result = ok(invoke(name, "--help"))
    command = get_command(app).commands[name]
    declared = {opt for p in command.params for opt in p.opts + p.secondary_opts if opt.startswith("-")}
    assert set(EXPECTED_OPTIONS[name]) <= declared
    for opt in declared | set(EXPECTED_OPTIONS[name]):
        assert opt in result.output, f"{name} --help does not mention {opt}"


def test_top_level_help():
    result = ok(invoke("--help"))
    for word in ("--debug", *COMMANDS):
        assert word in result.output

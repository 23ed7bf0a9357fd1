"""Output in an 80-column terminal: every name in the tables whole (ann2snn_cli/_output.py's rule), titles on
one line, no Rich markup or highlighting inside values, and --help in plain words with flags shown as flags."""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from ann2snn_cli._output import Output
from ann2snn_cli.app import app
from builders import small_cnn

WIDTH = 80
runner = CliRunner(env={"NO_COLOR": "1", "FORCE_COLOR": None, "COLUMNS": str(WIDTH)})
COMMANDS = ("inspect", "calibrate", "convert", "simulate", "demo")


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def torch_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes named as torch.onnx.export names them ("/features/features.3/conv/Conv"), their outputs after
    them ("..._output_0"); the graph's own inputs and outputs keep their names."""
    keep = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    renamed = {}
    for k, node in enumerate(model.graph.node):
        node.name = f"/features/features.{k}/{'block/' * (k % 3)}{node.op_type.lower()}/{node.op_type}"
        for j, out in enumerate(node.output):
            if out not in keep:
                renamed[out] = f"{node.name}_output_{j}"
    for node in model.graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    model = torch_names(small_cnn())
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, root / "model.onnx")
    x = np.random.default_rng(0).random((48, 1, 12, 12)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": x})[0].argmax(axis=1).astype(np.int64)
    np.savez(root / "data.npz", x=x, y=y)
    return root


def assert_names_whole(output: str, names) -> None:
    """Each name is a word of the output, or is one after a prefix the output says it dropped; no line is
    wider than the terminal."""
    words = set(output.split())
    prefixes = re.findall(r"\(names without their common prefix (\S+)\)", output)
    for name in names:
        assert name in words or any(name.startswith(p) and name[len(p):] in words for p in prefixes), \
            f"{name!r} not whole in\n{output}"
    assert max(len(line) for line in output.splitlines()) <= WIDTH, output


def test_every_name_whole_at_80_columns(files, tmp_path):
    model, data = files / "model.onnx", files / "data.npz"
    calib = tmp_path / "c.json"
    result = invoke("calibrate", model, "--data", data, "-o", calib)
    tensors = json.loads(invoke("calibrate", model, "--data", data, "-o", calib, "--json", "-").stdout)["tensors"]
    assert len(max((t["tensor"] for t in tensors), key=len)) > 40
    assert_names_whole(result.stdout, [t["tensor"] for t in tensors])

    for flags in (["--data", data], ["--calib", calib, "--norm", "max", "--data", data, "--bias-correction"]):
        snn = tmp_path / "m.snn.onnx"
        result = invoke("convert", model, *flags, "-o", snn)
        summary = json.loads(invoke("convert", model, *flags, "-o", snn, "--json", "-").stdout)
        names = [l["node"] for l in summary["layers"] if "threshold" in l] + list(summary["chosen"])
        names += [c["bias"] for c in summary["bias_correction"] if c["bias"]]
        assert names and all(n.startswith("/features/") for n in names)
        assert_names_whole(result.stdout, names)

    result = invoke("simulate", snn, "--data", data, "--ann", model, "--layer-error")
    report = json.loads(invoke("simulate", snn, "--data", data, "--ann", model, "--layer-error", "--json", "-").stdout)
    layers = [l["node"] for l in report["layers"]]
    assert len(layers) == 4
    assert_names_whole(result.stdout, layers + [r["node"] for r in report["layer_error"]["layers"]])
    lines = result.stdout.splitlines()
    for title in ("Spikes per neuron layer (per sample, over the window)",
                  "Operations and energy per sample (45 nm: 4.6 pJ per MAC, 0.9 pJ per accumulate)",
                  "Conversion error per neuron layer at t = 8 (mean of ANN - SNN per neuron)"):
        assert title in lines, f"title {title!r} not on one line"

    assert_names_whole(invoke("inspect", model).stdout, ["Relu", "BatchNormalization", "GlobalAveragePool"])


def _render(capsys, columns, rows, width=WIDTH, **kwargs) -> str:
    Output(width=width).table("A title", columns, rows, **kwargs)
    return capsys.readouterr().out


def test_table_rule_prefix_then_blocks(capsys):
    short = _render(capsys, ["layer", "n"], [["/a/b/Relu", 1], ["/a/c/Relu", 2]])
    assert "/a/b/Relu" in short.split() and "common prefix" not in short  # fits as it is: names untouched
    names = [f"/model/backbone/stage.{k}/blocks/block.{k}/conv/Relu" for k in range(3)]
    rows = [[n, 1234567, 0.123456, "12.34%", "56.78%"] for n in names]
    columns = ["layer", "neurons", "spikes per neuron", "silent", "saturated"]
    out = _render(capsys, columns, rows)
    assert "(names without their common prefix /model/backbone/)" in out
    assert_names_whole(out, names)
    rows[1][0] = "/other/" + "x" * 90 + "/Relu"  # no common prefix, and one name wider than the terminal
    out = _render(capsys, columns, rows)
    assert "common prefix" not in out
    lines = out.splitlines()
    for row in rows:  # each name on a line of its own, its values on the next
        at = lines.index(row[0])
        assert lines[at + 1].split() == ["1234567", "0.1235", "12.34%", "56.78%"]


def test_no_markup_or_highlighting_inside_values(capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Output(width=WIDTH)
    out.table("rules", ["node", "rule"], [["[bold]n1[/bold]", "percentile:99"], ["n2", "percentile:99.9"]])
    out.print("wrote [red]x[/red].json (default norm: percentile:99)")
    text = capsys.readouterr().out
    assert "\x1b[" in text  # a colour terminal
    for value in ("[bold]n1[/bold]", "percentile:99", "percentile:99.9", "wrote [red]x[/red].json",
                  "(default norm: percentile:99)"):
        assert value in text, (value, text)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_fits_80_columns_in_plain_words(name):
    text = invoke(name, "--help").stdout
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    for jargon in ("<bool>", "seed 0", "STA", "snn.drive", "ann2snn.drain_steps", "\\["):
        assert jargon not in text, f"{name} --help says {jargon!r}"
    command = get_command(app).commands[name]
    for param in command.params:
        if getattr(param, "is_flag", False) and param.opts[0] != "--help":
            line = next(line for line in text.splitlines() if line.strip().startswith(param.opts[0]))
            assert re.match(rf"\s+{re.escape(' / '.join(param.opts + param.secondary_opts))}(\s|$)", line), line
        elif getattr(param, "param_type_name", "") == "option" and not getattr(param, "is_flag", False):
            assert param.metavar, f"{name} {param.opts[0]} shows a type, not a metavar"


def test_top_level_help_lists_commands_whole():
    text = invoke("--help").stdout
    for name in COMMANDS:
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert not line.endswith("..."), line

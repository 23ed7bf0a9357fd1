"""The Python API (ann2snn/api.py): docs/api.md's examples run as written, and each call gives what its
CLI command gives."""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import ann2snn
from ann2snn_cli.app import app
from conftest import REPO

EXAMPLE = REPO / "examples" / "fmnist_cnn"


def api_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.S)


@pytest.mark.parametrize("index", range(len(api_examples())))
def test_docs_api_example_runs(index, tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    exec(compile(api_examples()[index], f"docs/api.md example {index + 1}", "exec"), {})


def test_docs_api_has_examples():
    assert len(api_examples()) >= 3


def test_convert_and_simulate_equal_the_cli(tmp_path):
    snn = tmp_path / "cli.snn.onnx"
    runner = CliRunner()
    result = runner.invoke(app, ["convert", str(EXAMPLE / "model.onnx"), "--data", str(EXAMPLE / "calib.npz"),
                                 "--limit", "200", "-o", str(snn)])
    assert result.exit_code == 0, result.output
    converted = ann2snn.convert(EXAMPLE / "model.onnx", data=EXAMPLE / "calib.npz", limit=200)
    assert converted.proto.SerializeToString() == onnx.load(snn).SerializeToString()
    test = np.load(EXAMPLE / "test.npz")
    from_file = ann2snn.simulate(snn, EXAMPLE / "test.npz", limit=100, ann=EXAMPLE / "model.onnx")
    from_arrays = ann2snn.simulate(converted, {"x": test["x"][:100], "y": test["y"][:100]},
                                   ann=onnx.load(EXAMPLE / "model.onnx"))
    a, b = from_file.to_dict(), from_arrays.to_dict()
    for key in ("accuracy_all", "agreement_all", "relative_error", "total_spikes_per_sample", "T"):
        assert a[key] == b[key], key
    json.dumps(a)  # the report is plain JSON


def test_bad_input_is_an_ann2snn_error_naming_the_arrays():
    wrong = r"the arrays given: array for input 'input' has shape \[4, 3, 28, 28\]"
    with pytest.raises(ann2snn.Ann2SnnError, match=wrong):
        ann2snn.calibrate(EXAMPLE / "model.onnx", np.zeros((4, 3, 28, 28), np.float32))
    with pytest.raises(TypeError, match="unknown option"):
        ann2snn.convert(EXAMPLE / "model.onnx", data=EXAMPLE / "calib.npz", steps=8)

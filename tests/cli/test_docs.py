"""The README's worked example, run command by command, so the docs cannot drift from the code."""
import json
import re
import shlex

import onnx
from typer.testing import CliRunner

from ann2snn_cli.app import app
from conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- docs-test:.*?-->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its docs-test block"
    return [line for line in block.group(1).splitlines() if line.startswith("ann2snn ")]


def test_readme_worked_example(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert [shlex.split(c)[1] for c in commands] == ["inspect", "convert", "simulate"]
    runner = CliRunner()
    for command in commands:
        result = runner.invoke(app, shlex.split(command)[1:])
        assert result.exit_code == 0, f"{command}\n{result.output}"
    onnx.checker.check_model(onnx.load(tmp_path / "model.snn.onnx"), full_check=True)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["T"] == 8 and report["steps"][-1] == 8 and len(report["accuracy"]) == len(report["steps"])
    assert report["notes"] == []  # run as the file was converted: T = 8, no drain steps

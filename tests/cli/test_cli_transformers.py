"""The transformer options of `convert` through the CLI: --nonlinear, --ugo-size, --allow-float; refusals are
one `error:` line with exit 2 and nothing written."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from bert_builder import bert_input, build_bert
from builders import ModelBuilder
from test_cli import assert_bad_input, files, invoke, ok


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    model = build_bert(layers=1, dim=16, heads=2, seq=4, form="decomposed", eps=1e-5)
    onnx.save(model, folder / "bert.onnx")
    np.savez(folder / "bert.npz", x=bert_input(model, 32)["input"])
    ok(invoke("calibrate", folder / "bert.onnx", "--data", folder / "bert.npz", "-o", folder / "bert.calib.json"))
    return folder


def _convert_json(folder, *extra):
    out = folder / "out.json"
    ok(invoke("convert", folder / "bert.onnx", "--calib", folder / "bert.calib.json", "-o", folder / "s.onnx",
              "--json", out, *extra))
    return json.loads(out.read_text())


def test_ugo_report_lists_every_fit(bert):
    report = _convert_json(bert, "--ugo-size", "16")
    assert report["nonlinear"] == "ugo" and report["kept_float"] == []
    assert {u["op"] for u in report["ugo"]} == {"Add+Sqrt+Reciprocal", "Exp", "Reciprocal", "Div+Erf+Add+Mul"}
    assert all(u["size"] <= 16 and u["max_error"] >= u["mean_error"] >= 0 for u in report["ugo"])
    simulated = bert / "sim.json"
    ok(invoke("simulate", bert / "s.onnx", "--data", bert / "bert.npz", "--T", "4", "--json", simulated))
    assert json.loads(simulated.read_text())["energy"]["synops"] > 0  # the UGO hidden neurons fire


def test_layer_error_reports_each_subnets_share_of_the_output_error(bert):
    out = bert / "errors.json"
    result = invoke("convert", bert / "bert.onnx", "--data", bert / "bert.npz", "-o", bert / "e.onnx",
                    "--layer-error", "--json", out)
    ok(result)
    report = json.loads(out.read_text())
    errors = report["layer_errors"]
    assert [e["node"] for e in errors["subnets"]] == [u["node"] for u in report["ugo"]]
    assert errors["samples"] == 32 and errors["together"] > 0
    assert sum(e["share"] for e in errors["subnets"]) == pytest.approx(1.0)
    assert "Output error of each UGO subnet" in result.stdout


def test_layer_error_without_data_is_refused(bert):
    before = files(bert)
    result = invoke("convert", bert / "bert.onnx", "--calib", bert / "bert.calib.json", "-o", bert / "n.onnx",
                    "--layer-error")
    assert_bad_input(result, before, bert, names=["--layer-error", "--data"], targets=[bert / "n.onnx"])


def test_exact_mode_keeps_the_functions_float(bert):
    report = _convert_json(bert, "--nonlinear", "exact")
    assert report["nonlinear"] == "exact" and report["ugo"] == []
    assert any("Erf" in name for name in report["kept_float"])


def _floor_model(folder):
    b = ModelBuilder(opset=17)
    model = b.build({"input": [8]}, [b.gemm(b.node("Floor", [b.gemm("input", 8, 8)]), 8, 3)])
    onnx.save(model, folder / "floor.onnx")
    np.savez(folder / "floor.npz", x=np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32))
    ok(invoke("calibrate", folder / "floor.onnx", "--data", folder / "floor.npz", "-o", folder / "floor.json"))


def test_unmapped_op_is_refused_then_kept_with_allow_float(tmp_path):
    _floor_model(tmp_path)
    before = files(tmp_path)
    target = tmp_path / "floor.snn.onnx"
    result = invoke("convert", tmp_path / "floor.onnx", "--calib", tmp_path / "floor.json")
    line = assert_bad_input(result, before, tmp_path, names=["Floor"], targets=[target])
    assert "--allow-float Floor" in line
    result = invoke("convert", tmp_path / "floor.onnx", "--calib", tmp_path / "floor.json", "--allow-float", "floor")
    assert_bad_input(result, before, tmp_path, names=["floor"], targets=[target], mentions=["unknown"])
    ok(invoke("convert", tmp_path / "floor.onnx", "--calib", tmp_path / "floor.json", "--allow-float", "Floor"))
    assert target.exists()


def test_invalid_nonlinear_mode_is_refused(bert):
    before = files(bert)
    result = invoke("convert", bert / "bert.onnx", "--calib", bert / "bert.calib.json", "--nonlinear", "fast")
    assert_bad_input(result, before, bert, names=["fast"])

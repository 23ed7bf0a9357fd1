"""A model whose output is a map (a text detector's probability map), not class scores: `simulate --ann`
reports no top-1 agreement (the argmax of a map is one pixel's position, and reported 0% on the PaddleOCR
detector), says why, and still reports the relative error, which equals the closed form on the decoded
output (checked against onnxruntime running the ANN)."""
from __future__ import annotations

import json

import numpy as np

from builders import ModelBuilder
from conftest import run_ort
from sim.engine import NumpyEngine
from sim.model import load_spiking
from spiking_helpers import convert_with_data
from test_cli import invoke, ok


def test_a_map_output_gets_the_relative_error_and_no_top1_agreement(tmp_path):
    b = ModelBuilder(seed=2)
    model = b.build({"x": [2, 6, 6]}, [b.conv(b.node("Relu", [b.conv("x", 2, 4)]), 4, 1)])
    x = np.random.default_rng(1).normal(size=(8, 2, 6, 6)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path, T=8)
    out = json.loads(ok(invoke("simulate", snn, "--data", tmp_path / "model.npz", "--ann", tmp_path / "model.onnx",
                               "--T", 8, "--json", "-")).stdout)
    assert out["agreement"] is None and out["agreement_all"] is None
    assert any("the output is a map ([1, 6, 6] per sample)" in n for n in out["notes"])
    spiking = load_spiking(snn)
    decoded = NumpyEngine(spiking).run({"x": x}, 8).outputs[spiking.outputs[0]].mean(axis=0)
    (ann,) = run_ort(model, {"x": x})
    expected = np.linalg.norm(decoded - ann) / np.linalg.norm(ann)
    assert abs(out["relative_error"][-1] - expected) <= 1e-6 * expected  # float64 sums in another order


def test_class_scores_keep_their_agreement(tmp_path):
    b = ModelBuilder(seed=2)
    h = b.node("Flatten", [b.node("Relu", [b.conv("x", 2, 4)])])
    model = b.build({"x": [2, 6, 6]}, [b.gemm(h, 4 * 36, 5)])
    x = np.random.default_rng(1).normal(size=(8, 2, 6, 6)).astype(np.float32)
    snn, _ = convert_with_data(model, x, tmp_path, T=8)
    out = json.loads(ok(invoke("simulate", snn, "--data", tmp_path / "model.npz", "--ann", tmp_path / "model.onnx",
                               "--T", 8, "--json", "-")).stdout)
    assert out["agreement"] is not None and not any("map" in n for n in out["notes"])

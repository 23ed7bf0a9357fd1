#!/usr/bin/env python
"""Re-export a QCFS example with torch's dynamo exporter: ``model_dynamo.onnx`` next to ``model.onnx``.

Rebuilds the network in torch (``make_example.FmnistCNN`` with every ReLU replaced by
``make_qcfs_example.QCFS``, L and the shift read from the file's metadata ``qcfs_L`` / ``qcfs_shift``), loads
the weights, BatchNorm statistics and lambdas from ``model.onnx`` by name (the classic exporter named its
initializers after the state_dict keys), checks the rebuild against onnxruntime on
``examples/fmnist_cnn/test.npz`` (max |logit diff|, prediction mismatches), then exports it with
``torch.onnx.export(..., dynamo=True)`` (the exporter's default opset, batch axis ``N`` dynamic, weights
inside the file) and checks the written file the same way. Needs torch and onnxscript; no training, no
Fashion-MNIST download::

    pip install torch==2.13.0 onnxscript
    python examples/export_qcfs_dynamo.py                     # examples/fmnist_qcfs_L4
    python examples/export_qcfs_dynamo.py --dir examples/fmnist_qcfs_L8
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from make_example import FmnistCNN  # noqa: E402
from make_qcfs_example import SPLITS, replace_relu_by_qcfs  # noqa: E402


def rebuild(path: str) -> torch.nn.Module:
    """The QCFS FmnistCNN with the initializers of `path` loaded by name (strict but for BN counters)."""
    m = onnx.load(path)
    meta = {p.key: p.value for p in m.metadata_props}
    model = FmnistCNN()
    replace_relu_by_qcfs(model, int(meta["qcfs_L"]), 1.0, meta.get("qcfs_shift", "true") == "true")
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in m.graph.initializer}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"{path} does not match the QCFS FmnistCNN: missing {missing}, unexpected {unexpected}")
    return model.eval()


def ort_logits(path: str, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])


def compare(label: str, a: np.ndarray, b: np.ndarray, y: np.ndarray) -> dict:
    """max |logit diff|, images whose logits differ by more than 1e-3 (a Floor flipped by float rounding),
    top-1 mismatches, and the accuracy of `b`."""
    diff = np.abs(a - b).max(axis=1)
    r = {"max_abs_diff": float(diff.max()), "images_over_1e-3": int((diff > 1e-3).sum()),
         "mismatches": int((a.argmax(1) != b.argmax(1)).sum()), "accuracy": float((b.argmax(1) == y).mean())}
    print(f"{label}: max |logit diff| {r['max_abs_diff']:.2e} ({r['images_over_1e-3']} images over 1e-3), "
          f"top-1 mismatches {r['mismatches']}, accuracy {100 * r['accuracy']:.2f}% on {len(y)} images", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=os.path.join(HERE, "fmnist_qcfs_L4"), help="folder with model.onnx")
    ap.add_argument("--data", default=os.path.join(SPLITS, "test.npz"))
    args = ap.parse_args()
    src, out = os.path.join(args.dir, "model.onnx"), os.path.join(args.dir, "model_dynamo.onnx")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    test = np.load(args.data)
    x, y = test["x"], test["y"]

    model = rebuild(src)
    reference = ort_logits(src, x)
    with torch.no_grad():
        logits = np.concatenate([model(torch.from_numpy(x[i:i + 500])).numpy() for i in range(0, len(x), 500)])
    checks = {"torch rebuild vs model.onnx": compare("torch rebuild vs model.onnx (onnxruntime)", reference, logits, y)}

    program = torch.onnx.export(model, (torch.from_numpy(x[:2]),), dynamo=True, input_names=["input"],
                                output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("N")},),
                                external_data=False)
    program.save(out)
    m = onnx.load(out)
    meta = {p.key: p.value for p in onnx.load(src, load_external_data=False).metadata_props}
    meta.pop("ann_test_accuracy", None)  # measured on the 10,000 test images, not rechecked here
    meta["exporter"] = f"torch.onnx dynamo (torch {torch.__version__})"
    dyn = ort_logits(out, x)
    checks["model_dynamo.onnx vs model.onnx"] = compare("model_dynamo.onnx vs model.onnx (onnxruntime)", reference,
                                                        dyn, y)
    meta["ann_test_accuracy_split"] = f"{checks['model_dynamo.onnx vs model.onnx']['accuracy']:.4f}"
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, out)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    ops = [n.op_type for n in m.graph.node]
    print(f"wrote {out}: {os.path.getsize(out):,} bytes, opset {opset}, input "
          f"{[d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]}, {len(ops)} nodes: "
          f"{' '.join(ops)}")
    print(json.dumps({"opset": opset, "bytes": os.path.getsize(out), "checks": checks}))


if __name__ == "__main__":
    main()

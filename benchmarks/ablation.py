"""What each training-free ingredient adds on the bundled example: threshold rule x neuron x phi x bias
correction (x per-channel), accuracy at several t. Conversion target (mmse, bias correction) is --target-T.
Prints a Markdown table (docs/ablation.md holds its output). Every step is the public API's call
(ann2snn.calibrate, ann2snn.convert with every option given, ann2snn.simulate), as a user makes it.

usage: python benchmarks/ablation.py [--target-T 8] [--T 32] [--limit 1000] [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ann2snn  # noqa: E402

EXAMPLE = REPO / "examples" / "fmnist_cnn"
SHOW = (2, 4, 8, 16, 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-T", type=int, default=8)
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--bias-samples", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="only the one-ingredient-at-a-time rows")
    args = ap.parse_args()
    calibration = ann2snn.calibrate(EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", batch_size=100)
    grid = list(itertools.product(["max", "percentile:99.9", "percentile:99", "mmse"], ["if", "signed"],
                                  [0.0, 0.5], [False, True], [False]))
    grid += [(n, "if", 0.5, bc, True) for n in ("percentile:99", "mmse") for bc in (False, True)]
    grid += [(n, "signed", 0.5, True, True) for n in ("percentile:99", "mmse")]
    if args.quick:
        grid = [g for g in grid if g[2] == 0.5 and g[1] == "if"]
    shown = [t for t in SHOW if t <= args.T]
    print(f"Bundled example, {args.limit} test samples, conversion target T = {args.target_T} (mmse, bias "
          f"correction on {args.bias_samples} calibration samples), signed tmax = {args.T}\n")
    print("| norm | neuron | phi | bias corr. | per-channel | " + " | ".join(f"t={t}" for t in shown) + " |")
    print("|---" * (5 + len(shown)) + "|")
    ann_accuracy = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.snn.onnx"
        for norm, neuron, phi, bc, per_channel in grid:
            start = time.perf_counter()
            converted = ann2snn.convert(EXAMPLE / "model.onnx", calibration, EXAMPLE / "calib.npz" if bc else None,
                                        norm=norm, phi=phi, T=args.target_T, neuron=neuron,
                                        tmax=args.T if neuron == "signed" else None, per_channel=per_channel,
                                        bias_correction=bc, limit=args.bias_samples if bc else None)
            converted.save(path)
            report = ann2snn.simulate(path, EXAMPLE / "test.npz", args.T, engine="onnxruntime",
                                      ann=EXAMPLE / "model.onnx", batch_size=250, limit=args.limit)
            ann_accuracy = report.ann_accuracy
            cells = " | ".join(f"{100 * report.accuracy_all[t - 1]:.2f}" for t in shown)
            print(f"| {norm} | {neuron} | {phi:g} | {'on' if bc else 'off'} | {'on' if per_channel else 'off'} | "
                  f"{cells} |", flush=True)
            print(f"  ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    print(f"\nANN accuracy on the same samples: {100 * ann_accuracy:.2f}%")


if __name__ == "__main__":
    main()

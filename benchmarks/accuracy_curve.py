"""Accuracy of the bundled example's spiking version at every t = 1..T, for several threshold rules, beside
the ANN's accuracy on the same samples. Prints a Markdown table (docs/accuracy.md holds its output).
Calibrates, converts and simulates through the public API (ann2snn.calibrate / convert / simulate).

usage: python benchmarks/accuracy_curve.py [--T 64] [--norms max,percentile:99.9] [--phi 0.5] [--limit N]
       [--engine numpy|onnxruntime] [--plot FILE.png]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ann2snn  # noqa: E402

EXAMPLE = REPO / "examples" / "fmnist_cnn"


def curves(T: int, norms: list[str], phi: float, limit: int | None, engine: str = "numpy") -> dict:
    calibration = ann2snn.calibrate(EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", batch_size=100)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for norm in norms:
            snn = Path(tmp) / "model.snn.onnx"
            ann2snn.convert(EXAMPLE / "model.onnx", calibration, norm=norm, phi=phi, T=T).save(snn)
            start = time.perf_counter()
            report = ann2snn.simulate(snn, EXAMPLE / "test.npz", T, extra_t=0, engine=engine,
                                      ann=EXAMPLE / "model.onnx", batch_size=250, limit=limit)
            results[norm] = (report, time.perf_counter() - start)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--norms", default="max,percentile:99.9")
    ap.add_argument("--phi", type=float, default=0.5)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--engine", default="numpy", choices=["numpy", "onnxruntime"])
    ap.add_argument("--plot", help="also draw the curves to this PNG (needs matplotlib)")
    args = ap.parse_args()
    norms = args.norms.split(",")
    results = curves(args.T, norms, args.phi, args.limit, args.engine)
    first = next(iter(results.values()))[0]
    print(f"{first.samples} test samples, phi = {args.phi:g}, ANN accuracy {100 * first.ann_accuracy:.2f}%\n")
    print("| t | " + " | ".join(f"{n} acc" for n in norms) + " | " + " | ".join(f"{n} agree" for n in norms) + " |")
    print("|---" * (1 + 2 * len(norms)) + "|")
    for t in range(1, args.T + 1):
        accs = [f"{100 * results[n][0].accuracy_all[t - 1]:.2f}" for n in norms]
        agrees = [f"{100 * results[n][0].agreement_all[t - 1]:.2f}" for n in norms]
        print(f"| {t} | " + " | ".join(accs) + " | " + " | ".join(agrees) + " |")
    print()
    for n in norms:
        report, seconds = results[n]
        print(f"- {n}: {report.total_spikes_per_sample:,.0f} spikes per sample over T = {args.T}; "
              f"simulated in {seconds:.1f} s ({report.engine} engine)")
    if args.plot:
        from sim.plot import plot_reports  # what `simulate --plot` draws; the API has no plotting call
        plot_reports([(n, results[n][0].to_dict()) for n in norms], args.plot)


if __name__ == "__main__":
    main()

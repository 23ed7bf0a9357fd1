"""Accuracy of a converted transformer at every t = 1..T with --nonlinear exact (the float ceiling) and ugo,
beside the ANN's, the UGO fit errors, and the operations of the attention and MLP blocks against the ANN's
MACs. Prints Markdown (docs/transformers.md holds its output). Calibrates, converts and simulates through
the public API (ann2snn.calibrate / convert / simulate).

usage: python benchmarks/transformer_curve.py [--model examples/fmnist_vit/model.onnx] [--calib-data ...]
       [--data ...] [--T 128] [--limit N] [--ugo-size N] [--json FILE] [--plot FILE.png]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ann2snn  # noqa: E402

EXAMPLE = REPO / "examples" / "fmnist_vit"
DATA = REPO / "examples" / "fmnist_cnn"
SHOWN = (1, 2, 4, 8, 16, 32, 64, 128)
BLOCKS = {"attention": re.compile(r"attn|attention|softmax", re.I), "mlp": re.compile(r"mlp|gelu|fc\d", re.I)}


def block_of(node: str) -> str:
    return next((name for name, pattern in BLOCKS.items() if pattern.search(node)), "other")


def operations_by_block(energy: dict) -> dict:
    """Per block: the ANN's MACs, the SNN's dense MACs and SynOps over the window (UGO output sums fed by
    spikes count as SynOps; they are no layer of the ANN)."""
    out: dict[str, dict[str, float]] = {}
    for row in energy["layers"]:
        entry = out.setdefault(block_of(row["node"]), {"ann_macs": 0, "snn_macs": 0, "synops": 0.0})
        if row["in_ann"]:
            entry["ann_macs"] += row["macs"]
        entry["snn_macs"] += row["snn_macs"]
        entry["synops"] += row["synops"]
    return out


def run(args) -> dict:
    calibration = ann2snn.calibrate(args.model, args.calib_data, batch_size=100)
    results = {"model": str(Path(args.model).relative_to(REPO)) if Path(args.model).is_relative_to(REPO)
               else str(args.model), "T": args.T}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("exact", "ugo"):
            # no tuning option and no data: nothing is searched, every layer gets the default rule (IF, phi 0.5)
            converted = ann2snn.convert(args.model, calibration, T=args.T, nonlinear=mode, ugo_size=args.ugo_size)
            snn = converted.save(Path(tmp) / f"{mode}.snn.onnx")
            start = time.perf_counter()
            report = ann2snn.simulate(snn, args.data, args.T, extra_t=0, engine="numpy", ann=args.model,
                                      batch_size=args.batch_size, limit=args.limit)
            results[mode] = {"accuracy": report.accuracy_all, "agreement": report.agreement_all,
                             "ann_accuracy": report.ann_accuracy, "samples": report.samples,
                             "seconds": time.perf_counter() - start, "ugo": converted.result.ugo_fits,
                             "energy": {k: v for k, v in report.energy.items() if k != "layers"},
                             "blocks": operations_by_block(report.energy)}
    return results


def markdown(results: dict) -> str:
    exact, ugo = results["exact"], results["ugo"]
    shown = [t for t in SHOWN if t <= results["T"]]
    lines = [f"{exact['samples']} test images, ANN accuracy {100 * exact['ann_accuracy']:.2f}%", "",
             "| t | " + " | ".join(str(t) for t in shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for mode, r in (("exact", exact), ("ugo", ugo)):
        lines.append(f"| {mode} | " + " | ".join(f"{100 * r['accuracy'][t - 1]:.2f}" for t in shown) + " |")
    lines += ["", "| UGO | function | input range | hidden | max abs error | mean abs error | max rel. error |",
              "|---|---|---|---|---|---|---|"]
    for f in ugo["ugo"]:
        rel = f"{100 * f['max_relative_error']:.2g}% of " + ("f" if f["relative"] else "the range")
        lines.append(f"| {f['node']} | {f['op']} | {f['range'][0]:.3g}..{f['range'][1]:.3g} | {f['size']} | "
                     f"{f['max_error']:.3g} | {f['mean_error']:.3g} | {rel} |")
    T = results["T"]
    lines += ["", f"| block | ANN MACs | SNN dense MACs over {T} steps | SNN SynOps over {T} steps |", "|---|---|---|---|"]
    for block, ops in ugo["blocks"].items():
        lines.append(f"| {block} | {ops['ann_macs']:,} | {ops['snn_macs']:,} | {ops['synops']:,.0f} |")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ts = range(1, results["T"] + 1)
    for mode, style in (("exact", "-"), ("ugo", "--")):
        ax.plot(ts, [100 * a for a in results[mode]["accuracy"]], style, label=f"--nonlinear {mode}")
    ax.axhline(100 * results["exact"]["ann_accuracy"], color="grey", lw=0.8, label="ANN")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("t (time steps)")
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(EXAMPLE / "model.onnx"))
    ap.add_argument("--calib-data", default=str(DATA / "calib.npz"))
    ap.add_argument("--data", default=str(DATA / "test.npz"))
    ap.add_argument("--T", type=int, default=128)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--ugo-size", type=int)
    ap.add_argument("--json")
    ap.add_argument("--plot")
    ap.add_argument("--from-json", help="print (and plot) the results of an earlier run instead of running")
    args = ap.parse_args()
    results = json.loads(Path(args.from_json).read_text()) if args.from_json else run(args)
    print(markdown(results))
    if args.json and not args.from_json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()

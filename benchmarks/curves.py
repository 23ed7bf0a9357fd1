"""Full accuracy curves t = 1..T of the bundled example for threshold rule x neuron x phi x bias correction
(issue 3): calibrate once, convert each configuration, simulate it once for T steps with the NumPy engine
(the running-mean accuracy at every t comes from that one run), write every curve to a JSON file, print a
Markdown table at a few t and draw one panel per (neuron, phi). Each step is the public API's call
(ann2snn.calibrate; ann2snn.convert with every option given, bias correction on the calibration data;
ann2snn.simulate).

The rules that depend on a target T (mmse, bias correction) target --target-T; signed neurons get
tmax = --T (so the cap tmax*theta/t never binds before the end of the window).

usage: python benchmarks/curves.py [--T 64] [--target-T 8] [--limit 1000] [--bias-samples 500]
       [--engine numpy|onnxruntime] [--json benchmarks/results/curves.json] [--plot docs/ablation_curves.png]
       [--resume] [--plot-only]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EXAMPLE = REPO / "examples" / "fmnist_cnn"
NORMS = ("max", "percentile:99.9", "mmse")
NEURONS = ("if", "signed")
PHIS = (0.0, 0.5)
SHOW = (1, 2, 4, 8, 16, 32, 64)


def key(norm: str, neuron: str, phi: float, bc: bool) -> str:
    return f"{norm}|{neuron}|{phi:g}|{'bc' if bc else 'nobc'}"


def run_grid(args, results: dict, save) -> None:
    import ann2snn

    model_path = EXAMPLE / "model.onnx"
    start = time.perf_counter()
    calibration = ann2snn.calibrate(model_path, EXAMPLE / "calib.npz", batch_size=100)
    print(f"calibrated in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    shard, shards = args.shard
    grid = [g for i, g in enumerate(itertools.product(NORMS, NEURONS, PHIS, (False, True))) if i % shards == shard]
    if args.reverse:
        grid.reverse()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.snn.onnx"
        for norm, neuron, phi, bc in grid:
            name = key(norm, neuron, phi, bc)
            if name in results["curves"] or any(name in json.loads(p.read_text())["curves"]
                                                for p in args.skip_done if p.exists()):
                continue
            start = time.perf_counter()
            ann2snn.convert(model_path, calibration, EXAMPLE / "calib.npz" if bc else None, norm=norm, phi=phi,
                            T=args.target_T, neuron=neuron, tmax=args.T if neuron == "signed" else None,
                            bias_correction=bc, limit=args.bias_samples if bc else None).save(path)
            converted = time.perf_counter() - start
            report = ann2snn.simulate(path, EXAMPLE / "test.npz", args.T, extra_t=0, engine=args.engine,
                                      ann=model_path, batch_size=args.batch_size, limit=args.limit)
            results["ann_accuracy"] = report.ann_accuracy
            results["samples"] = report.samples
            results["curves"][name] = {"norm": norm, "neuron": neuron, "phi": phi, "bias_correction": bc,
                                       "accuracy": report.accuracy_all, "agreement": report.agreement_all,
                                       "spikes_per_sample": report.total_spikes_per_sample,
                                       "convert_s": round(converted, 1), "simulate_s": round(report.seconds, 1)}
            save(results)
            target = min(args.target_T, args.T)
            print(f"{name}: t={target} {100 * report.accuracy_all[target - 1]:.2f}  t={args.T} "
                  f"{100 * report.accuracy_all[-1]:.2f}  (convert {converted:.0f} s, simulate "
                  f"{report.seconds:.0f} s)", file=sys.stderr, flush=True)


def table(results: dict) -> str:
    T = results["T"]
    shown = [t for t in SHOW if t <= T]
    lines = ["| norm | neuron | phi | bias corr. | " + " | ".join(f"t={t}" for t in shown) + " |",
             "|---" * (4 + len(shown)) + "|"]
    for norm, neuron, phi, bc in itertools.product(NORMS, NEURONS, PHIS, (False, True)):
        curve = results["curves"].get(key(norm, neuron, phi, bc))
        if curve is None:
            continue
        cells = " | ".join(f"{100 * curve['accuracy'][t - 1]:.2f}" for t in shown)
        lines.append(f"| {norm} | {neuron} | {phi:g} | {'on' if bc else 'off'} | {cells} |")
    lines.append("")
    lines.append(f"ANN accuracy on the same {results.get('samples')} samples: {100 * results['ann_accuracy']:.2f}%")
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"max": "tab:blue", "percentile:99.9": "tab:orange", "mmse": "tab:green"}
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True, sharey=True)
    for (row, neuron), (col, phi) in itertools.product(enumerate(NEURONS), enumerate(PHIS)):
        ax = axes[row][col]
        for norm, bc in itertools.product(NORMS, (False, True)):
            curve = results["curves"].get(key(norm, neuron, phi, bc))
            if curve is None:
                continue
            ts = range(1, len(curve["accuracy"]) + 1)
            ax.plot(ts, [100 * a for a in curve["accuracy"]], color=colours[norm], linestyle="--" if bc else "-",
                    linewidth=1.3, label=f"{norm}{', bias corr.' if bc else ''}")
        ax.axhline(100 * results["ann_accuracy"], color="gray", linestyle=":", linewidth=1, label="ANN")
        ax.set_title(f"{neuron} neuron, phi = {phi:g}", fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xticks([t for t in SHOW if t <= results["T"]], [str(t) for t in SHOW if t <= results["T"]])
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
        if row == 1:
            ax.set_xlabel("time step t")
        if col == 0:
            ax.set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Bundled CNN, {results.get('samples')} test images; mmse and bias correction target "
                 f"T = {results['target_T']}; solid: no bias correction, dashed: bias correction", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def parse_shard(text: str) -> tuple[int, int]:
    k, n = (int(v) for v in text.split("/"))
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"shard {text!r}: need 0 <= K < N")
    return k, n


def write(path: Path, results: dict) -> None:
    """The settings, then one configuration per line (fractions rounded to 5 decimals), so the file diffs well."""
    head = {k: v for k, v in results.items() if k != "curves"}
    rows = []
    for name, curve in sorted(results["curves"].items()):
        curve = {k: [round(a, 5) for a in v] if isinstance(v, list) else v for k, v in curve.items()}
        rows.append(f"  {json.dumps(name)}: {json.dumps(curve)}")
    text = json.dumps(head, indent=1)[:-2] + ',\n "curves": {\n' + ",\n".join(rows) + "\n }\n}\n"
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=64, help="steps simulated (and signed tmax)")
    ap.add_argument("--target-T", type=int, default=8, help="T that mmse and bias correction target")
    ap.add_argument("--limit", type=int, default=1000, help="first N test images")
    ap.add_argument("--bias-samples", type=int, default=500, help="calibration images for bias correction")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--engine", default="numpy", choices=["numpy", "onnxruntime"], help="same spikes either way")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "curves.json")
    ap.add_argument("--plot", type=Path, help="draw the curves to this PNG")
    ap.add_argument("--resume", action="store_true", help="keep the configurations already in --json")
    ap.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="K/N",
                    help="run only every N-th configuration from the K-th (one process per shard, each with its "
                         "own --json; join them with --merge)")
    ap.add_argument("--reverse", action="store_true", help="run the configurations in reverse order")
    ap.add_argument("--skip-done", type=Path, nargs="+", default=[], metavar="JSON",
                    help="skip configurations found in these result files (re-read before each one), so a "
                         "second process can take over a shard from its end")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="join the curves of these result files into --json, then print and plot")
    ap.add_argument("--plot-only", action="store_true", help="only print the table and plot from --json")
    args = ap.parse_args()
    settings = {"T": args.T, "target_T": args.target_T, "limit": args.limit, "bias_samples": args.bias_samples,
                "engine": args.engine, "signed_tmax": args.T}
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        results = {**{k: v for k, v in parts[0].items() if k != "curves"}, "curves": {}}
        results.pop("total_s", None)  # per-configuration times stay in each curve
        for part in parts:
            results["curves"].update(part["curves"])
        write(args.json, results)
    elif (args.resume or args.plot_only) and args.json.exists():
        results = json.loads(args.json.read_text())
    else:
        results = {**settings, "curves": {}}
    if not (args.plot_only or args.merge):
        if {k: results.get(k) for k in settings} != settings:
            raise SystemExit(f"{args.json} was made with other settings; drop --resume")
        args.json.parent.mkdir(parents=True, exist_ok=True)

        start = time.perf_counter()
        run_grid(args, results, lambda r: write(args.json, r))
        results["total_s"] = round(results.get("total_s", 0) + time.perf_counter() - start, 1)
        write(args.json, results)
    print(table(results))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()

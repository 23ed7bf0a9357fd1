"""Issue 18, few-spikes coding: FS against rate coding on the same test images, by accuracy, steps, spikes per
neuron and the energy estimate.

MODEL_DIR holds model.onnx, calib.npz and test.npz (benchmarks/make_lenet.py writes them for the LeNet-5;
examples/fmnist_cnn holds them for the bundled CNN). Rows:

- fs K=k (norm): `ann2snn convert model.onnx --data calib.npz --coding fs --K k [--norm N]`, run for the
  file's default_T steps;
- rate T=t: `ann2snn convert model.onnx --data calib.npz` (the defaults), run for t steps.

Accuracy and agreement with the ANN's top-1 come from stepping the file with ../shared/tools/step_onnx.py,
which knows only the exported file's contract (it sums the outputs of an FS file, ann2snn.decoding = sum);
spikes per neuron (over every neuron layer, weighted by its neurons) and the energy ratio to the ANN from
`ann2snn simulate --json` on the same images. A test set without labels (y) reports agreement only.

usage: python benchmarks/bench_fs.py MODEL_DIR [--K 4,6,8,10] [--norms max,percentile:99.99]
       [--rate-T 8,32] [--limit N] [--ann2snn PATH] [--python PATH] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STEP_ONNX = REPO.parent / "shared" / "tools" / "step_onnx.py"


def run(cmd: list) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def stepped(python: str, snn: Path, test: Path, ann: Path, T: int) -> dict:
    out = json.loads(run([python, STEP_ONNX, snn, test, "--T", T, "--ann", ann]).strip().splitlines()[-1])
    key = str(T)
    return {"accuracy": out["acc"].get(key) if out.get("acc") else None, "agreement": out["agree"][key],
            "ann_accuracy": out.get("ann_acc")}


def simulated(cli: str, snn: Path, test: Path, ann: Path, T: int, folder: Path) -> dict:
    report = folder / "sim.json"
    run([cli, "simulate", snn, "--data", test, "--ann", ann, "--T", T, "--json", report])
    r = json.loads(report.read_text())
    neurons = sum(layer["neurons"] for layer in r["layers"])
    spikes = sum(layer["spikes_per_neuron"] * layer["neurons"] for layer in r["layers"])
    return {"spikes_per_neuron": spikes / neurons if neurons else 0.0,
            "energy_ratio": r["energy"]["energy_ratio"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--K", default="4,6,8,10")
    p.add_argument("--norms", default="max")
    p.add_argument("--rate-T", default="8,32")
    p.add_argument("--limit", type=int, default=None, help="test samples (default: all)")
    p.add_argument("--ann2snn", default=str(REPO / ".venv" / "bin" / "ann2snn"))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    ann, calib, test = (args.model_dir / n for n in ("model.onnx", "calib.npz", "test.npz"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.limit:
            with np.load(test, allow_pickle=False) as data:
                np.savez(folder / "test.npz", **{k: data[k][:args.limit] for k in data.files})
            test = folder / "test.npz"
        jobs = [("fs", int(k), norm) for norm in args.norms.split(",") for k in args.K.split(",")]
        jobs += [("rate", int(t), None) for t in args.rate_T.split(",")]
        rate_file = None
        for coding, k, norm in jobs:
            snn = folder / f"{coding}{k}.snn.onnx"
            start = time.perf_counter()
            if coding == "fs":
                flags = ["--coding", "fs", "--K", k] + (["--norm", norm] if norm else [])
                run([args.ann2snn, "convert", ann, "--data", calib, "-o", snn, "--json", folder / "c.json", *flags])
                steps = json.loads((folder / "c.json").read_text())["default_T"]
                label = f"fs K={k} ({norm})"
            else:
                if rate_file is None:
                    rate_file = snn
                    run([args.ann2snn, "convert", ann, "--data", calib, "-o", snn])
                snn, steps, label = rate_file, k, f"rate T={k} (defaults)"
            convert_s = time.perf_counter() - start
            row = {"row": label, "steps": steps, "convert_s": round(convert_s, 1),
                   **stepped(args.python, snn, test, ann, steps), **simulated(args.ann2snn, snn, test, ann, steps, folder)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    ann_acc = rows[0]["ann_accuracy"]
    print(f"\n{args.model_dir}: ANN accuracy {ann_acc}")
    print("| row | steps | accuracy | agreement | spikes per neuron | energy vs ANN |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        acc = f"{100 * r['accuracy']:.2f}%" if r["accuracy"] is not None else "-"
        print(f"| {r['row']} | {r['steps']} | {acc} | {100 * r['agreement']:.1f}% | {r['spikes_per_neuron']:.2f} "
              f"| {r['energy_ratio']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"model_dir": str(args.model_dir), "ann_accuracy": ann_acc, "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()

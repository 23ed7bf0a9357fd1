"""Calibration cost in one run (issue 17): `ann2snn calibrate` as the public API's call (ann2snn.calibrate:
exact top values, in-graph reductions, histograms) on examples/fmnist_cnn with its calibration set
tiled 10x, against one plain onnxruntime pass over the same data and onnxruntime.quantization's MinMax
calibrator, side by side (interleaved rounds, best of --repeat); then calibrate()'s peak memory at 1x and
10x data, each in its own subprocess. Targets: calibrate <= 2.0x the plain pass and <= 0.5x MinMax.

usage: python benchmarks/bench_calibrate.py [--scale 10] [--batch-size 50] [--threads 2] [--repeat 3]
       [--skip-memory]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from common import EXAMPLE, MB, best_of, load_line, machine_lines  # noqa: E402
import ann2snn  # noqa: E402


def plain_pass(model: Path, x: np.ndarray, batch: int, threads: int) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for i in range(0, len(x), batch):
        session.run(None, {name: x[i:i + batch]})


def minmax(model: Path, x: np.ndarray, batch: int, tmp: Path) -> None:
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(x):
                return None
            self.i += batch
            return {"input": x[self.i - batch:self.i]}

    calibrator = create_calibrator(model, None, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(Reader())
    calibrator.compute_data()


CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
def hwm_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
import ann2snn
import onnxruntime, onnx_graphsurgeon  # noqa: F401
base = hwm_kb()
start = time.perf_counter()
cal = ann2snn.calibrate({model!r}, {data!r}, batch_size={batch})
print(json.dumps({{"base": base, "peak": hwm_kb(), "s": time.perf_counter() - start, "n": cal.samples}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=EXAMPLE / "model.onnx")
    ap.add_argument("--data", type=Path, default=EXAMPLE / "calib.npz")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads of the plain pass")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    print("# bench_calibrate: " + " ".join(["python", "benchmarks/bench_calibrate.py"] + sys.argv[1:]))
    for line in machine_lines():
        print(line)
    with np.load(args.data) as z:
        arrays = {k: z[k] for k in z.files}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiled = {k: np.concatenate([v] * args.scale) for k, v in arrays.items()}
        path = tmp / f"calib_x{args.scale}.npz"
        np.savez(path, **tiled)
        x = tiled["x"]
        b = args.batch_size
        times = best_of({
            "plain": lambda: plain_pass(args.model, x, b, args.threads),
            "minmax": lambda: minmax(args.model, x, b, tmp),
            "calibrate": lambda: ann2snn.calibrate(args.model, path, batch_size=b),
        }, args.repeat)
        best = {k: min(v) for k, v in times.items()}
        cal = ann2snn.calibrate(args.model, path, batch_size=b)
        print(f"\n{len(x)} samples, batch {b}, best of {args.repeat} (all runs: "
              + "; ".join(f"{k} {', '.join(f'{t:.2f}' for t in v)}" for k, v in times.items()) + ")\n")
        print("| | seconds | vs plain pass |")
        print("|---|---:|---:|")
        for label, key in (("plain onnxruntime pass (session + runs)", "plain"),
                           ("onnxruntime.quantization MinMax calibrator", "minmax"),
                           ("ann2snn calibrate (library call)", "calibrate")):
            print(f"| {label} | {best[key]:.2f} | {best[key] / best['plain']:.2f}x |")
        r_plain, r_minmax = best["calibrate"] / best["plain"], best["calibrate"] / best["minmax"]
        print(f"\ncalibrate / plain = {r_plain:.2f} (target <= 2.0: {'met' if r_plain <= 2.0 else 'MISSED'}); "
              f"calibrate / MinMax = {r_minmax:.2f} (target <= 0.5: {'met' if r_minmax <= 0.5 else 'MISSED'})")
        for q in (99.0, 99.9, 99.99):
            exact = sum(s.exact(q) for s in cal.tensors.values())
            print(f"p{q:g}: exact on {exact} of {len(cal.tensors)} tensors (the rest from the histogram, within one "
                  f"bin: at most {max(s.bin_width / max(s.maximum, 1e-30) for s in cal.tensors.values()):.1e} "
                  "of the max)")
        if args.skip_memory:
            return
        print("\n| samples | baseline RSS (MiB) | peak RSS (MiB) | peak - baseline (MiB) | data array (MiB) | s |")
        print("|---:|---:|---:|---:|---:|---:|")
        rows = []
        for factor in (1, args.scale):
            p = tmp / f"m{factor}.npz"
            np.savez(p, **{k: np.concatenate([v] * factor) for k, v in arrays.items()})
            code = CHILD.format(repo=str(Path(__file__).resolve().parents[1]), model=str(args.model), data=str(p),
                                batch=b)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["data"] = arrays["x"].nbytes * factor / MB
            rows.append(r)
            print(f"| {r['n']} | {r['base'] / 1024:.1f} | {r['peak'] / 1024:.1f} | {(r['peak'] - r['base']) / 1024:.1f} "
                  f"| {r['data']:.1f} | {r['s']:.2f} |")
        grow = (rows[1]["peak"] - rows[0]["peak"]) / 1024
        print(f"\npeak grows {grow:.1f} MiB for {args.scale}x data; the data array itself grows "
              f"{rows[1]['data'] - rows[0]['data']:.1f} MiB; the rest, {grow - rows[1]['data'] + rows[0]['data']:.1f} MiB, "
              "is the statistics (top values grow with the data up to their cap)")
    print(load_line())


if __name__ == "__main__":
    main()

"""One step of an exported file against one inference of its ANN, in onnxruntime at the same batch (issue 17):
peak resident memory of a process that only loads the model and runs it, and the time per call.

    python benchmarks/bench_step_memory.py ANN.onnx SNN.onnx DATA.npz [--batch 1] [--steps 16] [--threads 2]

Each model runs in its own fresh subprocess (the peak is the process's, onnxruntime and Python included, and
a bare process that imports onnxruntime and NumPy is measured too, so the models' own share can be read). The
SNN is stepped by the contract alone: state.* fed zeros, then their .next outputs. Targets: the SNN's peak
within 3x the ANN's, one step within 3x one inference.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, onnxruntime as ort
kind, path, data, batch, steps, threads = sys.argv[1:7]
batch, steps, threads = int(batch), int(steps), int(threads)
out = {}
if kind != "bare":
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    with np.load(data, allow_pickle=False) as d:
        x = d[d.files[0] if "x" not in d.files else "x"][:batch]
    inputs = s.get_inputs()
    first = inputs[0].name
    states = [i for i in inputs if i.name.startswith("state.")]
    feeds = {first: x}
    feeds.update({i.name: np.zeros([d if isinstance(d, int) else batch for d in i.shape], np.float32)
                  for i in states})
    names = [o.name for o in s.get_outputs()]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        values = s.run(names, feeds)
        times.append(time.perf_counter() - start)
        for i in states:
            feeds[i.name] = values[names.index(i.name + ".next")]
    out["call_s"] = float(np.median(times[1:] if len(times) > 1 else times))
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def measure(kind: str, path: str, data: str, batch: int, steps: int, threads: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, kind, path, data, str(batch), str(steps), str(threads)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ann")
    parser.add_argument("snn")
    parser.add_argument("data")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    bare = measure("bare", "", "", 0, 0, args.threads)
    ann = measure("ann", args.ann, args.data, args.batch, args.steps, args.threads)
    snn = measure("snn", args.snn, args.data, args.batch, args.steps, args.threads)
    print(f"batch {args.batch}, {args.steps} calls each, {args.threads} threads")
    print("| | peak MB | above a bare process | median call |")
    print("|---|---:|---:|---:|")
    print(f"| bare process (Python, NumPy, onnxruntime) | {bare['peak_mb']:.1f} | - | - |")
    for name, row in (("ANN, one inference", ann), ("SNN, one step", snn)):
        print(f"| {name} | {row['peak_mb']:.1f} | {row['peak_mb'] - bare['peak_mb']:.1f} | "
              f"{1000 * row['call_s']:.2f} ms |")
    print(f"SNN / ANN: peak {snn['peak_mb'] / ann['peak_mb']:.2f}x (target <= 3), above bare "
          f"{(snn['peak_mb'] - bare['peak_mb']) / max(ann['peak_mb'] - bare['peak_mb'], 1e-9):.2f}x; "
          f"time per call {snn['call_s'] / ann['call_s']:.2f}x (target <= 3)")


if __name__ == "__main__":
    main()

"""One call of each ONNX file (an ANN, and spiking files stepped by the contract alone), interleaved in one
process so that every file sees the same machine: median milliseconds per call and the ratio to the first
file.

    python benchmarks/bench_step_time.py DATA.npz ANN.onnx SNN.onnx [SNN2.onnx ...] [--batch 1] [--rounds 40]

onnxruntime's worker threads are told not to spin between calls (session.intra_op.allow_spinning = 0):
spinning threads of one session would take the cores from the next. That makes one call slower than in a
process of its own, for every file alike; bench_step_memory.py measures files one process each.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort


def session(path: str, threads: int, x: np.ndarray) -> tuple:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = s.get_inputs()
    feeds = {inputs[0].name: x}
    feeds.update({i.name: np.zeros([d if isinstance(d, int) else len(x) for d in i.shape], np.float32)
                  for i in inputs if i.name.startswith("state.")})
    return s, feeds, [o.name for o in s.get_outputs()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=5, help="calls of a file in a row, each round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with np.load(args.data, allow_pickle=False) as data:
        x = data["x" if "x" in data.files else data.files[0]][:args.batch]
    runs = [session(path, args.threads, x) for path in args.models]
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(args.rounds):
        for k, (s, feeds, names) in enumerate(runs):
            for _ in range(args.calls):
                start = time.perf_counter()
                values = s.run(names, feeds)
                times[k].append(time.perf_counter() - start)
                feeds.update({n[:-len(".next")]: v for n, v in zip(names, values) if n.endswith(".next")})
    first = float(np.median(times[0]))
    print(f"batch {args.batch}, {args.rounds} rounds of {args.calls} calls, {args.threads} threads, no spinning")
    print("| file | median call | vs the first |\n|---|---:|---:|")
    for path, t in zip(args.models, times):
        print(f"| {path} | {1000 * np.median(t):.2f} ms | {np.median(t) / first:.2f}x |")


if __name__ == "__main__":
    main()

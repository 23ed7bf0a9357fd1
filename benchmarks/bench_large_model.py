"""Peak memory of calibrate and convert on a ~100M-parameter model, against the size of its weights.

    python benchmarks/bench_large_model.py [--width 4096] [--layers 6] [--keep DIR]

The model (built here with onnx.helper, written to a temporary folder, never committed) is
x [N, W] -> (Gemm W x W -> Relu) x (L - 1) -> Gemm W x W, float32: L * (W^2 + W) parameters, 100.7M for the
defaults (403 MB of weights). It is written twice, with inline weights and with external data. Each step
runs in a fresh Python process through the public API, as a user calls it (ann2snn.calibrate; then
ann2snn.Calibration.read, ann2snn.convert with norm max and phi 0.5 given (it loads the model, picks T as
`ann2snn convert` does and converts), Converted.save), and reports VmHWM (peak resident memory,
/proc/self/status) per stage, the high-water mark reset between stages through /proc/self/clear_refs, minus
the resident memory after the imports, and the resident memory left after the stage. The figure of interest is that peak in units of the weights' size:
1.0 means one copy of the weights."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from common import MB, REPO, load_line, machine_lines  # noqa: E402

CHILD = r'''
import json, sys, time
from pathlib import Path
sys.path.insert(0, REPO)

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def reset_peak():
    Path("/proc/self/clear_refs").write_text("5")

import ann2snn
baseline = status("VmRSS")
stages = {}

def stage(name, fn):
    reset_peak()
    start = time.perf_counter()
    value = fn()
    stages[name] = {"peak": status("VmHWM") - baseline, "seconds": time.perf_counter() - start,
                    "rss_after": status("VmRSS") - baseline}
    return value

model_path, data_path, calib_path, out_path, what = sys.argv[1:6]
if what == "calibrate":
    result = stage("calibrate", lambda: ann2snn.calibrate(model_path, data_path, batch_size=16))
    Path(calib_path).write_text(result.to_json())
else:
    calibration = stage("read calibration", lambda: ann2snn.Calibration.read(calib_path))
    converted = stage("convert", lambda: ann2snn.convert(model_path, calibration, norm="max", phi=0.5))
    stage("save", lambda: converted.save(out_path))
print(json.dumps({"baseline": baseline, "stages": stages}))
'''


def build(width: int, layers: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width), dtype=np.float32) * np.float32(np.sqrt(1.0 / width)))
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        del w
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"gemm{i}"], name=f"gemm{i}", transB=1))
        x = f"gemm{i}"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run_child(*args: str) -> dict:
    code = CHILD.replace("REPO", repr(str(REPO)), 1)
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--keep", type=Path, help="build the models in this folder and keep them")
    args = parser.parse_args()
    for line in machine_lines():
        print(line)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="ann2snn_large_"))
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = build(args.width, args.layers)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    inline, external = folder / "inline.onnx", folder / "external.onnx"
    onnx.save(model, inline)
    onnx.save(model, external, save_as_external_data=True, location="external.onnx.weights", size_threshold=1024)
    del model
    data = folder / "data.npz"
    np.savez(data, x=np.random.default_rng(1).random((args.samples, args.width)).astype(np.float32))
    print(f"model: {params / 1e6:.1f}M parameters, {weight_bytes / MB:.0f} MiB of weights "
          f"(built and written in {time.perf_counter() - start:.0f} s)")
    print("| input | stage | peak - baseline (MiB) | x weights | held after (x weights) | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    results = {}
    for name, path in (("inline", inline), ("external data", external)):
        calib = folder / f"{path.stem}.calib.json"
        runs = [run_child(path, data, calib, "-", "calibrate"),
                run_child(path, data, calib, folder / f"{path.stem}.snn.onnx", "convert")]
        for run in runs:
            for stage, s in run["stages"].items():
                print(f"| {name} | {stage} | {s['peak'] / MB:.0f} | {s['peak'] / weight_bytes:.2f} | "
                      f"{s['rss_after'] / weight_bytes:.2f} | {s['seconds']:.1f} |")
        results[name] = runs
    out_files = sorted(p.name for p in folder.iterdir() if ".snn." in p.name)
    print(f"written: {', '.join(out_files)}; baseline after imports: {runs[0]['baseline'] / MB:.0f} MiB")
    print(load_line())
    if not args.keep:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()

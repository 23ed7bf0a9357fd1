"""ann2snn against SpikingJelly's ann2snn converter on the same trained network (the bundled Fashion-MNIST CNN):
accuracy at a few T for each threshold rule, and simulation speed on one batch.

SpikingJelly is a benchmark-only dependency: nothing in the project imports it, nor torch. Without them (or
with a SpikingJelly older than 2.0, which lacks ann2snn.RateCodingRecipe) this script says why and exits 0.

What it does:
1. Rebuilds the network in torch: the FmnistCNN class of examples/make_example.py with the initializers of
   examples/fmnist_cnn/model.onnx loaded by name, and checks it against onnxruntime (max |logit diff|).
2. SpikingJelly: Converter(RateCodingRecipe(calib batches, mode=...)).convert(ann), then
   functional.set_step_mode(net, 'm'); each test batch is fed as a [T, B, ...] sequence (the same image every
   step) after functional.reset_net(net); the accuracy at t is that of the summed outputs of steps 1..t.
3. ann2snn: the CLI (`ann2snn calibrate`, `convert`, `simulate --json`) on the ONNX file, run from this
   checkout. IF-neuron conversions do not depend on T, so one T = max(--T) simulation gives every T; the
   signed / per-channel / bias-correction combination is converted and simulated once per T with --T T,
   because its spike budget (tmax) and its bias correction are tied to T.
4. Speed: the SpikingJelly network ('99.9%' mode, multi-step, CPU) against our NumPy and onnxruntime engines
   on the model converted with --norm percentile:99.9, same batch and T; median of --repeat interleaved runs.
   The conversions go through the CLI; the speed runs time the engines' internals (sim.engine, sim.ort) on
   purpose.

usage: python benchmarks/bench_spikingjelly.py [--limit N] [--T 4,8,16,32] [--batch 100] [--engine onnxruntime]
       [--speed-batch 256] [--speed-T 32] [--repeat 3] [--threads N] [--no-speed] [--json FILE]

--threads N sets the threads of torch, OpenBLAS and onnxruntime alike for the speed runs. On a machine that
other jobs keep busy, give --threads 1: torch's OpenMP workers stall each other at every op when a core is
taken away (elementwise ops measured 20 ms instead of 0.05 ms on the 2-core development machine under load).
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _threads_argument() -> int:
    """--threads N, read before NumPy is imported so that it can reach OpenBLAS (OPENBLAS_NUM_THREADS)."""
    for i, arg in enumerate(sys.argv):
        value = arg.partition("=")[2] if arg.startswith("--threads=") else \
            sys.argv[i + 1] if arg == "--threads" and i + 1 < len(sys.argv) else None
        if value is not None and value.isdigit():
            return int(value)
    return 0


if _threads_argument():
    os.environ["OPENBLAS_NUM_THREADS"] = str(_threads_argument())

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from common import EXAMPLE, REPO, best_of, fmt_times, load_line, machine_lines  # noqa: E402

MODEL = EXAMPLE / "model.onnx"
CALIB = EXAMPLE / "calib.npz"
TEST = EXAMPLE / "test.npz"

# SpikingJelly configurations: label -> RateCodingRecipe keyword arguments. The first two are its classic
# modes (one threshold per layer, IF neurons starting at 0, MaxPool applied to the spikes). The third is the
# most the recipe offers without training: per-channel thresholds, MaxPool moved before the neuron, membrane
# starting at half the threshold (the last two exist only with channel_wise=True).
SJ_CONFIGS: dict[str, dict] = {
    "max": {"mode": "max"},
    "99.9%": {"mode": "99.9%"},
    "99.9%, channel-wise, MaxPool before neuron, v(0) = theta/2":
        {"mode": "99.9%", "channel_wise": True, "pre_spike_maxpool": True, "half_threshold": True},
}
SJ_SPEED_CONFIG = "99.9%"

# ann2snn conversions with IF neurons: label -> `ann2snn convert` options (phi 1/2 unless given).
OURS_IF: dict[str, list[str]] = {
    "max": ["--norm", "max"],
    "percentile:99.9": ["--norm", "percentile:99.9"],
    "percentile:99 (default)": ["--norm", "percentile:99"],
    "max, phi 0": ["--norm", "max", "--phi", "0"],
    "percentile:99.9, phi 0": ["--norm", "percentile:99.9", "--phi", "0"],
}
OURS_SPEED_CONFIG = "percentile:99.9"
BEST_LABEL = "percentile:99, signed, per-channel, bias correction, --T T"
BEST = ["--norm", "percentile:99", "--neuron", "signed", "--per-channel", "--bias-correction", "--data", str(CALIB)]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- SpikingJelly


def import_spikingjelly(needs: tuple[str, ...] = ("RateCodingRecipe",)):
    """(torch, ann2snn, functional), or the reason why not as a string; `needs`: ann2snn names required."""
    for name in ("torch", "spikingjelly"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (pip install torch spikingjelly)"
    os.environ.setdefault("TQDM_DISABLE", "1")  # the recipe's calibration loop draws a tqdm bar
    try:
        import torch
        from spikingjelly.activation_based import ann2snn, functional
    except ImportError as exc:
        return f"spikingjelly is not importable: {exc}"
    missing = [name for name in needs if not hasattr(ann2snn, name)]
    if missing:
        return (f"spikingjelly {importlib.metadata.version('spikingjelly')} has no ann2snn.{', '.join(missing)}; "
                "this benchmark needs spikingjelly >= 2.0")
    return torch, ann2snn, functional


def torch_ann(torch, path: Path):
    """examples/make_example.py's FmnistCNN with the ONNX file's initializers, which torch.onnx.export named
    after the state_dict keys. Only the BatchNorm counters (num_batches_tracked) are absent from the file."""
    spec = importlib.util.spec_from_file_location("make_example", REPO / "examples" / "make_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.FmnistCNN()
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(path).graph.initializer}
    missing, unexpected = net.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"{path} does not match FmnistCNN: missing {missing}, unexpected {unexpected}")
    return net.eval()


def check_ann(torch, net, x: np.ndarray, y: np.ndarray) -> dict:
    """The torch module against onnxruntime on the test images: max |logit diff| and both accuracies."""
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ort_logits, torch_logits = [], []
    with torch.no_grad():
        for i in range(0, len(x), 500):
            ort_logits.append(session.run(None, {name: x[i:i + 500]})[0])
            torch_logits.append(net(torch.from_numpy(x[i:i + 500])).numpy())
    a, b = np.concatenate(ort_logits), np.concatenate(torch_logits)
    return {"max_abs_diff": float(np.abs(a - b).max()), "onnxruntime_accuracy": float(np.mean(a.argmax(1) == y)),
            "torch_accuracy": float(np.mean(b.argmax(1) == y)), "prediction_mismatches": int(np.sum(a.argmax(1) !=
                                                                                                     b.argmax(1)))}


def sj_convert(sj, net, calib_x: np.ndarray, options: dict, batch: int):
    """SpikingJelly's conversion of a copy of `net`, calibrated on `calib_x` in batches of `batch` (its
    per-layer thresholds are a running average, momentum 0.1, of the per-batch max or percentile), switched to
    multi-step mode."""
    torch, ann2snn, functional = sj
    loader = [(torch.from_numpy(calib_x[i:i + batch]),) for i in range(0, len(calib_x), batch)]
    recipe = ann2snn.RateCodingRecipe(dataloader=loader, **options)
    snn = ann2snn.Converter(recipe, device="cpu").convert(copy.deepcopy(net))
    functional.set_step_mode(snn, "m")
    return snn.eval()


def sj_forward(sj, snn, x: np.ndarray, T: int):
    """Summed outputs per step, [T, B, classes]: reset, then the image repeated over T in one multi-step call."""
    torch, _, functional = sj
    with torch.no_grad():
        functional.reset_net(snn)
        xb = torch.from_numpy(x)
        out = snn(xb.unsqueeze(0).expand(T, *xb.shape).contiguous())
        return out.cumsum(0).numpy()


def sj_accuracy(sj, snn, x: np.ndarray, y: np.ndarray, T: int, batch: int) -> list[float]:
    correct = np.zeros(T)
    for i in range(0, len(x), batch):
        correct += (sj_forward(sj, snn, x[i:i + batch], T).argmax(-1) == y[i:i + batch]).sum(1)
    return (correct / len(x)).tolist()


# ----------------------------------------------------------------------------------------------- ann2snn


def cli(args: list[str], shown: list[str]) -> None:
    """`ann2snn ARGS` from this checkout (PYTHONPATH first, ahead of any installed copy)."""
    shown.append("ann2snn " + " ".join(args))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")]
                                                                           if p]))
    code = "import sys; from ann2snn_cli.app import main; sys.argv[0] = 'ann2snn'; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"ann2snn {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")


def ours_convert_and_simulate(tmp: Path, label: str, options: list[str], T: int, limit: int | None, engine: str,
                              shown: list[str]) -> tuple[Path, dict]:
    slug = "".join(c if c.isalnum() else "_" for c in label)
    snn = tmp / f"{slug}.snn.onnx"
    cli(["convert", str(MODEL), "--calib", str(tmp / "calib.json"), *options, "-o", str(snn),
         "--json", str(tmp / f"{slug}.convert.json")], shown)
    report = tmp / f"{slug}.simulate.json"
    cli(["simulate", str(snn), "--data", str(TEST), "--T", str(T), "--ann", str(MODEL), "--engine", engine,
         "--batch-size", "250", *(["--limit", str(limit)] if limit else []), "--json", str(report)], shown)
    return snn, json.loads(report.read_text())


# ------------------------------------------------------------------------------------------------- speed


def speed(sj, snn_sj, snn_ours: Path, x: np.ndarray, T: int, repeat: int, threads: int) -> dict:
    from sim.engine import NumpyEngine
    from sim.model import load_spiking
    from sim.ort import OrtEngine

    model = load_spiking(snn_ours)
    feeds = {model.inputs[0].name: x}
    numpy_engine, ort_engine = NumpyEngine(model), OrtEngine(model, threads)
    runs = {"spikingjelly": lambda: sj_forward(sj, snn_sj, x, T),
            "numpy": lambda: numpy_engine.run(feeds, T),
            "onnxruntime": lambda: ort_engine.run(feeds, T)}
    for fn in runs.values():  # warm-up
        fn()
    times = best_of(runs, repeat)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": len(x), "T": T, "repeat": repeat, "times": times, "median": median,
            "spikingjelly_over_numpy": median["spikingjelly"] / median["numpy"],
            "spikingjelly_over_onnxruntime": median["spikingjelly"] / median["onnxruntime"]}


# -------------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, help="test images (default: all 2000 of test.npz)")
    ap.add_argument("--T", default="4,8,16,32", help="time steps to report, comma-separated")
    ap.add_argument("--batch", type=int, default=100, help="SpikingJelly: batch size of calibration and test")
    ap.add_argument("--engine", default="onnxruntime", choices=["numpy", "onnxruntime"],
                    help="ann2snn engine for the accuracy runs (both agree to 1e-5)")
    ap.add_argument("--speed-batch", type=int, default=256)
    ap.add_argument("--speed-T", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="speed: median of N interleaved runs")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads of all three in the speed runs: torch.set_num_threads, OPENBLAS_NUM_THREADS, "
                         "onnxruntime intra-op (default 0: each library's own default)")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = ap.parse_args()
    steps = sorted({int(t) for t in args.T.split(",") if t})
    command = " ".join(["python", "benchmarks/bench_spikingjelly.py"] + sys.argv[1:])

    sj = import_spikingjelly()
    if isinstance(sj, str):
        print(f"bench_spikingjelly: skipped: {sj}")
        return 0
    torch = sj[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    versions = {"spikingjelly": importlib.metadata.version("spikingjelly"), "torch": torch.__version__,
                "onnxruntime": ort.__version__, "numpy": np.__version__}
    print(f"# bench_spikingjelly: {command}")
    for line in machine_lines():
        print(line)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"threads: torch {torch.get_num_threads()}, onnxruntime intra-op {args.threads or 'default'}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")

    test = np.load(TEST)
    x, y = test["x"][:args.limit], test["y"][:args.limit]
    calib_x = np.load(CALIB)["x"]
    net = torch_ann(torch, MODEL)
    check = check_ann(torch, net, x, y)
    print(f"\ntorch rebuild of {MODEL.relative_to(REPO)} vs onnxruntime on {len(x)} test images: "
          f"max |logit diff| {check['max_abs_diff']:.2e}, {check['prediction_mismatches']} different predictions; "
          f"ANN accuracy onnxruntime {100 * check['onnxruntime_accuracy']:.2f}%, "
          f"torch {100 * check['torch_accuracy']:.2f}%")

    rows, timing, shown = [], {}, []
    T_max = max(steps)
    sj_nets = {}
    for label, options in SJ_CONFIGS.items():
        log(f"spikingjelly {label}: converting and simulating {len(x)} images, T = {T_max}")
        start = time.perf_counter()
        sj_nets[label] = sj_convert(sj, net, calib_x, options, args.batch)
        acc = sj_accuracy(sj, sj_nets[label], x, y, T_max, args.batch)
        timing[f"spikingjelly {label}"] = time.perf_counter() - start
        rows.append({"method": "SpikingJelly", "config": label, "options": options,
                     "accuracy": {t: acc[t - 1] for t in steps}, "ann_accuracy": check["torch_accuracy"]})
        if label != SJ_SPEED_CONFIG:
            del sj_nets[label]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cli(["calibrate", str(MODEL), "--data", str(CALIB), "-o", str(tmp / "calib.json"),
             "--json", str(tmp / "calibrate.json")], shown)
        files = {}
        for label, options in OURS_IF.items():
            log(f"ann2snn {label}: converting and simulating {len(x)} images, T = {T_max}")
            start = time.perf_counter()
            files[label], report = ours_convert_and_simulate(tmp, label, options, T_max, args.limit, args.engine,
                                                             shown)
            timing[f"ann2snn {label}"] = time.perf_counter() - start
            rows.append({"method": "ann2snn", "config": label, "options": options,
                         "accuracy": {t: report["accuracy_all"][t - 1] for t in steps},
                         "ann_accuracy": report["ann_accuracy"]})
        best = {"method": "ann2snn", "config": BEST_LABEL, "options": BEST, "accuracy": {}}
        for t in steps:
            log(f"ann2snn {BEST_LABEL}: T = {t}")
            start = time.perf_counter()
            _, report = ours_convert_and_simulate(tmp, f"best_T{t}", BEST + ["--T", str(t)], t, args.limit,
                                                  args.engine, shown)
            timing[f"ann2snn best T={t}"] = time.perf_counter() - start
            best["accuracy"][t] = report["accuracy_all"][t - 1]
            best["ann_accuracy"] = report["ann_accuracy"]
        rows.append(best)

        result = {"command": command, "versions": versions, "samples": len(x), "steps": steps,
                  "threads": args.threads, "ann_check": check, "accuracy": rows, "ann2snn_commands": shown,
                  "seconds": timing}
        print(f"\n## Accuracy (%) on the first {len(x)} images of {TEST.relative_to(REPO)}\n")
        print("| method | configuration | " + " | ".join(f"T = {t}" for t in steps) + " | ANN |")
        print("|---|---|" + "---:|" * (len(steps) + 1))
        for row in rows:
            print(f"| {row['method']} | {row['config']} | "
                  + " | ".join(f"{100 * row['accuracy'][t]:.2f}" for t in steps)
                  + f" | {100 * row['ann_accuracy']:.2f} |")
        print("\nann2snn commands run (in a temporary directory):")
        for line in shown:
            print(f"  {line}")
        print("\nwall time per row (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()))

        if not args.no_speed:
            xs = test["x"][:args.speed_batch]
            log(f"speed: batch {len(xs)}, T = {args.speed_T}, median of {args.repeat}")
            sp = speed(sj, sj_nets[SJ_SPEED_CONFIG], files[OURS_SPEED_CONFIG], xs, args.speed_T, args.repeat,
                       args.threads)
            sp["configs"] = {"spikingjelly": SJ_SPEED_CONFIG, "ann2snn": OURS_SPEED_CONFIG}
            result["speed"] = sp
            names = {"spikingjelly": f"SpikingJelly '{SJ_SPEED_CONFIG}', multi-step, CPU, torch "
                                     f"{torch.get_num_threads()} threads",
                     "numpy": f"ann2snn NumpyEngine ({OURS_SPEED_CONFIG})",
                     "onnxruntime": f"ann2snn OrtEngine ({OURS_SPEED_CONFIG})"}
            print(f"\n## Speed: batch {sp['batch']} (first images of test.npz), T = {sp['T']}, "
                  f"median of {sp['repeat']} interleaved runs\n")
            print("| run | median (s) | all runs (s) | ms per sample-step | SpikingJelly / this |")
            print("|---|---:|---|---:|---:|")
            for key, label in names.items():
                m = sp["median"][key]
                print(f"| {label} | {m:.3f} | {fmt_times(sp['times'][key])} | "
                      f"{1000 * m / (sp['batch'] * sp['T']):.3f} | {sp['median']['spikingjelly'] / m:.2f} |")
            print(f"\nSpikingJelly / NumpyEngine = {sp['spikingjelly_over_numpy']:.2f}, "
                  f"SpikingJelly / OrtEngine = {sp['spikingjelly_over_onnxruntime']:.2f} "
                  f"(issue 4 target: > 1, ours faster)")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak resident memory of this process: {peak:.0f} MiB")
        print(load_line())
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

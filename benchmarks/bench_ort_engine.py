"""The onnxruntime engine's ways of running a window, against the dense limit (T onnxruntime runs of the ANN)
measured in the same rounds:

- loop: `OrtEngine(model)`, the default: the step graph wrapped into ONNX Loops (sim/ort_loop.py), one call
  per window, spikes counted inside onnxruntime;
- step: `OrtEngine(model, loop=False)`: the file stepped from Python with `session.run`, spikes counted in NumPy;
- iobinding: the same stepping with onnxruntime's IOBinding (defined here, not in the engine): the data input
  bound once, the outputs written into preallocated NumPy buffers, the state in two sets of buffers swapped
  between steps, spikes counted in place.

For fmnist_cnn (the bundled example) and the ResNet-style graph of bench_simulate.py, at each --batch.
Every figure is the best of --repeat wall-clock runs in interleaved rounds (round r runs every variant once,
each after a 0.1 s pause); the all-runs column shows the spread; CPU seconds (this process, all threads) are
printed too, being less sensitive to other jobs than wall time on a shared machine. The models are calibrated
and converted through the public API (bench_simulate.convert); the engine is timed through its internals
(sim.ort, sim.engine, sim.model) on purpose.

usage: python benchmarks/bench_ort_engine.py [--T 32] [--batch 256,16] [--repeat 5] [--extra-t 0] [--drain]
       [--threads N] [--no-resnet]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bench_simulate import convert, dense_session  # noqa: E402
from common import EXAMPLE, fmt_times, load_line, machine_lines, random_images, resnet_model  # noqa: E402
from ground.data import input_specs, load_dataset  # noqa: E402
from ann2snn import load_model  # noqa: E402
from sim.engine import LayerSpikes, WindowResult  # noqa: E402
from sim.model import load_spiking  # noqa: E402
from sim.ort import OrtEngine  # noqa: E402


def run_iobinding(engine: OrtEngine, feeds: dict[str, np.ndarray], T: int) -> WindowResult:
    """T steps of the stepping engine's session (no silent steps) through one IOBinding."""
    session, model = engine.session, engine.model
    batch = len(next(iter(feeds.values())))
    shapes = [[d if isinstance(d, int) else batch for d in s.shape] for s in engine.state]
    state = [[np.zeros(shape, np.float32) for shape in shapes] for _ in range(2)]
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    firing = [n.output[0] for n in engine.firing]
    per_step: list[np.ndarray] = []
    spikes_out: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    fired: list[np.ndarray] = []
    for t in range(T):
        now, after = state[t % 2], state[(t + 1) % 2]
        for s, value in zip(engine.state, now):
            binding.bind_cpu_input(s.name, value)
        for s, value in zip(engine.state, after):
            binding.bind_ortvalue_output(s.name + ".next", ort.OrtValue.ortvalue_from_numpy(value))
        if t == 0:  # shapes of the outputs are known after the first step
            for name in model.outputs + firing:
                binding.bind_output(name)
            session.run_with_iobinding(binding)
            values = [v.numpy() for v in binding.get_outputs()[len(engine.state):]]
            per_step = [np.empty((T,) + v.shape, v.dtype) for v in values[:len(model.outputs)]]
            for out, v in zip(per_step, values):
                out[0] = v
            spikes_out = [np.empty_like(v) for v in values[len(model.outputs):]]
            counts = [(v != 0).astype(np.int32) for v in values[len(model.outputs):]]
            fired = [np.empty(v.shape, bool) for v in spikes_out]
        else:
            for name, out in zip(model.outputs, per_step):
                binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(out[t]))
            for name, y in zip(firing, spikes_out):
                binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(y))
            session.run_with_iobinding(binding)
            for y, f, c in zip(spikes_out, fired, counts):
                np.not_equal(y, 0, out=f)
                np.add(c, f, out=c)
        binding.clear_binding_outputs()
    spikes = {n.name: LayerSpikes(n.name, n.op_type, 0) for n in engine.firing}
    for node, c in zip(engine.firing, counts):
        spikes[node.name].add_counts(c, T)
    return WindowResult(dict(zip(model.outputs, per_step)), spikes)


def bench(label: str, model_path: Path, calib_path: Path, inputs: dict[str, np.ndarray], batches: list[int], T: int,
          extra_t: int, drain: bool, repeat: int, threads: int, tmp: Path) -> list[dict]:
    snn_path = tmp / f"{label}.snn.onnx"
    convert(model_path, calib_path, snn_path)
    spiking = load_spiking(snn_path)
    session = dense_session(model_path, threads)
    loop, step = OrtEngine(spiking, threads), OrtEngine(spiking, threads, loop=False)
    rows = []
    for batch in batches:
        feeds = {k: np.ascontiguousarray(v[:batch]) for k, v in inputs.items()}
        variants = {
            "dense": lambda: [session.run(None, feeds) for _ in range(T + extra_t)],
            "loop": lambda: loop.run(feeds, T, extra_t, drain=drain),
            "step": lambda: step.run(feeds, T, extra_t, drain=drain),
        }
        if not extra_t:
            variants["iobinding"] = lambda: run_iobinding(step, feeds, T)
        # warm-up, and the check that the variants compute the same thing
        results = {k: fn() for k, fn in variants.items() if k != "dense"}
        reference = results["step"]
        out = spiking.outputs[0]
        diffs = {k: float(np.abs(r.outputs[out] - reference.outputs[out]).max()) for k, r in results.items()}
        same_counts = {k: all(r.spikes[n].spikes == reference.spikes[n].spikes for n in reference.spikes)
                       for k, r in results.items()}
        wall = {k: [] for k in variants}
        cpu = {k: [] for k in variants}
        for _ in range(repeat):
            for name, fn in variants.items():
                time.sleep(0.1)
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        window = f"T = {T}" + (f" + {extra_t} {'drain' if drain else 'silent'} steps" if extra_t else "")
        print(f"\n## {label}, batch {batch}, {window}, best of {repeat}\n")
        print("check, max |output - step| and equal spike counts: " + ", ".join(
            f"{k} {diffs[k]:.1e} {'yes' if same_counts[k] else 'NO'}" for k in results))
        print()
        print("| variant | seconds (best) | all runs (s) | / dense | CPU s (best) | CPU / dense CPU |")
        print("|---|---:|---|---:|---:|---:|")
        for name in variants:
            print(f"| {name} | {min(wall[name]):.3f} | {fmt_times(wall[name])} | "
                  f"{min(wall[name]) / min(wall['dense']):.2f} | {min(cpu[name]):.2f} | "
                  f"{min(cpu[name]) / min(cpu['dense']):.2f} |")
        rows.append({"label": label, "batch": batch, **{k: min(v) / min(wall["dense"]) for k, v in wall.items()}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--batch", default="256,16", help="batch sizes, comma-separated")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--extra-t", type=int, default=0, help="silent steps after T (the dense limit runs T + extra)")
    ap.add_argument("--drain", action="store_true", help="the silent steps are drain steps")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: its choice)")
    ap.add_argument("--no-resnet", action="store_true")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",") if b]
    print("# bench_ort_engine: " + " ".join(["python", "benchmarks/bench_ort_engine.py"] + sys.argv[1:]))
    for line in machine_lines():
        print(line)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = load_model(EXAMPLE / "model.onnx")
        data = load_dataset(EXAMPLE / "test.npz", input_specs(model), max(batches)).inputs
        rows += bench("fmnist_cnn", EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", data, batches, args.T,
                      args.extra_t, args.drain, args.repeat, args.threads, tmp)
        if not args.no_resnet:
            resnet_path, resnet_calib = tmp / "resnet.onnx", tmp / "resnet_calib.npz"
            onnx.save(resnet_model(seed=0), resnet_path)
            np.savez(resnet_calib, x=random_images(64, (3, 32, 32), seed=1))
            rows += bench("resnet_cifar_style", resnet_path, resnet_calib,
                          {"input": random_images(max(batches), (3, 32, 32), seed=2)}, batches, args.T,
                          args.extra_t, args.drain, args.repeat, args.threads, tmp)
    variants = [k for k in rows[0] if k not in ("label", "batch", "dense")]
    print("\n## summary: wall time / dense (best of each)\n")
    print("| model | batch | " + " | ".join(variants) + " |")
    print("|---|---:|" + "---:|" * len(variants))
    for r in rows:
        print(f"| {r['label']} | {r['batch']} | " + " | ".join(f"{r.get(k, float('nan')):.2f}" for k in variants)
              + " |")
    print(load_line())


if __name__ == "__main__":
    main()

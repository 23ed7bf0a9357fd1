"""Simulation speed: the NumPy and onnxruntime engines against the dense limit (T onnxruntime runs of the
original ANN) on the same batch, for the bundled example and for a ResNet-style graph built here.

Each model is calibrated (ann2snn.calibrate, default options) and converted (ann2snn.convert, default options)
first; that time is not measured. Every figure is the best of --repeat wall-clock runs, taken in interleaved
rounds (round r runs every variant once) so that load from other processes hits all of them alike.
It times the engines' internals on purpose (sim.engine, sim.ort, sim.ops and sim.neurons kernels, not the API).
The project's target: numpy/dense <= 1.5 at T = 32. The onnxruntime engine's own variants (Loop, stepping,
IOBinding): bench_ort_engine.py.

usage: python benchmarks/bench_simulate.py [--T 32] [--batch 200] [--repeat 3] [--model M.onnx --data D.npz
       [--calib C.npz]] [--budgets 8,16,32,128] [--no-resnet] [--breakdown] [--ort-threads N] [--workers N]
       [--skip-pure]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from common import EXAMPLE, MB, best_of, fmt_times, load_line, machine_lines, random_images, resnet_model  # noqa: E402
import ann2snn  # noqa: E402
from ann2snn import load_model  # noqa: E402
from ground.data import input_specs, load_dataset  # noqa: E402
from rewrites.config import DEFAULT_PERCENTILE  # noqa: E402
from sim import neurons as sim_neurons  # noqa: E402
from sim import ops as sim_ops  # noqa: E402
from sim.engine import NumpyEngine  # noqa: E402
from sim.model import load_spiking  # noqa: E402
from sim.ort import OrtEngine  # noqa: E402


def dense_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """A plain onnxruntime session of the original ANN with default options (as `simulate --ann` uses)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def convert(model_path: Path, calib_path: Path, out: Path) -> tuple[float, float]:
    start = time.perf_counter()
    calibration = ann2snn.calibrate(model_path, calib_path)
    mid = time.perf_counter()
    ann2snn.convert(model_path, calibration).save(out)  # no option, no data: every layer gets the default rule
    return mid - start, time.perf_counter() - mid


@contextlib.contextmanager
def op_timers(engine: NumpyEngine | None = None):
    """Time every NumPy kernel call by op type (top-level calls only: a neuron kernel's own MaxPool call is
    part of the neuron's time), the onnxruntime kernels of `engine`'s delegated nodes as "<op> (onnxruntime)"
    ("(onnxruntime, blocked)" for its NCHWc kernels) and its MaxPool neurons. Patches the kernel registries and
    the engine in this process and restores them."""
    totals: dict[str, float] = defaultdict(float)
    depth = [0]
    saved = [(registry, dict(registry)) for registry in (sim_ops.KERNELS, sim_neurons.NEURON_KERNELS)]
    tables = ("delegated", "blocked_convs", "blocked_ops", "pools", "blocked_pools")
    engine_saved = {t: dict(getattr(engine, t)) for t in tables} if engine is not None else {}

    def wrap(op, fn):
        def timed(*args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    totals[op] += time.perf_counter() - start
        return timed

    for registry, original in saved:
        for op, fn in original.items():
            registry[op] = wrap(op, fn)
    labels = {"delegated": "{} (onnxruntime)", "blocked_convs": "{} (onnxruntime, blocked)",
              "blocked_ops": "{} (onnxruntime, blocked)", "pools": "{}", "blocked_pools": "{} (blocked pooling)"}
    for table, kernels in engine_saved.items():
        for i, fn in kernels.items():
            getattr(engine, table)[i] = _Timed(wrap(labels[table].format(engine.nodes[i].op_type), fn), fn)
    try:
        yield totals
    finally:
        for registry, original in saved:
            registry.clear()
            registry.update(original)
        for table, kernels in engine_saved.items():
            getattr(engine, table).update(kernels)


class _Timed:
    """A timed kernel that still shows the wrapped one's attributes (a blocked kernel's layout)."""

    def __init__(self, timed, kernel):
        self.timed, self.kernel = timed, kernel

    def __call__(self, *args, **kwargs):
        return self.timed(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.kernel, name)


def bench_model(label: str, model_path: Path, calib_path: Path, feeds: dict[str, np.ndarray], T: int, repeat: int,
                budgets: list[int], breakdown: bool, tmp: Path, threads: int = 0, workers: int | None = None,
                pure: bool = True) -> dict:
    batch = len(next(iter(feeds.values())))
    snn_path = tmp / f"{label}.snn.onnx"
    t_cal, t_conv = convert(model_path, calib_path, snn_path)
    spiking = load_spiking(snn_path)
    n_neurons = sum(1 for n in spiking.nodes if n.domain == "ai.ann2snn")
    print(f"\n## {label}: {model_path.name if model_path.parent != tmp else 'built in the benchmark'}, "
          f"batch {batch}, T = {T}, best of {repeat}")
    print(f"calibrate {t_cal:.2f} s, convert {t_conv:.2f} s (not part of the figures); "
          f"{len(spiking.nodes)} nodes in the spiking model, {n_neurons} of them spiking operators")

    session = dense_session(model_path, threads)
    numpy_engine = NumpyEngine(spiking, workers=workers)
    plain_engine = NumpyEngine(spiking, workers=workers, blocked=False)
    pure_engine = NumpyEngine(spiking, workers=workers, linear="numpy") if pure else None
    _set_threads(numpy_engine, threads)
    _set_threads(plain_engine, threads)
    ort_engine = OrtEngine(spiking, threads) if threads else OrtEngine(spiking)

    def dense():
        for _ in range(T):
            out = session.run(None, feeds)
        return out

    # warm-up, and a check that the three compute the same thing
    ann_out = dense()[0]
    np_out = numpy_engine.run(feeds, T).outputs[spiking.outputs[0]]
    pure_out = pure_engine.run(feeds, T).outputs[spiking.outputs[0]] if pure else np_out
    ort_out = ort_engine.run(feeds, T).outputs[spiking.outputs[0]]
    ann_pred = ann_out.argmax(-1)
    np_mean = np.asarray(np_out, np.float64).mean(0)  # decoded output at t = T: mean of the step outputs
    ort_mean = np.asarray(ort_out, np.float64).mean(0)
    print(f"check: numpy vs onnxruntime engine max |diff| of the decoded output at t = T "
          f"{np.abs(np_mean - ort_mean).max():.2e}"
          + (f" (linear ops in NumPy: {np.abs(np.asarray(pure_out, np.float64).mean(0) - ort_mean).max():.2e})"
             if pure else "") + "; "
          f"agreement with the ANN at t = T: numpy {100 * np.mean(np_mean.argmax(-1) == ann_pred):.1f}%, "
          f"onnxruntime {100 * np.mean(ort_mean.argmax(-1) == ann_pred):.1f}%")

    variants = {"dense": dense, "numpy": lambda: numpy_engine.run(feeds, T),
                "plain": lambda: plain_engine.run(feeds, T),
                "pure": lambda: pure_engine.run(feeds, T), "ort": lambda: ort_engine.run(feeds, T)}
    if not pure:
        del variants["pure"]
    times = best_of(variants, repeat)
    best = {k: min(v) for k, v in times.items()}
    sample_steps = batch * T
    print()
    print("| run | seconds (best) | all runs (s) | ms per sample-step | / dense |")
    print("|---|---:|---|---:|---:|")
    names = {"dense": f"dense limit: ANN x {T} (onnxruntime)",
             "numpy": "NumpyEngine.run (defaults: linear ops under onnxruntime)",
             "plain": "NumpyEngine.run, blocked=False (plain NCHW between the operators)",
             "pure": "NumpyEngine.run, linear=\"numpy\"", "ort": "OrtEngine.run (Loop, the default)"}
    for key in times:
        print(f"| {names[key]} | {best[key]:.3f} | {fmt_times(times[key])} | "
              f"{1000 * best[key] / sample_steps:.4f} | {best[key] / best['dense']:.2f} |")
    ratio = best["numpy"] / best["dense"]
    print(f"\nnumpy/dense = {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'MISSED'}), "
          f"plain layout/dense = {best['plain'] / best['dense']:.2f}, "
          f"pure numpy/dense = {best.get('pure', float('nan')) / best['dense']:.2f}, "
          f"ort/dense = {best['ort'] / best['dense']:.2f}")

    sj = spikingjelly_time(model_path, calib_path, feeds, T, repeat)
    if sj is not None:
        print(f"spikingjelly (multi-step, CPU): {sj:.3f} s, {sj / best['dense']:.2f} x dense")

    # memory budget sweep of the NumPy engine
    engines = {mb: NumpyEngine(spiking, mb * MB, workers) for mb in budgets}
    for engine in engines.values():
        _set_threads(engine, threads)
    sweep = best_of({mb: (lambda e=e: e.run(feeds, T)) for mb, e in engines.items()}, repeat)
    print(f"\nNumPy engine memory budget sweep (per-sample size of the largest activation "
          f"{numpy_engine.sample_bytes / 1024:.0f} KiB, x T = {numpy_engine.sample_bytes * T / MB:.2f} MiB per sample):")
    print()
    print("| memory_budget | batch slice | seconds (best) | all runs (s) | / dense |")
    print("|---:|---:|---:|---|---:|")
    for mb in budgets:
        step = min(batch, max(1, mb * MB // (engines[mb].sample_bytes * T)), -(-batch // engines[mb].workers))
        default = " (default)" if mb * MB == numpy_engine.memory_budget else ""
        print(f"| {mb} MiB{default} | {step} | {min(sweep[mb]):.3f} | {fmt_times(sweep[mb])} | "
              f"{min(sweep[mb]) / best['dense']:.2f} |")

    if breakdown:
        single = NumpyEngine(spiking, workers=1)  # per-op timers need one thread
        _set_threads(single, threads or 1)
        single.run(feeds, T)
        with op_timers(single) as totals:
            start = time.perf_counter()
            single.run(feeds, T)
            total = time.perf_counter() - start
        print(f"\nNumPy engine time by op type (one run, default budget, one worker, {total:.2f} s in all):\n")
        print("| op | seconds | share |")
        print("|---|---:|---:|")
        for op, secs in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"| {op} | {secs:.3f} | {100 * secs / total:.0f}% |")
        rest = total - sum(totals.values())
        print(f"| (engine bookkeeping, outside kernels) | {rest:.3f} | {100 * rest / total:.0f}% |")
        stepping = OrtEngine(spiking, threads, loop=False)  # the default runs the window in one session call
        stepping.run(feeds, T)
        timed = _TimedRun(stepping.session)
        stepping.session = timed
        start = time.perf_counter()
        stepping.run(feeds, T)
        total = time.perf_counter() - start
        print(f"\nOrtEngine(loop=False).run, one run: {total:.2f} s = session.run {timed.seconds:.2f} s "
              f"({100 * timed.seconds / total:.0f}%) + Python-side state feeding and spike counting "
              f"{total - timed.seconds:.2f} s")
    return {"label": label, **best, "sweep": {mb: min(v) for mb, v in sweep.items()}}


def _set_threads(engine: NumpyEngine, threads: int) -> None:
    """--ort-threads also sets the intra-op threads of the engine's onnxruntime kernels (before first use)."""
    if threads:
        pools = [p.keywords["pool"] for p in list(engine.pools.values()) + list(engine.blocked_pools.values())]
        for node in list(engine.delegated.values()) + list(engine.blocked_convs.values()) + pools:
            node.threads = threads
            node.session = None  # rebuilt on first use with these threads


class _TimedRun:
    """Passes run() through to an onnxruntime session, adding up the time spent in it."""

    def __init__(self, session):
        self.session = session
        self.seconds = 0.0

    def run(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


# ----------------------------------------------------------------------------------- optional SpikingJelly


def spikingjelly_time(model_path: Path, calib_path: Path, feeds: dict[str, np.ndarray], T: int,
                      repeat: int) -> float | None:
    """SpikingJelly's ann2snn.Converter on the same ANN (translated to torch here), run in multi-step mode on
    the CPU. Only when torch and spikingjelly are importable; torch is imported nowhere else."""
    if importlib.util.find_spec("spikingjelly") is None or importlib.util.find_spec("torch") is None:
        print("spikingjelly not installed: skipped")
        return None
    try:
        import torch
        from spikingjelly.activation_based import ann2snn, functional, layer, neuron
    except ImportError as exc:
        print(f"spikingjelly not importable ({exc}): skipped")
        return None
    try:
        ann = _torch_module(torch, load_model(model_path))
        x_cal = next(iter(load_dataset(calib_path, input_specs(load_model(model_path))).inputs.values()))
        loader = [(torch.from_numpy(np.array(x_cal[i:i + 64])),) for i in range(0, len(x_cal), 64)]
        mode_text = f"{DEFAULT_PERCENTILE:g}%"
        if hasattr(ann2snn, "RateCodingRecipe"):  # SpikingJelly 2.0
            recipe = ann2snn.RateCodingRecipe(dataloader=loader, mode=mode_text)
            snn = ann2snn.Converter(recipe, device="cpu").convert(ann)
        else:
            snn = ann2snn.Converter(loader, device="cpu", mode=mode_text)(ann)
        mode = "multi-step"
        try:
            if hasattr(ann2snn, "RateCodingRecipe"):
                functional.set_step_mode(snn, "m")
            else:
                _to_multi_step(snn, torch, functional, layer, neuron)
        except Exception as exc:  # fall back to stepping it
            mode = f"single-step loop ({type(exc).__name__}: {exc})"
        x = torch.from_numpy(np.array(next(iter(feeds.values()))))

        def run():
            with torch.no_grad():
                functional.reset_net(snn)
                if mode == "multi-step":
                    return snn(x.unsqueeze(0).expand((T,) + tuple(x.shape)).contiguous()).mean(0)
                return sum(snn(x) for _ in range(T)) / T

        run()
        best = min(best_of({"sj": run}, repeat)["sj"])
        print(f"spikingjelly mode: {mode}, torch threads {torch.get_num_threads()}")
        return best
    except Exception as exc:
        print(f"spikingjelly comparison failed: {type(exc).__name__}: {exc}")
        return None


def _to_multi_step(snn, torch, functional, layer, neuron) -> None:
    """Neurons to step mode 'm'; every stateless torch layer wrapped in SeqToANNContainer, which folds
    [T, B, ...] into [T*B, ...]."""
    functional.set_step_mode(snn, "m")
    stateless = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear, torch.nn.MaxPool2d, torch.nn.AvgPool2d,
                 torch.nn.AdaptiveAvgPool2d, torch.nn.Flatten)
    for name, module in list(snn.named_modules()):
        if isinstance(module, stateless) and not isinstance(module, neuron.BaseNode):
            parent_name, _, attr = name.rpartition(".")
            parent = snn.get_submodule(parent_name) if parent_name else snn
            setattr(parent, attr, layer.SeqToANNContainer(module))


def _torch_module(torch, model: onnx.ModelProto):
    """A torch.nn.Module computing an ONNX graph of Conv, BatchNormalization, Relu, MaxPool, AveragePool,
    GlobalAveragePool, Flatten, Gemm and Add, with every op a submodule (SpikingJelly's converter traces it
    with torch.fx and replaces the nn.ReLU modules)."""
    nn = torch.nn
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}

    def param(value) -> torch.nn.Parameter:
        return nn.Parameter(torch.from_numpy(np.array(value, np.float32)), requires_grad=False)

    class OnnxModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleDict()
            self.steps: list[tuple[str, list[str], str]] = []
            for i, node in enumerate(model.graph.node):
                a = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
                key, op = f"n{i}", node.op_type
                if op == "Add":
                    self.steps.append(("add", list(node.input), node.output[0]))
                    continue
                if op == "Conv":
                    w = inits[node.input[1]]
                    pads = list(a.get("pads", [0] * 4))
                    if pads[:2] != pads[2:] or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                        raise NotImplementedError(f"Conv {node.name}: asymmetric padding")
                    group = a.get("group", 1)
                    m = nn.Conv2d(w.shape[1] * group, w.shape[0], w.shape[2:], a.get("strides", 1), pads[:2],
                                  a.get("dilations", 1), group, bias=len(node.input) > 2)
                    m.weight = param(w)
                    if len(node.input) > 2:
                        m.bias = param(inits[node.input[2]])
                elif op == "BatchNormalization":
                    scale, bias, mean, var = (inits[n] for n in node.input[1:5])
                    m = nn.BatchNorm2d(len(scale), eps=a.get("epsilon", 1e-5))
                    m.weight, m.bias = param(scale), param(bias)
                    m.running_mean.copy_(torch.from_numpy(np.array(mean, np.float32)))
                    m.running_var.copy_(torch.from_numpy(np.array(var, np.float32)))
                elif op == "Relu":
                    m = nn.ReLU()
                elif op in ("MaxPool", "AveragePool"):
                    pads = list(a.get("pads", [0] * 4))
                    kwargs = dict(kernel_size=a["kernel_shape"], stride=a.get("strides", a["kernel_shape"]),
                                  padding=pads[:2], ceil_mode=bool(a.get("ceil_mode", 0)))
                    m = nn.MaxPool2d(**kwargs) if op == "MaxPool" else \
                        nn.AvgPool2d(count_include_pad=bool(a.get("count_include_pad", 0)), **kwargs)
                elif op == "GlobalAveragePool":
                    m = nn.AdaptiveAvgPool2d(1)
                elif op == "Flatten":
                    if a.get("axis", 1) != 1:
                        raise NotImplementedError(f"Flatten {node.name}: axis {a.get('axis')}")
                    m = nn.Flatten(1)
                elif op == "Gemm":
                    w = inits[node.input[1]]
                    w = w if a.get("transB", 0) else w.T
                    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                        raise NotImplementedError(f"Gemm {node.name}: transA/alpha/beta")
                    m = nn.Linear(w.shape[1], w.shape[0], bias=len(node.input) > 2)
                    m.weight = param(w)
                    if len(node.input) > 2:
                        m.bias = param(inits[node.input[2]])
                else:
                    raise NotImplementedError(f"no torch translation of {op} ({node.name})")
                self.layers[key] = m
                self.steps.append((key, [node.input[0]], node.output[0]))
            self.input_name = input_specs(model)[0].name
            self.output_name = model.graph.output[0].name

        def forward(self, x):
            env = {self.input_name: x}
            for key, inputs, output in self.steps:
                if key == "add":
                    env[output] = env[inputs[0]] + env[inputs[1]]
                else:
                    env[output] = self.layers[key](env[inputs[0]])
            return env[self.output_name]

    return OnnxModule().eval()


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3, help="best of N (default 3)")
    ap.add_argument("--model", type=Path, default=EXAMPLE / "model.onnx")
    ap.add_argument("--data", type=Path, default=EXAMPLE / "test.npz", help="the batch is its first --batch samples")
    ap.add_argument("--calib", type=Path, help="calibration data (default: calib.npz beside the bundled model, "
                                               "else --data)")
    ap.add_argument("--skip-pure", action="store_true", help="do not time the engine with linear=\"numpy\"")
    ap.add_argument("--workers", type=int, help="NumPy engine worker threads (default: one per CPU)")
    ap.add_argument("--budgets", default="8,16,32,128", help="NumPy engine memory budgets to sweep, MiB")
    ap.add_argument("--no-resnet", action="store_true", help="skip the ResNet-style graph")
    ap.add_argument("--resnet-calib", type=int, default=64, help="random calibration images for the ResNet graph")
    ap.add_argument("--breakdown", action="store_true", help="also time the NumPy engine by op type")
    ap.add_argument("--ort-threads", type=int, default=0,
                    help="intra-op threads of the dense and OrtEngine sessions and of the NumPy engine's onnxruntime "
                         "kernels (default: onnxruntime's choice, one per NumPy engine worker when it has several); "
                         "set OPENBLAS_NUM_THREADS in the environment for NumPy's matmul")
    args = ap.parse_args()
    calib = args.calib or (EXAMPLE / "calib.npz" if args.model == EXAMPLE / "model.onnx" else args.data)
    budgets = [int(b) for b in args.budgets.split(",") if b]

    print("# bench_simulate: " + " ".join(["python", "benchmarks/bench_simulate.py"] + sys.argv[1:]))
    for line in machine_lines():
        print(line)
    print(f"threads: onnxruntime intra-op {args.ort_threads or 'default'}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = load_model(args.model)
        dataset = load_dataset(args.data, input_specs(model), args.batch)
        results.append(bench_model(args.model.stem if args.model != EXAMPLE / "model.onnx" else "fmnist_cnn",
                                   args.model, calib, dataset.inputs, args.T, args.repeat, budgets, args.breakdown,
                                   tmp, args.ort_threads, args.workers, not args.skip_pure))
        if not args.no_resnet:
            resnet_path, resnet_calib = tmp / "resnet.onnx", tmp / "resnet_calib.npz"
            onnx.save(resnet_model(seed=0), resnet_path)
            np.savez(resnet_calib, x=random_images(args.resnet_calib, (3, 32, 32), seed=1))
            feeds = {"input": random_images(args.batch, (3, 32, 32), seed=2)}
            results.append(bench_model("resnet_cifar_style", resnet_path, resnet_calib, feeds, args.T, args.repeat,
                                       budgets, args.breakdown, tmp, args.ort_threads, args.workers,
                                       not args.skip_pure))
    print("\n## summary\n")
    print("| model | dense (s) | numpy (s) | numpy, plain layout (s) | pure numpy (s) | ort (s) | numpy/dense | "
          "plain layout/dense | pure numpy/dense | ort/dense |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        pure = r.get("pure", float("nan"))
        print(f"| {r['label']} | {r['dense']:.3f} | {r['numpy']:.3f} | {r['plain']:.3f} | {pure:.3f} | {r['ort']:.3f} | "
              f"{r['numpy'] / r['dense']:.2f} | {r['plain'] / r['dense']:.2f} | {pure / r['dense']:.2f} | "
              f"{r['ort'] / r['dense']:.2f} |")
    print(load_line())


if __name__ == "__main__":
    main()

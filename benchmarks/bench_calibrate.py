"""Calibration cost: rewrites.calibration.collect.calibrate (max + histogram statistics) against plain
onnxruntime inference of the same model over the same data with the same batch size (target: <= 1.3x), where
its time goes, and its peak memory as the data grows 10x (run in a subprocess per size). In the same rounds:
calibrate() with every histogram exact (observe.SAMPLE_ABOVE unbounded: each observed tensor copied out whole,
the path before in-graph reductions) and the older sequential loop.

usage: python benchmarks/bench_calibrate.py [--model M.onnx] [--data D.npz] [--batch-size 64] [--repeat 3]
       [--scale 10] [--skip-memory] [--sample-above N ...]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from common import EXAMPLE, MB, best_of, fmt_times, load_line, machine_lines  # noqa: E402
from rewrites.calibration import observe as observe_module  # noqa: E402
from rewrites.calibration.collect import add_logsumexp, augment, calibrate, collect, observed_tensors  # noqa: E402
from rewrites.calibration.observe import observe  # noqa: E402
from rewrites.calibration.data import input_specs, load_dataset  # noqa: E402
from rewrites.calibration.stats import DEFAULT_BINS, ChannelFold, TensorStats, _bin_index  # noqa: E402
from rewrites.convert import normalise, to_model  # noqa: E402
from rewrites.graph import fingerprint, load_model  # noqa: E402
from rewrites.runtime import Session  # noqa: E402


def ort_session(model, optimize: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_all(session: ort.InferenceSession, batches: list[dict], outputs: list[str] | None = None) -> None:
    for batch in batches:
        session.run(outputs, batch)


def plain_end_to_end(model_path: Path, data_path: Path, batch_size: int) -> float:
    """What inference of the data costs from files: read the data, open a session, run every batch."""
    start = time.perf_counter()
    with np.load(data_path) as z:
        x = z["x"]
    session = ort_session(str(model_path))
    name = session.get_inputs()[0].name
    for i in range(0, len(x), batch_size):
        session.run(None, {name: x[i:i + batch_size]})
    return time.perf_counter() - start


def calibrate_exact(model_path: Path, data_path: Path, batch_size: int) -> None:
    """calibrate() with no subsampled histogram: every observed tensor output whole, reduced and binned in NumPy
    (the calibration file of the commit before in-graph reductions, byte for byte)."""
    bound = observe_module.SAMPLE_ABOVE
    observe_module.SAMPLE_ABOVE = 2**62
    try:
        calibrate(model_path, data_path, batch_size)
    finally:
        observe_module.SAMPLE_ABOVE = bound


def calibrate_sequential(model_path: Path, data_path: Path, batch_size: int) -> None:
    """calibrate() as it was before the fold thread (commit cc95900): the same steps, then one loop that runs
    a session with spinning workers and folds each batch with TensorStats.update (histograms merged every
    batch) before running the next."""
    model = load_model(model_path)
    fingerprint(model)
    dataset = load_dataset(data_path, input_specs(model))
    graph, _ = normalise(model)
    tensors = observed_tensors(graph)
    add_logsumexp(graph)
    session = Session(augment(to_model(graph, model), tensors), str(model_path), spin=True)
    stats = {name: TensorStats(name) for name in tensors}
    for batch in dataset.batches(batch_size):
        for name, value in zip(tensors, session.run(tensors, batch)):
            stats[name].update(value, 1 if value.ndim >= 2 else None)


def calibrate_sampled(model_path: Path, data_path: Path, batch_size: int, bound: int) -> None:
    """calibrate() with observe.SAMPLE_ABOVE = bound."""
    old = observe_module.SAMPLE_ABOVE
    observe_module.SAMPLE_ABOVE = bound
    try:
        calibrate(model_path, data_path, batch_size)
    finally:
        observe_module.SAMPLE_ABOVE = old


def time_ratio(model_path: Path, data_path: Path, batch_size: int, repeat: int, bounds: list[int]) -> None:
    model = load_model(model_path)
    dataset = load_dataset(data_path, input_specs(model))
    batches = list(dataset.batches(batch_size))
    n = len(dataset)
    print(f"\n## calibrate() vs plain onnxruntime inference: {model_path.name}, {data_path.name} ({n} samples), "
          f"batch size {batch_size}, best of {repeat}\n")

    plain = ort_session(str(model_path))
    run_all(plain, batches)  # warm-up
    times = best_of({
        "calibrate": lambda: calibrate(model_path, data_path, batch_size),
        "exact": lambda: calibrate_exact(model_path, data_path, batch_size),
        **{f"sampled {b}": (lambda b=b: calibrate_sampled(model_path, data_path, batch_size, b)) for b in bounds},
        "sequential": lambda: calibrate_sequential(model_path, data_path, batch_size),
        "plain_e2e": lambda: plain_end_to_end(model_path, data_path, batch_size),
        "plain_runs": lambda: run_all(plain, batches),
    }, repeat)
    best = {k: min(v) for k, v in times.items()}
    print("| run | seconds (best) | all runs (s) | ms per sample | / plain end to end |")
    print("|---|---:|---|---:|---:|")
    rows = [("calibrate() (read data, normalise, session, runs, statistics)", "calibrate"),
            ("calibrate(), every histogram exact (each observed tensor copied out whole)", "exact"),
            *[(f"calibrate(), histograms subsampled above {b} values per channel per batch", f"sampled {b}")
              for b in bounds],
            ("calibrate() as before: sequential loop, spinning workers, TensorStats.update", "sequential"),
            ("plain inference end to end (read data, session, runs)", "plain_e2e"),
            ("plain inference, runs only (session open, data in memory)", "plain_runs")]
    for label, key in rows:
        print(f"| {label} | {best[key]:.3f} | {fmt_times(times[key])} | {1000 * best[key] / n:.3f} | "
              f"{best[key] / best['plain_e2e']:.2f} |")
    ratio = best["calibrate"] / best["plain_e2e"]
    print(f"\ncalibrate / plain inference end to end = {ratio:.2f} (target <= 1.3: {'met' if ratio <= 1.3 else 'MISSED'});"
          f" calibrate / plain runs only = {best['calibrate'] / best['plain_runs']:.2f}; every histogram exact: "
          f"{best['exact'] / best['plain_e2e']:.2f}; sequential loop: {best['sequential'] / best['plain_e2e']:.2f}"
          + "".join(f"; subsampled above {b}: {best[f'sampled {b}'] / best['plain_e2e']:.2f}" for b in bounds)
          + f" (library default SAMPLE_ABOVE = {observe_module.SAMPLE_ABOVE})")
    breakdown(model_path, data_path, batch_size, repeat, best["plain_runs"])


def breakdown(model_path: Path, data_path: Path, batch_size: int, repeat: int, plain_runs: float) -> None:
    """calibrate() step by step (the same library calls in the same order, the loop being the library's own
    collect()), with the loop's session.run (main thread) and ChannelFold work (fold thread, overlapping the
    next run) timed; then session variants, and the statistics alone on outputs held in memory."""
    phases: dict[str, list[float]] = {}
    inside: dict[str, list[float]] = {}

    def phase(name, fn):
        start = time.perf_counter()
        value = fn()
        phases.setdefault(name, []).append(time.perf_counter() - start)
        return value

    for _ in range(repeat):
        model = phase("load model", lambda: load_model(model_path))
        dataset = phase("load + check data", lambda: load_dataset(data_path, input_specs(model)))
        graph, _ = phase("normalise (passes, shape inference)", lambda: normalise(model))
        tensors = observed_tensors(graph)
        add_logsumexp(graph)
        plan = observe(graph, tensors, batch_size, DEFAULT_BINS)
        augmented = phase("augment (in-graph reductions and subsamples)",
                          lambda: augment(to_model(graph, model), [o for p in plan for o in p.outputs]))
        session = phase("open session (graph optimisation on, workers not spinning)",
                        lambda: Session(augmented, str(model_path), spin=False))
        stats = {name: TensorStats(name) for name in tensors}
        timed = _TimedSession(session)
        with stats_timers() as spent:
            phase("collect(): the loop (session.run, folds on a thread, finish)",
                  lambda: collect(timed, dataset, stats, batch_size, None, plan))
        inside.setdefault("session.run (main thread)", []).append(timed.seconds)
        for method, secs in spent.items():
            inside.setdefault(f"ChannelFold.{method} (fold thread)", []).append(secs)
        phase("fingerprint of the model", lambda: fingerprint(model))
    best = {k: min(v) for k, v in phases.items()}
    total = sum(best.values())
    n = len(dataset)
    elements = sum(int(np.prod(v.shape)) for v in session.run(tensors, next(dataset.batches(1))))
    channels = sum(len(getattr(s, "channels", None) or ()) for s in stats.values())
    per_channel = f", {channels} per-channel statistics" if channels else ""
    binned = sum(s.binned for s in stats.values()) / max(sum(s.count for s in stats.values()), 1)
    sampled = sum(p.sampled for p in plan)
    per_channel += (f"; {sampled} tensors above {observe_module.SAMPLE_ABOVE} values per channel per batch "
                    f"subsampled, {100 * binned:.1f}% of all values binned")
    print(f"\nwhere calibrate()'s time goes ({len(tensors)} observed tensors, {elements:,} values per sample, "
          f"{elements * n / 1e6:.1f} M values in all{per_channel}; best of {repeat} per phase):\n")
    print("| phase | seconds | share |")
    print("|---|---:|---:|")
    for name, secs in best.items():
        print(f"| {name} | {secs:.3f} | {100 * secs / total:.0f}% |")
    print(f"| sum | {total:.3f} | 100% |")
    print("\ninside collect() (the two threads overlap, so these add up to more than the loop):\n")
    print("| part | seconds (best) | all runs (s) |")
    print("|---|---:|---|")
    for name, secs in inside.items():
        print(f"| {name} | {min(secs):.3f} | {fmt_times(secs)} |")

    # session variants: what disabling optimisation, fetching the extra outputs and spinning cost
    model = load_model(model_path)
    dataset = load_dataset(data_path, input_specs(model))
    batches = list(dataset.batches(batch_size))
    graph, _ = normalise(model)
    normalised = to_model(graph, model)
    tensors = observed_tensors(graph)
    augmented = augment(to_model(graph, model), tensors)
    outputs = [o.name for o in normalised.graph.output]
    add_logsumexp(graph)
    plan = observe(graph, tensors, batch_size, DEFAULT_BINS)
    observed = [o for p in plan for o in p.outputs]
    reduced = augment(to_model(graph, model), observed)
    variants = {
        "original model, default optimisation (the baseline)": (ort_session(str(model_path)), None),
        "normalised model, optimisation off, final output only": (ort_session(normalised, False), outputs),
        "augmented model, optimisation off, observed tensors": (ort_session(augmented, False), tensors),
        "augmented model, default optimisation, observed tensors": (ort_session(augmented, True), tensors),
        "the same, workers not spinning (calibrate with every histogram exact)":
            (Session(augmented, "m", spin=False), tensors),
        "in-graph reductions + subsamples, workers not spinning (what calibrate runs)":
            (Session(reduced, "m", spin=False), observed),
    }
    for session, names in variants.values():
        run_all(session, batches, names)
    times = best_of({label: (lambda s=s, o=o: run_all(s, batches, o)) for label, (s, o) in variants.items()}, repeat)
    base = min(times[next(iter(variants))])
    (off, _), (on, _) = list(variants.values())[2:4]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(off.run(tensors, batches[0]), on.run(tensors, batches[0])))
    print("\nsession.run over all batches, by session variant:\n")
    print("| session | seconds (best) | all runs (s) | / baseline |")
    print("|---|---:|---|---:|")
    for label in variants:
        print(f"| {label} | {min(times[label]):.3f} | {fmt_times(times[label])} | {min(times[label]) / base:.2f} |")
    print(f"\n(observed tensors, optimisation off vs default, first batch: max |diff| {diff:.2e})")

    # the statistics alone, one thread, on every batch's outputs held in memory
    session = Session(augmented, "m", spin=False)
    held = [session.run(tensors, batch) for batch in batches]

    def fold_all():
        folds = {name: ChannelFold(TensorStats(name), 1 if v.ndim >= 2 else None) for name, v in zip(tensors, held[0])}
        for outputs in held:
            for name, value in zip(tensors, outputs):
                folds[name].update(value)
        for f in folds.values():
            f.finish()

    def update_all():
        stats = {name: TensorStats(name) for name in tensors}
        for outputs in held:
            for name, value in zip(tensors, outputs):
                stats[name].update(value, 1 if value.ndim >= 2 else None)

    folds = best_of({"fold": fold_all, "update": update_all}, repeat)
    t_reduce = t_index = t_count = 0.0
    for outputs in held:
        for value in outputs:
            by_channel = value.reshape(value.shape[0], value.shape[1], -1) if value.ndim >= 2 else value.reshape(1, 1, -1)
            start = time.perf_counter()
            by_channel.min(axis=2).min(axis=0), by_channel.max(axis=2).max(axis=0), by_channel.sum(axis=2)
            t_reduce += time.perf_counter() - start
            ranges = np.full(by_channel.shape[1], 2.0 ** np.ceil(np.log2(float(np.abs(value).max()) + 1e-30) + 1e-12))
            start = time.perf_counter()
            index = _bin_index(by_channel, ranges, DEFAULT_BINS)
            t_index += time.perf_counter() - start
            start = time.perf_counter()
            np.bincount(index, minlength=len(ranges) * DEFAULT_BINS)
            t_count += time.perf_counter() - start
    values = sum(v.size for outputs in held for v in outputs)
    print(f"\nstatistics alone, one thread, outputs of all {len(held)} batches held in memory ({values / 1e6:.1f} M "
          f"values): ChannelFold (what collect() runs) {min(folds['fold']):.3f} s ({fmt_times(folds['fold'])}); "
          f"TensorStats.update per batch (before) {min(folds['update']):.3f} s ({fmt_times(folds['update'])}). "
          f"Per value, in one pass: per-channel min, max, sum {1e9 * t_reduce / values:.2f} ns, float32 bin index "
          f"{1e9 * t_index / values:.2f} ns, np.bincount {1e9 * t_count / values:.2f} ns; plain runs "
          f"{plain_runs:.3f} s for comparison")


class _TimedSession:
    """Passes run() through to a Session, adding up the time spent in it."""

    def __init__(self, session):
        self.session = session
        self.seconds = 0.0

    def run(self, outputs, feeds):
        start = time.perf_counter()
        try:
            return self.session.run(outputs, feeds)
        finally:
            self.seconds += time.perf_counter() - start


@contextlib.contextmanager
def stats_timers():
    """Time ChannelFold.update and .finish (the fold thread's work) per method. Patches the class; restores it."""
    spent: dict[str, float] = {}
    originals = {m: getattr(ChannelFold, m) for m in ("update", "finish")}

    def wrap(method, fn):
        def timed(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                spent[method] = spent.get(method, 0.0) + time.perf_counter() - start
        return timed

    for method, fn in originals.items():
        setattr(ChannelFold, method, wrap(method, fn))
    try:
        yield spent
    finally:
        for method, fn in originals.items():
            setattr(ChannelFold, method, fn)


# ------------------------------------------------------------------------------------------- peak memory


CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
import numpy as np

def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

from rewrites.calibration.collect import calibrate
import onnxruntime, onnx_graphsurgeon  # noqa: F401  (imported before the baseline is read)
base = hwm_kb()
start = time.perf_counter()
cal = calibrate({model!r}, {data!r}, {batch})
seconds = time.perf_counter() - start
print(json.dumps({{"baseline_kb": base, "peak_kb": hwm_kb(), "seconds": seconds,
                  "samples": cal.samples}}))
"""


def memory(model_path: Path, data_path: Path, batch_size: int, scale: int) -> None:
    with np.load(data_path) as z:
        arrays = {k: z[k] for k in z.files}
    n = len(arrays["x"])
    print(f"\n## peak memory of calibrate(): {n} and {scale * n} samples (each in its own subprocess; "
          f"data synthesised by tiling {data_path.name}, saved compressed like it)\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, scale):
            path = Path(tmp) / f"calib_x{factor}.npz"
            np.savez_compressed(path, **{k: np.concatenate([v] * factor) for k, v in arrays.items()})
            code = CHILD.format(repo=str(Path(__file__).resolve().parents[1]), data=str(path), model=str(model_path),
                                batch=batch_size)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["data_bytes"] = int(arrays["x"].nbytes) * factor  # the input array calibrate() holds
            rows.append(row)
    print("| samples | data array (MiB) | baseline RSS after imports (MiB) | peak RSS, VmHWM (MiB) | "
          "peak - baseline (MiB) | peak - baseline - data (MiB) | calibrate (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        data, base, peak = r["data_bytes"] / MB, r["baseline_kb"] / 1024, r["peak_kb"] / 1024
        print(f"| {r['samples']} | {data:.1f} | {base:.1f} | {peak:.1f} | {peak - base:.1f} | "
              f"{peak - base - data:.1f} | {r['seconds']:.2f} |")
    small, large = rows
    grow = (large["peak_kb"] - small["peak_kb"]) / 1024
    data_grow = (large["data_bytes"] - small["data_bytes"]) / MB
    print(f"\npeak RSS grows {grow:.1f} MiB from {small['samples']} to {large['samples']} samples, of which the "
          f"data array accounts for {data_grow:.1f} MiB; the rest, {grow - data_grow:.1f} MiB, is "
          f"{(grow - data_grow) / data_grow:.2f} x the data growth. Time per sample: "
          f"{1000 * small['seconds'] / small['samples']:.3f} ms vs {1000 * large['seconds'] / large['samples']:.3f} ms.")
    # sanity: ru_maxrss of the children, the larger of the two
    import resource
    print(f"(not used: resource.getrusage(RUSAGE_CHILDREN).ru_maxrss = "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.1f} MiB, which counts this parent's own "
          f"pages in the child between fork and exec; VmHWM is read inside the child after exec)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=EXAMPLE / "model.onnx")
    ap.add_argument("--data", type=Path, default=EXAMPLE / "calib.npz")
    ap.add_argument("--batch-size", type=int, default=64, help="calibrate()'s default")
    ap.add_argument("--repeat", type=int, default=3, help="best of N (default 3)")
    ap.add_argument("--scale", type=int, default=10, help="the larger data set for the memory test, x the data")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--sample-above", type=int, action="append", default=[],
                    help="also time calibrate() with observe.SAMPLE_ABOVE = N (repeatable)")
    args = ap.parse_args()
    print("# bench_calibrate: " + " ".join(["python", "benchmarks/bench_calibrate.py"] + sys.argv[1:]))
    for line in machine_lines():
        print(line)
    time_ratio(args.model, args.data, args.batch_size, args.repeat, args.sample_above)
    if not args.skip_memory:
        memory(args.model, args.data, args.batch_size, args.scale)
    print(load_line())


if __name__ == "__main__":
    main()

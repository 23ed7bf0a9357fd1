"""Calibration as three verbs: augment the graph with every tensor a rewrite needs as an extra output,
collect statistics batch by batch into fixed-size state, and return typed results."""
from __future__ import annotations

import gc
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from rewrites import __version__
from ground.data import array_shapes, Dataset, input_specs, load_dataset
from rewrites.calibration.observe import Observed, observe
from rewrites.calibration.stats import (DEFAULT_BINS, EXACT_FROM, TOP_LIMIT, Calibration, ChannelFold, TensorStats,
                                        TopFold, top_capacity)
from rewrites.config import DEFAULT_NORM, Norm, NormSpec
from rewrites.convert import normalise, to_model
from ground.errors import DataError
from rewrites.export import graph_weights, large_constants, weights_to_inputs
from ground.load import load_model
from ground.protos import add_outputs, fingerprint
from rewrites.passes import observed_tensors
from rewrites.emit import Emitter
from rewrites.patterns.softmax import exp_sum, rank_of, shifted, SHIFTED_SUFFIX, softmax_axes, SUM_SUFFIX
from ground.sessions import Session, WEIGHTS_AS_INPUTS_ABOVE
from rewrites.shapes import bind_input_shapes, recorded_shapes, resolve_input_shapes

Progress = Callable[[int, int], None]  # (samples done, samples total)
FOLD_THREADS = max(1, min(4, os.cpu_count() or 1))  # tensors of a batch folded at once

def add_softmax_terms(graph) -> None:
    """Expose, for every Softmax, its input minus its max over the Softmax axes (`<node>.shifted`) and the sum
    of exp of that (`<node>.exp_sum`): the inputs of its exp and of its reciprocal."""
    for node in [n for n in graph.nodes if n.op == "Softmax"]:
        x = node.inputs[0]
        emit = Emitter(graph, node.name)
        axes = softmax_axes(node, rank_of(x), graph.opset)
        u = shifted(emit, x, axes, graph.opset, gs.Variable(node.name + SHIFTED_SUFFIX, dtype=np.float32))
        exp_sum(emit, u, axes, graph.opset, out=gs.Variable(node.name + SUM_SUFFIX, dtype=np.float32))


def calibrate(model_path: str | Path, data_path: str | Path, batch_size: int = 64, limit: int | None = None,
              bins: int = DEFAULT_BINS, method: str = DEFAULT_NORM,
              progress: Progress | None = None, input_shapes: dict | None = None) -> Calibration:
    """Run the model over the data once and return per-tensor statistics of every tensor a rewrite needs.
    `method` (a --norm spec) is recorded as the default threshold rule for `convert`. Dynamic non-batch input
    dims are bound (rewrites/shapes.py) to `input_shapes` (--input-shape), else to the data's shapes, and
    the shapes are recorded."""
    norm = NormSpec.parse(method)
    exact_from = min(EXACT_FROM, norm.percentile) if norm.kind is Norm.PERCENTILE else EXACT_FROM
    if batch_size < 1:
        raise DataError(f"invalid --batch-size {batch_size}", "use a positive number")
    model = load_model(model_path)
    model_fingerprint = fingerprint(model)  # before normalising: graphsurgeon names Constant values in place
    bound = resolve_input_shapes(model, input_shapes, array_shapes(data_path, input_specs(model), input_shapes),
                                 data_path=str(data_path), model_path=str(model_path))
    bind_input_shapes(model, bound)
    dataset = load_dataset(data_path, input_specs(model), limit)
    graph, _ = normalise(model)
    tensors = observed_tensors(graph)
    add_softmax_terms(graph)
    plan = observe(graph, tensors, batch_size, bins)
    session = calibration_session(graph, model, [o for p in plan for o in p.outputs], str(model_path))
    del graph, model
    gc.collect()  # graphsurgeon graphs hold reference cycles: free the model's weights now, not at some later time
    stats = {name: TensorStats(name, bins) for name in tensors}
    collect(session, dataset, stats, batch_size, progress, plan, exact_from)
    return Calibration(model_fingerprint, str(model_path), len(dataset), stats, __version__, method,
                       input_shapes=recorded_shapes(bound))


def calibration_session(graph: gs.Graph, like: onnx.ModelProto, tensors: list[str], name: str) -> Session:
    """A session of the graph with `tensors` (observe()'s outputs) as outputs, workers not spinning (collect() folds
    statistics on a thread meanwhile). Full graph optimisation: onnxruntime keeps every graph output, so each
    observed tensor is still computed (by fused kernels: values within float rounding,
    tests/rewrites/test_calibration.py); measured 1.7x faster than none.

    Above WEIGHTS_AS_INPUTS_ABOVE bytes of weights, the model is exported without them and takes them as
    inputs, fed with every run from arrays read out of the graph: the session then holds the one copy of the
    weights (onnxruntime reads input arrays in place), and once the caller drops the graph and the loaded model,
    nothing else does. Otherwise the serialised model, onnxruntime's parse of it and its own initializers
    would hold three more, next to the model and the graph."""
    large = large_constants(graph)
    if sum(t._values.nbytes for t in large.values()) <= WEIGHTS_AS_INPUTS_ABOVE:
        return Session(add_outputs(to_model(graph, like), tensors), name, spin=False)
    skeleton = add_outputs(weights_to_inputs(to_model(graph, like, weights=False)), tensors)
    return _WithWeights(Session(skeleton, name, spin=False), graph_weights(graph, large))


class _WithWeights:
    """A Session whose model takes its large initializers as inputs, fed with every run."""

    def __init__(self, session: Session, weights: dict[str, np.ndarray]):
        self.session = session
        self.weights = weights

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(outputs, {**feeds, **self.weights})


def collect(session: Session, dataset: Dataset, stats: dict[str, TensorStats], batch_size: int,
            progress: Progress | None = None, plan: list[Observed] | None = None,
            exact_from: float = EXACT_FROM) -> None:
    """Run the session batch by batch and fold every observed tensor into `stats` (channels on axis 1: [N, C],
    [N, C, L], [N, C, H, W] as Conv and Gemm write), as `plan` reads it (default: every tensor whole). Batch k
    is folded on a worker thread while onnxruntime, which releases the GIL, runs batch k + 1: at most two
    batches' outputs are alive at a time. The top values are sized from the data set's length for
    percentiles from `exact_from` up to be exact (stats.top_capacity)."""
    plan = plan if plan is not None else [Observed(name, [name]) for name in stats]
    names = [o for p in plan for o in p.outputs]
    folds: dict[str, ChannelFold] = {}
    tops: dict[str, TopFold] = {}
    squares: dict[str, np.ndarray] = {}
    samples = len(dataset)

    def top_fold(p: Observed, x: np.ndarray, channels: int) -> TopFold:
        n = len(x) if x.ndim else 1
        total = x.size * samples // max(n, 1) if x.ndim else x.size * -(-samples // batch_size)
        k_channel = top_capacity(total // channels, exact_from, -(-TOP_LIMIT // channels)) if channels else 0
        return TopFold(top_capacity(total, exact_from), channels, k_channel)

    def fold_one(p: Observed, values: list[np.ndarray]) -> None:
        if p.name not in folds:
            folds[p.name] = ChannelFold(stats[p.name], 1 if values[0].ndim >= 2 else None)
        if p.sampled:
            folds[p.name].update(*p.fold_args(values))
            sq = values[4].astype(np.float64).sum(axis=0)
            if p.name not in tops:
                tops[p.name] = TopFold(*_capacities(p, len(values[0]), samples, exact_from))
            tops[p.name].update(values[5], values[6])
        else:
            x = values[0]
            folds[p.name].update(x)
            channels = x.shape[1] if x.ndim >= 2 else 0
            if p.name not in tops:
                tops[p.name] = top_fold(p, x, channels)
            r = x.reshape(x.shape[0], channels, -1) if channels else x.reshape(1, 1, -1)
            r64 = r.astype(np.float64)
            sq = np.einsum("acb,acb->c", r64, r64)
            if channels:
                tops[p.name].update_blocks(r)
            else:
                tops[p.name].update(x, None)
        squares[p.name] = squares.get(p.name, 0.0) + sq

    def fold(outputs: list[np.ndarray]) -> None:
        """One batch, its tensors folded side by side (NumPy releases the GIL); each tensor's batches in order."""
        k, parts = 0, []
        for p in plan:
            parts.append(tensors.submit(fold_one, p, outputs[k:k + len(p.outputs)]))
            k += len(p.outputs)
        for part in parts:
            part.result()

    def feeds(batch: dict) -> dict:
        extra = {}
        for p in plan:
            if p.floor:
                shape = [1, p.channels] + [1] * (p.rank - 2)
                f = tops[p.name].floors() if p.name in tops else np.full(p.channels, -np.inf, np.float32)
                extra[p.floor] = f.reshape(shape)
        return {**batch, **extra}

    done = 0
    if progress:
        progress(0, samples)
    pending: Future | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="calibration-fold") as worker, \
            ThreadPoolExecutor(FOLD_THREADS, thread_name_prefix="calibration-tensor") as tensors:
        for batch in dataset.batches(batch_size):
            outputs = session.run(names, feeds(batch))
            if pending is not None:
                pending.result()  # raises the fold's error, if any
            pending = worker.submit(fold, outputs)
            del outputs
            done += len(next(iter(batch.values())))
            if progress:
                progress(done, samples)
        if pending is not None:
            pending.result()
    for name, f in folds.items():
        s = f.finish()
        whole, channels = tops[name].finish()
        sq = np.atleast_1d(squares[name])
        s.top, s.total_sq = whole, float(sq.sum())
        if s.channels is not None and channels is not None and len(channels) == len(s.channels):
            for c, t, q in zip(s.channels, channels, sq.tolist()):
                c.top, c.total_sq = t, q


def _capacities(p: Observed, batch: int, samples: int, exact_from: float) -> tuple[int, int, int]:
    """TopFold's (k, channels, k per channel) of a tensor read in the graph."""
    per_channel = samples * p.per_sample
    return (top_capacity(per_channel * p.channels, exact_from), p.channels,
            top_capacity(per_channel, exact_from, -(-TOP_LIMIT // p.channels)))

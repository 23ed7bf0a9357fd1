"""Few-spikes coding (seed 003; Stoeckl & Maass, Nature Machine Intelligence 2021): the neuron's tables and
the schedule of the layers on the file's step clock (docs/fs.md).

An FS neuron holds its input x in its membrane and sends it in at most K spikes: at firing step k = 1..K it
spikes when v >= T(k), is reset by h(k) and the spike weighs d(k). For ReLU, T = h = d = alpha 2^-k is a K-bit
quantiser of x clipped at alpha (1 - 2^-K); lowering every threshold by phi alpha 2^-K rounds instead of
flooring (phi = 1/2, the QCFS shift). alpha = theta / (1 - 2^-K) for the calibrated threshold theta, so theta is
the largest value sent and the grid step is theta / (2^K - 1).

Layers are pipelined: a neuron integrates until the last step at which its input can still change and fires
its K steps from there (a spike reaches the next layer in the same step, which adds it before it fires), so
every value is final when it is read and skip connections need no delay. The data inputs and the biases enter
at the first step only (rewrites/drive.py, first_step_gate), and the decoded output is the sum of the steps'
outputs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from snnfile import DOMAIN
from snnfile.operators import FS_NEURON, FS_SILENT_THRESHOLD, RELEASE

SILENT = np.float32(FS_SILENT_THRESHOLD)  # the threshold of a step at which the neuron does not fire


@dataclass(frozen=True)
class FSTables:
    """One row per firing step (rows may broadcast per channel)."""

    thresholds: np.ndarray
    resets: np.ndarray
    weights: np.ndarray

    @property
    def K(self) -> int:
        return len(self.thresholds)

    def decode(self, x: np.ndarray) -> np.ndarray:
        """What the neuron sends for an input x held in its membrane (float64, the closed form of the kernel)."""
        v = np.array(x, np.float64)
        out = np.zeros_like(v)
        for thr, reset, weight in zip(self.thresholds, self.resets, self.weights):
            z = v >= thr
            out += z * weight
            v -= z * reset
        return out


def relu_tables(theta: np.ndarray, K: int, phi: float = 0.5) -> FSTables:
    """T = h = d = alpha 2^-k, k = 1..K, alpha = theta / (1 - 2^-K); thresholds lowered by phi alpha 2^-K. theta is
    a scalar or per-channel array; the rows get its shape."""
    theta = np.asarray(theta, np.float64)
    alpha = theta / (1.0 - 2.0 ** -K)
    powers = (2.0 ** -np.arange(1, K + 1)).reshape((K,) + (1,) * theta.ndim)
    weights = alpha[None] * powers
    thresholds = weights - phi * alpha[None] * 2.0 ** -K
    return FSTables(thresholds, weights.copy(), weights)


def neuron_inputs(name: str, tables: FSTables, start: int = 0) -> list[gs.Constant]:
    """The table inputs of an FSNeuron firing at steps start .. start + K - 1: silent rows before them and one
    after (read from then on), and `last`, its index."""
    rows = tables.thresholds.shape[1:]

    def padded(values: np.ndarray, fill: float) -> np.ndarray:
        out = np.full((start + tables.K + 1,) + rows, fill, np.float32)
        out[start:start + tables.K] = values
        return out

    return [gs.Constant(f"{name}.thresholds", padded(tables.thresholds, SILENT)),
            gs.Constant(f"{name}.resets", padded(tables.resets, 0.0)),
            gs.Constant(f"{name}.weights", padded(tables.weights, 0.0)),
            gs.Constant(f"{name}.last", np.array([start + tables.K], np.float32))]


def firing_rows(neuron: gs.Node) -> tuple[int, int]:
    """(start, K) of an FSNeuron: its first firing step and the number of them."""
    thresholds = neuron.inputs[1].values
    firing = np.flatnonzero(~np.all(thresholds.reshape(len(thresholds), -1) == SILENT, axis=1))
    return (int(firing[0]), int(firing[-1] - firing[0] + 1)) if len(firing) else (0, 0)


def schedule(graph: gs.Graph, overlap: int = 0) -> tuple[dict[str, int], int]:
    """Place every FS neuron's firing steps after the last step at which its input can change, and every
    Release at the step its input is final; returns the first firing step of each neuron and the steps a
    runtime must run for the outputs to be final. `overlap` > 0 starts each neuron that many steps earlier:
    the input's last spikes, the smallest, then arrive while it fires and reach only its later, smaller
    spikes (an approximation; fewer steps)."""
    graph.toposort()
    ready: dict[str, int] = {t.name: 0 for t in graph.inputs}
    starts: dict[str, int] = {}
    for node in graph.nodes:
        latest = max((ready.get(t.name, 0) for t in node.inputs if isinstance(t, gs.Variable)), default=0)
        if node.domain == DOMAIN and node.op == FS_NEURON.op_type:
            start, K = firing_rows(node)
            tables = _tables_of(node, start, K)
            start = max(latest - overlap, 0)
            for k, constant in enumerate(neuron_inputs(node.name, tables, start), start=1):
                node.inputs[k] = constant
            starts[node.name] = start
            latest = start + max(K, 1) - 1
        elif node.domain == DOMAIN and node.op == RELEASE.op_type:
            node.inputs[1] = gs.Constant(node.inputs[1].name, np.array([latest], np.float32))
        for t in node.outputs:
            ready[t.name] = latest
    return starts, max((ready.get(t.name, 0) for t in graph.outputs), default=0) + 1


def _tables_of(neuron: gs.Node, start: int, K: int) -> FSTables:
    rows = slice(start, start + K)
    return FSTables(*(np.asarray(neuron.inputs[k].values[rows], np.float64) for k in (1, 2, 3)))


@dataclass(frozen=True)
class FSFit:
    """A few-spikes neuron fitted to f on [lo, hi]: y = tables.decode(x) + offset."""

    tables: FSTables
    offset: float
    lo: float
    hi: float
    max_error: float  # over a fine grid of [lo, hi]
    mean_error: float  # over the fitting samples

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.tables.decode(x) + self.offset


FIT_POINTS = 1024  # of the calibrated distribution, and as many evenly over its range
FIT_RESTARTS = 8  # fitted side by side from one seed; the first starts from the binary quantiser
FIT_STEPS = 600
CHECK_POINTS = 8193


def _patterns(x: np.ndarray, T: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spikes [R, K, N] and v - T [R, K, N] of R neurons (T, h: [R, K]) holding the inputs x [N]."""
    R, K = T.shape
    v = np.broadcast_to(x, (R, len(x))).copy()
    Z, S = np.empty((R, K, len(x))), np.empty((R, K, len(x)))
    for k in range(K):
        np.subtract(v, T[:, k:k + 1], out=S[:, k])
        Z[:, k] = S[:, k] >= 0
        v -= h[:, k:k + 1] * Z[:, k]
    return Z, S


def _weights(Z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The least-squares output weights d and offset [R, K + 1] for spikes Z [R, K, N] (a small ridge keeps
    never-firing steps at d = 0)."""
    A = np.concatenate([Z, np.ones((Z.shape[0], 1, Z.shape[2]))], axis=1)
    gram = A @ A.transpose(0, 2, 1) + 1e-9 * Z.shape[2] * np.eye(A.shape[1])
    return np.linalg.solve(gram, (A @ y)[..., None])[..., 0]


def fit_tables(f, samples: np.ndarray, K: int, seed: int = 0) -> FSFit:
    """Fit (T, h, d) and an offset to f over the calibrated samples of its input: squared error on the samples
    and on an even grid of their range, minimised for T and h by Adam through a triangular surrogate of the
    spike's derivative (its width shrinking as it goes), d and the offset by least squares at every step;
    several starts side by side, the best kept. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    samples = np.asarray(samples, np.float64).reshape(-1)
    lo, hi = float(samples.min()), float(samples.max())
    if hi - lo < 1e-12:
        hi = lo + 1e-6
    r = hi - lo
    x = np.concatenate([rng.choice(samples, FIT_POINTS), np.linspace(lo, hi, FIT_POINTS)])
    y = np.asarray(f(x), np.float64)
    powers = 2.0 ** -np.arange(1, K + 1)
    T = lo + r * rng.uniform(0, 1, (FIT_RESTARTS, K))
    h = r * rng.uniform(-0.5, 0.5, (FIT_RESTARTS, K))
    T[0], h[0] = lo + r * powers, r * powers
    params = np.concatenate([T, h], axis=1)
    best = _descend(x, y, params, K, r, FIT_STEPS, 0.1, 0.01)
    for scale in FIT_HOPS:  # restarts around the best so far, in shrinking neighbourhoods
        losses = _losses(x, y, best, K)
        centre = best[int(np.argmin(losses))]
        hops = centre + scale * r * rng.normal(size=best.shape) * np.concatenate([powers, powers]) * 4
        hops[0] = centre
        best = _descend(x, y, hops, K, r, FIT_STEPS // 2, 0.02, 0.002)
    return _best_fit(f, x, y, best, K, lo, hi)


FIT_HOPS = (0.5,)


def _losses(x: np.ndarray, y: np.ndarray, params: np.ndarray, K: int) -> np.ndarray:
    Z, _ = _patterns(x, params[:, :K], params[:, K:])
    coef = _weights(Z, y)
    return np.mean((np.einsum("rk,rkn->rn", coef[:, :K], Z) + coef[:, K:] - y) ** 2, axis=1)


def _descend(x: np.ndarray, y: np.ndarray, params: np.ndarray, K: int, r: float, steps: int, width: float,
             rate: float) -> np.ndarray:
    """Adam on T and h of every row of params, from surrogate width and step size (fractions of the range r);
    returns each row's best parameters seen."""
    width, rate = width * r, rate * r
    first, second = np.zeros_like(params), np.zeros_like(params)
    best_loss, best = np.full(len(params), np.inf), params.copy()
    for step in range(steps):
        T, h = params[:, :K], params[:, K:]
        Z, S = _patterns(x, T, h)
        coef = _weights(Z, y)
        d = coef[:, :K]
        residual = np.einsum("rk,rkn->rn", d, Z) + coef[:, K:] - y
        loss = np.mean(residual ** 2, axis=1)
        better = loss < best_loss
        best_loss[better], best[better] = loss[better], params[better]
        g = 2.0 * residual / len(x)
        gv = np.zeros_like(g)
        grad = np.zeros_like(params)
        for k in reversed(range(K)):  # v_{k+1} = v_k - h_k z_k; gv is dL/dv_{k+1}
            gz = g * d[:, k:k + 1] - gv * h[:, k:k + 1]
            grad[:, K + k] = -np.sum(gv * Z[:, k], axis=1)
            gs = gz * np.maximum(0.0, 1.0 - np.abs(S[:, k]) / width) / width
            grad[:, k] = -np.sum(gs, axis=1)
            gv += gs
        first = 0.9 * first + 0.1 * grad
        second = 0.999 * second + 0.001 * grad ** 2
        params = params - rate * (first / (1 - 0.9 ** (step + 1))) / (
            np.sqrt(second / (1 - 0.999 ** (step + 1))) + 1e-12)
        if step % 100 == 99:
            width *= 0.7
            rate *= 0.8
    return best


def _best_fit(f, x: np.ndarray, y: np.ndarray, best: np.ndarray, K: int, lo: float, hi: float) -> FSFit:
    Z, _ = _patterns(x, best[:, :K], best[:, K:])
    coef = _weights(Z, y)
    residual = np.einsum("rk,rkn->rn", coef[:, :K], Z) + coef[:, K:] - y
    pick = int(np.argmin(np.mean(residual ** 2, axis=1)))
    T, h, d, offset = best[pick, :K], best[pick, K:], coef[pick, :K], float(coef[pick, K])
    fitted = FSFit(FSTables(T, h, d), offset, lo, hi, 0.0, float(np.mean(np.abs(residual[pick]))))
    grid = np.linspace(lo, hi, CHECK_POINTS)
    error = float(np.max(np.abs(fitted(grid) - f(grid))))
    return FSFit(fitted.tables, offset, lo, hi, error, fitted.mean_error)

"""Figures as PNG: accuracy (or agreement) against t for one or several runs, and spikes per neuron per
layer. matplotlib is an optional extra (`pip install ann2snn[plot]`)."""
from __future__ import annotations

from pathlib import Path

from ground.errors import Ann2SnnError


def plot_reports(runs: list[tuple[str, dict]], path: str | Path) -> None:
    """runs: (label, simulate --json report). Left: accuracy (agreement when there are no labels) against t;
    right: spikes per neuron of each layer for every run."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise Ann2SnnError("--plot needs matplotlib, which is not installed",
                           "pip install 'ann2snn[plot]' (or pip install matplotlib)") from exc
    fig, (curve, bars) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(runs), 1)
    for k, (label, report) in enumerate(runs):
        values = report.get("accuracy_all") or report.get("agreement_all") or []
        what = "accuracy" if report.get("accuracy_all") else "agreement with ANN"
        curve.plot(range(1, len(values) + 1), [100 * v for v in values], label=f"{label} ({what})")
        if report.get("ann_accuracy") is not None and report.get("accuracy_all"):
            curve.axhline(100 * report["ann_accuracy"], linestyle=":", color="gray")
        layers = report.get("layers", [])
        bars.bar([i + k * width for i in range(len(layers))], [l["spikes_per_neuron"] for l in layers], width,
                 label=label)
        bars.set_xticks(range(len(layers)), [l["node"][-24:] for l in layers], rotation=60, ha="right",
                        fontsize=7)
    curve.set_xlabel("time step t")
    curve.set_ylabel("%")
    curve.set_xscale("log", base=2)
    curve.grid(True, alpha=0.3)
    curve.legend(fontsize=8)
    bars.set_ylabel("spikes per neuron over the window")
    bars.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)

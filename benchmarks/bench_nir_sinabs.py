"""sinabs stepping our NIR export against the contract stepper stepping the spiking ONNX file it came from.

1. `ann2snn convert MODEL --phi 0 --data CALIB -o lenet.snn.onnx` (the trained LeNet of make_lenet.py).
2. `ann2snn export-nir lenet.snn.onnx -o lenet.nir --no-node-metadata` (sinabs 3.1 pins nir <= 1.0.4, which
   refuses metadata on non-neuron nodes; the script also says whether the file with node metadata loads).
3. `../shared/tools/step_onnx.py lenet.snn.onnx TEST --T 32 --ann MODEL`: accuracy at T of the ONNX file.
4. sinabs: `sinabs.from_nir(nir.read(lenet.nir), batch_size=B, num_timesteps=T)`; each batch is fed as
   [B * T, ...] (sample-major, the same image at every step: direct coding), the [B * T, 10] output averaged
   over T, argmax. Once with sinabs' defaults (its IAF: several spikes per step where v >= k * threshold, v
   clipped at -threshold), once with its layers set to our neuron's rule (SingleSpike, no lower bound), which
   shows where a gap comes from.

Run it with a Python that has torch, sinabs and nir; the ann2snn commands run with --ann2snn-python (default:
this checkout's .venv). Nothing in the project imports torch or sinabs.

usage: /work/bench-venv/bin/python benchmarks/bench_nir_sinabs.py [--model-dir DIR] [--T 32] [--limit N]
       [--batch 100] [--ann2snn-python PATH] [--json FILE]
DIR holds model.onnx, calib.npz and test.npz (python benchmarks/make_lenet.py --out DIR makes them).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STEP_ONNX = REPO.parent / "shared" / "tools" / "step_onnx.py"


def run(cmd: list, what: str) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout


def sinabs_accuracy(nir_path: Path, x: np.ndarray, y: np.ndarray, T: int, batch: int, exact: bool) -> float:
    import nir
    import sinabs.layers as sl
    import torch
    from sinabs.activation import SingleSpike
    from sinabs.nir import from_nir

    correct = 0
    for start in range(0, len(x), batch):
        xb = torch.from_numpy(x[start:start + batch])
        net = from_nir(nir.read(nir_path), batch_size=len(xb), num_timesteps=T)
        for layer in net.modules():
            if isinstance(layer, sl.StatefulLayer):
                layer.reset_states()
                if exact:
                    layer.spike_fn, layer.min_v_mem = SingleSpike, None
        inputs = xb.unsqueeze(1).expand(-1, T, *xb.shape[1:]).reshape(-1, *xb.shape[1:])
        with torch.no_grad():
            out = net(inputs)
        out = out[0] if isinstance(out, tuple) else out
        logits = out.reshape(len(xb), T, -1).mean(dim=1)
        correct += int((logits.argmax(dim=1).numpy() == y[start:start + batch]).sum())
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/work/bench-cache/lenet_mnist"))
    parser.add_argument("--T", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--ann2snn-python", type=Path, default=REPO / ".venv" / "bin" / "python")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import importlib.metadata as md
    import warnings
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # nirtorch.load's notice
    model, calib, test = (args.model_dir / n for n in ("model.onnx", "calib.npz", "test.npz"))
    for path in (model, calib, test):
        if not path.exists():
            raise SystemExit(f"{path} is missing: python benchmarks/make_lenet.py --out {args.model_dir}")
    py = args.ann2snn_python
    cli = [py, "-c", "from ann2snn_cli.app import main; main()"]
    data = np.load(test)
    x, y = data["x"][:args.limit], data["y"][:args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        snn, out_nir, full_nir = work / "lenet.snn.onnx", work / "lenet.nir", work / "lenet_meta.nir"
        test_npz = work / "test.npz"
        np.savez(test_npz, x=x, y=y)
        run(cli + ["convert", model, "--phi", "0", "--data", calib, "-o", snn], "ann2snn convert")
        run(cli + ["export-nir", snn, "-o", out_nir, "--no-node-metadata"], "ann2snn export-nir")
        run(cli + ["export-nir", snn, "-o", full_nir], "ann2snn export-nir (node metadata)")
        import nir
        try:
            nir.read(full_nir)
            with_metadata = "loads"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            with_metadata = f"refused: {type(exc).__name__}: {exc}"
        report_path = work / "step_onnx.json"
        run([py, STEP_ONNX, snn, test_npz, "--T", args.T, "--ann", model, "--json", report_path], "step_onnx.py")
        step = json.loads(report_path.read_text())
        onnx_acc = step["acc"][str(args.T)]
        start = time.perf_counter()
        sinabs_acc = sinabs_accuracy(out_nir, x, y, args.T, args.batch, exact=False)
        seconds = time.perf_counter() - start
        exact_acc = sinabs_accuracy(out_nir, x, y, args.T, args.batch, exact=True)
    result = {
        "model": str(model), "samples": len(x), "T": args.T,
        "versions": {p: md.version(p) for p in ("sinabs", "nir", "nirtorch", "torch")},
        "ann_accuracy": step.get("ann_acc"), "step_onnx_accuracy": onnx_acc, "sinabs_accuracy": sinabs_acc,
        "difference_points": 100 * (sinabs_acc - onnx_acc), "sinabs_seconds": seconds,
        "sinabs_our_neuron_accuracy": exact_acc, "file_with_node_metadata_in_this_nir": with_metadata,
    }
    print(f"{len(x)} test images, T = {args.T}; sinabs {result['versions']['sinabs']}, nir "
          f"{result['versions']['nir']}, torch {result['versions']['torch']}")
    print(f"ANN accuracy                               {100 * step['ann_acc']:.2f}%")
    print(f"step_onnx.py on the spiking ONNX file      {100 * onnx_acc:.2f}%")
    print(f"sinabs.from_nir on the NIR export          {100 * sinabs_acc:.2f}%  ({seconds:.1f} s)")
    print(f"difference (sinabs - step_onnx)            {result['difference_points']:+.2f} points")
    print(f"sinabs with our neuron (one spike per step, no floor on v): {100 * exact_acc:.2f}%")
    print(f"the file with node metadata in this nir: {with_metadata[:200]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())

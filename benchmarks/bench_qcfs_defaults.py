"""QCFS networks converted with no flag at all: `ann2snn convert MODEL -o X`, then X stepped by
../shared/tools/step_onnx.py (which knows only the exported file's contract) at T = L, 2L and 4L, once with
`--drain E` (E = the file's metadata ann2snn.drain_steps) and once with `--drain 0`. L is the file's
ann2snn.default_T (convert's --T defaults to L for a QCFS network). Prints a markdown table of accuracy and
agreement with the ANN's top-1 (onnxruntime on MODEL) per T, and next to it the ANN with every QCFS
activation's L replaced by T (lambda clip(floor(z T / lambda + shift) / T, 0, 1), onnxruntime): the
function an IF neuron computes for a constant input over T steps, so what the SNN can at best be at that T.

usage: python benchmarks/bench_qcfs_defaults.py [MODEL ...] [--data test.npz] [--ann2snn PATH] [--python PATH]
       [--json FILE]
MODEL defaults to examples/fmnist_qcfs_L4/model.onnx and examples/fmnist_qcfs_L8/model.onnx; --data to
examples/fmnist_cnn/test.npz (their test split). A conversion that fails is reported with its error.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_defaults import STEP_ONNX, metadata, run_cli  # noqa: E402
from common import EXAMPLE, REPO, load_line, machine_lines  # noqa: E402

def requantised(model: Path, T: int):
    """MODEL with each QCFS chain (as qcfs_to_if finds it) rebuilt at T levels instead of L."""
    import numpy as np
    import onnx_graphsurgeon as gs
    from ann2snn import load_model
    # no public call gives the normalised graph or its QCFS chains (ann2snn.inspect only classifies the nodes):
    # the rewriter's own normalise + find_chains, so the chains are exactly those qcfs_to_if converts
    from rewrites.convert import normalise
    from rewrites.patterns.qcfs import find_chains
    graph = normalise(load_model(model))[0]  # the normalised graph: the function of the ANN, its chains found
    matches, _ = find_chains(graph)
    for k, m in enumerate(matches):
        def const(name, value):
            return gs.Constant(f"requantised.{k}.{name}.value", np.array(value, np.float32))
        up, shifted, floored, down = (gs.Variable(f"requantised.{k}.{n}", np.float32) for n in
                                      ("up", "shifted", "floored", "down"))
        for node in m.nodes:
            node.outputs.clear()
        graph.nodes += [gs.Node("Mul", inputs=[m.x, const("up", T / m.lam)], outputs=[up]),
                        gs.Node("Add", inputs=[up, const("shift", 0.5 if m.shift else 0.0)], outputs=[shifted]),
                        gs.Node("Floor", inputs=[shifted], outputs=[floored]),
                        gs.Node("Mul", inputs=[floored, const("down", m.lam / T)], outputs=[down]),
                        gs.Node("Clip", inputs=[down, const("lo", 0.0), const("hi", m.lam)], outputs=[m.y])]
    graph.cleanup().toposort()
    return gs.export_onnx(graph), len(matches)


def ann_at(model: Path, data: Path, steps: list[int]) -> dict:
    """Accuracy and agreement with MODEL of MODEL requantised at each T."""
    import numpy as np
    import onnxruntime as ort
    with np.load(data, allow_pickle=False) as d:
        x, y = d["x"], d["y"]

    def predict(proto):
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0].argmax(axis=1)
    from ann2snn import load_model
    reference, out = predict(load_model(model)), {}
    for t in steps:
        proto, chains = requantised(model, t)
        p = predict(proto)
        out[t] = {"acc": float(np.mean(p == y)), "agree": float(np.mean(p == reference)), "chains": chains}
    return out


MODELS = [REPO / "examples" / "fmnist_qcfs_L4" / "model.onnx", REPO / "examples" / "fmnist_qcfs_L8" / "model.onnx"]


def step(python: str, snn: Path, ann: Path, data: Path, steps: list[int], drain: int, shown: list[str]) -> dict:
    out = snn.with_suffix(f".drain{drain}.json")
    cmd = [python, str(STEP_ONNX), str(snn), str(data), "--T", ",".join(map(str, steps)), "--ann", str(ann),
           "--drain", str(drain), "--json", str(out)]
    shown.append(" ".join(["step_onnx.py", *cmd[2:]]))
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        return {"error": f"step_onnx.py exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path, default=MODELS)
    ap.add_argument("--data", type=Path, default=EXAMPLE / "test.npz")
    ap.add_argument("--ann2snn", default=str(REPO / ".venv" / "bin" / "ann2snn"), help="the ann2snn executable")
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"), help="python for step_onnx.py")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"# bench_qcfs_defaults: {' '.join(['python', 'benchmarks/bench_qcfs_defaults.py', *sys.argv[1:]])}")
    print("\n".join(machine_lines()))
    print(f"ann2snn: {args.ann2snn} (repo HEAD {commit}); data {args.data}")
    start, shown, results = time.perf_counter(), [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, model in enumerate(args.models):
            snn = Path(tmp) / f"m{i}.snn.onnx"
            error = run_cli(args.ann2snn, ["convert", str(model), "-o", str(snn)], shown)
            entry = {"model": str(model), "error": error, "runs": {}}
            results.append(entry)
            if error:
                continue
            meta = metadata(snn)
            L, drain = int(meta.get("ann2snn.default_T", "0")), int(meta.get("ann2snn.drain_steps", "0"))
            entry.update(default_T=L, drain_steps=drain, steps=[L, 2 * L, 4 * L])
            for e in sorted({drain, 0}, reverse=True):
                entry["runs"][e] = step(args.python, snn, model, args.data, entry["steps"], e, shown)
            entry["ann_at_T"] = ann_at(model, args.data, entry["steps"])
    shown = [line.replace(tmp, "$OUT") for line in shown]

    print("\n| model | L (default_T) | drain_steps | --drain | T | accuracy (%) | agreement (%) | ANN (%) | "
          "ANN at T levels: accuracy (%) | agreement (%) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for entry in results:
        name = str(Path(entry["model"]).resolve().relative_to(REPO)) if Path(entry["model"]).resolve().is_relative_to(
            REPO) else entry["model"]
        if entry["error"]:
            print(f"| `{name}` | | | | | failed | | |")
            continue
        for e, rep in entry["runs"].items():
            if "error" in rep:
                print(f"| `{name}` | {entry['default_T']} | {entry['drain_steps']} | {e} | | failed | | |")
                continue
            for t in entry["steps"]:
                at = entry["ann_at_T"][t]
                print(f"| `{name}` | {entry['default_T']} | {entry['drain_steps']} | {e} | {t} | "
                      f"{100 * rep['acc'][str(t)]:.2f} | {100 * rep['agree'][str(t)]:.2f} | "
                      f"{100 * rep['ann_acc']:.2f} | {100 * at['acc']:.2f} | {100 * at['agree']:.2f} |")
    for entry in results:
        if entry["error"]:
            print(f"\n`ann2snn convert {entry['model']}` failed: {entry['error']}")
        for e, rep in entry["runs"].items():
            if "error" in rep:
                print(f"\n{entry['model']} --drain {e}: {rep['error']}")
    print("\ncommands ($OUT = a temporary directory):")
    print("\n".join(f"  {line}" for line in shown))
    print(f"\nwall time {time.perf_counter() - start:.0f} s; " + load_line())
    if args.json:
        args.json.write_text(json.dumps({"commit": commit, "data": str(args.data), "results": results,
                                         "commands": shown}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Relative error of the decoded output and top-1 agreement with the ANN at t = 1, 2, 4, ... 64 for every
torch-exported fixture in tests/fixtures/torch/ (issue 6), through the CLI in process, two ways:

- `max`: `calibrate --max`, `convert --T 64` (with `--nonlinear exact` for the networks without a ReLU), as
  tests/test_torch_fixtures.py checks them;
- `default`: `calibrate` and `convert --T 64` with the defaults (99th percentile, UGO nonlinearities).

Prints Markdown (docs/torch_fixtures.md holds its output).

usage: python benchmarks/torch_fixtures.py [--only PATTERN] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from typer.testing import CliRunner  # noqa: E402

from ann2snn_cli.app import app  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "torch"
SIGNATURE = {"bert": "ids", "nhwc": "nhwc", "multi_io": "multi"}
NO_RELU = {"vit", "bert", "efficientnet"}
T = 64
runner = CliRunner()


def cli(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    if result.exit_code:
        raise RuntimeError(f"ann2snn {' '.join(map(str, args))}: exit {result.exit_code}: {result.output[-500:]}")
    return result.stdout


def run(model: Path, mode: str, folder: Path) -> dict:
    arch = model.stem.rsplit("_", 2)[0]
    sig = SIGNATURE.get(arch, "image")
    calib, snn = folder / f"{model.stem}.{mode}.calib.json", folder / f"{model.stem}.{mode}.snn.onnx"
    start = time.perf_counter()
    cli("calibrate", model, "--data", FIXTURES / f"{sig}.calib.npz", "-o", calib,
        *(["--max"] if mode == "max" else []))
    extra = ["--nonlinear", "exact"] if mode == "max" and arch in NO_RELU else []
    cli("convert", model, "--calib", calib, "-o", snn, "--T", T, *extra)
    report = json.loads(cli("simulate", snn, "--data", FIXTURES / f"{sig}.test.npz", "--T", T, "--ann", model,
                            "--json", "-"))
    return {"steps": report["steps"], "relative_error": report["relative_error"], "agreement": report["agreement"],
            "seconds": time.perf_counter() - start, "nonlinear": "exact" if extra else "ugo"}


def table(results: dict, mode: str) -> str:
    steps = next(iter(results.values()))[mode]["steps"]
    head = "| fixture | " + " | ".join(f"t={t}" for t in steps) + " |"
    lines = [head, "|" + "---|" * (len(steps) + 1)]
    for name, r in results.items():
        cells = [f"{e * 100:.2f}% / {a * 16:.0f}" for e, a in zip(r[mode]["relative_error"], r[mode]["agreement"])]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="*")
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in sorted(FIXTURES.glob(f"{args.only}.onnx")):
            results[model.name] = {mode: run(model, mode, Path(tmp)) for mode in ("max", "default")}
            print(f"{model.name}: " + ", ".join(f"{m} {r['relative_error'][-1]:.4f} ({r['seconds']:.1f} s)"
                                                for m, r in results[model.name].items()), file=sys.stderr)
    for mode in ("max", "default"):
        print(f"\n### {mode}\n\nrelative error of the decoded output / samples (of 16) whose top-1 agrees with "
              f"the ANN\n\n{table(results, mode)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

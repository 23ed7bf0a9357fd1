"""Issue 20's measure: real transformer layouts converted with the defaults (`ann2snn convert MODEL --data
CALIB`, here through the API with layer_error=True) and stepped by ../shared/tools/step_onnx.py, which knows
only the file's contract, on test inputs the conversion never saw.

- ViT: the folder of benchmarks/make_vit_tiny.py (model.onnx, model_dynamo.onnx, calib.npz, test.npz): top-1
  agreement with the ANN and the relative error of the output's input-dependent part (`rel_err_c`).
- BERT: the folder of benchmarks/make_minilm.py: mean cosine similarity of the embeddings to the ANN's.

Prints Markdown: per file the limit error `--layer-error` finds (every subnet in place), the largest single
subnet, conversion time, and the stepped figures at each T.

usage: python benchmarks/bench_real_transformers.py [--vit DIR] [--bert DIR] [--limit 64] [--batch 8]
       [--T 8,32] [--bert-T 16,64] [--step-tool ../shared/tools/step_onnx.py]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ann2snn  # noqa: E402
from ann2snn.conversion import ConvertRequest, convert  # noqa: E402


def measure(model: Path, calib: Path, test: Path, Ts: str, args, folder: Path) -> dict:
    start = time.perf_counter()
    converted = convert(model, ConvertRequest(layer_error=True), data=calib)
    seconds = time.perf_counter() - start
    snn = converted.save(folder / f"{model.stem}.snn.onnx")
    report = folder / f"{model.stem}.json"
    subprocess.run([sys.executable, str(args.step_tool), str(snn), str(test), "--T", Ts, "--ann", str(model),
                    "--limit", str(args.limit), "--batch", str(args.batch), "--json", str(report)], check=True,
                   stdout=subprocess.DEVNULL)
    errors = converted.layer_errors
    worst = max(errors.subnets, key=lambda e: e.output_error)
    return {"file": model.name, "convert_s": seconds, "limit_error": errors.together,
            "worst": f"{worst.function} ({errors.share(worst):.0%})",
            "step_memory_mib": converted.step_memory.tensor_bytes / 2 ** 20 if converted.step_memory else None,
            **json.loads(report.read_text())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vit", type=Path)
    ap.add_argument("--bert", type=Path)
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--T", default="8,32")
    ap.add_argument("--bert-T", default="16,64")
    ap.add_argument("--step-tool", type=Path, default=REPO.parent / "shared" / "tools" / "step_onnx.py")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.vit:
            for name in ("model.onnx", "model_dynamo.onnx"):
                rows.append(measure(args.vit / name, args.vit / "calib.npz", args.vit / "test.npz", args.T,
                                    args, Path(tmp)))
        if args.bert:
            rows.append(measure(args.bert / "model.onnx", args.bert / "calib.npz", args.bert / "test.npz",
                                args.bert_T, args, Path(tmp)))
    print(f"ann2snn {ann2snn.__version__}, {args.limit} test samples\n")
    print("| file | convert | limit error | largest subnet | T | agreement | rel. error (input-dependent) | cosine |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for T in r["T"]:
            t = str(T)
            print(f"| {r['file']} | {r['convert_s']:.0f} s | {r['limit_error']:.2e} | {r['worst']} | {T} | "
                  f"{r['agree'][t]:.3f} | {r['rel_err_c'][t]:.4f} | {r['cosine'][t]:.4f} |")


if __name__ == "__main__":
    main()

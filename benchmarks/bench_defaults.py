"""Issue 15, "best by default": on a network nobody tuned ann2snn on, the default conversion against the best
flags and against SpikingJelly's ann2snn recipes, at the same T on the same test images.

MODEL_DIR holds model.onnx, calib.npz and test.npz (benchmarks/make_lenet.py writes them for the LeNet-5;
examples/fmnist_cnn holds them for the bundled Fashion-MNIST CNN). Rows:

- defaults: `ann2snn convert model.onnx --data calib.npz` and nothing else, stepped at every T; the same
  with `--no-refit` (the linear layers keep the ANN's weights); the same with `--T T`, one file per T, each stepped at its own T; and the two-step form with no option,
  `ann2snn calibrate` then `convert --calib C`, stepped at every T.
- best: `ann2snn calibrate`, then `convert --calib ... --neuron signed --norm mmse --per-channel
  --bias-correction --data calib.npz --T T`, one file per T.
- spikingjelly: RateCodingRecipe in several modes, calibrated on calib.npz, run for max(T) steps; the
  accuracy at t is that of the outputs summed over steps 1..t (IF neurons do not depend on T). It runs on the
  network rebuilt in torch from model.onnx's initializers: --torch-model lenet (make_lenet.LeNet), fmnist_cnn
  (examples/make_example.py's FmnistCNN, through bench_spikingjelly.torch_ann) or auto (default: the first
  of them whose state_dict the file's initializers fill exactly). A network with MaxPool also gets the
  recipe's pre_spike_maxpool mode. Skipped with a note where torch or spikingjelly >= 2.0 is missing.

Every row reports the accuracy on test.npz and the agreement with the ANN's top-1 (onnxruntime on
model.onnx) at each T; ours from step_onnx.py's `acc` and `agree`.

Our files are measured by stepping them with ../shared/tools/step_onnx.py, which knows only the exported
file's contract, with `--drain E` where the file's metadata ann2snn.drain_steps says E > 0. ann2snn runs
through its CLI (--ann2snn, default the checkout's .venv/bin/ann2snn), so it measures the code as it is
there. A conversion that fails is reported as a failed row with its error, not as a crash.

usage: python benchmarks/bench_defaults.py MODEL_DIR [--T 4,8,16,32] [--rows defaults,best,spikingjelly]
       [--torch-model auto|lenet|fmnist_cnn] [--ann2snn PATH] [--python PATH] [--json FILE]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_spikingjelly import SJ_CONFIGS as SJ_FMNIST_CONFIGS  # noqa: E402
from bench_spikingjelly import import_spikingjelly, sj_convert, sj_forward, torch_ann  # noqa: E402
from common import REPO, load_line, machine_lines  # noqa: E402

STEP_ONNX = REPO.parent / "shared" / "tools" / "step_onnx.py"
BEST = ["--neuron", "signed", "--norm", "mmse", "--per-channel", "--bias-correction"]
# SpikingJelly's RateCodingRecipe modes: label -> keyword arguments. 'max' and '99.9%' are its classic
# threshold rules; a float f sets the threshold to f times the max (its tutorial's 1.0/2, 1.0/3); the last
# adds the per-channel thresholds and the membrane started at half the threshold that the recipe offers.
SJ_CONFIGS: dict[str, dict] = {
    "max": {"mode": "max"},
    "99.9%": {"mode": "99.9%"},
    "1.0/2": {"mode": 1.0 / 2},
    "1.0/3": {"mode": 1.0 / 3},
    "99.9%, channel-wise, v(0) = theta/2": {"mode": "99.9%", "channel_wise": True, "half_threshold": True},
}
ROWS = ("defaults", "best", "spikingjelly")
# networks with MaxPool: the recipe's most complete mode, with MaxPool moved before the neuron
SJ_MAXPOOL_CONFIG = "99.9%, channel-wise, MaxPool before neuron, v(0) = theta/2"


def lenet(torch, path: Path):
    from make_lenet import lenet_from_onnx

    return lenet_from_onnx(path)


# --torch-model: name -> (the torch rebuild of model.onnx, what it is)
TORCH_MODELS = {"lenet": (lenet, "make_lenet.LeNet"),
                "fmnist_cnn": (torch_ann, "examples/make_example.py's FmnistCNN")}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_cli(ann2snn: str, args: list[str], shown: list[str]) -> str | None:
    """`ann2snn ARGS`; None if it succeeded, else its exit code and the end of its stderr on one line."""
    shown.append("ann2snn " + " ".join(args))
    done = subprocess.run([ann2snn, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode == 0:
        return None
    lines = [line.strip(" │╭╮╰╯─") for line in done.stderr.splitlines()]
    return f"exit {done.returncode}: " + (" ".join(line for line in lines if line)[-300:] or "no message")


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def step(python: str, snn: Path, model_dir: Path, steps: list[int]) -> tuple[dict[int, float], dict[int, float], int]:
    """Accuracy and agreement with the ANN's top-1 at each T of `steps` by step_onnx.py, and the drain steps
    E it ran after each T."""
    drain = int(metadata(snn).get("ann2snn.drain_steps", "0"))
    out = snn.with_suffix(".step.json")
    cmd = [python, str(STEP_ONNX), str(snn), str(model_dir / "test.npz"), "--T", ",".join(map(str, steps)),
           "--ann", str(model_dir / "model.onnx"), "--json", str(out)] + (["--drain", str(drain)] if drain else [])
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"step_onnx.py failed on {snn} ({done.returncode}):\n{done.stderr}")
    report = json.loads(out.read_text())
    return ({int(t): a for t, a in report["acc"].items()}, {int(t): a for t, a in report["agree"].items()}, drain)


def ours(args, model_dir: Path, work: Path, steps: list[int], shown: list[str]) -> list[dict]:
    """The defaults rows and the best-flags row, as asked by --rows. Each row is planned as (label,
    configuration, conversions), a conversion as (file name, options, the T at which to step the file); `C`
    in the options stands for the calibration JSON that `ann2snn calibrate` writes first."""
    model, calib, calib_json = str(model_dir / "model.onnx"), str(model_dir / "calib.npz"), work / "calib.json"
    plans = []
    if "defaults" in args.rows:
        plans += [("defaults", "calibrate; convert --calib C", [("two_step", ["--calib", "C"], steps)]),
                  ("defaults", "convert --data calib.npz", [("defaults", ["--data", calib], steps)]),
                  ("defaults", "convert --data calib.npz --no-refit",
                   [("no_refit", ["--data", calib, "--no-refit"], steps)]),
                  ("defaults", "convert --data calib.npz --T T",
                   [(f"defaults_T{t}", ["--data", calib, "--T", str(t)], [t]) for t in steps])]
    if "best" in args.rows:
        plans.append(("best", "convert --calib C " + " ".join(BEST) + " --data calib.npz --T T",
                      [(f"best_T{t}", ["--calib", "C", *BEST, "--data", calib, "--T", str(t)], [t]) for t in steps]))
    if not plans:
        return []
    calib_error = run_cli(args.ann2snn, ["calibrate", model, "--data", calib, "-o", str(calib_json)], shown)
    rows = []
    for label, config, runs in plans:
        row = {"row": label, "config": config, "accuracy": {}, "agreement": {}, "errors": {}, "drain": {},
               "default_T": {}}
        for name, options, at in runs:
            if calib_error and "C" in options:
                row["errors"]["calibrate"] = calib_error
                break
            log(f"ann2snn {config}: {name}")
            snn = work / f"{name}.snn.onnx"
            options = [str(calib_json) if o == "C" else o for o in options]
            error = run_cli(args.ann2snn, ["convert", model, *options, "-o", str(snn)], shown)
            if error:
                row["errors"][name] = error
                continue
            accuracy, agreement, row["drain"][name] = step(args.python, snn, model_dir, at)
            row["accuracy"].update(accuracy)
            row["agreement"].update(agreement)
            row["default_T"][name] = metadata(snn).get("ann2snn.default_T")
        rows.append(row)
    return rows


def torch_rebuild(torch, path: Path, name: str):
    """(name, module) of the --torch-model rebuild of `path`; 'auto': the first that loads exactly."""
    if name != "auto":
        return name, TORCH_MODELS[name][0](torch, path)
    errors = []
    for candidate, (build, _) in TORCH_MODELS.items():
        try:
            return candidate, build(torch, path)
        except RuntimeError as exc:  # load_state_dict: missing / unexpected keys or shape mismatch
            errors.append(f"{candidate}: {str(exc).splitlines()[0]}")
    raise SystemExit(f"--torch-model auto: no torch rebuild fits {path} ({'; '.join(errors)})")


def sj_scores(sj, snn, x: np.ndarray, y: np.ndarray, ann_top1: np.ndarray, T: int, batch: int):
    """Accuracy and agreement with the ANN's top-1 after each of steps 1..T (bench_spikingjelly.sj_forward)."""
    correct, agree = np.zeros(T), np.zeros(T)
    for i in range(0, len(x), batch):
        top1 = sj_forward(sj, snn, x[i:i + batch], T).argmax(-1)
        correct += (top1 == y[i:i + batch]).sum(1)
        agree += (top1 == ann_top1[i:i + batch]).sum(1)
    return correct / len(x), agree / len(x)


def spikingjelly(model_dir: Path, steps: list[int], batch: int, torch_model: str) -> tuple[list[dict], str]:
    """SpikingJelly's rows on the torch network rebuilt from model.onnx, and a line on the rebuild (or on why
    there are no rows)."""
    sj = import_spikingjelly()
    if isinstance(sj, str):
        return [], f"SpikingJelly rows skipped: {sj}"
    torch = sj[0]
    torch.set_num_threads(1)
    name, net = torch_rebuild(torch, model_dir / "model.onnx", torch_model)
    test, calib_x = np.load(model_dir / "test.npz"), np.load(model_dir / "calib.npz")["x"]
    x, y = test["x"], test["y"]
    with torch.no_grad():
        logits = np.concatenate([net(torch.from_numpy(x[i:i + 500])).numpy() for i in range(0, len(x), 500)])
    reference = ann_logits(model_dir, x)
    diff, ann_top1 = np.abs(logits - reference).max(), reference.argmax(1)
    configs = dict(SJ_CONFIGS)
    if any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules()):
        configs[SJ_MAXPOOL_CONFIG] = SJ_FMNIST_CONFIGS[SJ_MAXPOOL_CONFIG]
    rows = []
    for label, options in configs.items():
        log(f"spikingjelly {label}")
        acc, agree = sj_scores(sj, sj_convert(sj, net, calib_x, options, batch), x, y, ann_top1, max(steps), batch)
        rows.append({"row": "spikingjelly", "config": label, "options": options,
                     "accuracy": {t: float(acc[t - 1]) for t in steps},
                     "agreement": {t: float(agree[t - 1]) for t in steps}, "errors": {}})
    return rows, (f"SpikingJelly {importlib.metadata.version('spikingjelly')}, torch {torch.__version__}: torch "
                  f"rebuild {TORCH_MODELS[name][1]} (--torch-model {name}) vs onnxruntime max |logit diff| "
                  f"{diff:.1e}, top-1 mismatches {int(np.sum(logits.argmax(1) != ann_top1))}, ANN accuracy "
                  f"(torch) {100 * np.mean(logits.argmax(1) == y):.2f}%; calibrated in batches of {batch}")


def ann_logits(model_dir: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def table(rows: list[dict], steps: list[int], ann: float) -> list[str]:
    """Markdown: accuracy (%) per T with the gap to the ANN in points, ANN - SNN, in brackets."""
    lines = ["| row | configuration | " + " | ".join(f"T = {t}" for t in steps) + " | ANN |",
             "|---|---|" + "---:|" * (len(steps) + 1)]
    for row in rows:
        cells = [f"{100 * row['accuracy'][t]:.2f} ({100 * (ann - row['accuracy'][t]):+.2f})"
                 if t in row["accuracy"] else "failed" for t in steps]
        lines.append(f"| {row['row']} | `{row['config']}` | " + " | ".join(cells) + f" | {100 * ann:.2f} |")
    return lines


def agreement_table(rows: list[dict], steps: list[int]) -> list[str]:
    """Markdown: agreement (%) with the ANN's top-1 per T."""
    lines = ["| row | configuration | " + " | ".join(f"T = {t}" for t in steps) + " |",
             "|---|---|" + "---:|" * len(steps)]
    for row in rows:
        agreement = row.get("agreement", {})
        cells = [f"{100 * agreement[t]:.2f}" if t in agreement else "failed" for t in steps]
        lines.append(f"| {row['row']} | `{row['config']}` | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path, help="directory with model.onnx, calib.npz, test.npz")
    ap.add_argument("--T", default="4,8,16,32", help="time steps, comma-separated")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"which rows, comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--ann2snn", default=str(REPO / ".venv" / "bin" / "ann2snn"), help="the ann2snn executable")
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"), help="python for step_onnx.py")
    ap.add_argument("--sj-batch", type=int, default=100, help="SpikingJelly: calibration and test batch size")
    ap.add_argument("--torch-model", default="auto", choices=["auto", *TORCH_MODELS],
                    help="SpikingJelly: the torch rebuild of model.onnx (auto: the first that loads exactly)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = ap.parse_args()
    args.rows = [r for r in args.rows.split(",") if r]
    if set(args.rows) - set(ROWS):
        ap.error(f"--rows: unknown {sorted(set(args.rows) - set(ROWS))}")
    steps = sorted({int(t) for t in args.T.split(",") if t})
    test = np.load(args.model_dir / "test.npz")
    ann = float(np.mean(ann_logits(args.model_dir, test["x"]).argmax(1) == test["y"]))
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    command = " ".join(["python", "benchmarks/bench_defaults.py"] + sys.argv[1:])
    print(f"# bench_defaults: {command}")
    print("\n".join(machine_lines()))
    print(f"ann2snn: {args.ann2snn} (repo HEAD {commit}; that checkout's working tree only where PATH is its own .venv/bin/ann2snn)")
    print(f"test images: {len(test['y'])}; ANN accuracy (onnxruntime) {100 * ann:.2f}%")

    start, shown, rows, note = time.perf_counter(), [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        rows += ours(args, args.model_dir, Path(tmp), steps, shown)
    shown = [line.replace(tmp, "$OUT").replace(str(args.model_dir), "$DIR") for line in shown]
    if "spikingjelly" in args.rows:
        sj_rows, note = spikingjelly(args.model_dir, steps, args.sj_batch, args.torch_model)
        rows += sj_rows
        print(note)
    print(f"\n## Accuracy (%) on the {len(test['y'])} images of test.npz, (ANN - SNN) in points\n")
    print("\n".join(table(rows, steps, ann)))
    print(f"\n## Agreement (%) with the ANN's top-1 on the same images\n")
    print("\n".join(agreement_table(rows, steps)))
    for row in rows:
        failed: dict[str, list[str]] = {}
        for name, error in row["errors"].items():
            failed.setdefault(error, []).append(name)
        for error, names in failed.items():
            print(f"\n`{row['config']}` failed ({', '.join(names)}): {error}")
        drains = {name: e for name, e in row.get("drain", {}).items() if e}
        if drains:
            print(f"\n`{row['config']}` stepped with --drain: {drains}")
    print(f"\nann2snn commands ($DIR = {args.model_dir}, $OUT = a temporary directory):")
    print("\n".join(f"  {line}" for line in shown))
    print(f"\nwall time {time.perf_counter() - start:.0f} s; " + load_line())
    if args.json:
        args.json.write_text(json.dumps({"command": command, "commit": commit, "steps": steps, "samples":
                                         len(test["y"]), "ann_accuracy": ann, "spikingjelly": note,
                                         "rows": rows, "ann2snn_commands": shown}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

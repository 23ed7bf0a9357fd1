"""CLI start-up: the app module imports no numerical library (commands import the library when they run),
so `ann2snn --help` stays fast; progress bars never draw "0/0"."""
import io
import subprocess
import sys

from rich.console import Console

from ann2snn_cli._output import Output

HEAVY = ("numpy", "onnx", "onnxruntime", "onnx_graphsurgeon", "ground.load", "sim", "ann2snn")


def test_app_module_imports_no_numerical_library():
    code = ("import sys, ann2snn_cli.app; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"


def test_help_runs_without_the_library():
    code = ("import sys; from ann2snn_cli.app import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('LOADED', ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "calibrate" in out.stdout and out.stdout.strip().endswith("LOADED")


def test_progress_never_shows_zero_of_zero():
    out = Output()
    out.err = Console(file=io.StringIO(), force_terminal=True, width=80)
    with out.progress("calibrating", 0) as progress:
        out.err.file.write("")
        progress(5, 10)
    text = out.err.file.getvalue()
    assert "0/0" not in text and "5/10" in text

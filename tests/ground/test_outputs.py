"""Files the tool writes behave as users expect: the folder must exist (nothing is created), the mode follows
the umask, a write error names the user's path (not a hidden temporary file), and nothing is left behind."""
import os

import numpy as np
import onnx
import pytest

from builders import small_cnn
from ground.errors import InputFileError
from ground.save import save_model, write_text_atomic
from test_cli import assert_bad_input, files, invoke


@pytest.mark.parametrize("write", [lambda p: save_model(small_cnn(), p), lambda p: write_text_atomic(p, "{}")])
def test_a_missing_folder_is_refused_and_not_created(tmp_path, write):
    target = tmp_path / "missing" / "out.onnx"
    with pytest.raises(InputFileError, match="missing.*does not exist"):
        write(target)
    assert files(tmp_path) == set()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_model(small_cnn(), tmp_path / "m.onnx")
        write_text_atomic(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert {(tmp_path / n).stat().st_mode & 0o777 for n in ("m.onnx", "r.json")} == {mode}


def test_a_write_error_names_the_target(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(src))
    monkeypatch.setattr(os, "replace", refuse)
    target = tmp_path / "out.snn.onnx"
    with pytest.raises(InputFileError) as info:
        save_model(small_cnn(), target)
    assert str(target) in info.value.message and ".tmp" not in info.value.message
    assert "Permission denied" in info.value.message
    assert files(tmp_path) == set()  # the temporary file is gone


def test_simulate_refuses_an_unwritable_report_before_running(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(small_cnn(), model)
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 1, 12, 12), np.float32))
    before = files(tmp_path)
    result = invoke("simulate", model, "--data", tmp_path / "d.npz", "--json", tmp_path / "nowhere" / "r.json")
    assert_bad_input(result, before, tmp_path, mentions=["does not exist"])


def test_plot_without_matplotlib_is_refused_before_running(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    before = files(tmp_path)
    result = invoke("simulate", tmp_path / "absent.snn.onnx", "--data", tmp_path / "absent.npz",
                    "--plot", tmp_path / "p.png")
    assert_bad_input(result, before, tmp_path, mentions=["--plot needs matplotlib", "ann2snn[plot]"])


def test_help_shows_the_extra_by_name():
    result = invoke("simulate", "--help")
    assert "ann2snn[plot]" in result.output

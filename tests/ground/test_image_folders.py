"""`--data DIR`: a folder of PNG / JPEG images read as the model's input (ground/images.py).
The same uint8 images saved as PNG (lossless) and as an .npz of uint8 / 255 must give the same calibration
and the same simulation, bit for bit; bad folders are one-line errors (exit 2)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from ann2snn_cli.app import app
from builders import ModelBuilder, small_cnn
from conftest import EXAMPLE
from ground.data import InputSpec, load_dataset
from ground.images import ImageFolder, list_images

runner = CliRunner(env={"NO_COLOR": "1", "FORCE_COLOR": None, "COLUMNS": "200"})


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def bad(result, *words) -> str:
    """Exit 2 and one `error:` line on stderr, no traceback, naming each of `words`."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "internal error" not in lines[0], result.stderr
    for word in words:
        assert str(word) in lines[0], lines[0]
    return lines[0]


def write_class_folders(root, pixels: np.ndarray, labels: np.ndarray, names=None):
    """pixels uint8 [n, H, W] or [n, H, W, 3] -> root/<class>/<i>.png; returns the sample order the folder
    reader uses (round robin over the classes, files by name)."""
    names = names or {int(c): str(c) for c in np.unique(labels)}
    for i, (img, label) in enumerate(zip(pixels, labels)):
        folder = root / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.png")
    files, _ = list_images(root)
    return np.asarray([int(f.stem) for f in files])


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """300 images of the bundled test set as PNG class folders and as an .npz in the same order."""
    root = tmp_path_factory.mktemp("images")
    z = np.load(EXAMPLE / "test.npz")
    x, y = z["x"][:300], z["y"][:300]
    pixels = np.round(x[:, 0] * 255).astype(np.uint8)
    assert np.array_equal(pixels.astype(np.float32) / np.float32(255), x[:, 0])  # the npz is uint8 / 255
    folder = root / "classes"
    order = write_class_folders(folder, pixels, y)
    npz = root / "same.npz"
    np.savez(npz, x=x[order], y=y[order])
    return folder, npz, root


def test_calibrate_on_a_folder_equals_the_npz(example, tmp_path):
    folder, npz, _ = example
    a, b = tmp_path / "folder.json", tmp_path / "npz.json"
    ok(invoke("calibrate", EXAMPLE / "model.onnx", "--data", folder, "-o", a, "--batch-size", 64))
    ok(invoke("calibrate", EXAMPLE / "model.onnx", "--data", npz, "-o", b, "--batch-size", 64))
    assert json.loads(a.read_text())["samples"] == 300
    assert a.read_text() == b.read_text()


def test_simulate_on_a_folder_equals_the_npz(example, tmp_path):
    folder, npz, _ = example
    calib, snn = tmp_path / "c.json", tmp_path / "m.snn.onnx"
    ok(invoke("calibrate", EXAMPLE / "model.onnx", "--data", npz, "-o", calib))
    ok(invoke("convert", EXAMPLE / "model.onnx", "--calib", calib, "--norm", "max", "-o", snn))
    reports = []
    for data in (folder, npz):
        result = ok(invoke("simulate", snn, "--data", data, "--T", 8, "--ann", EXAMPLE / "model.onnx",
                           "--batch-size", 100, "--json", "-"))
        report = json.loads(result.stdout)
        report.pop("seconds")
        reports.append(report)
    assert reports[0]["samples"] == 300 and reports[0]["ann_accuracy"] > 0.85  # the labels fit the images
    assert reports[0] == reports[1]


def test_convert_on_a_folder_equals_the_npz(example, tmp_path):
    """Calibration and the per-layer search on the folder: the same file as on the npz."""
    folder, npz, _ = example
    a, b = tmp_path / "a.snn.onnx", tmp_path / "b.snn.onnx"
    ok(invoke("convert", EXAMPLE / "model.onnx", "--data", folder, "--limit", 150, "-o", a))
    ok(invoke("convert", EXAMPLE / "model.onnx", "--data", npz, "--limit", 150, "-o", b))
    assert onnx.load(a).graph == onnx.load(b).graph


def test_flat_folder_calibrates_and_simulate_says_there_are_no_labels(example, tmp_path):
    folder, npz, root = example
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in list_images(folder)[0][:40]:
        (flat / f"{f.parent.name}_{f.name}").write_bytes(f.read_bytes())
    calib, snn = tmp_path / "c.json", tmp_path / "m.snn.onnx"
    ok(invoke("calibrate", EXAMPLE / "model.onnx", "--data", flat, "-o", calib))
    ok(invoke("convert", EXAMPLE / "model.onnx", "--calib", calib, "--norm", "max", "-o", snn))
    assert "no labels" in ok(invoke("simulate", snn, "--data", flat, "--T", 4)).stdout
    assert json.loads(ok(invoke("simulate", snn, "--data", flat, "--T", 4, "--json", "-")).stdout)["accuracy"] is None
    np.savez(tmp_path / "nolabels.npz", x=np.load(npz)["x"][:40])
    assert "no labels" in ok(invoke("simulate", snn, "--data", tmp_path / "nolabels.npz", "--T", 4)).stdout
    bad(invoke("simulate", snn, "--data", flat, "--min-accuracy", 50), "labels", "class subfolders")


def test_labels_order_and_numeric_class_names(tmp_path):
    px = np.zeros((6, 4, 4), np.uint8)
    write_class_folders(tmp_path / "num", px, np.array([7, 3, 7, 3, 7, 10]))  # 10 sorts after 7 as a number
    files, labels = list_images(tmp_path / "num")
    assert labels.tolist() == [3, 7, 10, 3, 7, 7]  # round robin over 3, 7, 10; the label is the number
    assert [f.parent.name for f in files] == ["3", "7", "10", "3", "7", "7"]
    write_class_folders(tmp_path / "words", px[:4], np.array([0, 1, 1, 0]), {0: "dog", 1: "cat"})
    files, labels = list_images(tmp_path / "words")
    assert labels.tolist() == [0, 1, 0, 1] and files[0].parent.name == "cat"  # sorted names: cat 0, dog 1


def _specs(shape, name="x"):
    return [InputSpec(name, np.dtype(np.float32), tuple(shape))]


def test_rgb_layouts_mean_std_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (5, 6, 8, 3), dtype=np.uint8)
    write_class_folders(tmp_path / "rgb", px, np.array([0, 1, 0, 1, 0]))
    files, _ = list_images(tmp_path / "rgb")
    want = np.stack([np.asarray(Image.open(f)) for f in files]).astype(np.float32) / np.float32(255)
    mean, std = (0.5, 0.25, 0.125), (0.2, 0.4, 0.8)
    folder = ImageFolder(tmp_path / "rgb", mean, std)
    scaled = (want - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    nchw = next(load_dataset(folder, _specs(("N", 3, 6, 8))).batches(10))["x"]
    nhwc = next(load_dataset(folder, _specs(("N", 6, 8, 3))).batches(10))["x"]
    assert nchw.dtype == np.float32 and np.array_equal(nchw, scaled.transpose(0, 3, 1, 2))
    assert np.array_equal(nhwc, scaled)
    gray = next(load_dataset(tmp_path / "rgb", _specs(("N", 1, 6, 8))).batches(10))["x"]
    luma = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])[:, None] / np.float32(255)
    assert np.array_equal(gray, luma.astype(np.float32))
    # resized as a whole: a uniform image stays uniform at any size, batches split as asked
    Image.fromarray(np.full((9, 13, 3), 51, np.uint8)).save(tmp_path / "rgb" / "0" / "big.png")
    data = load_dataset(tmp_path / "rgb", _specs(("N", 3, 4, 5)))
    batches = list(data.batches(4))
    assert len(data) == 6 and [len(b["x"]) for b in batches] == [4, 2]
    big = [i for i, f in enumerate(data.files) if f.name == "big.png"][0]
    assert np.all(np.concatenate([b["x"] for b in batches])[big] == np.float32(51) / np.float32(255))


def _dynamic_cnn(path):
    model = small_cnn()
    for axis, name in ((2, "h"), (3, "w")):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    del model.graph.value_info[:]
    onnx.save(model, path)
    return path


def test_dynamic_height_width_needs_input_shape(tmp_path):
    px = np.random.default_rng(1).integers(0, 256, (8, 12, 12), dtype=np.uint8)
    write_class_folders(tmp_path / "d", px, np.arange(8) % 2)
    model = _dynamic_cnn(tmp_path / "dyn.onnx")
    bad(invoke("calibrate", model, "--data", tmp_path / "d", "-o", tmp_path / "c.json"), "--input-shape",
        "dynamic height or width")
    ok(invoke("calibrate", model, "--data", tmp_path / "d", "-o", tmp_path / "c.json", "--input-shape",
              "input:N,1,12,12"))
    assert json.loads((tmp_path / "c.json").read_text())["input_shapes"] == {"input": ["N", 1, 12, 12]}
    bad(invoke("convert", model, "--data", tmp_path / "d", "-o", tmp_path / "m.snn.onnx"), "--input-shape")
    # the shape the calibration recorded is the size a later convert reads the folder at
    ok(invoke("convert", model, "--calib", tmp_path / "c.json", "--data", tmp_path / "d", "--norm", "max",
              "-o", tmp_path / "m.snn.onnx"))


def _gemm_model(path, inputs=("x",)):
    b = ModelBuilder()
    outs = [b.gemm(name, 4, 3) for name in inputs]
    onnx.save(b.build({name: [4] for name in inputs}, outs), path)
    return path


def test_bad_folders_and_models_are_one_line_errors(tmp_path):
    model = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), model)
    good = tmp_path / "good"
    write_class_folders(good, np.zeros((4, 12, 12), np.uint8), np.array([0, 1, 0, 1]))
    out = tmp_path / "c.json"
    (tmp_path / "empty").mkdir()
    bad(invoke("calibrate", model, "--data", tmp_path / "empty", "-o", out), "no PNG or JPEG images in this folder")
    (tmp_path / "emptyclasses" / "a").mkdir(parents=True)
    bad(invoke("calibrate", model, "--data", tmp_path / "emptyclasses", "-o", out), "hold no PNG or JPEG")
    broken = tmp_path / "broken"
    write_class_folders(broken, np.zeros((3, 12, 12), np.uint8), np.array([0, 1, 0]))
    (broken / "1" / "00001.png").write_bytes(b"\x89PNG not really")
    bad(invoke("calibrate", model, "--data", broken, "-o", out), broken / "1" / "00001.png", "not a readable")
    deep = tmp_path / "deep" / "0"
    deep.mkdir(parents=True)
    Image.fromarray(np.zeros((12, 12), np.uint16)).save(deep / "a.png")
    bad(invoke("calibrate", model, "--data", deep.parent, "-o", out), deep / "a.png", "8 bits")
    mixed = tmp_path / "mixed"
    write_class_folders(mixed, np.zeros((2, 12, 12), np.uint8), np.array([0, 1]))
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(mixed / "stray.png")
    bad(invoke("calibrate", model, "--data", mixed, "-o", out), "both images", "subfolders")
    bad(invoke("calibrate", _gemm_model(tmp_path / "flat.onnx"), "--data", good, "-o", out), "not an image input")
    bad(invoke("calibrate", _gemm_model(tmp_path / "two.onnx", ("a", "b")), "--data", good, "-o", out),
        "feeds one input", "a, b")
    bad(invoke("calibrate", model, "--data", good, "--mean", "0.5,0.5", "-o", out), "--mean has 2 values")
    bad(invoke("calibrate", model, "--data", good, "--std", "0", "-o", out), "--std", "positive")
    bad(invoke("calibrate", model, "--data", good, "--mean", "a,b", "-o", out), "--mean", "numbers")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 1, 12, 12), np.float32))
    bad(invoke("calibrate", model, "--data", tmp_path / "d.npz", "--mean", "0.5", "-o", out), "folder of images")
    bad(invoke("convert", model, "--calib", out, "--std", "0.5"), "--data DIR")
    assert not out.exists()

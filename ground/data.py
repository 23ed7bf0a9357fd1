"""Reading sample data (.npy / .npz, or a folder of images: images.py) and checking it against a model's
inputs. Every reader gives the same interface: path, labels (or None), len() and batches(batch_size)."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterator

import numpy as np
import onnx

from ground.errors import DataError, InputFileError

_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT8: np.int8, onnx.TensorProto.BOOL: np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # int: static; str/None: symbolic (dim 0 is the batch)

    def describe(self) -> str:
        dims = ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape)
        return f"{self.name} [{dims}] {np.dtype(self.dtype).name}"


def input_specs(model: onnx.ModelProto, excluded: Collection[str] = ()) -> list[InputSpec]:
    """The graph inputs that are fed at run time: initializers excluded, and the `excluded` names (a spiking
    file's state)."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in initializers or vi.name in excluded:
            continue
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, np.dtype(_ONNX_TO_NUMPY.get(tt.elem_type, np.float32)), dims))
    return specs


@dataclass(frozen=True)
class Arrays:
    """Data given as arrays (the Python API): {input name, or 'x' for a single input: samples, optional 'y':
    integer labels}. Read and checked as the arrays of a .npz are; errors name them 'the arrays given'."""
    arrays: dict[str, np.ndarray]

    def __str__(self) -> str:
        return "the arrays given"


@dataclass
class Dataset:
    path: Path
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.inputs.items()}


def parse_channel_values(text: str | None, option: str) -> tuple[float, ...] | None:
    """--mean / --std: comma-separated numbers, one per channel (or one for all)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{option} {text!r}: expected numbers separated by commas", "e.g. 0.485,0.456,0.406") \
            from None
    return values


def data_source(path: str | Path, mean: str | None = None, std: str | None = None):
    """What `load_dataset` reads: the path, or for a folder an ImageFolder with --mean / --std."""
    path = Path(path)
    folder = path.is_dir()
    if not folder and (mean is not None or std is not None):
        raise DataError(f"--mean / --std apply to a folder of images; {path} is not one",
                        "normalise the arrays of a .npy / .npz before saving them")
    if not folder:
        return path
    from ground.images import ImageFolder
    return ImageFolder(path, parse_channel_values(mean, "--mean"), parse_channel_values(std, "--std"))


def _folder(path):
    """The ImageFolder `path` names, or None when it names a file (Pillow imported only for folders)."""
    if isinstance(path, Arrays):
        return None
    if not isinstance(path, (str, Path)):
        return path  # an ImageFolder
    if not Path(path).is_dir():
        return None
    from ground.images import ImageFolder
    return ImageFolder(Path(path))


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise DataError(f"{path}: unsupported data format {suffix or '(none)'}",
                        "give a .npy (inputs) or .npz (x and optional y, or one array per input name)")
    try:
        if suffix == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{path}: holds pickled objects, which are never loaded",
                            "save plain numeric arrays with np.save / np.savez") from exc
        raise DataError(f"{path}: not a readable NumPy file ({str(exc).splitlines()[0]})") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable NumPy file ({str(exc).splitlines()[0] or type(exc).__name__})",
                        "is it complete?") from exc


def load_dataset(path, specs: list[InputSpec], limit: int | None = None):
    """Read data for `specs` and check its layout, dtype and values; every error names the file and array.
    `path`: a .npy / .npz file, a folder of images, an ImageFolder (data_source), or Arrays."""
    folder = _folder(path)
    if folder is not None:
        from ground.images import ImageDataset
        return ImageDataset(folder, specs, limit)
    if isinstance(path, Arrays):
        arrays = {k: np.asarray(v) for k, v in path.arrays.items()}
    else:
        path = Path(path)
        arrays = _load_arrays(path)
    if len(specs) == 1 and specs[0].name not in arrays and "x" in arrays:
        arrays[specs[0].name] = arrays.pop("x")
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        names = ", ".join(sorted(arrays)) or "none"
        raise DataError(f"{path}: no array for model input(s) {', '.join(missing)} (arrays present: {names})",
                        "name the array 'x' (single input) or after each input")
    inputs = {s.name: _check_input(path, arrays[s.name], s) for s in specs}
    counts = {len(a) for a in inputs.values()}
    if len(counts) != 1:
        raise DataError(f"{path}: input arrays have different numbers of samples {sorted(counts)}")
    n_samples = counts.pop()
    labels = arrays.get("y")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"{path}: y must be a 1-D integer array of class labels, got "
                            f"{labels.dtype.name} {list(labels.shape)}")
        if len(labels) != n_samples:
            raise DataError(f"{path}: y has {len(labels)} labels for {n_samples} samples")
    if limit is not None:
        inputs = {k: v[:limit] for k, v in inputs.items()}
        labels = labels[:limit] if labels is not None else None
    return Dataset(path, inputs, labels)


def _check_input(path: Path, arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    where = f"{path}: array for input '{spec.name}'"
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{where} has dtype {arr.dtype}, expected {np.dtype(spec.dtype).name}")
    if spec.dtype.kind == "f" and arr.dtype.kind != "f":
        raise DataError(f"{where} is {arr.dtype.name} but the model expects {np.dtype(spec.dtype).name}",
                        "convert it first, e.g. x.astype('float32') / 255")
    if spec.shape and arr.ndim != len(spec.shape):
        raise DataError(f"{where} has shape {list(arr.shape)}, the model expects {spec.describe()}",
                        "the first axis is the sample axis")
    if len(arr) == 0:
        raise DataError(f"{where} holds no samples")
    for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
        if axis > 0 and isinstance(want, int) and want > 0 and got != want:
            hint = None
            if arr.ndim == 4 and tuple(arr.shape[1:]) == tuple(spec.shape[2:]) + (spec.shape[1],):
                hint = "the data looks channels-last (NHWC); transpose it to NCHW: x.transpose(0, 3, 1, 2)"
            raise DataError(f"{where} has shape {list(arr.shape)}, the model expects {spec.describe()}", hint)
    if spec.dtype.kind == "f":
        arr = arr.astype(spec.dtype, copy=False)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise DataError(f"{where} contains {bad} NaN or infinite values", "clean the data first")
    elif arr.dtype != spec.dtype:
        arr = arr.astype(spec.dtype)
    return np.ascontiguousarray(arr)


def array_shapes(path, specs: list[InputSpec], known: dict | None = None) -> dict[str, tuple[int, ...]]:
    """The shape of the array each input of `specs` would be fed from (the naming rules of `load_dataset`),
    read from the file's headers where it can (no data loaded), for binding dynamic dims to the data. A
    folder of images feeds the declared shape, or where height and width are dynamic the one in `known`
    (--input-shape, or what a calibration recorded); without it, DataError."""
    folder = _folder(path)
    if folder is not None:
        from ground.images import folder_shapes
        return folder_shapes(folder, specs, known)
    if isinstance(path, Arrays):
        shapes = {k: np.shape(v) for k, v in path.arrays.items()}
        if len(specs) == 1 and specs[0].name not in shapes and "x" in shapes:
            shapes[specs[0].name] = shapes.pop("x")
        return {s.name: shapes[s.name] for s in specs if s.name in shapes}
    path = Path(path)
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        if path.suffix.lower() == ".npy":
            shapes = {"x": tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)}
        elif path.suffix.lower() == ".npz":
            with zipfile.ZipFile(path) as z:
                for member in z.namelist():
                    if member.endswith(".npy"):
                        with z.open(member) as f:
                            version = np.lib.format.read_magic(f)
                            read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                                else np.lib.format.read_array_header_2_0
                            shapes[member[:-4]] = tuple(read(f)[0])
        else:
            _load_arrays(path)  # raises its error on the format
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        shapes = {k: v.shape for k, v in _load_arrays(path).items()}  # raises the reader's own error
    if len(specs) == 1 and specs[0].name not in shapes and "x" in shapes:
        shapes[specs[0].name] = shapes.pop("x")
    return {s.name: shapes[s.name] for s in specs if s.name in shapes}

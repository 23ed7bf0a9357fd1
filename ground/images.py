"""Reading a folder of PNG / JPEG images as the samples of a model with one image input (docs/cli.md).

Labels come from class subfolders: when every subfolder name is a whole number the label is that number,
otherwise the folder's position in sorted name order; a flat folder has no labels. Samples are taken in turn
from each class (round robin, files in name order), so the first N samples cover every class. Each image is
converted to the model's channels (1: Pillow's 'L', 3: 'RGB', alpha dropped), resized as a whole to the
model's height and width with Pillow's bilinear filter (which averages over the source pixels when it
shrinks; an image already of that size is not touched), scaled to [0, 1] as uint8 / 255 in float32, then
(x - mean) / std per channel where given. Layout NCHW or NHWC from the channel axis the input declares.
Images are read one batch at a time."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ground.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
_MODES = {1: "L", 3: "RGB"}
_DEEP_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")  # more than 8 bits per channel


@dataclass(frozen=True)
class ImageFolder:
    """A folder of images and the per-channel normalisation to apply (--mean / --std)."""

    path: Path
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Layout:
    name: str  # the model input fed
    channels_first: bool
    channels: int
    height: int | str | None  # str / None: dynamic
    width: int | str | None

    @property
    def dims(self) -> tuple:
        c, h, w = self.channels, self.height, self.width
        return (c, h, w) if self.channels_first else (h, w, c)


def layout_of(folder: ImageFolder, specs) -> Layout:
    """Where channels, height and width sit in the model's one image input; DataError when it has none."""
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise DataError(f"{folder}: a folder of images feeds one input, the model has {len(specs)} ({names})",
                        "give a .npz with one array per input")
    spec = specs[0]
    shape = spec.shape
    if len(shape) != 4:
        raise DataError(f"{folder}: the model's input {spec.describe()} is not an image input "
                        "([N, C, H, W] or [N, H, W, C])", "give a .npy / .npz of its input")
    if spec.dtype.kind != "f":
        raise DataError(f"{folder}: the model's input {spec.describe()} is not float; images are read as "
                        "floats in [0, 1]", "give a .npy / .npz of its input")
    if shape[1] in _MODES:
        return Layout(spec.name, True, shape[1], shape[2], shape[3])
    if shape[3] in _MODES:
        return Layout(spec.name, False, shape[3], shape[1], shape[2])
    raise DataError(f"{folder}: the model's input {spec.describe()} has no channel axis of 1 (grayscale) or "
                    "3 (RGB) at axis 1 (NCHW) or 3 (NHWC)", "give a .npy / .npz of its input")


def static_layout(folder: ImageFolder, specs) -> Layout:
    layout = layout_of(folder, specs)
    if not (isinstance(layout.height, int) and isinstance(layout.width, int)):
        example = f"N,{layout.channels},224,224" if layout.channels_first else f"N,224,224,{layout.channels}"
        raise DataError(f"{folder}: the model's input {specs[0].describe()} has a dynamic height or width, and "
                        "a folder of images has no one size to bind it to",
                        f"give the size to resize to, e.g. --input-shape {layout.name}:{example}")
    return layout


def _is_number(name: str) -> bool:
    return name.isascii() and name.isdigit()


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def list_images(path: Path) -> tuple[list[Path], np.ndarray | None]:
    """The image files in sample order and their labels (None for a flat folder)."""
    if not path.is_dir():
        raise DataError(f"{path}: not a folder")
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    dirs = [p for p in entries if p.is_dir()]
    flat = [p for p in entries if p.is_file() and p.suffix.lower() in EXTENSIONS]
    if dirs and flat:
        raise DataError(f"{path}: holds both images ({flat[0].name}, ...) and subfolders ({dirs[0].name}, ...)",
                        "put every image in a class subfolder (labels), or none in subfolders (no labels)")
    if not dirs:
        if not flat:
            raise DataError(f"{path}: no PNG or JPEG images in this folder ({', '.join(EXTENSIONS)})",
                            "give a folder of images, or of class subfolders of images")
        return flat, None
    numeric = all(_is_number(d.name) for d in dirs)
    if numeric:
        dirs.sort(key=lambda d: int(d.name))
        labels = [int(d.name) for d in dirs]
        if len(set(labels)) != len(labels):
            raise DataError(f"{path}: class folders {', '.join(d.name for d in dirs)} name a class number twice")
    else:
        labels = list(range(len(dirs)))
    per_class = [_images_under(d) for d in dirs]
    files, ys = [], []
    for k in range(max(len(c) for c in per_class)):  # round robin over the classes
        for label, images in zip(labels, per_class):
            if k < len(images):
                files.append(images[k])
                ys.append(label)
    if not files:
        raise DataError(f"{path}: its class subfolders hold no PNG or JPEG images ({', '.join(EXTENSIONS)})")
    return files, np.asarray(ys, np.int64)


def _channel_values(folder: ImageFolder, values: tuple[float, ...] | None, option: str, channels: int,
                    default: float) -> np.ndarray:
    if values is None:
        return np.full(channels, default, np.float32)
    if len(values) not in (1, channels):
        raise DataError(f"{option} has {len(values)} values, the model's input has {channels} channel(s)",
                        f"give one value, or one per channel")
    return np.broadcast_to(np.asarray(values, np.float32), (channels,)).copy()


class ImageDataset:
    """The Dataset interface (path, labels, len, batches) over a folder, read batch by batch."""

    def __init__(self, folder: ImageFolder, specs, limit: int | None = None):
        self.path = folder.path
        self.layout = static_layout(folder, specs)
        files, labels = list_images(folder.path)
        self.files = files[:limit]
        self.labels = labels[:limit] if labels is not None else None
        c = self.layout.channels
        self.mean = _channel_values(folder, folder.mean, "--mean", c, 0.0)
        self.std = _channel_values(folder, folder.std, "--std", c, 1.0)
        if (self.std <= 0).any() or not (np.isfinite(self.std).all() and np.isfinite(self.mean).all()):
            raise DataError(f"--std {','.join(f'{s:g}' for s in self.std)}: values must be positive and finite")
        self.normalised = folder.mean is not None or folder.std is not None

    def __len__(self) -> int:
        return len(self.files)

    def read(self, file: Path) -> np.ndarray:
        """One image as uint8 [H, W, C] at the model's size."""
        size = (self.layout.width, self.layout.height)
        try:
            with Image.open(file) as img:
                if img.mode in _DEEP_MODES:
                    raise DataError(f"{file}: {img.mode} pixels (more than 8 bits per channel) are not read",
                                    "save the images with 8 bits per channel")
                img = img.convert(_MODES[self.layout.channels])
                if img.size != size:
                    img = img.resize(size, Image.Resampling.BILINEAR)
                pixels = np.asarray(img, np.uint8)
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{file}: not a readable PNG or JPEG image ({why})") from exc
        return pixels.reshape(self.layout.height, self.layout.width, self.layout.channels)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            pixels = np.stack([self.read(f) for f in self.files[start:start + batch_size]])
            x = pixels.astype(np.float32) / np.float32(255)
            if self.normalised:
                x = (x - self.mean) / self.std
            if self.layout.channels_first:
                x = x.transpose(0, 3, 1, 2)
            yield {self.layout.name: np.ascontiguousarray(x)}


def folder_shapes(folder: ImageFolder, specs, known: dict | None = None) -> dict[str, tuple]:
    """The shape the folder feeds the model's input with (for binding dynamic dims): the declared one, or
    the one given (`known`: --input-shape or a calibration's record) where height or width are dynamic."""
    layout = layout_of(folder, specs)
    n = len(list_images(folder.path)[0])
    if known and layout.name in known:
        return {layout.name: (n,) + tuple(int(d) for d in list(known[layout.name])[1:])}
    static_layout(folder, specs)
    return {layout.name: (n,) + layout.dims}

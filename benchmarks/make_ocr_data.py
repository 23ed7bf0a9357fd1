"""Calibration and test arrays for the PaddleOCR files that rapidocr-onnxruntime ships (paddle2onnx exports).

    python benchmarks/make_ocr_data.py IMAGES_DIR OUT_DIR [--size 160]

IMAGES_DIR: real document and text-line images (benchmarks use RapidOCR's python/tests/test_files and
scikit-image's page.png and text.png; nothing is committed). Images are split by sorted name, even ones to
calibration, odd ones to test, so no image is in both. Writes:
- det_calib.npz / det_test.npz: `x` [N, 3, S, S], the detector's preprocessing (BGR, x / 255 then
  (x - 0.5) / 0.5), tiles of S x S from each image scaled so that its shorter side is S, white padded;
- cls_calib.npz / cls_test.npz: `x` [N, 3, 48, 192] and `label` (0 upright, 1 turned by 180 degrees): text
  lines as the direction classifier reads them (BGR, height 48, width up to 192, zero padded, the
  classifier's normalisation), once upright and once turned. The lines are the boxes RapidOCR's own
  pipeline finds in each image (run it where rapidocr-onnxruntime is installed: `--lines rapidocr`, up to
  MAX_LINES per image), or with `--lines whole` every image at least twice as wide as high, taken whole.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image

MAX_TILES = 4
MAX_LINES = 24


def _rgb_on_white(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def _normalised_bgr(pixels: np.ndarray) -> np.ndarray:
    bgr = pixels[..., ::-1].astype(np.float32) / 255.0
    return ((bgr - 0.5) / 0.5).transpose(2, 0, 1)


def det_tiles(image: Image.Image, size: int) -> list[np.ndarray]:
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    pixels = np.asarray(image.resize((width, height), Image.BILINEAR))
    tiles = []
    for top in range(0, height - size + 1, size):
        for left in range(0, width - size + 1, size):
            tiles.append(_normalised_bgr(pixels[top:top + size, left:left + size]))
    step = max(1, len(tiles) // MAX_TILES)
    return tiles[::step][:MAX_TILES]


def cls_line(image: Image.Image) -> np.ndarray:
    width = min(192, max(1, math.ceil(image.width * 48 / image.height)))
    line = np.asarray(image.resize((width, 48), Image.BILINEAR))[..., ::-1].astype(np.float32) / 255.0
    line = ((line - 0.5) / 0.5).transpose(2, 0, 1)
    padded = np.zeros((3, 48, 192), np.float32)
    padded[:, :, :width] = line
    return padded


def text_lines(path: Path, image: Image.Image, how: str) -> list[Image.Image]:
    if how == "whole":
        return [image] if image.width >= 2 * image.height else []
    from rapidocr_onnxruntime import RapidOCR  # only where the OCR pipeline is installed

    global _ocr
    _ocr = _ocr or RapidOCR()
    found, _ = _ocr(str(path), use_cls=False, use_rec=False)
    lines = []
    for box in (found or [])[:MAX_LINES]:
        points = np.asarray(box[0] if isinstance(box[0], list) and len(box) != 4 else box, np.float32)
        left, top = points.min(axis=0)
        right, bottom = points.max(axis=0)
        if right - left >= 1.5 * (bottom - top) >= 8:
            lines.append(image.crop((int(left), int(top), int(math.ceil(right)), int(math.ceil(bottom)))))
    return lines


_ocr = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--lines", choices=("rapidocr", "whole"), default="rapidocr")
    args = parser.parse_args()
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    args.out.mkdir(parents=True, exist_ok=True)
    for split, chosen in (("calib", paths[0::2]), ("test", paths[1::2])):
        det, cls, labels = [], [], []
        for path in chosen:
            image = _rgb_on_white(path)
            det += det_tiles(image, args.size)
            for line in text_lines(path, image, args.lines):
                for label, turned in enumerate((line, line.rotate(180))):
                    cls.append(cls_line(turned))
                    labels.append(label)
        np.savez(args.out / f"det_{split}.npz", x=np.stack(det))
        np.savez(args.out / f"cls_{split}.npz", x=np.stack(cls), label=np.array(labels, np.int64))
        print(f"{split}: {len(det)} detector tiles, {len(cls)} text lines")


if __name__ == "__main__":
    main()

"""Export torchvision's MobileNetV3-Small (HardSwish, HardSigmoid squeeze-excite) at 224x224 with random
weights, as issue 17 describes the file a runtime must afford to step: the classic exporter at opset 17.

The BatchNorm statistics are set from a pass over the calibration images (train mode, no gradient), so that
the activations have the spread of a trained net instead of torchvision's init (mean 0, variance 1 every
layer). Data: the bundled Fashion-MNIST images resized to 224x224 (nearest), repeated over 3 channels and
normalised with ImageNet's mean and std: calib.npz (64 training images), test.npz (64 test images).

usage: python benchmarks/make_mobilenet_v3.py --out DIR [--seed 0]
needs: torch and torchvision (pip install torch==2.13.0 torchvision)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fmnist_cnn"
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def images(path: Path, count: int) -> dict[str, np.ndarray]:
    data = np.load(path, allow_pickle=False)
    x = data["x"][:count]
    index = np.arange(224) * x.shape[-1] // 224
    x = np.repeat(x[:, :, index][:, :, :, index], 3, axis=1)
    return {"x": ((x - MEAN) / STD).astype(np.float32), "y": data["y"][:count]}


def main() -> None:
    import torch
    from torchvision.models import mobilenet_v3_small
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = mobilenet_v3_small(num_classes=10)
    calib, test = images(EXAMPLE / "calib.npz", 64), images(EXAMPLE / "test.npz", 64)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for start in range(0, 64, 16):
            model(torch.from_numpy(calib["x"][start:start + 16]))
    model.eval()
    torch.onnx.export(model, torch.zeros(2, 3, 224, 224), args.out / "model.onnx", input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    np.savez(args.out / "calib.npz", **calib)
    np.savez(args.out / "test.npz", **test)
    print(f"wrote {args.out}/model.onnx, calib.npz, test.npz")


if __name__ == "__main__":
    main()

"""Export torchvision's VisionTransformer at ViT-tiny size (12 blocks, dim 192, 3 heads, MLP 768, patch 4,
32x32 input, 10 classes) with random weights, as a user trying the converter on a real ViT layout would
(issue 20): the classic exporter at opset 17 and the dynamo exporter.

torchvision initialises the classification head to zero, which makes every output 0 whatever the input; the
head is re-drawn (normal, std 0.02, seed fixed) so that the output depends on the input. Data: the bundled
Fashion-MNIST images padded to 32x32, repeated over 3 channels and scaled to [-1, 1]: calib.npz from
examples/fmnist_cnn/calib.npz (training images), test.npz from its test.npz.

usage: python benchmarks/make_vit_tiny.py --out DIR [--seed 0]
needs: torch and torchvision (pip install torch==2.14.1 torchvision==0.29.1), onnxscript for dynamo
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fmnist_cnn"


def vit_tiny(seed: int):
    import torch
    from torchvision.models import VisionTransformer
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=32, patch_size=4, num_layers=12, num_heads=3, hidden_dim=192,
                              mlp_dim=768, num_classes=10)
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval()


def images(path: Path) -> dict[str, np.ndarray]:
    data = np.load(path, allow_pickle=False)
    x = np.pad(data["x"], ((0, 0), (0, 0), (2, 2), (2, 2)))
    return {"x": np.repeat(2.0 * x - 1.0, 3, axis=1).astype(np.float32), "y": data["y"]}


def main() -> None:
    import torch
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = vit_tiny(args.seed)
    example = torch.zeros(2, 3, 32, 32)  # not 1: the dynamo exporter fixes a dimension of size 1
    axes = {"x": {0: "batch"}, "logits": {0: "batch"}}
    torch.onnx.export(model, example, args.out / "model.onnx", input_names=["x"], output_names=["logits"],
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    torch.onnx.export(model, example, args.out / "model_dynamo.onnx", input_names=["x"],
                      output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                      dynamo=True, external_data=False)
    for name in ("calib", "test"):
        np.savez(args.out / f"{name}.npz", **images(EXAMPLE / f"{name}.npz"))
    print(f"wrote {args.out}/model.onnx, model_dynamo.onnx, calib.npz, test.npz")


if __name__ == "__main__":
    main()

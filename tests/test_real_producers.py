"""Optional: small models exported by the real producers (tf2onnx from TensorFlow/Keras and from JAX through
jax2tf), converted with `convert --data` and no other flag, agree with their ANN at T = 32. Skipped where
tensorflow / tf2onnx / jax are not installed (they are not in the test extra: hundreds of MB).

Bound as in tests/test_producers.py: a few IF layers, O(theta / t) per layer, a max of rates and an exact
softmax head; a disagreement needs the ANN's top two within a few percent. 28 of 32 samples (0.875). The
models are random (seeded), so the ANN is checked to predict at least two classes."""
from __future__ import annotations

import numpy as np
import pytest

import ann2snn
from conftest import run_ort
from ground.load import load_model
from sim.simulate import simulate

tf = pytest.importorskip("tensorflow")
tf2onnx = pytest.importorskip("tf2onnx")

T, MIN_AGREEMENT = 32, 28 / 32
SPEC = (tf.TensorSpec((None, 12, 12, 3), tf.float32, name="image"),) if tf else ()


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random((n, 3, 3, 3)).astype(np.float32)
    return 2 * np.repeat(np.repeat(base, 4, axis=1), 4, axis=2) - 1 + 0.1 * rng.random((n, 12, 12, 3)).astype(np.float32)


def _keras(path) -> None:
    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    model = tf.keras.Sequential([
        layers.Input((12, 12, 3)), layers.Conv2D(8, 3, padding="same"), layers.BatchNormalization(), layers.ReLU(),
        layers.MaxPool2D(), layers.Conv2D(8, 3), layers.ReLU(), layers.Flatten(),
        layers.Dense(5, activation="softmax")])
    tf2onnx.convert.from_keras(model, input_signature=SPEC, opset=13, output_path=str(path))


def _jax(path) -> None:
    jax = pytest.importorskip("jax")
    from jax import lax
    from jax.experimental import jax2tf
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    w1 = jax.random.normal(keys[0], (3, 3, 3, 8)) * 0.5
    w2 = jax.random.normal(keys[1], (8, 5)) * 0.8

    def predict(x):
        h = jax.nn.relu(lax.conv_general_dilated(x, w1, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        h = lax.reduce_window(h, -jax.numpy.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        pooled = jax.numpy.max(h, axis=(1, 2))
        return jax.nn.softmax((pooled - pooled.mean(axis=1, keepdims=True)) @ w2)

    function = tf.function(jax2tf.convert(predict, polymorphic_shapes=["(b, 12, 12, 3)"], native_serialization=False,
                                          enable_xla=False), autograph=False)
    tf2onnx.convert.from_function(function, input_signature=SPEC, opset=13, output_path=str(path))


@pytest.mark.parametrize("producer", ["keras", "jax"])
def test_a_real_export_converts_with_data_alone_and_agrees(tmp_path, producer):
    path, calib, test = tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "test.npz"
    {"keras": _keras, "jax": _jax}[producer](path)
    np.savez(calib, x=_images(64, 0))
    np.savez(test, x=_images(32, 1))
    summary = ann2snn.inspect(path)
    assert all(row["converts"] for row in summary.op_table())
    assert any(row["op"] == "Softmax" and "head" in row["conversion"] for row in summary.op_table())
    converted = ann2snn.convert(path, data=calib)
    snn = tmp_path / "m.snn.onnx"
    ann2snn.save_model(converted.result.model, snn)
    ann = run_ort(load_model(path), {"image": np.load(test)["x"]})[0]
    assert len(set(ann.argmax(1).tolist())) >= 2
    report = simulate(snn, test, T=T, ann_path=path)
    assert report.agreement[-1] >= MIN_AGREEMENT, report.agreement

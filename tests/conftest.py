"""Shared fixtures: tiny models trained on synthetic, learnable images (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


def synthetic_images(n: int, shape=(28, 28, 1), num_classes: int = 10, seed: int = 0, kind: str = "position"):
    """Learnable synthetic images, so exported models have real, diverse predictions.

    ``kind="position"``: the class is a bright block at a class-specific place
    (for Flatten + Dense heads). ``kind="texture"``: the class is a grating with
    a class-specific orientation and frequency on a class-specific channel, which
    global average pooling keeps (position does not survive GAP).
    """
    rng = np.random.default_rng(seed)
    h, w, c = shape
    y = rng.integers(0, num_classes, n)
    x = rng.normal(0.2, 0.1, (n, h, w, c)).astype(np.float32)
    if kind == "position":
        rows, cols = 2, (num_classes + 1) // 2
        bh, bw = h // rows, w // cols
        for i, label in enumerate(y):
            r, col = divmod(int(label), cols)
            x[i, r * bh : (r + 1) * bh, col * bw : (col + 1) * bw, int(label) % c] += 0.6
    else:
        ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        for i, label in enumerate(y):
            angle = np.pi * (int(label) % 5) / 5
            period = 3.0 if label < 5 else 6.0
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * (ii * np.cos(angle) + jj * np.sin(angle)) / period + phase)
            x[i, :, :, int(label) % c] += 0.3 * wave.astype(np.float32)
    return np.clip(x, 0.0, 1.0), y.astype(np.int64)


@pytest.fixture(scope="session")
def synthetic_data():
    (x_train, y_train) = synthetic_images(1200, seed=1)
    (x_test, y_test) = synthetic_images(300, seed=2)
    return x_train, y_train, x_test, y_test


def train_briefly(model, x, y, epochs: int = 1, batch_size: int = 32, lr: float = 1e-3):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model


@pytest.fixture(scope="session")
def trained_lenet(synthetic_data):
    """LeNet-5-Caffe trained for one short epoch on synthetic images."""
    import keras

    from tfcompress.models import lenet5_caffe

    keras.utils.set_random_seed(0)
    x_train, y_train, _, _ = synthetic_data
    return train_briefly(lenet5_caffe(), x_train, y_train)


@pytest.fixture(scope="session")
def lenet_int8_path(trained_lenet, synthetic_data, tmp_path_factory):
    from tfcompress.export import to_tflite

    path = tmp_path_factory.mktemp("lenet") / "lenet_int8.tflite"
    to_tflite(trained_lenet, path, "int8", representative_data=synthetic_data[0][:200])
    return path


@pytest.fixture(scope="session")
def lenet_float_path(trained_lenet, tmp_path_factory):
    from tfcompress.export import to_tflite

    path = tmp_path_factory.mktemp("lenet_float") / "lenet_float32.tflite"
    to_tflite(trained_lenet, path, None)
    return path

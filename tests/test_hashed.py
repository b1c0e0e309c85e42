"""HashedNets layers: the hash against a pure-Python reference, gradients, save/load, export."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import synthetic_images

from tfcompress.errors import TfcompressError
from tfcompress.export.convert import to_tflite
from tfcompress.export.runtime import agreement
from tfcompress.layers.hashed import (
    HashedConv2D,
    HashedDense,
    hash_indices,
    hashed_report,
    materialize,
)


def fmix32_python(h: int) -> int:
    """MurmurHash3 fmix32 with Python integers (an independent implementation)."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def reference(i: int, buckets: int, seed: int) -> tuple[int, float]:
    key = ((i * 0x9E3779B9) & 0xFFFFFFFF) ^ seed
    return fmix32_python(key) % buckets, 1.0 if fmix32_python(key ^ 0x5BD1E995) & 1 else -1.0


def test_hash_matches_the_python_reference():
    bucket, sign = hash_indices(5000, 97, seed=12345)
    for i in (0, 1, 2, 17, 4095, 4999):
        assert (int(bucket[i]), float(sign[i])) == reference(i, 97, 12345)
    assert fmix32_python(0xDEADBEEF) == 0x0DE5C6A9  # fixed value of fmix32: a platform change shows here
    counts = np.bincount(bucket, minlength=97)
    assert counts.min() > 0.5 * counts.mean()  # buckets are used evenly
    assert abs(sign.mean()) < 0.05


def test_virtual_kernel_and_gradient_follow_eq_3_and_6():
    layer = HashedDense(6, compression=0.25, seed=3, use_bias=False)
    x = np.random.default_rng(0).normal(size=(4, 10)).astype("float32")
    layer(x)
    bucket, sign = hash_indices(60, layer.buckets, 3)
    real = layer.hashed_weights.numpy()
    virtual = (real[bucket] * sign).reshape(10, 6)
    np.testing.assert_allclose(layer.virtual_kernel().numpy(), virtual)
    np.testing.assert_allclose(layer(x).numpy(), x @ virtual, rtol=1e-5)
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(layer(x) ** 2)
    grad = tape.gradient(out, layer.hashed_weights.value).numpy()
    dv = (2 * (x @ virtual))[:, None, :] * x[:, :, None]  # dL/dV_ij summed over the batch
    expected = np.zeros(layer.buckets)
    np.add.at(expected, bucket, dv.sum(axis=0).reshape(-1) * sign)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)
    assert layer.buckets == 15


def test_train_save_load_export(tmp_path):
    x, y = synthetic_images(480, shape=(16, 16, 1), seed=4)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 1)), HashedConv2D(8, 3, compression=0.5, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              HashedDense(10, compression=1 / 8, seed=1)])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=3, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.5
    report = hashed_report(model)
    assert report.real_params == 36 + 8 + int(np.ceil(392 * 10 / 8)) + 10
    assert report.virtual_params == model.count_params() - model.layers[0].buckets - model.layers[-1].buckets + 72 + 3920
    model.save(tmp_path / "h.keras")
    again = keras.saving.load_model(tmp_path / "h.keras")
    np.testing.assert_allclose(again.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0), atol=1e-6)
    plain = materialize(model)
    np.testing.assert_allclose(plain.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0), atol=1e-5)
    export = to_tflite(model, tmp_path / "h.tflite", "int8", representative_data=x[:100])
    assert export.int8_coverage == 1.0 and export.gzip_size_bytes < export.size_bytes
    assert agreement(model, tmp_path / "h.tflite", x[:200]).top1_agreement >= 0.95


def test_bad_compression():
    with pytest.raises(TfcompressError, match="compression"):
        HashedDense(4, compression=0)

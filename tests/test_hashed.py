"""HashedNets layers: the hash against a pure-Python reference, eq. 3 and 6, save/load, export."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import synthetic_images
from layer_harness import assert_keras_roundtrip

from tfcompress.errors import TfcompressError
from tfcompress.export.convert import to_tflite
from tfcompress.export.runtime import agreement
from tfcompress.export.tflite_file import load_tflite
from tfcompress.layers.hashed import (
    HashedConv2D,
    HashedDense,
    fmix32,
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
    """The documented hash, in Python integers."""
    key = ((i * 0x9E3779B9) & 0xFFFFFFFF) ^ (seed & 0xFFFFFFFF)
    sign = 1.0 if fmix32_python(key ^ 0x5BD1E995) & 1 else -1.0
    return fmix32_python(key) % buckets, sign


def test_fmix32_matches_murmur3_test_vectors():
    # MurmurHash3_x86_32 of the empty string with seed s is fmix32(s); SMHasher's published
    # values for s = 0, 1, 0xFFFFFFFF
    for seed, expected in ((0, 0), (1, 0x514E28B7), (0xFFFFFFFF, 0x81F16F39)):
        assert int(fmix32(seed)) == expected == fmix32_python(seed)
    values = np.random.default_rng(0).integers(0, 2**32, size=200, dtype=np.uint64)
    np.testing.assert_array_equal(fmix32(values.astype(np.uint32)).astype(np.int64),
                                  [fmix32_python(int(v)) for v in values])


@pytest.mark.parametrize("seed", [0, 12345, 2**32 - 1, -7])
def test_hash_matches_the_python_reference(seed):
    bucket, sign = hash_indices(70_000, 97, seed=seed)
    assert bucket.dtype == np.int32 and sign.dtype == np.float32
    for i in (0, 1, 2, 17, 4095, 65_536, 69_999):
        assert (int(bucket[i]), float(sign[i])) == reference(i, 97, seed)
    counts = np.bincount(bucket, minlength=97)
    assert counts.min() > 0.8 * counts.mean()  # buckets are used evenly
    assert abs(sign.mean()) < 0.02  # signs are balanced
    assert set(np.unique(sign)) == {-1.0, 1.0}


def test_different_seeds_share_differently():
    b0, s0 = hash_indices(1000, 50, 0)
    b1, s1 = hash_indices(1000, 50, 1)
    assert (b0 != b1).mean() > 0.9 and (s0 != s1).mean() > 0.4


def test_dense_virtual_kernel_and_gradient_follow_eq_3_and_6():
    layer = HashedDense(6, compression=0.25, seed=3, use_bias=False)
    x = np.random.default_rng(0).normal(size=(4, 10)).astype("float32")
    layer(x)
    assert layer.buckets == 15  # ceil(0.25 * 60)
    bucket, sign = hash_indices(60, 15, 3)
    real = layer.hashed_weights.numpy()
    virtual = (real[bucket] * sign).reshape(10, 6)
    np.testing.assert_array_equal(layer.virtual_kernel().numpy(), virtual)
    np.testing.assert_allclose(layer(x).numpy(), x @ virtual, rtol=1e-5, atol=1e-6)
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(layer(x) ** 2)
    grad = tf.convert_to_tensor(tape.gradient(out, layer.hashed_weights.value)).numpy()
    dv = (2 * (x @ virtual)).T @ x  # (6, 10): dL/dV^T summed over the batch
    expected = np.zeros(15)
    np.add.at(expected, bucket, dv.T.reshape(-1) * sign)  # eq. 6
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_conv_virtual_kernel_and_gradient():
    layer = HashedConv2D(4, 3, compression=0.1, seed=9, padding="same")
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype("float32")
    layer(x)
    shape = (3, 3, 3, 4)
    bucket, sign = hash_indices(108, layer.buckets, 9)
    assert layer.buckets == 11
    virtual = (layer.hashed_weights.numpy()[bucket] * sign).reshape(shape)
    np.testing.assert_array_equal(layer.kernel.numpy(), virtual)
    plain = keras.layers.Conv2D(4, 3, padding="same")
    plain.build(x.shape)
    plain.set_weights([virtual, layer.bias.numpy()])
    np.testing.assert_allclose(layer(x).numpy(), plain(x).numpy(), rtol=1e-5, atol=1e-5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.sin(layer(x)))
    grad = tf.convert_to_tensor(tape.gradient(loss, layer.hashed_weights.value)).numpy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.sin(plain(x)))
    dv = tape.gradient(loss, plain.kernel.value).numpy()  # dL/dV from a plain convolution
    expected = np.zeros(layer.buckets)
    np.add.at(expected, bucket, dv.reshape(-1) * sign)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_kernel_initializer_applies_to_the_real_weights():
    layer = HashedDense(5, compression=0.5, kernel_initializer="ones", seed=2)
    layer.build((None, 8))
    np.testing.assert_array_equal(layer.hashed_weights.numpy(), np.ones(20))
    np.testing.assert_array_equal(layer.kernel.numpy(), hash_indices(40, 20, 2)[1].reshape(8, 5))


def lenet_like(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((16, 16, 1)),
        HashedConv2D(8, 3, compression=0.5, activation="relu", seed=5, name="hconv"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        HashedDense(10, compression=1 / 8, seed=1, name="hfc"),
    ])


def test_train_save_load_export(tmp_path):
    x, y = synthetic_images(480, shape=(16, 16, 1), seed=4)
    model = lenet_like()
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    before = model.evaluate(x, y, verbose=0)[0]
    model.fit(x, y, epochs=3, verbose=0)
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert loss < 0.8 * before and accuracy > 0.5

    report = hashed_report(model)
    conv_real, fc_real = int(np.ceil(0.5 * 72)) + 8, int(np.ceil(392 * 10 / 8)) + 10
    assert report.layers == {"hconv": (conv_real, 72 + 8), "hfc": (fc_real, 3920 + 10)}
    assert report.real_params == conv_real + fc_real == model.count_params()
    assert report.virtual_params == 80 + 3930
    assert report.float32_bytes == 4 * report.real_params
    assert "total" in str(report)

    again = assert_keras_roundtrip(model, x[:8], tmp_path, atol=0.0, name="h")  # exactly equal
    for name in ("hconv", "hfc"):  # the hash is recomputed from the config: same buckets
        np.testing.assert_array_equal(again.get_layer(name)._bucket, model.get_layer(name)._bucket)
        np.testing.assert_array_equal(again.get_layer(name).kernel.numpy(),
                                      model.get_layer(name).kernel.numpy())

    plain = materialize(model)
    assert [type(layer).__name__ for layer in plain.layers] == [
        "Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    np.testing.assert_array_equal(plain.get_layer("hfc").kernel.numpy(),
                                  model.get_layer("hfc").kernel.numpy())
    np.testing.assert_allclose(plain.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0),
                               atol=1e-5)

    export = to_tflite(model, tmp_path / "h.tflite", "int8", representative_data=x[:100])
    assert export.int8_coverage == 1.0
    assert 0 < export.gzip_size_bytes < export.size_bytes
    assert agreement(model, tmp_path / "h.tflite", x[:200]).top1_agreement >= 0.95
    # the file holds the virtual fc kernel: per output channel at most K distinct magnitudes
    parsed = load_tflite(tmp_path / "h.tflite")
    fc = next(t for t in parsed.tensors[0]
              if t.constant and t.dtype == "INT8" and t.shape == (10, 392))
    values = parsed.constant_values(fc)
    assert max(len(np.unique(np.abs(row))) for row in values) <= model.get_layer("hfc").buckets


def test_materialize_nested_model():
    keras.utils.set_random_seed(1)
    inner = keras.Sequential([keras.Input((6,)), HashedDense(4, compression=0.5, name="h")],
                             name="inner")
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(2)(inner(inp)))
    plain = materialize(model)
    names = [type(layer).__name__ for layer in plain.get_layer("inner").layers]
    assert names == ["Dense"]
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    np.testing.assert_allclose(plain(x).numpy(), model(x).numpy(), atol=1e-6)


def test_bad_input():
    with pytest.raises(TfcompressError, match="compression"):
        HashedDense(4, compression=0)
    with pytest.raises(TfcompressError, match="compression"):
        HashedConv2D(4, 3, compression=1.5)
    with pytest.raises(TfcompressError, match="compression"):
        HashedDense(4, compression="a lot")
    with pytest.raises(TfcompressError, match="materialize"):
        materialize(HashedDense(3))

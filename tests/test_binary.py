"""Binary and ternary weights: quantizer math, straight-through gradients, training, exact int8 export."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import synthetic_images

from tfcompress import quantizers
from tfcompress.errors import TfcompressError
from tfcompress.export.convert import to_tflite
from tfcompress.export.runtime import agreement
from tfcompress.export.tflite_file import load_tflite
from tfcompress.layers.binary import (
    BinaryConv2D,
    BinaryDense,
    TernaryConv2D,
    TernaryDense,
    materialize,
)
from tfcompress.packing import weight_bits_report

W = np.random.default_rng(0).normal(size=(3, 3, 4, 6)).astype("float32")


def test_quantizer_values_match_numpy():
    np.testing.assert_array_equal(quantizers.SteSign()(tf.constant([-2.0, -0.0, 0.0, 0.3])).numpy(), [-1, 1, 1, 1])
    alpha = np.abs(W).reshape(-1, 6).mean(axis=0)
    np.testing.assert_allclose(quantizers.XnorWeight()(tf.constant(W)).numpy(), np.where(W >= 0, 1, -1) * alpha, rtol=1e-6)
    flat = np.abs(W).reshape(-1, 6)
    delta = 0.7 * flat.mean(axis=0)
    keep = np.abs(W) > delta
    scale = (np.abs(W) * keep).reshape(-1, 6).sum(0) / keep.reshape(-1, 6).sum(0)
    np.testing.assert_allclose(quantizers.TernaryWeight(0.7)(tf.constant(W)).numpy(),
                               np.sign(W) * keep * scale, rtol=1e-5, atol=1e-7)


def test_straight_through_gradients():
    x = tf.Variable([-2.0, -0.5, 0.2, 1.0, 1.5])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(quantizers.SteSign()(x) * tf.constant([1.0, 2, 3, 4, 5]))
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0, 2, 3, 4, 0])  # 1{|x| <= 1}
    # XNOR: alpha (held constant) times the straight-through sign; TWN: straight through
    alpha = np.abs(W).reshape(-1, 6).mean(axis=0)
    for quantizer, expected in ((quantizers.XnorWeight(), 3.0 * np.broadcast_to(alpha, W.shape)),
                                (quantizers.TernaryWeight(), np.full(W.shape, 3.0))):
        w = tf.Variable(W)
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(quantizer(w) * 3.0)
        np.testing.assert_allclose(tape.gradient(y, w).numpy(), expected, rtol=1e-6)


def build(kind, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    conv, dense = (BinaryConv2D, BinaryDense) if kind == "binary" else (TernaryConv2D, TernaryDense)
    return keras.Sequential([keras.Input((16, 16, 1)), conv(8, 3, activation="relu", **kwargs),
                             keras.layers.MaxPooling2D(), keras.layers.Flatten(), dense(10, **kwargs)])


@pytest.mark.parametrize("kind, levels", [("binary", {-127, 127}), ("ternary", {-127, 0, 127})])
def test_train_export_exact_levels_and_reload(kind, levels, tmp_path):
    x, y = synthetic_images(480, shape=(16, 16, 1), seed=2)
    model = build(kind)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=3, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.5  # chance is 0.1
    path = tmp_path / f"{kind}.tflite"
    report = to_tflite(model, path, "int8", representative_data=x[:100])
    assert report.int8_coverage == 1.0 and any("materialized 2" in n for n in report.notes)
    parsed = load_tflite(path)
    kernels = [t for t in parsed.tensors[0] if t.constant and t.dtype == "INT8" and len(t.shape) >= 2]
    assert len(kernels) == 2
    for t in kernels:
        assert set(np.unique(parsed.constant_values(t)).tolist()) <= levels
    assert agreement(model, path, x[:200]).top1_agreement >= 0.95
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(x[:16], verbose=0), model.predict(x[:16], verbose=0), atol=1e-6)
    plain = materialize(model)
    assert not any(type(layer).__module__.startswith("tfcompress") for layer in plain.layers)
    np.testing.assert_allclose(plain.predict(x[:16], verbose=0), model.predict(x[:16], verbose=0), atol=1e-5)


def test_binarized_activations_and_ste_sign_kernel():
    model = build("binary", kernel_quantizer="ste_sign", input_quantizer="ste_sign")
    layer = model.layers[0]
    assert isinstance(layer.kernel_quantizer, quantizers.SteSign)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype("float32")
    expected = tf.nn.relu(tf.nn.conv2d(np.where(x >= 0, 1.0, -1.0).astype("float32"),
                                       np.where(layer.kernel.numpy() >= 0, 1.0, -1.0).astype("float32"),
                                       1, "VALID") + layer.bias.numpy())
    np.testing.assert_allclose(layer(x).numpy(), expected.numpy(), atol=1e-5)


def test_bits_report_counts_independently():
    model = build("ternary")
    report = weight_bits_report(model)
    conv = report.layers[0]
    # 72 kernel weights at 2 bits = 18 bytes, 8 float32 scales, 8 float32 biases
    assert conv.packed_bytes == 18 + 4 * 8 + 4 * 8
    dense_weights = 7 * 7 * 8 * 10
    assert report.layers[1].packed_bytes == dense_weights * 2 // 8 + 4 * 10 + 4 * 10
    assert report.float32_bytes == 4 * model.count_params()
    binary = weight_bits_report(build("binary"))
    assert binary.layers[1].packed_bytes == int(np.ceil(dense_weights / 8)) + 80
    assert "total" in report.text()


def test_quantizer_registry_and_errors():
    for name in ("ste_sign", "xnor_weight", "ternary_weight"):
        q = quantizers.get(name)
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(q))
        assert type(again) is type(q) and again.get_config() == q.get_config()
    with pytest.raises(TfcompressError, match="unknown quantizer"):
        quantizers.get("nope")
    with pytest.raises(TfcompressError, match="threshold_factor"):
        quantizers.TernaryWeight(5.0)

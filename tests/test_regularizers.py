"""Sparsity penalties against NumPy, their gradients, and serialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress.errors import TfcompressError
from tfcompress.regularizers import L1, GroupLasso, NetworkSlimming, SelectiveWeightDecay

W = np.random.default_rng(0).normal(size=(3, 3, 4, 6)).astype("float32")


def test_values_match_numpy():
    assert float(L1(0.1)(W)) == pytest.approx(0.1 * np.abs(W).sum(), rel=1e-5)
    groups = W.reshape(-1, 6)
    assert float(GroupLasso(0.2)(W)) == pytest.approx(0.2 * np.sqrt(36) * np.linalg.norm(groups, axis=0).sum(), rel=1e-5)
    gamma = W[0, 0, 0]
    assert float(NetworkSlimming(0.3)(gamma)) == pytest.approx(0.3 * np.abs(gamma).sum(), rel=1e-5)
    k = int(round(0.75 * W.size))
    threshold = np.sort(np.abs(W).reshape(-1))[k - 1]
    expected = 0.5 * (W[np.abs(W) <= threshold] ** 2).sum()
    assert float(SelectiveWeightDecay(0.5, 0.75)(W)) == pytest.approx(expected, rel=1e-5)


def test_selective_weight_decay_only_pushes_the_small_weights():
    x = tf.Variable(W)
    with tf.GradientTape() as tape:
        penalty = SelectiveWeightDecay(1.0, 0.5)(x)
    grad = tape.gradient(penalty, x).numpy()
    threshold = np.sort(np.abs(W).reshape(-1))[int(round(0.5 * W.size)) - 1]
    np.testing.assert_allclose(grad, np.where(np.abs(W) <= threshold, 2 * W, 0), rtol=1e-6)


def test_group_lasso_drives_whole_channels_to_zero():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = x[:, :2] @ rng.normal(size=(2, 1)).astype("float32")
    inp = keras.Input((8,))
    h = keras.layers.Dense(6, kernel_regularizer=GroupLasso(0.05), name="h")(inp)
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, y, epochs=60, verbose=0, batch_size=64)
    norms = np.linalg.norm(model.get_layer("h").kernel.numpy(), axis=0)
    assert (norms < 0.05 * norms.max()).sum() >= 2  # several units switched off as groups


def test_serialization_and_bad_input(tmp_path):
    for reg in (L1(0.1), GroupLasso(0.2), NetworkSlimming(0.3), SelectiveWeightDecay(0.4, 0.8)):
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(reg))
        assert again.get_config() == reg.get_config()
    inp = keras.Input((4,))
    h = keras.layers.Dense(3, kernel_regularizer=GroupLasso(0.1))(inp)
    h = keras.layers.BatchNormalization(gamma_regularizer=NetworkSlimming(0.1))(h)
    model = keras.Model(inp, h)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.layers[1].kernel_regularizer, GroupLasso)
    with pytest.raises(TfcompressError):
        L1(-1)
    with pytest.raises(TfcompressError):
        SelectiveWeightDecay(0.1, 1.5)

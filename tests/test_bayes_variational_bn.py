"""VariationalBatchNormalization (VCP, Zhao et al. 2019): KL, sampling, BN drop-in, pruning."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from layer_harness import assert_keras_roundtrip

from tfcompress.callbacks.variational_pruning import VariationalPruning
from tfcompress.errors import TfcompressError
from tfcompress.layers.variational_bn import VariationalBatchNormalization, gaussian_kl

MU_GRID = np.array([-50.0, -3.0, -1e-3, 0.0, 0.5, 2.0, 1e3])
SIGMA_GRID = np.array([1e-6, 1e-3, 0.05, 1.0, 10.0])


@pytest.mark.parametrize("prior_stddev", [1e-2, 0.1, 1.0, 5.0])
def test_kl_matches_tfp_closed_form_on_grid(prior_stddev):
    mu, sigma = (a.ravel() for a in np.meshgrid(MU_GRID, SIGMA_GRID))
    ours = [
        float(gaussian_kl(tf.constant([m], tf.float32), tf.constant([math.log(s)], tf.float32), prior_stddev))
        for m, s in zip(mu, sigma, strict=True)
    ]
    reference = tfp.distributions.kl_divergence(
        tfp.distributions.Normal(tf.constant(mu), tf.constant(sigma)),
        tfp.distributions.Normal(tf.constant(0.0, tf.float64), tf.constant(prior_stddev, tf.float64)),
    ).numpy()
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    # The sum over channels is the layer's KL.
    total = float(gaussian_kl(tf.constant(mu, tf.float32), tf.constant(np.log(sigma), tf.float32), prior_stddev))
    np.testing.assert_allclose(total, reference.sum(), rtol=1e-5)


def test_kl_matches_monte_carlo():
    rng = np.random.default_rng(0)
    prior = 0.7
    for mu, sigma in [(0.0, 0.3), (1.5, 0.05), (-2.0, 1.2)]:
        samples = rng.normal(mu, sigma, 400_000)
        log_q = -0.5 * ((samples - mu) / sigma) ** 2 - math.log(sigma)
        log_p = -0.5 * (samples / prior) ** 2 - math.log(prior)
        monte_carlo = np.mean(log_q - log_p)
        ours = float(gaussian_kl(tf.constant([mu], tf.float32), tf.constant([math.log(sigma)], tf.float32), prior))
        assert abs(ours - monte_carlo) < 0.02 * max(1.0, abs(monte_carlo))


def test_layer_kl_and_add_loss_scaling():
    layer = VariationalBatchNormalization(dataset_size=250, prior_stddev=0.5, initial_stddev=0.2)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    layer(x)
    layer.gamma.assign([1.0, -0.5, 0.0])
    layer.kl_weight.assign(0.3)
    layer(x)
    expected = tfp.distributions.kl_divergence(
        tfp.distributions.Normal([1.0, -0.5, 0.0], 0.2), tfp.distributions.Normal(0.0, 0.5)
    ).numpy().sum()
    np.testing.assert_allclose(float(layer.kl_divergence()), expected, rtol=1e-5)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(float(layer.losses[0]), 0.3 * expected / 250, rtol=1e-5)


def test_training_samples_gamma_per_example_and_inference_uses_mean():
    keras.utils.set_random_seed(0)
    layer = VariationalBatchNormalization(dataset_size=10, initial_stddev=0.3, center=True, seed=3)
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(20000, 2)).astype("float32")
    layer.build(x.shape)
    layer.gamma.assign([1.5, -0.2])
    layer.beta.assign([0.5, 1.0])
    x_hat = (x - x.mean(0)) / np.sqrt(x.var(0) + layer.epsilon)
    sampled = np.asarray(layer(x, training=True))
    gamma = sampled / (x_hat + np.array([0.5, 1.0]))
    np.testing.assert_allclose(gamma.mean(0), [1.5, -0.2], atol=0.02)
    np.testing.assert_allclose(gamma.std(0), [0.3, 0.3], rtol=0.05)
    # Inference: gamma = mu, moving statistics.
    mean, var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    expected = np.array([1.5, -0.2]) * ((x - mean) / np.sqrt(var + layer.epsilon) + [0.5, 1.0])
    np.testing.assert_allclose(np.asarray(layer(x, training=False)), expected, rtol=1e-4, atol=1e-4)


def test_drop_in_for_batch_normalization():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(32, 5, 5, 4)).astype("float32")
    bn = keras.layers.BatchNormalization(axis=-1, epsilon=1e-3)
    bn(x, training=True)
    bn.set_weights(
        [np.array([2.0, -1.0, 0.5, 0.0]), np.array([0.3, 0.1, -0.2, 0.7])] + bn.get_weights()[2:]
    )
    variational = VariationalBatchNormalization.from_batch_normalization(bn, dataset_size=100)
    assert variational.epsilon == bn.epsilon and variational.momentum == bn.momentum
    expected = np.asarray(bn(x))
    got = np.asarray(variational(x))
    # Channel 3 has gamma = 0: an ordinary BN outputs beta there, the VCP rewrite outputs 0.
    np.testing.assert_allclose(got[..., :3], expected[..., :3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[..., 3], 0.0)
    # Positional set_weights of an ordinary BN's weights works on a plain instance too.
    fresh = VariationalBatchNormalization(dataset_size=100)
    fresh.build(x.shape)
    fresh.set_weights(bn.get_weights())
    np.testing.assert_allclose(np.asarray(fresh(x)), got, rtol=1e-6)
    # And back to an ordinary BN for export.
    plain = variational.to_batch_normalization()
    assert type(plain) is keras.layers.BatchNormalization
    np.testing.assert_allclose(np.asarray(plain(x)), got, rtol=1e-5, atol=1e-5)


def test_masked_channels_output_exactly_zero():
    layer = VariationalBatchNormalization(dataset_size=10, initial_stddev=0.5)
    x = np.random.default_rng(0).normal(size=(16, 4, 4, 3)).astype("float32")
    layer.build(x.shape)
    layer.beta.assign([1.0, 1.0, 1.0])
    layer.mask.assign([1.0, 0.0, 1.0])
    for training in (True, False):
        out = np.asarray(layer(x, training=training))
        assert np.all(out[..., 1] == 0.0)
        assert np.all(out[..., 0] != 0.0)


def test_prune_rule_of_algorithm_1():
    layer = VariationalBatchNormalization(dataset_size=10)
    layer.build((None, 6))
    layer.gamma.assign([0.01, -0.01, 0.01, 0.5, -0.5, 0.04])
    layer.log_sigma.assign(np.log([0.05, 0.05, 0.5, 0.05, 0.01, 0.19]))
    assert layer.prune(tau=0.05, theta=0.2) == 3
    np.testing.assert_array_equal(layer.keep_mask(), [False, False, True, True, True, False])
    np.testing.assert_allclose(layer.channel_importance(), [0.01, 0.01, 0.01, 0.5, 0.5, 0.04], rtol=1e-6)
    # Permanent: a pruned channel is not restored when its mu grows again.
    layer.gamma.assign([1.0] * 6)
    assert layer.prune(tau=0.05, theta=0.2) == 0
    assert layer.keep_mask().sum() == 3


def test_bad_arguments_raise():
    with pytest.raises(TfcompressError, match="dataset_size"):
        VariationalBatchNormalization()
    with pytest.raises(TfcompressError, match="dataset_size"):
        VariationalBatchNormalization(dataset_size=0)
    with pytest.raises(TfcompressError, match="renorm"):
        VariationalBatchNormalization(dataset_size=10, renorm=True)
    with pytest.raises(TfcompressError, match="prior_stddev"):
        VariationalBatchNormalization(dataset_size=10, prior_stddev=-1.0)
    with pytest.raises(TfcompressError, match="BatchNormalization"):
        VariationalBatchNormalization.from_batch_normalization(keras.layers.Dense(2), 10)


def test_save_and_load_keras(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    hidden = keras.layers.Conv2D(4, 3)(inputs)
    hidden = VariationalBatchNormalization(dataset_size=64, prior_stddev=0.3, seed=2)(hidden)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(64, 6, 6, 2)).astype("float32")
    model.compile("adam", "mse")
    model.fit(x, np.zeros((64, 3)), epochs=1, verbose=0)
    layer = model.layers[2]
    layer.mask.assign([1.0, 0.0, 1.0, 1.0])
    layer.kl_weight.assign(0.25)
    loaded = assert_keras_roundtrip(model, x, tmp_path, rtol=1e-6, atol=0.0, name="vbn")
    restored = loaded.layers[2]
    assert isinstance(restored, VariationalBatchNormalization)
    assert restored.prior_stddev == 0.3 and restored.dataset_size == 64
    assert float(restored.kl_weight.numpy()) == 0.25
    np.testing.assert_array_equal(restored.keep_mask(), [True, False, True, True])
    np.testing.assert_allclose(restored.stddev(), layer.stddev())


def test_synthetic_channel_recovery_with_variational_pruning():
    """3 of 8 inputs carry the label; VCP (Algorithm 1) keeps them and prunes the noise."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 512
    x = rng.normal(size=(n, 8)).astype("float32")
    y = ((x[:, 0] + x[:, 1] - x[:, 2]) > 0).astype("float32")
    inputs = keras.Input((8,))
    vbn = VariationalBatchNormalization(dataset_size=n, seed=1)
    model = keras.Model(inputs, keras.layers.Dense(1)(vbn(inputs)))
    model.compile(keras.optimizers.Adam(0.02), keras.losses.BinaryCrossentropy(from_logits=True))
    history = model.fit(
        x, y, epochs=20, batch_size=64, verbose=0, callbacks=[VariationalPruning(tau=0.05, theta=0.2)]
    )
    keep = vbn.keep_mask()
    assert keep[:3].all(), (vbn.gamma.numpy(), vbn.stddev())
    assert keep[3:].sum() <= 1, (vbn.gamma.numpy(), vbn.stddev())
    assert history.history["vcp_pruned_channels"][-1] == int((~keep).sum())
    # No retraining: the pruned model still classifies (inference uses mu, masked noise).
    accuracy = np.mean((model.predict(x, verbose=0)[:, 0] > 0) == y)
    assert accuracy > 0.9

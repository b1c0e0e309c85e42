"""LogNormalDropout (SBP, Neklyudov et al. 2017): KL and SNR vs Monte Carlo, pruning."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from layer_harness import assert_keras_roundtrip
from scipy import integrate, stats

from tfcompress.errors import TfcompressError
from tfcompress.layers.lognormal import (
    LogNormalDropout,
    truncated_lognormal_kl,
    truncated_lognormal_mean,
    truncated_lognormal_snr,
)

A, B = -20.0, 0.0
# (mu, sigma) inside the layer's domain (mu in [a, b]), from tiny to the largest sigma.
GRID = [(0.0, 0.1), (-5.0, 2.0), (-10.0, 10.0), (-19.5, 0.3), (-1.0, 1e-3), (0.0, 1e-6), (-20.0, 5.0), (-3.0, 148.0)]


def monte_carlo_kl(mu, sigma, n=200_000):
    """log q - log p averaged over samples of log theta ~ TN (TFP's sampler)."""
    q = tfp.distributions.TruncatedNormal(
        tf.constant(mu, tf.float64), tf.constant(sigma, tf.float64), A, B
    )
    u = q.sample(n, seed=(3, 4))
    return float(tf.reduce_mean(q.log_prob(u))) + np.log(B - A)


def quadrature_moments(mu, sigma):
    """E[theta] and SNR of theta = exp(u) by numerical integration of the TN density.

    (Monte Carlo is too noisy for the heavy-tailed theta of large sigma.)
    """
    u = np.linspace(A, B, 400_001)
    log_density = stats.truncnorm.logpdf(u, (A - mu) / sigma, (B - mu) / sigma, mu, sigma)
    density = np.exp(log_density - log_density.max())
    density /= integrate.trapezoid(density, u)
    m1 = integrate.trapezoid(np.exp(u) * density, u)
    m2 = integrate.trapezoid(np.exp(2 * u) * density, u)
    return m1, m1 / np.sqrt(m2 - m1**2)


@pytest.mark.parametrize(("mu", "sigma"), GRID)
def test_kl_snr_and_mean_match_monte_carlo(mu, sigma):
    kl_mc = monte_carlo_kl(mu, sigma)
    for dtype, rtol in ((tf.float64, 0.0), (tf.float32, 1e-4)):
        m, s = tf.constant(mu, dtype), tf.constant(sigma, dtype)
        kl = float(truncated_lognormal_kl(m, s, A, B))
        assert np.isfinite(kl)
        assert abs(kl - kl_mc) < 0.01 * max(1.0, abs(kl_mc)) + rtol * abs(kl)
    m, s = tf.constant(mu, tf.float64), tf.constant(sigma, tf.float64)
    snr = float(truncated_lognormal_snr(m, s, A, B))
    assert np.isfinite(snr)
    if sigma >= 1e-3:  # below, the density is narrower than the integration grid
        mean_q, snr_q = quadrature_moments(mu, sigma)
        np.testing.assert_allclose(snr, snr_q, rtol=1e-3)
        np.testing.assert_allclose(float(truncated_lognormal_mean(m, s, A, B)), mean_q, rtol=1e-3)
    else:  # theta is nearly deterministic: mean exp(mu), SNR ~ 1 / sigma
        np.testing.assert_allclose(float(truncated_lognormal_mean(m, s, A, B)), np.exp(mu), rtol=1e-3)
        assert snr > 0.3 / sigma
    # The KL is log(b - a) minus the truncated normal's entropy (TFP's closed form).
    entropy = float(tfp.distributions.TruncatedNormal(m, s, A, B).entropy())
    np.testing.assert_allclose(float(truncated_lognormal_kl(m, s, A, B)), np.log(B - A) - entropy, rtol=1e-8, atol=1e-8)


def test_layer_kl_snr_and_loss_including_clipped_extremes():
    layer = LogNormalDropout(dataset_size=100)
    layer.build((None, 5))
    # mu outside [a, b] (e.g. set by hand) is clipped to the nearest endpoint.
    layer.mu.assign([0.0, -5.0, 7.0, -40.0, -10.0])
    layer.log_sigma.assign(np.log([1e-6, 2.0, 0.5, 1e-3, 10.0]))
    layer.kl_weight.assign(0.5)
    layer(np.ones((2, 5), "float32"))
    mu = tf.constant([0.0, -5.0, 0.0, -20.0, -10.0], tf.float64)
    sigma = tf.constant([1e-6, 2.0, 0.5, 1e-3, 10.0], tf.float64)
    expected = tf.reduce_sum(truncated_lognormal_kl(mu, sigma, A, B)).numpy()
    assert np.isfinite(float(layer.kl_divergence()))
    np.testing.assert_allclose(float(layer.kl_divergence()), expected, rtol=1e-4)
    np.testing.assert_allclose(float(layer.losses[0]), 0.5 * expected / 100, rtol=1e-4)
    snr = layer.snr()
    assert np.all(np.isfinite(snr))
    np.testing.assert_array_equal(layer.keep_mask(), snr >= 1.0)
    np.testing.assert_array_equal(layer.keep_mask(), [True, False, True, True, False])


def test_training_noise_distribution_and_inference_gate():
    layer = LogNormalDropout(dataset_size=10, seed=5)
    layer.build((None, 2, 2, 3))
    layer.mu.assign([-1.0, -0.2, -8.0])
    layer.log_sigma.assign(np.log([0.5, 0.05, 6.0]))
    ones = np.ones((20000, 2, 2, 3), "float32")
    theta = np.asarray(layer(ones, training=True))
    # One noise value per example and channel, shared over the spatial positions.
    np.testing.assert_array_equal(theta[:, 0, 0], theta[:, 1, 1])
    log_theta = np.log(theta[:, 0, 0])
    assert log_theta.min() >= A and log_theta.max() <= B
    for channel in range(3):
        q = tfp.distributions.TruncatedNormal(
            float(layer.mu.numpy()[channel]), float(np.exp(layer.log_sigma.numpy()[channel])), A, B
        )
        np.testing.assert_allclose(log_theta[:, channel].mean(), float(q.mean()), atol=0.05 * max(1, float(q.stddev())))
        np.testing.assert_allclose(log_theta[:, channel].std(), float(q.stddev()), rtol=0.05)
    gate = np.asarray(layer(ones[:1]))[0, 0, 0]
    keep = layer.keep_mask()
    assert keep.tolist() == [True, True, False]
    np.testing.assert_allclose(gate, layer.expected_noise() * keep, rtol=1e-5)
    layer.mask.assign([0.0, 1.0, 1.0])
    assert np.all(np.asarray(layer(ones[:4], training=True))[..., 0] == 0.0)
    assert np.all(np.asarray(layer(ones[:4]))[..., [0, 2]] == 0.0)


def test_gradients_flow_to_both_parameters():
    layer = LogNormalDropout(dataset_size=10, seed=0)
    x = tf.constant(np.random.default_rng(0).normal(size=(16, 4)), tf.float32)
    layer(x)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True) * [1.0, -1.0, 2.0, 0.5]) + layer.kl_divergence()
    grads = tape.gradient(loss, [layer.mu, layer.log_sigma])
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)


def test_bad_arguments_raise():
    with pytest.raises(TfcompressError, match="dataset_size"):
        LogNormalDropout(dataset_size=2.5)
    with pytest.raises(TfcompressError, match="log_lower"):
        LogNormalDropout(dataset_size=5, log_lower=0.0, log_upper=-1.0)
    with pytest.raises(TfcompressError, match="snr_threshold"):
        LogNormalDropout(dataset_size=5, snr_threshold=0.0)


def test_save_and_load_keras(tmp_path):
    inputs = keras.Input((5, 5, 2))
    hidden = LogNormalDropout(dataset_size=20, snr_threshold=2.0)(keras.layers.Conv2D(3, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(hidden)))
    layer = model.layers[2]
    layer.mu.assign([-0.5, -3.0, -0.1])
    layer.log_sigma.assign(np.log([0.1, 3.0, 0.3]))
    x = np.random.default_rng(0).normal(size=(4, 5, 5, 2)).astype("float32")
    loaded = assert_keras_roundtrip(model, x, tmp_path, rtol=1e-6, atol=0.0, name="sbp")
    np.testing.assert_array_equal(loaded.layers[2].keep_mask(), [True, False, True])


def test_synthetic_channel_recovery():
    """3 of 8 inputs carry the label; SBP keeps them (SNR >= 1) and prunes the noise."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 512
    x = rng.normal(size=(n, 8)).astype("float32")
    y = ((x[:, 0] + x[:, 1] - x[:, 2]) > 0).astype("float32")
    inputs = keras.Input((8,))
    sbp = LogNormalDropout(dataset_size=n, seed=1)
    model = keras.Model(inputs, keras.layers.Dense(1)(sbp(inputs)))
    model.compile(keras.optimizers.Adam(0.05), keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(x, y, epochs=30, batch_size=64, verbose=0)
    keep = sbp.keep_mask()
    assert keep[:3].all(), sbp.snr()
    assert keep[3:].sum() <= 1, sbp.snr()
    accuracy = np.mean((model.predict(x, verbose=0)[:, 0] > 0) == y)
    assert accuracy > 0.9


def test_default_initialization_scales_channels_by_the_half_normal_mean():
    """mu = 0 = log_upper makes log theta = -sigma |eps| (a half-normal), whose exponential has
    the closed form E[theta] = 2 exp(sigma^2 / 2) Phi(-sigma) ~ 0.9615 for sigma = e^-3."""
    layer = LogNormalDropout(dataset_size=10, seed=2)
    layer.build((None, 3))
    sigma = np.exp(-3.0)
    closed_form = 2.0 * np.exp(sigma**2 / 2.0) * stats.norm.cdf(-sigma)
    assert closed_form == pytest.approx(0.9615, abs=1e-4)
    np.testing.assert_allclose(layer.expected_noise(), closed_form, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(layer(np.ones((2, 3), "float32")))[0], closed_form, rtol=1e-6)
    samples = np.asarray(layer(np.ones((20000, 3), "float32"), training=True))
    assert samples.max() <= 1.0
    np.testing.assert_allclose(samples.mean(0), closed_form, atol=3 * sigma * 0.6 / np.sqrt(20000))

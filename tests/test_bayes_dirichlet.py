"""DirichletSwitch (Adamczewski and Park, AISTATS 2021): KL, estimators, ranking, freezing."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from layer_harness import assert_keras_roundtrip
from scipy import special

from tfcompress.errors import TfcompressError
from tfcompress.layers.dirichlet import (
    LOG_CONCENTRATION_RANGE,
    DirichletSwitch,
    dirichlet_kl,
    freeze_all_but_switches,
)


def kl_from_paper(phi: np.ndarray, alpha0: float) -> float:
    """The slides' (001) closed form, in float64 with scipy.special."""
    d = phi.size
    total = phi.sum()
    return float(
        special.gammaln(total)
        - special.gammaln(d * alpha0)
        - special.gammaln(phi).sum()
        + d * special.gammaln(alpha0)
        + ((phi - alpha0) * (special.digamma(phi) - special.digamma(total))).sum()
    )


PHI_VECTORS = [
    np.full(4, 1e-4),
    np.array([1e-4, 1e-3, 0.5, 3.0]),
    np.array([1.0, 1.0, 1.0]),
    np.array([0.1, 0.1, 0.1, 0.1, 0.1]),
    np.array([500.0, 1e-4, 2.0]),
    np.full(16, 1000.0),
    np.array([7.0, 0.02]),
]


@pytest.mark.parametrize(("phi", "alpha0"), list(itertools.product(PHI_VECTORS, [0.01, 0.1, 0.5])))
def test_kl_matches_tfp_and_paper_formula(phi, alpha0):
    ours = float(dirichlet_kl(tf.constant(phi, tf.float32), alpha0))
    paper = kl_from_paper(phi, alpha0)
    tfp_value = float(
        tfp.distributions.kl_divergence(
            tfp.distributions.Dirichlet(tf.constant(phi, tf.float64)),
            tfp.distributions.Dirichlet(tf.constant(np.full(phi.size, alpha0), tf.float64)),
        )
    )
    assert np.isfinite(ours)
    np.testing.assert_allclose(paper, tfp_value, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ours, paper, rtol=2e-4, atol=2e-3)


def test_kl_is_zero_at_the_prior_and_the_layer_kl_uses_phi():
    np.testing.assert_allclose(float(dirichlet_kl(tf.constant([0.3] * 5), 0.3)), 0.0, atol=1e-5)
    layer = DirichletSwitch(dataset_size=40, prior_concentration=0.2)
    layer.build((None, 3))
    phi = np.array([0.05, 2.0, 30.0])
    layer.log_concentration.assign(np.log(phi))
    layer.kl_weight.assign(0.5)
    layer(np.ones((2, 3), "float32"))
    np.testing.assert_allclose(float(layer.kl_divergence()), kl_from_paper(phi, 0.2), rtol=1e-4)
    np.testing.assert_allclose(float(layer.losses[0]), 0.5 * kl_from_paper(phi, 0.2) / 40, rtol=1e-4)


@pytest.mark.parametrize("estimator", ["reparameterized", "mean"])
def test_gradients_reach_the_concentration(estimator):
    layer = DirichletSwitch(dataset_size=10, estimator=estimator, seed=0)
    x = tf.constant(np.random.default_rng(0).normal(size=(8, 5, 5, 4)), tf.float32)
    layer(x)
    weights = tf.constant([1.0, -2.0, 0.5, 3.0])
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
        likelihood_term = tf.reduce_sum(y * weights)
    gradient = tape.gradient(likelihood_term, layer.log_concentration)
    assert gradient is not None
    assert np.all(np.isfinite(gradient.numpy())) and np.any(np.abs(gradient.numpy()) > 1e-6)


def test_reparameterized_samples_follow_the_dirichlet_and_inference_uses_the_mean():
    layer = DirichletSwitch(dataset_size=10, seed=4)
    layer.build((None, 3))
    phi = np.array([1.0, 2.0, 5.0])
    layer.log_concentration.assign(np.log(phi))
    ones = np.ones((40000, 3), "float32")
    switches = np.asarray(layer(ones, training=True)) / 3.0  # undo the D scaling
    total = phi.sum()
    mean = phi / total
    variance = mean * (1 - mean) / (total + 1)
    np.testing.assert_allclose(switches.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(switches.mean(0), mean, atol=0.005)
    np.testing.assert_allclose(switches.var(0), variance, rtol=0.05)
    np.testing.assert_allclose(np.asarray(layer(ones[:2]))[0], 3 * mean, rtol=1e-5)
    unscaled = DirichletSwitch(dataset_size=10, scale_by_channels=False, estimator="mean")
    unscaled.build((None, 3))
    unscaled.log_concentration.assign(np.log(phi))
    np.testing.assert_allclose(np.asarray(unscaled(ones[:2], training=True))[0], mean, rtol=1e-5)


def test_ranking_keep_mask_and_masking():
    layer = DirichletSwitch(dataset_size=10, importance_threshold=0.5)
    layer.build((None, 2, 2, 5))
    layer.log_concentration.assign(np.log([4.0, 0.01, 2.0, 0.05, 8.0]))
    np.testing.assert_array_equal(layer.keep_mask(), [True, False, True, False, True])
    np.testing.assert_array_equal(layer.keep_mask(num_keep=2), [True, False, False, False, True])
    assert layer.prune(num_keep=2) == 3
    out = np.asarray(layer(np.ones((3, 2, 2, 5), "float32"), training=True))
    assert np.all(out[..., [1, 2, 3]] == 0.0) and np.all(out[..., [0, 4]] > 0)
    np.testing.assert_allclose(layer.channel_scale()[[1, 2, 3]], 0.0)
    with pytest.raises(TfcompressError, match="num_keep"):
        layer.keep_mask(num_keep=9)


def test_bad_arguments_raise():
    with pytest.raises(TfcompressError, match="dataset_size"):
        DirichletSwitch()
    with pytest.raises(TfcompressError, match="< 1"):
        DirichletSwitch(dataset_size=5, prior_concentration=1.5)
    with pytest.raises(TfcompressError, match="estimator"):
        DirichletSwitch(dataset_size=5, estimator="gumbel")
    with pytest.raises(TfcompressError, match="no DirichletSwitch"):
        freeze_all_but_switches(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))


def test_save_and_load_keras(tmp_path):
    inputs = keras.Input((6, 6, 2))
    hidden = keras.layers.Conv2D(4, 3)(inputs)
    hidden = DirichletSwitch(dataset_size=32, prior_concentration=0.3, estimator="mean")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(hidden)))
    switch = model.layers[2]
    switch.log_concentration.assign(np.log([0.1, 3.0, 1.0, 9.0]))
    switch.mask.assign([1.0, 1.0, 0.0, 1.0])
    x = np.random.default_rng(0).normal(size=(5, 6, 6, 2)).astype("float32")
    loaded = assert_keras_roundtrip(model, x, tmp_path, rtol=1e-6, atol=0.0, name="dirichlet")
    restored = loaded.layers[2]
    np.testing.assert_allclose(restored.posterior_mean(), switch.posterior_mean())


@pytest.mark.parametrize("estimator", ["reparameterized", "mean"])
def test_synthetic_channel_recovery_with_frozen_network(estimator):
    """Steps 1-3 of the paper: pre-train, insert switches, train them alone, rank channels."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 512
    x = rng.normal(size=(n, 8)).astype("float32")
    y = ((x[:, 0] + x[:, 1] - x[:, 2]) > 0).astype("float32")
    inputs = keras.Input((8,))
    switch = DirichletSwitch(dataset_size=n, estimator=estimator, seed=1)
    hidden = keras.layers.Dense(16, activation="relu")(switch(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    switch.trainable = False  # pre-training of the ordinary network (switches = identity)
    model.compile(keras.optimizers.Adam(0.01), loss)
    model.fit(x, y, epochs=10, batch_size=64, verbose=0)
    frozen_kernel = model.layers[2].kernel.numpy().copy()
    assert freeze_all_but_switches(model) == 8
    assert [w.name for w in model.trainable_weights] == ["log_concentration"]
    model.compile(keras.optimizers.Adam(0.05), loss)
    model.fit(x, y, epochs=30, batch_size=64, verbose=0)
    np.testing.assert_array_equal(model.layers[2].kernel.numpy(), frozen_kernel)
    importance = switch.channel_importance()
    assert set(np.argsort(-importance)[:3]) == {0, 1, 2}, importance
    keep = switch.keep_mask()
    assert keep[:3].all() and keep[3:].sum() <= 1, importance
    switch.prune(num_keep=3)
    accuracy = np.mean((model.predict(x, verbose=0)[:, 0] > 0) == y)
    assert accuracy > 0.9


@pytest.mark.parametrize("estimator", ["reparameterized", "mean"])
@pytest.mark.parametrize("log_phi", [-60.0, -120.0, 60.0, 120.0])
def test_kl_and_gradients_stay_finite_at_extreme_concentrations(estimator, log_phi):
    """phi = exp(log phi) unclipped underflows (-120) or overflows (120) float32, and the KL's
    gradient overflows already at -60; the layer clips log phi to LOG_CONCENTRATION_RANGE."""
    layer = DirichletSwitch(dataset_size=50, estimator=estimator, seed=3)
    layer.build((None, 4, 4, 4))
    layer.log_concentration.assign([log_phi, -4.0, 0.0, 2.0])
    x = tf.constant(np.random.default_rng(0).normal(size=(16, 4, 4, 4)), tf.float32)
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * [1.0, -2.0, 0.5, 3.0]) + tf.add_n(layer.losses)
    gradient = tape.gradient(loss, layer.log_concentration).numpy()
    assert np.all(np.isfinite(y.numpy())) and np.isfinite(float(loss))
    assert np.all(np.isfinite(gradient)), gradient
    assert np.any(gradient[1:] != 0.0)
    # The KL is the closed form at the clipped concentration (scipy, float64).
    clipped = np.clip([log_phi, -4.0, 0.0, 2.0], *LOG_CONCENTRATION_RANGE)
    np.testing.assert_allclose(float(layer.kl_divergence()), kl_from_paper(np.exp(clipped), 0.1), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(layer.posterior_mean().sum(), 1.0)
    assert np.all(np.isfinite(np.asarray(layer(x))))


def test_large_concentration_kl_is_accurate_and_updates_stay_in_range():
    """At the upper end (log phi = 25) float32 would give a wrong, negative KL; the layer's
    float64 evaluation matches TFP's float64 closed form. An optimizer step cannot leave the range."""
    layer = DirichletSwitch(dataset_size=10, prior_concentration=0.3)
    layer.build((None, 3))
    log_phi = np.array([25.0, 24.0, -1.0])
    layer.log_concentration.assign(log_phi)
    reference = tfp.distributions.kl_divergence(
        tfp.distributions.Dirichlet(tf.constant(np.exp(log_phi), tf.float64)),
        tfp.distributions.Dirichlet(tf.constant([0.3] * 3, tf.float64)),
    )
    kl = float(layer.kl_divergence())
    assert kl > 0.0
    np.testing.assert_allclose(kl, float(reference), rtol=1e-6, atol=1e-3)
    assert float(dirichlet_kl(tf.constant(np.exp(log_phi), tf.float32), 0.3)) != pytest.approx(kl, rel=1e-3)
    layer.log_concentration.assign([-200.0, 200.0, 0.0])  # e.g. an old, unclipped checkpoint
    optimizer = keras.optimizers.SGD(1.0)
    with tf.GradientTape() as tape:
        loss = layer.kl_divergence() + tf.reduce_sum(layer(tf.ones((2, 3)), training=True))
    optimizer.apply_gradients(zip(tape.gradient(loss, [layer.log_concentration]), [layer.log_concentration], strict=True))
    values = layer.log_concentration.numpy()
    assert np.all(values >= LOG_CONCENTRATION_RANGE[0]) and np.all(values <= LOG_CONCENTRATION_RANGE[1])


def test_reparameterized_gradient_is_unbiased_for_small_concentrations():
    """d/d log phi of E[sum_j c_j s_j] = d/d log phi sum_j c_j phi_j / sum(phi) (closed form);
    the sample average of the pathwise gradients matches it also for phi < 0.05, where TFP's
    Dirichlet sampler gives NaN gradients in float32."""
    log_phi = np.array([-6.0, -3.0, 0.5, 2.0])
    c = np.array([1.0, -2.0, 0.5, 3.0])
    layer = DirichletSwitch(dataset_size=10, seed=11)
    layer.build((None, 4))
    layer.log_concentration.assign(log_phi)
    with tf.GradientTape() as tape:
        samples = layer.sample(40000)
        objective = tf.reduce_mean(tf.reduce_sum(samples * c, axis=-1))
    pathwise = tape.gradient(objective, layer.log_concentration).numpy()
    phi = np.exp(log_phi)
    share = phi / phi.sum()
    analytic = share * (c - np.dot(share, c))  # d/d log phi_j of sum_k c_k phi_k / sum(phi)
    assert np.all(np.isfinite(pathwise))
    np.testing.assert_allclose(pathwise, analytic, atol=0.01)
    np.testing.assert_allclose(samples.numpy().mean(0), share, atol=0.005)

"""Bayesian Compression, group normal-Jeffreys (Louizos et al. 2017): BCDense / BCConv2D.

The math is checked against independent computations: TFP's Gaussian KL for the weights, a
Monte Carlo estimate of KL(N(mu, sigma^2) || p(z) ~ 1/|z|) for the group scales, Monte Carlo
over sampled weights for the local reparameterization, NumPy for the loss and bit precision.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from layer_harness import assert_keras_roundtrip
from scipy import special, stats

from tfcompress import bayesian
from tfcompress.layers import BCConv2D, BCDense

K1, K2, K3 = 0.63576, 1.87320, 1.48695  # Molchanov et al. 2017, eq. 14


def gaussian_kl_numpy(mu, log_s2):
    """KL(N(mu, s^2) || N(0, 1)) summed, in NumPy."""
    return float(np.sum(0.5 * (-log_s2 + np.exp(log_s2) + mu**2 - 1.0)))


def eq14_numpy(log_alpha):
    """Molchanov et al. 2017, eq. 14 (the approximation the layer uses), written out in NumPy."""
    return float(np.sum(-(K1 * special.expit(K2 + K3 * log_alpha) - 0.5 * np.logaddexp(0.0, -log_alpha) - K1)))


def layer_kl_numpy(layer) -> float:
    """The layer's KL recomputed from its variables: z part (eq. 14) + weight part (closed form)."""
    z_mu = layer.z_mu.numpy().astype(np.float64)
    log_alpha = np.clip(layer.z_log_sigma2.numpy() - np.log(z_mu**2 + 1e-8), -8, 8)
    log_s2 = np.clip(layer.kernel_log_sigma2.numpy().astype(np.float64), -20, 5)
    return eq14_numpy(log_alpha) + gaussian_kl_numpy(layer.kernel.numpy().astype(np.float64), log_s2)


def monte_carlo_z_kl(mu: float, log_sigma2: float, rng, n: int = 400_000) -> float:
    """KL(N(mu, sigma^2) || p(z) ~ 1/|z|) up to its additive constant: E_q[log q(z) + log|z|]."""
    sigma = np.exp(0.5 * log_sigma2)
    z = mu + sigma * rng.standard_normal(n)
    return float(np.mean(stats.norm.logpdf(z, mu, sigma) + np.log(np.abs(z))))


def test_bc_layers_are_exported():
    import tfcompress.layers

    assert {"BCDense", "BCConv2D"} <= set(tfcompress.layers.__all__)
    assert keras.saving.get_registered_object("tfcompress>BCDense") is BCDense


def test_weight_kl_matches_tfp_and_extremes_are_finite():
    layer = BCDense(4, dataset_size=100)
    layer.build((None, 3))
    rng = np.random.default_rng(0)

    def weight_kl_tfp(mu, log_s2):
        return float(tfp.distributions.kl_divergence(
            tfp.distributions.Normal(mu.astype(np.float64), np.exp(0.5 * log_s2.astype(np.float64))),
            tfp.distributions.Normal(np.float64(0.0), np.float64(1.0))).numpy().sum())

    # The z parameters stay fixed, so the change of the layer's KL is the change of the
    # weights' Gaussian KL alone (the z part cancels without being computed here).
    before = float(layer.kl_divergence())
    before_tfp = weight_kl_tfp(layer.kernel.numpy(), layer.kernel_log_sigma2.numpy())
    mu = rng.normal(size=(3, 4)).astype("float32")
    log_s2 = rng.uniform(-12, 2, size=(3, 4)).astype("float32")
    layer.kernel.assign(mu)
    layer.kernel_log_sigma2.assign(log_s2)
    np.testing.assert_allclose(float(layer.kl_divergence()) - before, weight_kl_tfp(mu, log_s2) - before_tfp,
                               rtol=1e-4)
    for z_mu, z_s2 in ((1e-9, -30.0), (1e3, 10.0), (0.0, -100.0)):
        layer.z_mu.assign(np.full(4, z_mu, "float32"))
        layer.z_log_sigma2.assign(np.full(4, z_s2, "float32"))
        assert np.isfinite(float(layer.kl_divergence()))


def test_group_scale_kl_matches_monte_carlo_up_to_a_constant():
    """The z part against a Monte Carlo estimate of the true KL to the improper log-uniform
    (normal-Jeffreys) prior, which is defined up to one additive constant; over a grid of
    log alpha and of scales of mu (the prior is scale invariant, so only alpha matters)."""
    rng = np.random.default_rng(0)
    layer = BCDense(1, dataset_size=10)
    layer.build((None, 2))
    weight_kl = gaussian_kl_numpy(layer.kernel.numpy(), np.clip(layer.kernel_log_sigma2.numpy(), -20, 5))
    offsets = []
    for log_alpha in (-6.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0):
        for mu in (1.0, -0.05, 3.0):
            log_sigma2 = log_alpha + np.log(mu**2)
            layer.z_mu.assign([mu])
            layer.z_log_sigma2.assign([log_sigma2])
            z_part = float(layer.kl_divergence()) - weight_kl
            offsets.append(monte_carlo_z_kl(mu, log_sigma2, rng) - z_part)
    # the paper's approximation error is about 0.01; Monte Carlo adds a few 1e-3
    assert np.ptp(offsets) < 0.03, np.round(offsets, 4)


def test_kl_enters_the_loss_scaled_by_the_dataset_size():
    n = 40
    inputs = keras.Input((6, 6, 2))
    conv = BCConv2D(3, 3, dataset_size=n, activation="relu", seed=0)
    dense = BCDense(2, dataset_size=n, seed=1)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(conv(inputs))))
    rng = np.random.default_rng(0)
    for layer in (conv, dense):
        layer.kernel_log_sigma2.assign(rng.uniform(-8, -1, layer.kernel.shape))
        layer.z_mu.assign(rng.uniform(0.2, 1.5, layer.z_mu.shape))
        layer.z_log_sigma2.assign(rng.uniform(-6, 0, layer.z_mu.shape))
    conv.kl_weight.assign(0.5)
    dense.kl_weight.assign(2.0)
    x = rng.normal(size=(8, 6, 6, 2)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    expected = (0.5 * layer_kl_numpy(conv) + 2.0 * layer_kl_numpy(dense)) / n
    model(x)
    assert len(model.losses) == 2
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)
    # ... and it is what fit / evaluate minimize on top of the data loss
    model.compile(keras.optimizers.SGD(0.0), "mse")
    data_loss = float(np.mean((model.predict(x, verbose=0) - y) ** 2))
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), data_loss + expected, rtol=1e-5)


def _set_posterior(layer, rng):
    layer.kernel.assign(rng.normal(0.0, 1.0, layer.kernel.shape))
    layer.kernel_log_sigma2.assign(rng.uniform(-3.0, -0.5, layer.kernel.shape))
    layer.z_mu.assign(np.array([1.0, -0.5, 2.0][: layer.z_mu.shape[0]]))
    layer.z_log_sigma2.assign(np.log([0.1, 0.05, 0.3][: layer.z_mu.shape[0]]))
    return (layer.kernel.numpy().astype(np.float64), np.exp(layer.kernel_log_sigma2.numpy().astype(np.float64)),
            layer.z_mu.numpy().astype(np.float64), np.exp(layer.z_log_sigma2.numpy().astype(np.float64)))


def _sample_weights(mu, var, z_mu, z_var, repeats, rng):
    """w = z w~, z ~ N(z_mu, z_var) per output unit, w~ ~ N(mu, var): whole weight samples."""
    z = z_mu + np.sqrt(z_var) * rng.standard_normal((repeats, z_mu.size))
    w_tilde = mu + np.sqrt(var) * rng.standard_normal((repeats, *mu.shape))
    return z[:, None, :] * w_tilde.reshape(repeats, -1, z_mu.size)


def assert_same_moments(outputs, reference, mean_tolerance: float, var_rtol: float, var_atol: float = 0.0):
    """Per-unit mean (within a fraction of the reference's std) and variance agree."""
    np.testing.assert_allclose(outputs.mean(0), reference.mean(0), atol=mean_tolerance * reference.std(0).max())
    np.testing.assert_allclose(outputs.var(0), reference.var(0), rtol=var_rtol, atol=var_atol)


def test_dense_local_reparameterization_matches_weight_sampling():
    rng = np.random.default_rng(0)
    layer = BCDense(3, dataset_size=10, use_bias=False, seed=1)
    layer.build((None, 4))
    mu, var, z_mu, z_var = _set_posterior(layer, rng)
    x = rng.normal(size=(1, 4)).astype("float32")
    repeats = 40000
    outputs = np.asarray(layer(np.repeat(x, repeats, axis=0), training=True), np.float64)
    assert_same_moments(outputs, np.einsum("i,nij->nj", x[0], _sample_weights(mu, var, z_mu, z_var, repeats, rng)),
                        mean_tolerance=0.03, var_rtol=0.05)


def test_conv_local_reparameterization_matches_weight_sampling():
    rng = np.random.default_rng(1)
    layer = BCConv2D(2, 3, padding="same", dataset_size=10, use_bias=False, seed=2)
    layer.build((None, 4, 4, 2))
    mu, var, z_mu, z_var = _set_posterior(layer, rng)
    x = rng.normal(size=(1, 4, 4, 2)).astype("float32")
    repeats = 20000
    outputs = np.asarray(layer(np.repeat(x, repeats, axis=0), training=True), np.float64)
    # a 'same' 3x3 convolution as a matrix product over patches (row, column, channel order)
    patches = tf.image.extract_patches(x, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME").numpy()[0]
    np.testing.assert_allclose(np.einsum("hwp,pk->hwk", patches, mu.reshape(-1, 2)),
                               np.asarray(keras.ops.conv(x, mu.astype("float32"), padding="same"))[0], atol=1e-5)
    reference = np.einsum("hwp,npk->nhwk", patches, _sample_weights(mu, var, z_mu, z_var, repeats, rng))
    assert_same_moments(outputs, reference, mean_tolerance=0.05, var_rtol=0.08, var_atol=1e-3)


def test_bit_precision_against_numpy_and_in_structure():
    inputs = keras.Input((5, 5, 2))
    conv = BCConv2D(3, 2, dataset_size=10, name="conv")
    dense = BCDense(2, dataset_size=10, name="fc")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(conv(inputs))))
    rng = np.random.default_rng(1)
    conv.kernel.assign(rng.normal(size=(2, 2, 2, 3)).astype("float32"))
    conv.kernel_log_sigma2.assign(np.full((2, 2, 2, 3), -8.0, "float32"))
    conv.z_mu.assign(np.array([1.0, 0.5, 1e-3], "float32"))
    conv.z_log_sigma2.assign(np.array([-6.0, -6.0, -6.0], "float32"))
    keep = conv.keep_mask()
    assert keep.tolist() == [True, True, False]  # log alpha of z_3 = -6 - log(1e-6) > 3
    mz, vz = np.array([1.0, 0.5]), np.exp(-6.0)
    mw, vw = conv.kernel.numpy()[..., :2], np.exp(-8.0)
    marginal = (mz**2 + vz) * (mw**2 + vw) - mz**2 * mw**2
    expected = 1 + int(np.ceil(np.log2(np.abs(mz * mw).max() / np.sqrt(marginal.min()))))
    assert conv.bit_precision() == expected
    dense.mask.assign([0.0, 0.0])
    info = bayesian.structure(model)
    assert info["conv"] == {"kept": 2, "total": 3, "keep_mask": [True, True, False], "bit_precision": expected}
    assert info["fc"]["kept"] == 0 and info["fc"]["bit_precision"] is None


def test_save_and_load_keras(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    hidden = BCConv2D(3, 3, dataset_size=16, activation="relu", seed=1)(inputs)
    outputs = BCDense(2, dataset_size=16, threshold=2.5, seed=2)(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 1)).astype("float32")
    model.compile("adam", "mse")
    model.fit(x, np.zeros((16, 2)), epochs=1, verbose=0)
    conv, dense = model.layers[1], model.layers[3]
    conv.z_mu.assign([1.0, 1e-3, 0.7])  # the second filter is pruned (log alpha > 3)
    dense.mask.assign([1.0, 0.0])
    dense.kl_weight.assign(0.25)
    # configs, variables and predictions of every layer
    loaded = assert_keras_roundtrip(model, x, tmp_path, rtol=1e-5, atol=1e-6, name="bc")
    for original, restored in zip(model.layers, loaded.layers, strict=True):
        if isinstance(original, BCDense | BCConv2D):
            np.testing.assert_array_equal(restored.keep_mask(), original.keep_mask())
            assert restored.bit_precision() == original.bit_precision()
    assert conv.keep_mask().tolist() == [True, False, True]
    assert float(loaded.layers[3].kl_weight.numpy()) == 0.25
    # the noise streams are saved too: the next training-mode outputs coincide
    np.testing.assert_allclose(np.asarray(loaded(x, training=True)), np.asarray(model(x, training=True)), atol=1e-5)


def test_synthetic_channel_recovery():
    """Units 0-2 of a BC layer carry the three inputs the targets depend on, units 3-7 carry
    noise inputs (the layer starts from an identity map, like a converted trained layer):
    BC keeps the informative units and prunes the noise ones."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 512
    x = rng.normal(size=(n, 8)).astype("float32")
    y = x[:, :3] * [1.0, -1.0, 0.5] + 0.1 * rng.normal(size=(n, 3)).astype("float32")
    inputs = keras.Input((8,))
    bc = BCDense(8, dataset_size=n, seed=1, name="bc")
    model = keras.Model(inputs, keras.layers.Dense(3)(bc(inputs)))
    bc.kernel.assign(np.eye(8, dtype="float32"))
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, y, epochs=40, batch_size=64, verbose=0)
    keep = bc.keep_mask()
    log_alpha = np.round(keras.ops.convert_to_numpy(bc.z_log_alpha()), 2)
    assert keep[:3].all(), log_alpha
    assert keep[3:].sum() <= 1, log_alpha
    residual = model.predict(x, verbose=0) - x[:, :3] * [1.0, -1.0, 0.5]
    assert float(np.mean(residual**2)) < 0.05
    assert bayesian.structure(model)["bc"]["kept"] == int(keep.sum())

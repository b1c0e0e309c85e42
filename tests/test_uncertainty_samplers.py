"""SGLD and SGHMC (tfcompress.uncertainty.samplers) sample a Gaussian posterior whose mean and
covariance are known in closed form; and they are Keras optimizers that save and resume."""

from __future__ import annotations

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress.errors import TfcompressError
from tfcompress.uncertainty import samplers
from tfcompress.uncertainty.samplers import SGHMC, SGLD

# the mean loss L(theta) = 1/2 (theta - m)^T A (theta - m) of N examples: U = N L (+ prior)
A = np.array([[2.0, 0.6], [0.6, 1.0]])
M = np.array([1.0, -0.5])
N = 50
CHAINS = 2000


def posterior(temperature=1.0, prior_stddev=None):
    """Closed form: precision N A + I / tau^2, covariance T / precision."""
    precision = N * A + (np.eye(2) / prior_stddev**2 if prior_stddev else 0.0)
    cov = np.linalg.inv(precision)
    return cov @ (N * A @ M), temperature * cov


def sample_chains(optimizer, burn_in, records, spacing):
    """``CHAINS`` independent chains (one row each) from 0; ``records`` states ``spacing`` apart."""
    theta = keras.Variable(np.zeros((CHAINS, 2), "float32"))
    a, m = tf.constant(A, tf.float32), tf.constant(M, tf.float32)
    optimizer.build([theta])

    @tf.function
    def run(steps):
        for _ in tf.range(steps):
            gradient = tf.matmul(theta.value - m, a)  # the gradient of each chain's own loss
            optimizer.apply_gradients([(gradient, theta)])

    run(tf.constant(burn_in))
    states = []
    for _ in range(records):
        run(tf.constant(spacing))
        states.append(theta.numpy().astype(np.float64))
    return np.concatenate(states)


def assert_gaussian(samples, mean, cov, n_eff):
    """Mean and covariance within 4.5 Monte Carlo standard errors of the closed form."""
    se_mean = np.sqrt(np.diag(cov) / n_eff)
    assert np.all(np.abs(samples.mean(0) - mean) < 4.5 * se_mean), (samples.mean(0), mean, se_mean)
    sample_cov = np.cov(samples.T)
    # var(s_ij) = (s_ii s_jj + s_ij^2) / n for Gaussian samples
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n_eff)
    assert np.all(np.abs(sample_cov - cov) < 4.5 * se_cov), (sample_cov, cov, se_cov)


def test_docstring_examples_run():
    result = doctest.testmod(samplers, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


@pytest.mark.parametrize("temperature, prior_stddev", [(1.0, None), (0.5, 0.2)])
def test_sgld_samples_the_gaussian_posterior(temperature, prior_stddev):
    # h lambda_max = lr * 2.28 = 0.023: the discretization bias (h lambda / 2 ~ 1%) is below the MC error
    sgld = SGLD(0.01, dataset_size=N, temperature=temperature, prior_stddev=prior_stddev, seed=3)
    samples = sample_chains(sgld, burn_in=1200, records=4, spacing=300)
    mean, cov = posterior(temperature, prior_stddev)
    assert_gaussian(samples, mean, cov, n_eff=len(samples))


@pytest.mark.parametrize("friction", [0.1, 0.5])
def test_sghmc_samples_the_gaussian_posterior(friction):
    sghmc = SGHMC(0.01, friction=friction, dataset_size=N, seed=4)
    samples = sample_chains(sghmc, burn_in=800, records=4, spacing=150)
    mean, cov = posterior()
    assert_gaussian(samples, mean, cov, n_eff=len(samples))


def test_temperature_zero_is_sgd_and_sghmc_zero_is_sgd_with_momentum():
    keras.utils.set_random_seed(0)
    g = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    start = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    for ours, reference in [(SGLD(0.05, dataset_size=7, temperature=0.0), keras.optimizers.SGD(0.05)),
                            (SGHMC(0.05, friction=0.2, dataset_size=7, temperature=0.0),
                             keras.optimizers.SGD(0.05, momentum=0.8))]:
        a, b = keras.Variable(start), keras.Variable(start)
        for _ in range(3):
            ours.apply_gradients([(tf.constant(g), a)])
            reference.apply_gradients([(tf.constant(g), b)])
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def linear_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


def test_a_chain_saved_to_keras_resumes_as_the_uninterrupted_one(tmp_path):
    # SGHMC: its velocities, the temperature and the noise generator (SGLD's only state) are saved
    def make():
        return SGHMC(0.01, friction=0.3, dataset_size=64, temperature=0.5, prior_stddev=1.0, seed=5)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x @ rng.normal(size=(3, 2))).astype("float32")
    straight = linear_model()
    straight.compile(optimizer=make(), loss="mse")
    straight.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)

    first = linear_model()
    first.compile(optimizer=make(), loss="mse")
    first.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    first.save(tmp_path / "chain.keras")
    resumed = keras.saving.load_model(tmp_path / "chain.keras")
    assert type(resumed.optimizer) is type(first.optimizer)
    assert resumed.optimizer.get_config() == first.optimizer.get_config()
    resumed.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # the noise generator's state came back (restarted from the seed, the second epoch would
    # replay the first epoch's noise, of std sqrt(2 lr T / N) ~ 0.01, far above the tolerance)
    state = resumed.optimizer._seed_generator.state.numpy()
    np.testing.assert_array_equal(state, straight.optimizer._seed_generator.state.numpy())
    assert state.tolist() != [5, 0]


def test_config_round_trip_and_errors():
    sghmc = SGHMC(0.02, friction=0.3, dataset_size=100, temperature=0.7, prior_stddev=2.0, seed=9,
                  clipnorm=1.0)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(sghmc))
    assert type(again) is SGHMC and again.get_config() == sghmc.get_config()
    assert float(again.temperature.numpy()) == pytest.approx(0.7)
    with pytest.raises(TfcompressError, match="dataset_size"):
        SGLD(0.1)
    with pytest.raises(TfcompressError, match="friction"):
        SGHMC(0.1, friction=0.0, dataset_size=10)
    with pytest.raises(TfcompressError, match="temperature"):
        SGLD(0.1, dataset_size=10, temperature=-1.0)
    with pytest.raises(TfcompressError, match="prior_stddev"):
        SGLD(0.1, dataset_size=10, prior_stddev=0.0)

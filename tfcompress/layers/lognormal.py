"""Log-normal multiplicative noise for Structured Bayesian Pruning (SBP).

Neklyudov, Molchanov, Ashukha, Vetrov, "Structured Bayesian Pruning via Log-Normal
Multiplicative Noise", NeurIPS 2017 (seed notes 002, "Bayesian pruning").

Each channel (last axis) of the input is multiplied by a noise variable ``theta_i`` whose
logarithm has a truncated normal posterior and a truncated log-uniform prior on
``[a, b]`` (log space; the paper uses ``a = -20, b = 0``)::

    q(log theta_i) = TN(mu_i, sigma_i^2; a, b)          p(log theta_i) = U(a, b)

KL divergence is invariant under the bijection ``theta = exp(u)``, so (paper, Sec. 4.2)::

    KL(q || p) = log(b - a) - H[TN(mu, sigma^2; a, b)]
               = log(b - a) - log(sqrt(2 pi e) sigma) - log Z
                 - (alpha phi(alpha) - beta phi(beta)) / (2 Z),
    alpha = (a - mu) / sigma,  beta = (b - mu) / sigma,  Z = Phi(beta) - Phi(alpha).

Training samples ``log theta`` by the inverse CDF of the truncated normal
(``u = mu + sigma Phi^-1(Phi(alpha) + eps Z)``, ``eps ~ U(0, 1)``, reparameterized). At
inference the noise is replaced by its expectation and channels with a low signal-to-noise
ratio are zeroed (paper, Sec. 4.3)::

    E[theta]   = exp(mu + sigma^2 / 2)   (Phi(beta - sigma) - Phi(alpha - sigma)) / Z
    E[theta^2] = exp(2 mu + 2 sigma^2)   (Phi(beta - 2 sigma) - Phi(alpha - 2 sigma)) / Z
    SNR = E[theta] / sqrt(E[theta^2] - E[theta]^2),   prune where SNR < 1.

All of it is evaluated in log space (``log Phi`` differences). ``mu`` is kept in ``[a, b]``
(projected after every update and clipped in the formulas): a mode outside the interval
describes nearly the same distribution as the nearest endpoint with a smaller sigma, and
with ``alpha <= 0 <= beta`` the normalizer ``Z`` stays away from 0, so the entropy's terms do
not cancel catastrophically (with the mode many sigmas outside, ``log Z`` and the boundary
term are both ~ +-beta^2 / 2). ``log sigma`` is clipped to ``[-20, 5]``.

Shared protocol (``dataset_size``, ``kl_weight``, ``mask``, ``kl_divergence()``,
``channel_importance()``, ``keep_mask()``): see ``tfcompress.layers.variational_bn``.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfcompress.errors import TfcompressError
from tfcompress.layers.variational_bn import (
    SeedStateMixin,
    add_kl_loss,
    add_pruning_state,
    check_dataset_size,
    check_positive,
)

_HALF_LOG_2PI_E = 0.5 * math.log(2.0 * math.pi * math.e)


def _ndtr(x):
    """Phi(x) from erf / erfc, each where it keeps its precision (Cephes' ndtr)."""
    w = x * (0.5 * math.sqrt(2.0))
    z = tf.abs(w)
    y = tf.where(z < 0.5 * math.sqrt(2.0), 1.0 + tf.math.erf(w), tf.where(w > 0.0, 2.0 - tf.math.erfc(z),
                                                                        tf.math.erfc(z)))
    return 0.5 * y


def _log_ndtr(x):
    """log Phi(x), accurate in both tails, with finite gradients (the segments of TFP's
    ``special_math.log_ndtr``, so TensorFlow Probability is not needed at run time).

    ``x > upper``: ``log1p(-Phi(-x)) ~ -Phi(-x)``; ``lower < x <= upper``: ``log(Phi(x))``;
    ``x <= lower``: the asymptotic series ``log(phi(x) / -x) + log(1 + sum_{n=1}^{3}
    (-1)^n (2n - 1)!! / x^(2n))`` (Abramowitz and Stegun 26.2.12). Segments: float64 (-20, 8),
    float32 (-10, 5). Each branch gets a clamped input, so the unused ones stay finite.
    """
    lower, upper = (-20.0, 8.0) if x.dtype == tf.float64 else (-10.0, 5.0)
    right = -_ndtr(-tf.maximum(x, upper))
    middle = tf.math.log(_ndtr(tf.clip_by_value(x, lower, upper)))
    t = tf.minimum(x, lower)
    t2 = tf.square(t)
    series = 1.0 - 1.0 / t2 + 3.0 / tf.square(t2) - 15.0 / (t2 * tf.square(t2))  # (2n-1)!! = 1, 3, 15
    left = -0.5 * t2 - tf.math.log(-t) - 0.5 * math.log(2.0 * math.pi) + tf.math.log(series)
    return tf.where(x > upper, right, tf.where(x > lower, middle, left))


def log_normal_cdf_difference(lower, upper):
    """``log(Phi(upper) - Phi(lower))`` for ``upper > lower``, stable in both tails."""
    # In the right tail, Phi(upper) - Phi(lower) = Phi(-lower) - Phi(-upper) has no cancellation.
    flip = lower > 0
    low = tf.where(flip, -upper, lower)
    high = tf.where(flip, -lower, upper)
    log_high = _log_ndtr(high)
    log_low = _log_ndtr(low)
    # log(exp(h) - exp(l)) = h + log(-expm1(l - h)); clamp to keep log() finite when equal.
    gap = tf.minimum(log_low - log_high, -1e-30 if high.dtype == tf.float64 else -1e-12)
    return log_high + tf.math.log(-tf.math.expm1(gap))


def truncated_lognormal_kl(mu, sigma, a: float, b: float):
    """KL(TN(mu, sigma^2; a, b) || U(a, b)) per element, i.e. SBP's KL (paper Sec. 4.2)."""
    alpha = (a - mu) / sigma
    beta = (b - mu) / sigma
    log_z = log_normal_cdf_difference(alpha, beta)
    log_phi_alpha = -0.5 * tf.square(alpha) - 0.5 * math.log(2.0 * math.pi)
    log_phi_beta = -0.5 * tf.square(beta) - 0.5 * math.log(2.0 * math.pi)
    boundary = 0.5 * (alpha * tf.exp(log_phi_alpha - log_z) - beta * tf.exp(log_phi_beta - log_z))
    entropy = _HALF_LOG_2PI_E + tf.math.log(sigma) + log_z + boundary
    return math.log(b - a) - entropy


def truncated_lognormal_snr(mu, sigma, a: float, b: float):
    """SNR = E[theta] / std[theta] of ``theta = exp(u)``, ``u ~ TN(mu, sigma^2; a, b)``."""
    alpha = (a - mu) / sigma
    beta = (b - mu) / sigma
    log_z = log_normal_cdf_difference(alpha, beta)
    log_d1 = log_normal_cdf_difference(alpha - sigma, beta - sigma)
    log_d2 = log_normal_cdf_difference(alpha - 2.0 * sigma, beta - 2.0 * sigma)
    # E[theta^2] / E[theta]^2 = exp(sigma^2 + log_d2 - 2 log_d1 + log_z).
    log_ratio = tf.square(sigma) + log_d2 - 2.0 * log_d1 + log_z
    return tf.math.rsqrt(tf.maximum(tf.math.expm1(log_ratio), tf.constant(1e-30, log_ratio.dtype)))


def truncated_lognormal_mean(mu, sigma, a: float, b: float):
    """E[theta] of ``theta = exp(u)``, ``u ~ TN(mu, sigma^2; a, b)``."""
    alpha = (a - mu) / sigma
    beta = (b - mu) / sigma
    log_z = log_normal_cdf_difference(alpha, beta)
    log_d1 = log_normal_cdf_difference(alpha - sigma, beta - sigma)
    return tf.exp(mu + 0.5 * tf.square(sigma) + log_d1 - log_z)


@keras.saving.register_keras_serializable(package="tfcompress")
class IntervalConstraint(keras.constraints.Constraint):
    """Project a weight elementwise onto ``[lower, upper]`` after each optimizer step."""

    def __init__(self, lower: float, upper: float):
        self.lower = float(lower)
        self.upper = float(upper)

    def __call__(self, w):
        return keras.ops.clip(w, self.lower, self.upper)

    def get_config(self) -> dict:
        return {"lower": self.lower, "upper": self.upper}


@keras.saving.register_keras_serializable(package="tfcompress")
class LogNormalDropout(SeedStateMixin, keras.layers.Layer):
    """SBP: multiply each channel by log-normal noise; prune channels with SNR < threshold.

    ``y = x * theta * mask``, ``log theta ~ TN(mu, sigma^2; a, b)`` sampled per example and
    channel in training; ``y = x * E[theta] * mask * (SNR >= snr_threshold)`` at inference.

    Args:
        dataset_size: number of training examples N; the layer adds ``kl_weight * KL / N``.
        log_lower, log_upper: the truncation interval ``[a, b]`` of ``log theta`` (paper:
            ``[-20, 0]``).
        snr_threshold: channels with SNR below it are pruned at inference (paper: 1).
        initial_mu, initial_log_sigma: initial posterior parameters of every channel. The
            defaults (``mu = 0 = log_upper``, ``sigma = e^-3 ~ 0.050``) put the mode on the
            upper truncation point, so ``log theta`` starts as a half-normal and
            ``E[theta] = 2 exp(sigma^2 / 2) Phi(-sigma) ~ 0.9615``: from the start every channel
            is scaled by ~0.96 at inference (and by a random factor <= 1 in training).
            Inserting the layer, e.g. with ``tfcompress.bayesian.convert(model, "sbp")``, is
            therefore *not* function-preserving: after L such layers in a ReLU network the
            pre-trained signal is scaled by ~0.96^L (biases not), until training adapts the
            other layers. No choice is exact with ``log_upper = 0``: theta <= 1, so
            ``E[theta] < 1``; a smaller ``initial_log_sigma`` gets closer (-6: E ~ 0.998) at
            the cost of a larger initial KL. The defaults are left as they are so that
            training behaves as it always has.
        kl_weight: initial value of the ``kl_weight`` variable.
        seed: seed of the noise.

    Example:
        >>> layer = LogNormalDropout(dataset_size=100, seed=0)
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), layer])
        >>> model(np.ones((2, 8), "float32"), training=True).shape
        TensorShape([2, 4])
        >>> layer.keep_mask().tolist()                         # SNR >= 1 for every channel at init
        [True, True, True, True]
        >>> np.round(layer.expected_noise(), 3).tolist()   # E[theta], log theta ~ N(0, e^-3) cut at 0
        [0.961, 0.961, 0.961, 0.961]
    """

    def __init__(
        self,
        dataset_size: int | None = None,
        log_lower: float = -20.0,
        log_upper: float = 0.0,
        snr_threshold: float = 1.0,
        initial_mu: float = 0.0,
        initial_log_sigma: float = -3.0,
        kl_weight: float = 1.0,
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        where = f"LogNormalDropout({self.name})"
        self.dataset_size = check_dataset_size(dataset_size, where)
        self.log_lower = float(log_lower)
        self.log_upper = float(log_upper)
        if not self.log_lower < self.log_upper:
            raise TfcompressError(
                f"log_lower must be < log_upper, got [{log_lower}, {log_upper}]",
                where,
                "use the paper's interval [-20, 0]",
            )
        self.snr_threshold = check_positive(snr_threshold, "snr_threshold", where)
        self.initial_mu = float(initial_mu)
        self.initial_log_sigma = float(initial_log_sigma)
        self.initial_kl_weight = float(kl_weight)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise TfcompressError(
                "the channel (last) axis of the input must be known",
                f"LogNormalDropout({self.name})",
                "give the model an input shape with a fixed number of channels",
            )
        channels = int(channels)
        self.mu = self.add_weight(
            shape=(channels,),
            name="mu",
            initializer=keras.initializers.Constant(self.initial_mu),
            constraint=IntervalConstraint(self.log_lower, self.log_upper),
            autocast=False,
        )
        self.log_sigma = self.add_weight(
            shape=(channels,),
            name="log_sigma",
            initializer=keras.initializers.Constant(self.initial_log_sigma),
            autocast=False,
        )
        add_pruning_state(self, channels, self.initial_kl_weight)

    def _parameters(self, dtype="float32"):
        mu = tf.clip_by_value(tf.cast(self.mu, dtype), self.log_lower, self.log_upper)
        # exp(log_sigma) of a trained channel never needs to exceed the interval's width.
        sigma = tf.exp(tf.clip_by_value(tf.cast(self.log_sigma, dtype), -20.0, 5.0))
        return mu, sigma

    def call(self, inputs, training=None):
        mu, sigma = self._parameters()
        a, b = self.log_lower, self.log_upper
        if training:
            shape = tf.concat([tf.shape(inputs)[:1], tf.ones([len(inputs.shape) - 2], tf.int32),
                               tf.shape(inputs)[-1:]], axis=0)
            eps = keras.random.uniform(shape, 1e-6, 1.0 - 1e-6, seed=self.seed_generator)
            alpha = (a - mu) / sigma
            beta = (b - mu) / sigma
            cdf_alpha = tf.exp(_log_ndtr(alpha))
            z = tf.exp(log_normal_cdf_difference(alpha, beta))
            probability = tf.clip_by_value(cdf_alpha + eps * z, 1e-7, 1.0 - 1e-7)
            log_theta = tf.clip_by_value(mu + sigma * tf.math.ndtri(probability), a, b)
            theta = tf.exp(log_theta)
            gate = theta * self.mask
        else:
            keep = tf.cast(truncated_lognormal_snr(mu, sigma, a, b) >= self.snr_threshold, "float32")
            gate = truncated_lognormal_mean(mu, sigma, a, b) * self.mask * keep
        add_kl_loss(self)
        return inputs * tf.cast(gate, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def kl_divergence(self):
        """SBP's KL (paper Sec. 4.2) summed over channels, unscaled."""
        mu, sigma = self._parameters()
        return tf.reduce_sum(truncated_lognormal_kl(mu, sigma, self.log_lower, self.log_upper))

    def snr(self) -> np.ndarray:
        """Signal-to-noise ratio E[theta] / std[theta] per channel (float64)."""
        mu, sigma = self._parameters("float64")
        return truncated_lognormal_snr(mu, sigma, self.log_lower, self.log_upper).numpy()

    def expected_noise(self) -> np.ndarray:
        """E[theta] per channel: the factor applied at inference before masking."""
        mu, sigma = self._parameters("float64")
        return truncated_lognormal_mean(mu, sigma, self.log_lower, self.log_upper).numpy()

    def channel_importance(self) -> np.ndarray:
        """The SNR per channel (the paper's pruning criterion)."""
        return self.snr()

    def keep_mask(self) -> np.ndarray:
        """Channels that survive: ``mask > 0`` and ``SNR >= snr_threshold``."""
        return (np.asarray(self.mask.numpy()) > 0) & (self.snr() >= self.snr_threshold)

    def channel_scale(self) -> np.ndarray:
        """The per-channel factor applied at inference (fold it into the adjacent layer)."""
        return self.expected_noise() * self.keep_mask()

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "dataset_size": self.dataset_size,
                "log_lower": self.log_lower,
                "log_upper": self.log_upper,
                "snr_threshold": self.snr_threshold,
                "initial_mu": self.initial_mu,
                "initial_log_sigma": self.initial_log_sigma,
                "kl_weight": self.initial_kl_weight,
                "seed": self.seed,
            }
        )
        return config

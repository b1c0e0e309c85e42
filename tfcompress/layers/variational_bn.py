"""Variational batch normalization for channel pruning (VCP).

Zhao, Ni, Zhang, Zhao, Zhang, Tian, "Variational Convolutional Neural Network Pruning",
CVPR 2019 (seed slides 000/001, "Variational Convolutional Neural Network Pruning").

The BN scale of each channel is a random variable, the *channel saliency*
``gamma_i ~ q(gamma_i) = N(mu_i, sigma_i^2)``, and the shift is rewritten as
``beta~ = gamma * beta`` so the saliency also scales the shift and no parameter beyond
``sigma`` is added (slides, "Algorithm: NOTE")::

    x_out = gamma * BN(x) + gamma * beta = gamma * (x_hat + beta)

Training maximizes the ELBO ``L(phi) = L_D(phi) - KL(q(gamma) || p(gamma))`` with the prior
``p(gamma_i) = N(0, sigma*^2)`` and the Gaussian KL of the slides::

    KL = sum_i log(sigma* / sigma_i) + (sigma_i^2 + mu_i^2) / (2 sigma*^2) - 1/2

``L_D`` is estimated with the reparameterization trick ``gamma = mu + sigma * eps``,
``eps ~ N(0, 1)`` (slides, eq. of ``L_D^A``); one ``eps`` per example and channel.
At inference ``gamma = mu`` (the posterior mean). Channels with ``|mu_i| < tau`` and
``sigma_i < theta`` are pruned after each epoch (Algorithm 1, line 8; see
``tfcompress.callbacks.variational_pruning.VariationalPruning``); VCP needs no retraining.

Shared protocol of the Bayesian pruning layers (this module, ``dirichlet``, ``lognormal``,
``sparse_vd``):

- ``dataset_size`` (layer argument) is the number of training examples N. The layer adds
  ``kl_weight * KL / N`` with ``add_loss``, so the per-example loss ``fit`` minimizes with
  a mean-reduced likelihood loss (e.g. cross-entropy) is ``-ELBO / N``. Set it to the
  length of the training set (``len(x_train)``), not the batch size.
- ``kl_weight`` is a non-trainable scalar variable (default 1.0). ``KLAnnealing`` sets it on
  every layer that has one; being a variable, it is saved in checkpoints and ``.keras``
  files.
- ``mask`` is a non-trainable float 0/1 variable, one entry per channel (last axis, or
  ``axis`` for this layer), ones at first. Masked channels output exactly 0.
- ``kl_divergence()`` returns the unscaled KL as a scalar tensor; ``channel_importance()``
  (NumPy, one score per channel, larger = more important) and ``keep_mask()`` (NumPy bool,
  the channels that survive) are what pruning and surgery read.
- The state of the layer's noise ``seed_generator`` is saved with its variables (``.keras``,
  ``save_weights``, ``BackupAndRestore``; see ``SeedStateMixin``), so a resumed run draws the
  noise an uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from tfcompress.errors import TfcompressError


def check_dataset_size(dataset_size: Any, where: str) -> int:
    """Validate the ``dataset_size`` argument (N, the number of training examples)."""
    if dataset_size is None or isinstance(dataset_size, bool):
        raise TfcompressError(
            "dataset_size is required: the KL term is divided by the number of training examples",
            where,
            "pass dataset_size=len(x_train) (the training set size, not the batch size)",
        )
    try:
        value = int(dataset_size)
    except (TypeError, ValueError):
        value = 0
    if value <= 0 or value != dataset_size:
        raise TfcompressError(
            f"dataset_size must be a positive integer, got {dataset_size!r}",
            where,
            "pass dataset_size=len(x_train)",
        )
    return value


def check_positive(value: Any, name: str, where: str) -> float:
    """Validate a strictly positive finite float argument."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number) or number <= 0:
        raise TfcompressError(
            f"{name} must be a positive finite number, got {value!r}", where, f"pass {name} > 0"
        )
    return number


def add_pruning_state(layer: keras.layers.Layer, channels: int, kl_weight: float) -> None:
    """Create the shared ``mask`` (ones, one per channel) and ``kl_weight`` (scalar) variables."""
    layer.mask = layer.add_weight(
        shape=(channels,),
        name="mask",
        initializer="ones",
        trainable=False,
        autocast=False,
    )
    layer.kl_weight = layer.add_weight(
        shape=(),
        name="kl_weight",
        initializer=keras.initializers.Constant(kl_weight),
        trainable=False,
        autocast=False,
    )


def top_k_channels(importance: np.ndarray, among: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the ``k`` channels of highest ``importance`` among those where ``among`` is
    True (ties: lower index first); fewer when fewer are eligible."""
    among = np.asarray(among, bool)
    ranked = np.argsort(-np.where(among, np.asarray(importance, np.float64), -np.inf), kind="stable")
    keep = np.zeros(among.shape, bool)
    keep[ranked[: int(k)]] = True
    return keep & among


def add_kl_loss(layer: keras.layers.Layer) -> None:
    """``add_loss(kl_weight * KL / N)``: the per-example share of the ELBO's KL term."""
    layer.add_loss(layer.kl_weight * layer.kl_divergence() / float(layer.dataset_size))


def gaussian_kl(mu, log_sigma, prior_stddev: float):
    """Sum over channels of KL(N(mu, sigma^2) || N(0, prior_stddev^2)) (VCP slides' KL).

    Written with ``log_sigma`` so that tiny sigma (1e-6) gives a large finite value, not inf.
    """
    log_prior = math.log(prior_stddev)
    variance_ratio = ops.exp(2.0 * log_sigma) / (prior_stddev**2)
    return ops.sum(
        log_prior - log_sigma + 0.5 * variance_ratio + ops.square(mu) / (2.0 * prior_stddev**2) - 0.5
    )


class SeedStateMixin:
    """Save and load ``self.seed_generator``'s state with the layer's variables.

    Keras does not store a ``SeedGenerator``'s state in ``.keras`` / ``.weights.h5`` files, so
    a layer reloaded mid-training restarts its noise stream from the seed and a resumed run
    diverges from an uninterrupted one. The state is written as one extra entry after the
    layer's variables; files without it (written before) load as before.
    """

    def _own_variable_count(self) -> int:
        return len(self._trainable_variables) + len(self._non_trainable_variables)

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[str(self._own_variable_count())] = self.seed_generator.state

    def load_own_variables(self, store):
        count = self._own_variable_count()
        if len(store.keys()) == count + 1:
            self.seed_generator.state.assign(np.asarray(store[str(count)]))
            store = {str(i): store[str(i)] for i in range(count)}
        super().load_own_variables(store)


@keras.saving.register_keras_serializable(package="tfcompress")
class VariationalBatchNormalization(SeedStateMixin, keras.layers.BatchNormalization):
    """BatchNormalization with a Gaussian posterior over the scale (VCP, Zhao et al. 2019).

    A drop-in for ``keras.layers.BatchNormalization``: same arguments (``renorm`` is not
    supported and ``scale`` must be True), ``gamma`` is the posterior mean ``mu``, and
    ``set_weights([gamma, beta, moving_mean, moving_variance])`` of an ordinary BN layer
    loads it (converting beta so that the function is unchanged, see ``set_weights``).

    ``y = mask * gamma * (x_hat + beta)`` with ``gamma ~ N(mu, sigma^2)`` sampled per example
    and channel in training (reparameterization trick, slides eq. ``f(phi, eps)``) and
    ``gamma = mu`` at inference. ``kl_divergence()`` is the slides' Gaussian KL against the
    prior ``N(0, prior_stddev^2)``.

    Args:
        dataset_size: number of training examples N; the layer adds ``kl_weight * KL / N``.
        prior_stddev: sigma* of the prior N(0, sigma*^2). The default 0.1 (ours; the slides
            do not give a value) makes the KL's optimum for an unused channel
            ``mu = 0, sigma = 0.1``, which ``VariationalPruning(tau, theta)`` with
            ``theta > prior_stddev`` removes.
        initial_stddev: initial posterior sigma of every channel.
        kl_weight: initial value of the ``kl_weight`` variable (annealed by ``KLAnnealing``).
        seed: seed of the reparameterization noise.
        **kwargs: the arguments of ``keras.layers.BatchNormalization``.

    Example:
        >>> layer = VariationalBatchNormalization(dataset_size=100, seed=0)
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), layer])
        >>> model(np.ones((2, 8), "float32"), training=True).shape
        TensorShape([2, 4])
        >>> layer.keep_mask().tolist(), float(layer.kl_divergence()) > 0
        ([True, True, True, True], True)
        >>> type(layer.to_batch_normalization()).__name__        # the plain layer that replaces it
        'BatchNormalization'
    """

    def __init__(
        self,
        dataset_size: int | None = None,
        prior_stddev: float = 0.1,
        initial_stddev: float = 0.01,
        kl_weight: float = 1.0,
        seed: int | None = None,
        **kwargs: Any,
    ):
        where = f"VariationalBatchNormalization({kwargs.get('name', '')})"
        if kwargs.get("renorm"):
            raise TfcompressError(
                "renorm=True is not supported", where, "use renorm=False (the default)"
            )
        if kwargs.get("scale") is False:
            raise TfcompressError(
                "scale=False leaves no BN scale to make variational",
                where,
                "use scale=True (the default)",
            )
        super().__init__(**kwargs)
        self.dataset_size = check_dataset_size(dataset_size, where)
        self.prior_stddev = check_positive(prior_stddev, "prior_stddev", where)
        self.initial_stddev = check_positive(initial_stddev, "initial_stddev", where)
        self.initial_kl_weight = float(kl_weight)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        super().build(input_shape)
        channels = int(input_shape[self.axis])
        self.log_sigma = self.add_weight(
            shape=(channels,),
            name="log_sigma",
            initializer=keras.initializers.Constant(math.log(self.initial_stddev)),
            trainable=True,
            autocast=False,
        )
        add_pruning_state(self, channels, self.initial_kl_weight)

    def _broadcast_shape(self, inputs) -> list:
        shape = [1] * len(inputs.shape)
        shape[self.axis] = inputs.shape[self.axis]
        return shape

    def call(self, inputs, training=None, mask=None):
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = ops.cast(inputs, compute_dtype)
        if training and self.trainable:
            mean, variance = self._moments(inputs, mask)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            mean, variance = self.moving_mean, self.moving_variance
        x_hat = ops.batch_normalization(
            inputs, mean, variance, axis=self.axis, epsilon=self.epsilon
        )
        if self.center:
            x_hat = x_hat + ops.reshape(ops.cast(self.beta, compute_dtype), self._broadcast_shape(inputs))
        mu = ops.cast(self.gamma, compute_dtype)
        if training:
            # One saliency sample per example and channel (slides: gamma_im = f(phi, eps)).
            noise_shape = [1] * len(inputs.shape)
            noise_shape[0] = ops.shape(inputs)[0]
            noise_shape[self.axis] = inputs.shape[self.axis]
            eps = keras.random.normal(noise_shape, dtype=compute_dtype, seed=self.seed_generator)
            sigma = ops.exp(ops.cast(self.log_sigma, compute_dtype))
            gamma = ops.reshape(mu, self._broadcast_shape(inputs)) + ops.reshape(
                sigma, self._broadcast_shape(inputs)
            ) * eps
        else:
            gamma = ops.reshape(mu, self._broadcast_shape(inputs))
        add_kl_loss(self)
        channel_mask = ops.reshape(ops.cast(self.mask, compute_dtype), self._broadcast_shape(inputs))
        return gamma * x_hat * channel_mask

    def kl_divergence(self):
        """KL(q(gamma) || p(gamma)) summed over channels (VCP slides, Gaussian KL), unscaled."""
        return gaussian_kl(
            ops.cast(self.gamma, "float32"), ops.cast(self.log_sigma, "float32"), self.prior_stddev
        )

    def stddev(self) -> np.ndarray:
        """Posterior sigma per channel."""
        return np.exp(np.asarray(self.log_sigma.numpy(), dtype=np.float64))

    def channel_importance(self) -> np.ndarray:
        """|mu| per channel (the posterior mean of the saliency, its magnitude)."""
        return np.abs(np.asarray(self.gamma.numpy(), dtype=np.float64))

    def keep_mask(self) -> np.ndarray:
        """Channels that survive: ``mask > 0`` (set by ``prune`` / ``VariationalPruning``)."""
        return np.asarray(self.mask.numpy()) > 0

    def prune(self, tau: float, theta: float) -> int:
        """Algorithm 1, line 8: mask the channels with ``|mu| < tau`` and ``sigma < theta``.

        The slides write ``mu_i < tau``; we compare ``|mu_i|`` because a BN scale may be
        negative. Pruning is permanent (a masked channel is never restored).

        Returns:
            the number of channels masked by this call.
        """
        rule = (self.channel_importance() < tau) & (self.stddev() < theta)
        before = self.keep_mask()
        after = before & ~rule
        self.mask.assign(after.astype(np.float32))
        return int(before.sum() - after.sum())

    def set_weights(self, weights):
        """Set the weights; a 4-list (2- or 3-list with ``center=False``) loads an ordinary BN.

        An ordinary BN computes ``g * x_hat + b``; this layer computes ``mu * (x_hat + beta)``.
        Loading ``[g, b, moving_mean, moving_variance]`` sets ``mu = g`` and
        ``beta = b / g`` so the inference function is unchanged (channels with ``|g| < 1e-12``
        get ``beta = 0``: a BN with zero scale outputs the constant ``b``, which the VCP
        rewrite cannot represent; such channels are prune candidates anyway). ``log_sigma``,
        ``mask`` and ``kl_weight`` keep their values. A full list (``len(self.weights)``)
        is loaded as is.
        """
        weights = list(weights)
        bn_count = 3 + int(self.center)
        if len(weights) != bn_count:
            return super().set_weights(weights)
        gamma = np.asarray(weights[0], dtype=np.float64)
        self.gamma.assign(gamma.astype(np.float32))
        if self.center:
            offset = np.asarray(weights[1], dtype=np.float64)
            safe = np.where(np.abs(gamma) < 1e-12, 1.0, gamma)
            beta = np.where(np.abs(gamma) < 1e-12, 0.0, offset / safe)
            self.beta.assign(beta.astype(np.float32))
        self.moving_mean.assign(np.asarray(weights[-2], dtype=np.float32))
        self.moving_variance.assign(np.asarray(weights[-1], dtype=np.float32))
        return None

    @classmethod
    def from_batch_normalization(
        cls, bn_layer: keras.layers.BatchNormalization, dataset_size: int, **kwargs: Any
    ) -> VariationalBatchNormalization:
        """A built copy of ``bn_layer`` (same config and function at inference) that is variational.

        Args:
            bn_layer: a built ``keras.layers.BatchNormalization``.
            dataset_size: number of training examples N.
            **kwargs: overrides of this class's arguments (``prior_stddev``, ...).
        """
        where = f"from_batch_normalization({getattr(bn_layer, 'name', bn_layer)!r})"
        if not isinstance(bn_layer, keras.layers.BatchNormalization) or not bn_layer.built:
            raise TfcompressError(
                "expected a built keras.layers.BatchNormalization",
                where,
                "call the model once (or build it) before converting",
            )
        config = bn_layer.get_config()
        config.update(kwargs)
        layer = cls(dataset_size=dataset_size, **config)
        shape = [None] * bn_layer.input_spec.ndim
        shape[bn_layer.axis] = int(bn_layer.moving_mean.shape[0])
        layer.build(tuple(shape))
        layer.set_weights(bn_layer.get_weights())
        return layer

    def to_batch_normalization(self) -> keras.layers.BatchNormalization:
        """An ordinary BN computing this layer's inference function (for export / surgery).

        ``gamma = mu * mask`` and ``beta = mu * beta * mask`` (the VCP rewrite undone).
        """
        config = {k: v for k, v in self.get_config().items() if k in _BN_CONFIG_KEYS}
        layer = keras.layers.BatchNormalization.from_config(config)
        shape = [None] * self.input_spec.ndim
        shape[self.axis] = int(self.moving_mean.shape[0])
        layer.build(tuple(shape))
        mask = self.mask.numpy()
        mu = self.gamma.numpy()
        weights = [mu * mask]
        if self.center:
            weights.append(mu * self.beta.numpy() * mask)
        weights += [self.moving_mean.numpy(), self.moving_variance.numpy()]
        layer.set_weights(weights)
        return layer

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "dataset_size": self.dataset_size,
                "prior_stddev": self.prior_stddev,
                "initial_stddev": self.initial_stddev,
                "kl_weight": self.initial_kl_weight,
                "seed": self.seed,
            }
        )
        return config


_BN_CONFIG_KEYS = set(keras.layers.BatchNormalization().get_config())

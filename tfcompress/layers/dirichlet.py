"""Dirichlet importance switches for channel pruning.

Adamczewski and Park, "Dirichlet Pruning for Neural Network Compression", AISTATS 2021
(seed slides 000/001, "Dirichlet Pruning for Neural Network Compression").

Each layer ``l`` gets an importance vector over its ``D_l`` channels,
``s_l ~ q(s_l) = Dir(phi_l)``, with the sparsity-inducing prior ``p(s_l) = Dir(alpha_0)``,
``alpha_0 < 1``. The switches are learned by maximizing (slides, "Minimize KL divergence")::

    E_q[log p(D | s_l)] - KL[q(s_l | phi_l) || p(s_l | alpha_0)]

with the closed form KL (slides 001, which corrects the digamma argument to phi_{l,j})::

    KL = log G(sum_j phi_j) - log G(D alpha_0) - sum_j log G(phi_j) + D log G(alpha_0)
         + sum_j (phi_j - alpha_0) [psi(phi_j) - psi(sum_j phi_j)]

The expectation is estimated either with implicitly reparameterized Dirichlet samples
(``estimator="reparameterized"``, slides "Reparametrization tricks" 1) or with the analytic
mean ``s~_j = phi_j / sum_j' phi_j'`` (``estimator="mean"``, slides trick 2). At inference the
posterior mean is used, and channels are ranked by it.

Sampling: ``s = g / sum(g)`` with ``g_j ~ Gamma(phi_j, 1)``, each ``g_j`` drawn with the
shape augmentation ``g_j = G_j U_j^(1 / phi_j)``, ``G_j ~ Gamma(phi_j + 1, 1)``,
``U_j ~ U(0, 1)`` (the shape < 1 case of Marsaglia and Tsang, ACM TOMS 2000; the "shape
augmentation" of Naesseth et al., AISTATS 2017, for reparameterization gradients). ``G_j``
carries TensorFlow's implicit reparameterization gradient of the Gamma sampler (Figurnov et
al., NeurIPS 2018), ``U^(1/phi)`` an explicit one, and ``s = softmax(log g)`` is computed in
log space. Without the augmentation a Gamma variate of small shape underflows to 0 in float32,
where the implicit gradient is 0/0: TFP's ``Dirichlet(phi).sample`` gives NaN gradients for
phi below ~0.05 (float32).

Numerical range: ``phi = exp(clip(log_concentration, -25, 25))`` (``LOG_CONCENTRATION_RANGE``;
the variable is also projected onto that interval after each update). Unclipped, phi underflows
to 0 in float32 below log phi ~ -87, where lgamma / digamma turn inf / NaN, and the KL's
gradient (~ alpha_0 / phi^2 w.r.t. phi) overflows float32 from log phi ~ -44. For large phi
the KL is a difference of terms ~ phi log phi: in float32 it is already wrong at log phi = 20,
so it is evaluated in float64, whose absolute error (~ phi log phi * 1e-16) is ~1e-4 at the
upper end. A channel at the lower end has a posterior mean share ~1e-11 (pruned); at the upper
end its switch is practically deterministic.

Scaling: a sample sums to 1, so multiplying a layer's D channels by ``s`` alone divides the
activations by about D and breaks the pre-trained, frozen network of step 2. The slides do
not say how the switch enters the layer; we multiply by ``D * s`` (``scale_by_channels=True``)
so that a uniform importance vector is the identity and the pre-trained function is kept at
initialization. ``scale_by_channels=False`` multiplies by ``s`` as written.

The paper's Algorithm 1: (1) add switches after the layers to prune (``DirichletSwitch``
after a conv/dense output, before or after its activation), (2) train only the switches with
the network frozen (``freeze_all_but_switches``), (3) remove the channels of lowest posterior
mean importance (``keep_mask``), (4) retrain the smaller network.

Shared protocol (``dataset_size``, ``kl_weight``, ``mask``, ``kl_divergence()``,
``channel_importance()``, ``keep_mask()``): see ``tfcompress.layers.variational_bn``.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfcompress.errors import TfcompressError
from tfcompress.layers.lognormal import IntervalConstraint
from tfcompress.layers.variational_bn import (
    SeedStateMixin,
    add_kl_loss,
    add_pruning_state,
    check_dataset_size,
    check_positive,
    top_k_channels,
)

ESTIMATORS = ("reparameterized", "mean")
LOG_CONCENTRATION_RANGE = (-25.0, 25.0)


def dirichlet_kl(concentration, prior_concentration: float):
    """KL[Dir(phi) || Dir(alpha_0 * 1)] in closed form (slides 001, Dirichlet pruning KL).

    Args:
        concentration: phi, shape ``(D,)``, positive.
        prior_concentration: alpha_0, a positive scalar shared by the D components.
    """
    phi = ops.convert_to_tensor(concentration)
    dims = float(phi.shape[-1])
    alpha0 = float(prior_concentration)
    total = ops.sum(phi, axis=-1)
    return (
        tf.math.lgamma(total)
        - math.lgamma(dims * alpha0)
        - ops.sum(tf.math.lgamma(phi), axis=-1)
        + dims * math.lgamma(alpha0)
        + ops.sum((phi - alpha0) * (tf.math.digamma(phi) - tf.math.digamma(total)[..., None]), axis=-1)
    )


@keras.saving.register_keras_serializable(package="tfcompress")
class DirichletSwitch(SeedStateMixin, keras.layers.Layer):
    """Per-layer Dirichlet importance switch over the channels (last axis) of its input.

    ``y = x * mask * D * s`` with ``s ~ Dir(phi)`` in training (one sample per example, or the
    analytic mean with ``estimator="mean"``) and ``s = E[s] = phi / sum(phi)`` at inference.
    ``phi = exp(clip(log_concentration, *LOG_CONCENTRATION_RANGE))`` (see the module docstring).

    Args:
        dataset_size: number of training examples N; the layer adds ``kl_weight * KL / N``.
        prior_concentration: alpha_0 of the prior ``Dir(alpha_0)``; must be < 1 to induce
            sparsity (slides: "if alpha_0 < 1 this can induce sparse probability vector").
            Default 0.1 (ours; the slides give no value).
        estimator: ``"reparameterized"`` (implicit reparameterization of Dirichlet samples) or
            ``"mean"`` (analytic mean; deterministic).
        initial_concentration: initial phi_j of every channel. Large values (default 10) start
            with little noise around the uniform mean, so a pre-trained network keeps its
            accuracy when the switches are inserted.
        scale_by_channels: multiply by ``D * s`` (default; uniform importance = identity)
            instead of ``s``.
        importance_threshold: ``keep_mask()`` keeps channels whose posterior mean times D is at
            least this (0.1 = a tenth of the uniform share).
        kl_weight: initial value of the ``kl_weight`` variable.
        seed: seed of the Dirichlet samples.

    Example:
        >>> switch = DirichletSwitch(dataset_size=100, seed=0)
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), switch])
        >>> model(np.ones((2, 8), "float32"), training=True).shape
        TensorShape([2, 4])
        >>> np.round(switch.posterior_mean(), 3).tolist()      # equal concentrations: importance 1/4 each
        [0.25, 0.25, 0.25, 0.25]
        >>> switch.prune(num_keep=2), int(switch.keep_mask().sum())
        (2, 2)
    """

    def __init__(
        self,
        dataset_size: int | None = None,
        prior_concentration: float = 0.1,
        estimator: str = "reparameterized",
        initial_concentration: float = 10.0,
        scale_by_channels: bool = True,
        importance_threshold: float = 0.1,
        kl_weight: float = 1.0,
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        where = f"DirichletSwitch({self.name})"
        self.dataset_size = check_dataset_size(dataset_size, where)
        self.prior_concentration = check_positive(prior_concentration, "prior_concentration", where)
        if self.prior_concentration >= 1.0:
            raise TfcompressError(
                f"prior_concentration must be < 1 to induce sparse importances, got {prior_concentration}",
                where,
                "use alpha_0 in (0, 1), e.g. 0.1",
            )
        if estimator not in ESTIMATORS:
            raise TfcompressError(
                f"unknown estimator {estimator!r}", where, f"use one of {', '.join(ESTIMATORS)}"
            )
        self.estimator = estimator
        self.initial_concentration = check_positive(
            initial_concentration, "initial_concentration", where
        )
        self.scale_by_channels = bool(scale_by_channels)
        self.importance_threshold = float(importance_threshold)
        self.initial_kl_weight = float(kl_weight)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise TfcompressError(
                "the channel (last) axis of the input must be known",
                f"DirichletSwitch({self.name})",
                "give the model an input shape with a fixed number of channels",
            )
        self.log_concentration = self.add_weight(
            shape=(int(channels),),
            name="log_concentration",
            initializer=keras.initializers.Constant(math.log(self.initial_concentration)),
            constraint=IntervalConstraint(*LOG_CONCENTRATION_RANGE),
            trainable=True,
            autocast=False,
        )
        add_pruning_state(self, int(channels), self.initial_kl_weight)

    def log_concentration_clipped(self, dtype: str = "float32"):
        """``clip(log phi, *LOG_CONCENTRATION_RANGE)`` as a tensor of ``dtype``."""
        low, high = LOG_CONCENTRATION_RANGE
        return ops.clip(ops.cast(self.log_concentration, dtype), low, high)

    def concentration(self, dtype: str = "float32"):
        """phi, the posterior concentration (a tensor), from the clipped log concentration."""
        return ops.exp(self.log_concentration_clipped(dtype))

    def sample(self, batch_size: int) -> tf.Tensor:
        """``batch_size`` (an int or a scalar tensor) reparameterized samples of ``Dir(phi)``.

        Returns a ``(batch_size, D)`` tensor whose rows sum to 1.

        Shape augmentation (module docstring): ``log g = log G + log(U) / phi`` with
        ``G ~ Gamma(phi + 1)``, ``U ~ U(0, 1)``, then ``s = softmax(log g)``.
        """
        log_phi = self.log_concentration_clipped()
        phi = ops.exp(log_phi)
        shape = tf.stack([batch_size, tf.shape(phi)[0]])
        seed = tf.cast(self.seed_generator.next(), tf.int32)
        gamma = tf.random.stateless_gamma(shape, seed=seed, alpha=phi + 1.0)
        uniform = tf.random.stateless_uniform(shape, seed=seed[::-1] + 1, minval=1e-7, maxval=1.0)
        # Gamma(phi + 1) >= a few 1e-8 except with negligible probability; keep log() finite anyway.
        log_g = tf.math.log(tf.maximum(gamma, 1e-30)) + tf.math.log(uniform) / phi
        return tf.nn.softmax(log_g, axis=-1)

    def call(self, inputs, training=None):
        if training and self.estimator == "reparameterized":
            switches = ops.reshape(
                self.sample(ops.shape(inputs)[0]),
                [-1] + [1] * (len(inputs.shape) - 2) + [inputs.shape[-1]],
            )
        else:
            switches = ops.softmax(self.log_concentration_clipped())  # phi / sum(phi)
        if self.scale_by_channels:
            switches = switches * float(self.log_concentration.shape[0])
        add_kl_loss(self)
        gate = ops.cast(switches * self.mask, inputs.dtype)
        return inputs * gate

    def compute_output_shape(self, input_shape):
        return input_shape

    def kl_divergence(self):
        """KL[Dir(phi) || Dir(alpha_0)] (slides 001 closed form), unscaled, evaluated in float64."""
        kl = dirichlet_kl(self.concentration("float64"), self.prior_concentration)
        return ops.cast(kl, "float32")

    def posterior_mean(self) -> np.ndarray:
        """E[s] = phi / sum(phi) per channel (sums to 1), with the clipped phi of ``call``."""
        log_phi = np.clip(np.asarray(self.log_concentration.numpy(), dtype=np.float64), *LOG_CONCENTRATION_RANGE)
        phi = np.exp(log_phi - log_phi.max())
        return phi / phi.sum()

    def channel_importance(self) -> np.ndarray:
        """Posterior mean importance per channel (the paper's ranking)."""
        return self.posterior_mean()

    def channel_scale(self) -> np.ndarray:
        """The per-channel factor applied at inference (fold it into the preceding layer)."""
        factor = float(self.mask.shape[0]) if self.scale_by_channels else 1.0
        return self.posterior_mean() * factor * np.asarray(self.mask.numpy())

    def keep_mask(self, num_keep: int | None = None) -> np.ndarray:
        """Channels that survive (step 3 of the paper's algorithm).

        Args:
            num_keep: keep the ``num_keep`` channels of highest posterior mean (among the
                unmasked ones). By default, keep the unmasked channels whose posterior mean
                is at least ``importance_threshold / D``.
        """
        mask = np.asarray(self.mask.numpy()) > 0
        importance = self.posterior_mean()
        if num_keep is None:
            return mask & (importance * importance.size >= self.importance_threshold)
        if not 0 <= int(num_keep) <= importance.size:
            raise TfcompressError(
                f"num_keep must be in [0, {importance.size}], got {num_keep}",
                f"DirichletSwitch({self.name}).keep_mask",
                "pass a number of channels the layer has",
            )
        return top_k_channels(importance, mask, int(num_keep))

    def prune(self, num_keep: int | None = None) -> int:
        """Set ``mask`` to ``keep_mask(num_keep)``; returns the number of channels masked."""
        before = np.asarray(self.mask.numpy()) > 0
        after = self.keep_mask(num_keep)
        self.mask.assign(after.astype(np.float32))
        return int(before.sum() - after.sum())

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "dataset_size": self.dataset_size,
                "prior_concentration": self.prior_concentration,
                "estimator": self.estimator,
                "initial_concentration": self.initial_concentration,
                "scale_by_channels": self.scale_by_channels,
                "importance_threshold": self.importance_threshold,
                "kl_weight": self.initial_kl_weight,
                "seed": self.seed,
            }
        )
        return config


def freeze_all_but_switches(model: keras.Model) -> int:
    """Step 2 of Dirichlet pruning: make only the ``DirichletSwitch`` layers trainable.

    Every other leaf layer (nested models included) gets ``trainable = False`` (BatchNorm
    then also runs in inference mode, so its statistics stay frozen). Compile the model
    again afterwards.

    Returns:
        the number of trainable switch parameters.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), DirichletSwitch(dataset_size=100)])
        >>> freeze_all_but_switches(model)       # one concentration per channel
        4
        >>> [layer.trainable for layer in model.layers]
        [False, True]
    """
    switches = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, DirichletSwitch):
            layer.trainable = True
            switches += int(np.prod(layer.log_concentration.shape)) if layer.built else 0
        elif not list(layer._flatten_layers(include_self=False, recursive=False)):
            layer.trainable = False
    if switches == 0 and not any(
        isinstance(layer, DirichletSwitch)
        for layer in model._flatten_layers(include_self=False, recursive=True)
    ):
        raise TfcompressError(
            "the model has no DirichletSwitch layer",
            f"freeze_all_but_switches({model.name})",
            "insert DirichletSwitch layers after the layers to prune first",
        )
    return switches

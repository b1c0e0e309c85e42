"""Bayesian Compression with group normal-Jeffreys scales (Louizos, Ullrich and Welling, NIPS 2017).

``BCDense`` / ``BCConv2D``: the weights of output unit / filter j share a scale z_j,
w_ij = z_j * w~_ij, with

* q(z_j) = N(mu_z, sigma_z^2) against the normal-Jeffreys prior p(z) ~ 1/|z| (paper sec. 3.1,
  eq. 8); its KL has no closed form and uses the same approximation as sparse variational
  dropout (Molchanov et al. 2017, eq. 14) with log alpha_j = log sigma_z^2 - log mu_z^2
  (paper eq. 10, first term);
* q(w~_ij) = N(mu_ij, sigma_ij^2) against the conditional prior N(0, 1) (the paper's
  p(w | z) = N(0, z^2) with w = z w~), so KL = 1/2 sum(-log sigma^2 + sigma^2 + mu^2 - 1)
  (paper eq. 10, second term).

Training uses the local reparameterization trick: the pre-activation of unit j is
z_j * (x mu_j + sqrt(x^2 sigma_j^2) eps), z_j sampled per example. At inference w = E[z] mu
for the groups with log alpha_j < ``threshold`` (the paper prunes at log alpha >= 3 for GNJ),
the others are 0 (``keep_mask``).

``bit_precision()``: the paper uses the posterior uncertainty of the weights to choose the
precision each layer is stored with (its second contribution; sec. 3.1 gives the marginal
variance of w = z w~ under the GNJ posterior). The per-layer rule here is this library's own
choice, not the paper's procedure: a fixed-point code whose step is the smallest posterior
standard deviation of the kept weights, see ``bit_precision``.
``tfcompress.bayesian.structure`` reports it next to the kept channels.

Groups here are output units / filters (what structured pruning removes); the paper's FC
groups are input neurons, which prunes the same units seen from the next layer. The horseshoe
prior (paper sec. 3.2) is not implemented.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from tfcompress.layers.sparse_vd import LOG_ALPHA_CLIP, approximate_kl
from tfcompress.layers.variational_bn import (
    SeedStateMixin,
    add_kl_loss,
    add_pruning_state,
    check_dataset_size,
)


class _BCBase(SeedStateMixin, keras.layers.Layer):
    tfcompress_bayesian = True

    def __init__(self, dataset_size: int | None, activation: Any, use_bias: bool, threshold: float,
                 initial_log_sigma2: float, kl_weight: float, seed: int | None, **kwargs):
        super().__init__(**kwargs)
        self.dataset_size = check_dataset_size(dataset_size, f"{type(self).__name__}({self.name})")
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.threshold = float(threshold)
        self.initial_log_sigma2 = float(initial_log_sigma2)
        self.initial_kl_weight = float(kl_weight)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _add_parameters(self, kernel_shape: tuple, units: int) -> None:
        fan_in = int(np.prod(kernel_shape[:-1]))
        self.kernel = self.add_weight(shape=kernel_shape, name="kernel",
                                      initializer=keras.initializers.HeNormal())
        self.kernel_log_sigma2 = self.add_weight(shape=kernel_shape, name="kernel_log_sigma2",
                                                 initializer=keras.initializers.Constant(self.initial_log_sigma2))
        self.z_mu = self.add_weight(shape=(units,), name="z_mu", initializer="ones")
        self.z_log_sigma2 = self.add_weight(shape=(units,), name="z_log_sigma2",
                                            initializer=keras.initializers.Constant(self.initial_log_sigma2))
        self.bias = self.add_weight(shape=(units,), name="bias", initializer="zeros") if self.use_bias else None
        self._fan_in = fan_in
        add_pruning_state(self, units, self.initial_kl_weight)

    def z_log_alpha(self):
        return ops.clip(self.z_log_sigma2 - ops.log(ops.square(self.z_mu) + 1e-8), -LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)

    def kl_divergence(self):
        """Paper eq. 10: the group scales' approximate KL plus the weights' Gaussian KL."""
        kl_z = ops.sum(approximate_kl(self.z_log_alpha()))
        log_s2 = ops.clip(self.kernel_log_sigma2, -20.0, 5.0)
        kl_w = 0.5 * ops.sum(-log_s2 + ops.exp(log_s2) + ops.square(self.kernel) - 1.0)
        return kl_z + kl_w

    def group_gate(self):
        """E[z] for kept groups, 0 for pruned ones (inference)."""
        keep = ops.cast(self.z_log_alpha() < self.threshold, "float32") * self.mask
        return self.z_mu * keep

    def _preactivation(self, inputs, training):
        mean = self._linear(inputs, self.kernel)
        if not training:
            return mean * self.group_gate()
        variance = self._linear(ops.square(inputs), ops.exp(ops.clip(self.kernel_log_sigma2, -20.0, 5.0)))
        eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        shape = [ops.shape(mean)[0]] + [1] * (len(mean.shape) - 2) + [mean.shape[-1]]
        eps_z = keras.random.normal(shape, seed=self.seed_generator)
        z = self.z_mu + ops.exp(0.5 * self.z_log_sigma2) * eps_z
        return z * (mean + ops.sqrt(variance + 1e-8) * eps) * self.mask

    def call(self, inputs, training=None):
        out = self._preactivation(inputs, training)
        if self.use_bias:
            # a pruned group outputs activation(0), also through its bias
            kept = ops.cast(ops.not_equal(self.group_gate(), 0.0), out.dtype)
            out = out + self.bias * kept
        add_kl_loss(self)
        return self.activation(out) * self.mask

    # -- the shared protocol
    def keep_mask(self) -> np.ndarray:
        return keras.ops.convert_to_numpy(self.group_gate()) != 0

    def channel_importance(self) -> np.ndarray:
        return -np.asarray(keras.ops.convert_to_numpy(self.z_log_alpha()), np.float64)

    def deterministic_weights(self) -> list[np.ndarray]:
        """[kernel, bias] of the equivalent plain layer: E[z] mu for kept groups, 0 elsewhere."""
        gate = keras.ops.convert_to_numpy(self.group_gate())
        kernel = keras.ops.convert_to_numpy(self.kernel) * gate
        bias = keras.ops.convert_to_numpy(self.bias) * (gate != 0) if self.use_bias else np.zeros(gate.shape)
        return [kernel.astype("float32"), bias.astype("float32")]

    def bit_precision(self) -> int | None:
        """Bits per weight of a fixed-point code for the kept weights (our rule, see below).

        What it computes, over the weights of the groups in ``keep_mask()`` (w = z w~ with z
        and w~ independent under the posterior)::

            Var[w_ij] = (E[z_j]^2 + Var[z_j]) (E[w~_ij]^2 + Var[w~_ij]) - E[z_j]^2 E[w~_ij]^2
            step      = min_ij sqrt(Var[w_ij])        (the smallest posterior std, floored at 1e-12)
            range     = max_ij |E[z_j] E[w~_ij]|      (the largest |E[w]|)
            bits      = 1 + max(0, ceil(log2(max(range / step, 1))))

        i.e. one sign bit plus enough magnitude bits for a uniform grid of spacing ``step`` to
        reach ``range``, so rounding the posterior means moves no kept weight by more than half
        of the smallest posterior standard deviation. ``Var[w~]`` uses the layer's clip of
        log sigma^2 to [-20, 5]. Returns None when no group is kept.

        Provenance: Louizos et al. 2017 choose each layer's precision from the posterior
        variance of its weights (the marginal variance above is their sec. 3.1 expression for
        the group normal-Jeffreys posterior). The authors' released code
        (Tutorial_BayesianCompressionForDL, ``compression.py``) instead counts floating-point
        significand bits per weight by comparing 2 Var[w] with the unit round-off, averages
        them over the layer and adds sign and exponent bits. This fixed-point, worst-weight
        rule is this library's own choice; its numbers are not comparable to the paper's.
        """
        keep = self.keep_mask()
        if not keep.any():
            return None
        mu_z = keras.ops.convert_to_numpy(self.z_mu)[keep]
        var_z = np.exp(keras.ops.convert_to_numpy(self.z_log_sigma2))[keep]
        mu_w = keras.ops.convert_to_numpy(self.kernel)[..., keep]
        var_w = np.exp(np.clip(keras.ops.convert_to_numpy(self.kernel_log_sigma2), -20, 5))[..., keep]
        marginal = (mu_z**2 + var_z) * (mu_w**2 + var_w) - mu_z**2 * mu_w**2
        resolution = float(np.sqrt(marginal.min()))
        spread = float(np.abs(mu_z * mu_w).max())
        return 1 + max(0, math.ceil(math.log2(max(spread / max(resolution, 1e-12), 1.0))))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dataset_size": self.dataset_size,
                "activation": keras.activations.serialize(self.activation), "use_bias": self.use_bias,
                "threshold": self.threshold, "initial_log_sigma2": self.initial_log_sigma2,
                "kl_weight": self.initial_kl_weight, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfcompress")
class BCDense(_BCBase):
    """Dense layer of Bayesian Compression (group normal-Jeffreys per output unit).

    Example:
        >>> layer = BCDense(4, dataset_size=100, seed=0)
        >>> model = keras.Sequential([keras.Input((8,)), layer])
        >>> model(np.ones((2, 8), "float32"), training=True).shape
        TensorShape([2, 4])
        >>> layer.keep_mask().tolist(), len(model.losses)          # every unit kept at init; the scaled KL
        ([True, True, True, True], 1)
        >>> [w.shape for w in layer.deterministic_weights()]         # the plain Dense that replaces it
        [(8, 4), (4,)]
    """

    def __init__(self, units: int, dataset_size: int | None = None, activation: Any = None, use_bias: bool = True,
                 threshold: float = 3.0, initial_log_sigma2: float = -10.0, kl_weight: float = 1.0,
                 seed: int | None = None, **kwargs):
        super().__init__(dataset_size, activation, use_bias, threshold, initial_log_sigma2, kl_weight, seed, **kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self._add_parameters((int(input_shape[-1]), self.units), self.units)

    def _linear(self, inputs, kernel):
        return ops.matmul(inputs, kernel)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="tfcompress")
class BCConv2D(_BCBase):
    """Conv2D layer of Bayesian Compression (group normal-Jeffreys per filter).

    Example:
        >>> layer = BCConv2D(4, 3, dataset_size=100, seed=0)
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), layer])
        >>> model(np.ones((2, 8, 8, 1), "float32")).shape
        TensorShape([2, 6, 6, 4])
        >>> int(layer.keep_mask().sum()), layer.deterministic_weights()[0].shape
        (4, (3, 3, 1, 4))
    """

    def __init__(self, filters: int, kernel_size, strides=(1, 1), padding: str = "valid",
                 dataset_size: int | None = None, activation: Any = None, use_bias: bool = True,
                 threshold: float = 3.0, initial_log_sigma2: float = -10.0, kl_weight: float = 1.0,
                 seed: int | None = None, **kwargs):
        super().__init__(dataset_size, activation, use_bias, threshold, initial_log_sigma2, kl_weight, seed, **kwargs)
        self.filters = int(filters)
        self.kernel_size = tuple(kernel_size) if isinstance(kernel_size, list | tuple) else (kernel_size, kernel_size)
        self.strides = tuple(strides) if isinstance(strides, list | tuple) else (strides, strides)
        self.padding = padding

    def build(self, input_shape):
        self._add_parameters((*self.kernel_size, int(input_shape[-1]), self.filters), self.filters)

    def _linear(self, inputs, kernel):
        return ops.conv(inputs, kernel, strides=self.strides, padding=self.padding)

    def compute_output_shape(self, input_shape):
        return keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides,
                                   padding=self.padding).compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding}

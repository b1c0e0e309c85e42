"""Sparse variational dropout: ``VariationalDense`` and ``VariationalConv2D``.

Molchanov, Ashukha, Vetrov, "Variational Dropout Sparsifies Deep Neural Networks", ICML 2017
(seed notes 002, "Bayesian pruning").

Every weight has a Gaussian posterior ``q(w_ij) = N(theta_ij, alpha_ij theta_ij^2)`` under the
improper log-uniform prior ``p(|w|) ~ 1 / |w|``. Additive reparameterization (Sec. 4.4):
the trainable parameters are ``theta`` and ``log sigma^2`` and
``log alpha = log sigma^2 - log theta^2``, so the gradient w.r.t. ``theta`` has no
``alpha``-scaled noise. ``log alpha`` is clipped to ``[-8, 8]``: as in the authors' code,
beyond 8 the weight is already dropped (``log alpha > 3``) and the KL approximation is
flat, and below -8 the noise is negligible; clipping keeps ``exp(log alpha)`` finite.

Local reparameterization trick (Kingma et al. 2015, used in Sec. 4.1 of the paper): the pre-activation, not the weight,
is sampled; for ``b = x W`` with independent Gaussian weights ::

    b ~ N(x theta, (x^2) (alpha theta^2)),   b = mu + sqrt(var) * eps

and for a convolution the mean and variance are the convolutions of ``x`` with ``theta``
and of ``x^2`` with ``alpha theta^2``.

KL approximation (eq. 14), up to an additive constant::

    -KL(q(w_ij) || p(w_ij)) ~= k1 sigmoid(k2 + k3 log alpha) - 0.5 log1p(exp(-log alpha)) - k1
    k1 = 0.63576, k2 = 1.87320, k3 = 1.48695

At inference a weight is used only when ``log alpha < 3`` (Sec. 4.3: ``alpha > 20`` means a
dropout rate above 0.95): ``W = theta * (log alpha < threshold)``.

Shared protocol (``dataset_size``, ``kl_weight``, ``mask`` (one per output unit/filter),
``kl_divergence()``, ``channel_importance()``, ``keep_mask()``): see
``tfcompress.layers.variational_bn``. ``weight_mask()`` gives the unstructured (per weight)
result.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from tfcompress.errors import TfcompressError
from tfcompress.layers.variational_bn import (
    SeedStateMixin,
    add_kl_loss,
    add_pruning_state,
    check_dataset_size,
)

K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_CLIP = 8.0


def approximate_kl(log_alpha):
    """Molchanov et al. 2017, eq. 14: KL(q || log-uniform prior) per weight, up to a constant.

    Returns ``-(k1 sigmoid(k2 + k3 log alpha) - 0.5 log1p(exp(-log alpha)) - k1)``, which
    tends to 0 as ``alpha -> inf``.
    """
    negative_kl = (
        K1 * ops.sigmoid(K2 + K3 * log_alpha) - 0.5 * ops.softplus(-log_alpha) - K1
    )
    return -negative_kl


class _SparseVariationalBase(SeedStateMixin, keras.layers.Layer):
    """Shared state of the sparse-VD layers (theta, log_sigma2, bias, mask, kl_weight)."""

    def __init__(
        self,
        dataset_size: int | None,
        activation: Any,
        use_bias: bool,
        kernel_initializer: Any,
        bias_initializer: Any,
        initial_log_sigma2: float,
        threshold: float,
        kl_weight: float,
        seed: int | None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.dataset_size = check_dataset_size(dataset_size, f"{type(self).__name__}({self.name})")
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.initial_log_sigma2 = float(initial_log_sigma2)
        self.threshold = float(threshold)
        self.initial_kl_weight = float(kl_weight)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _add_parameters(self, kernel_shape: tuple, units: int) -> None:
        self.kernel = self.add_weight(
            shape=kernel_shape, name="kernel", initializer=self.kernel_initializer
        )
        self.log_sigma2 = self.add_weight(
            shape=kernel_shape,
            name="log_sigma2",
            initializer=keras.initializers.Constant(self.initial_log_sigma2),
        )
        self.bias = (
            self.add_weight(shape=(units,), name="bias", initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        add_pruning_state(self, units, self.initial_kl_weight)

    def log_alpha(self):
        """``clip(log sigma^2 - log theta^2, -8, 8)`` per weight (additive reparameterization)."""
        log_theta2 = ops.log(ops.square(self.kernel) + 1e-8)
        return ops.clip(self.log_sigma2 - log_theta2, -LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)

    def kl_divergence(self):
        """Sum over weights of the eq. 14 approximation, unscaled."""
        return ops.sum(approximate_kl(self.log_alpha()))

    def sparse_kernel(self):
        """``theta * (log alpha < threshold)``: the kernel used at inference (before ``mask``)."""
        return self.kernel * ops.cast(self.log_alpha() < self.threshold, self.kernel.dtype)

    def weight_mask(self) -> np.ndarray:
        """Bool per weight: ``log alpha < threshold`` and the output unit not masked."""
        kept = np.asarray(ops.convert_to_numpy(self.log_alpha())) < self.threshold
        return kept & (np.asarray(self.mask.numpy()) > 0)

    def channel_importance(self) -> np.ndarray:
        """Number of surviving incoming weights per output unit / filter."""
        mask = self.weight_mask()
        return mask.reshape(-1, mask.shape[-1]).sum(axis=0).astype(np.float64)

    def keep_mask(self) -> np.ndarray:
        """Output units / filters with at least one surviving weight (and not masked)."""
        return self.channel_importance() > 0

    def _finish(self, outputs):
        if self.use_bias:
            outputs = outputs + self.bias
        add_kl_loss(self)
        # After the activation, so that a masked unit outputs exactly 0 whatever activation(0) is.
        return self.activation(outputs) * self.mask

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "dataset_size": self.dataset_size,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "initial_log_sigma2": self.initial_log_sigma2,
                "threshold": self.threshold,
                "kl_weight": self.initial_kl_weight,
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class VariationalDense(_SparseVariationalBase):
    """Dense layer with sparse variational dropout (Molchanov et al. 2017).

    Training uses the local reparameterization trick (sampled pre-activations); inference
    uses ``theta * (log alpha < threshold)``. Masked units output exactly 0 (the mask
    multiplies the activation).

    Args:
        units: number of output units.
        dataset_size: number of training examples N; the layer adds ``kl_weight * KL / N``.
        activation, use_bias, kernel_initializer, bias_initializer: as ``keras.layers.Dense``.
        initial_log_sigma2: initial ``log sigma^2`` of every weight (default -10: little
            noise, so a pre-trained kernel is kept when converting).
        threshold: ``log alpha`` above which a weight is dropped (paper: 3).
        kl_weight: initial value of the ``kl_weight`` variable.
        seed: seed of the local reparameterization noise.

    Example:
        >>> layer = VariationalDense(4, dataset_size=100, seed=0)
        >>> model = keras.Sequential([keras.Input((8,)), layer])
        >>> model(np.ones((2, 8), "float32"), training=True).shape
        TensorShape([2, 4])
        >>> layer.weight_mask().shape, int(layer.weight_mask().sum())      # log alpha starts low: all kept
        ((8, 4), 32)
        >>> float(layer.kl_divergence()) > 0
        True
    """

    def __init__(
        self,
        units: int,
        dataset_size: int | None = None,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        initial_log_sigma2: float = -10.0,
        threshold: float = 3.0,
        kl_weight: float = 1.0,
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(
            dataset_size, activation, use_bias, kernel_initializer, bias_initializer,
            initial_log_sigma2, threshold, kl_weight, seed, **kwargs,
        )
        if int(units) <= 0:
            raise TfcompressError(
                f"units must be a positive integer, got {units!r}",
                f"VariationalDense({self.name})",
                "pass units >= 1",
            )
        self.units = int(units)

    def build(self, input_shape):
        self._add_parameters((int(input_shape[-1]), self.units), self.units)

    def call(self, inputs, training=None):
        if training:
            mean = ops.matmul(inputs, self.kernel)
            variance = ops.matmul(ops.square(inputs), ops.exp(self.log_alpha()) * ops.square(self.kernel))
            eps = keras.random.normal(ops.shape(mean), dtype=mean.dtype, seed=self.seed_generator)
            outputs = mean + ops.sqrt(variance + 1e-8) * eps
        else:
            outputs = ops.matmul(inputs, self.sparse_kernel())
        return self._finish(outputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self) -> dict:
        config = super().get_config()
        config["units"] = self.units
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class VariationalConv2D(_SparseVariationalBase):
    """Conv2D (channels last) with sparse variational dropout (Molchanov et al. 2017).

    Training: ``mean = conv(x, theta)``, ``var = conv(x^2, alpha theta^2)``,
    ``y = mean + sqrt(var) eps`` (local reparameterization for convolutions, as in the
    paper's LeNet-5 experiments); inference: ``conv(x, theta * (log alpha < threshold))``.

    Args:
        filters, kernel_size, strides, padding, dilation_rate: as ``keras.layers.Conv2D``
            (channels last only).
        The other arguments are those of ``VariationalDense``.

    Example:
        >>> layer = VariationalConv2D(4, 3, dataset_size=100, seed=0)
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), layer])
        >>> model(np.ones((2, 8, 8, 1), "float32")).shape
        TensorShape([2, 6, 6, 4])
        >>> layer.channel_importance().tolist()                 # surviving incoming weights per filter
        [9.0, 9.0, 9.0, 9.0]
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple,
        strides: int | tuple = 1,
        padding: str = "valid",
        dilation_rate: int | tuple = 1,
        dataset_size: int | None = None,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        initial_log_sigma2: float = -10.0,
        threshold: float = 3.0,
        kl_weight: float = 1.0,
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(
            dataset_size, activation, use_bias, kernel_initializer, bias_initializer,
            initial_log_sigma2, threshold, kl_weight, seed, **kwargs,
        )
        where = f"VariationalConv2D({self.name})"
        if int(filters) <= 0:
            raise TfcompressError(f"filters must be positive, got {filters!r}", where, "pass filters >= 1")
        if str(padding).lower() not in ("valid", "same"):
            raise TfcompressError(f"unknown padding {padding!r}", where, "use 'valid' or 'same'")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size)
        self.strides = _pair(strides)
        self.padding = str(padding).lower()
        self.dilation_rate = _pair(dilation_rate)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise TfcompressError(
                f"expected a 4-D channels-last input with known channels, got {tuple(input_shape)}",
                f"VariationalConv2D({self.name})",
                "feed (batch, height, width, channels) inputs",
            )
        shape = self.kernel_size + (int(input_shape[-1]), self.filters)
        self._add_parameters(shape, self.filters)

    def _conv(self, inputs, kernel):
        return ops.conv(
            inputs, kernel, strides=self.strides, padding=self.padding,
            dilation_rate=self.dilation_rate, data_format="channels_last",
        )

    def call(self, inputs, training=None):
        if training:
            mean = self._conv(inputs, self.kernel)
            variance = self._conv(ops.square(inputs), ops.exp(self.log_alpha()) * ops.square(self.kernel))
            eps = keras.random.normal(ops.shape(mean), dtype=mean.dtype, seed=self.seed_generator)
            outputs = mean + ops.sqrt(variance + 1e-8) * eps
        else:
            outputs = self._conv(inputs, self.sparse_kernel())
        return self._finish(outputs)

    def compute_output_shape(self, input_shape):
        return keras.layers.Conv2D(
            self.filters, self.kernel_size, self.strides, self.padding,
            dilation_rate=self.dilation_rate,
        ).compute_output_shape(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "dilation_rate": self.dilation_rate,
            }
        )
        return config


def _pair(value: int | tuple) -> tuple:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise TfcompressError(f"expected an int or a pair, got {value!r}", "VariationalConv2D", "pass e.g. 3 or (3, 3)")
    return pair


"""Weight and activation quantizers: small serializable objects handed to layers (Larq style).

A quantizer is called on a tensor and returns its quantized value; its gradient is a
straight-through estimator (STE). Quantizers are resolved by name with `get`
(``get("ste_sign")``), serialized with `serialize` and stored in layer configs.

``SteSign`` (``"ste_sign"``)
    sign(x) in {-1, +1} with the convention sign(0) = +1 (BinaryConnect's deterministic
    binarization, Courbariaux et al. 2015, eq. 1: w_b = +1 if w >= 0 else -1). Gradient: the
    clipped straight-through estimator g_x = g_q * 1{|x| <= 1} (BNN, Hubara et al. 2016, eq. 4).
    Usable on weights and, as ``input_quantizer``, on activations.
``XnorWeight`` (``"xnor_weight"``)
    alpha_c * sign(W_c) with alpha_c = mean |W_c| over each output channel c (the last axis)
    (XNOR-Net, Rastegari et al. 2016, eq. 2-4: B* = sign(W) and alpha* = ||W||_l1 / n minimize
    ||W - alpha B||^2). Gradient as in XNOR-Net sec. 3.1:
    dC/dW_i = dC/dW~_i * (1/n + alpha * 1{|W_i| <= 1}).
``MagnitudeAwareSign`` (``"magnitude_aware_sign"``)
    the same forward value; the scale is held constant in the backward pass, so
    dC/dW_i = dC/dW~_i * alpha * 1{|W_i| <= 1} (Bi-Real Net, Liu et al. 2018, sec. 3.3,
    the magnitude-aware gradient; Larq's ``magnitude_aware_sign``).
``TernaryWeight`` (``"ternary_weight"``)
    alpha_c * sign(W) * 1{|W| > Delta_c} with Delta_c = t * mean |W_c| (t = 0.7) and alpha_c =
    the mean of |W| over the weights above Delta_c (Ternary Weight Networks, Li et al. 2016,
    arXiv:1605.04711: eq. 5 for alpha*, eq. 9 for Delta* ~= 0.7 E|W|). TWN computes one
    threshold and scale per layer; here they are per output channel, which int8 TFLite stores
    exactly (per-channel weight scales). Gradient straight through (identity).

Attributes used by layers and `tfcompress.quantization.packing`: ``levels`` (2 or 3 distinct values per
channel), ``bits`` (log2(levels): the information per weight), ``packed_bits`` (what a bit-packed
kernel stores per weight: 1 or 2), ``scaled`` (one float scale per output channel is stored),
``activation`` (may quantize activations).
"""

from __future__ import annotations

import math
from typing import Any

import keras

from tfcompress.errors import TfcompressError


def sign(x):
    """sign(x) in {-1, +1} with sign(0) = +1 (also for -0.0); the forward pass of `SteSign`.

    Built from ops TFLite has as int8 builtins (GREATER_EQUAL, SELECT_V2).

    Example:
        >>> [float(v) for v in sign(keras.ops.convert_to_tensor([-2.0, -0.0, 0.0, 0.5]))]
        [-1.0, 1.0, 1.0, 1.0]
    """
    from keras import ops

    return ops.where(x >= 0, ops.ones_like(x), -ops.ones_like(x))


def _channel_axes(x) -> tuple[int, ...]:
    return tuple(range(len(x.shape) - 1))


def _channel_mean(values):
    """Mean over every axis but the last (the output channel of a Dense / Conv kernel)."""
    from keras import ops

    return ops.mean(values, axis=_channel_axes(values), keepdims=True)


def _inside(x, clip: float | None):
    """1{|x| <= clip} as x's dtype (all ones when clip is None)."""
    import tensorflow as tf

    if clip is None:
        return tf.ones_like(x)
    return tf.cast(tf.abs(x) <= clip, x.dtype)


def _check_clip(clip_value, where: str) -> float | None:
    if clip_value is None:
        return None
    try:
        value = float(clip_value)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or math.isinf(value):
        raise TfcompressError(
            f"clip_value must be a positive number or None, got {clip_value!r}",
            where,
            "use clip_value=1.0 (BNN) or None for an unclipped straight-through gradient",
        )
    return value


class Quantizer:
    """Base class: ``__call__(x)`` gives the quantized value with a straight-through gradient.

    Example:
        >>> issubclass(SteSign, Quantizer)
        True
        >>> q = get("ste_sign")
        >>> [float(v) for v in q(keras.ops.convert_to_tensor([-0.3, 0.7]))]
        [-1.0, 1.0]
    """

    levels: int = 0
    bits: float = 32.0
    packed_bits: int = 32
    scaled: bool = False
    activation: bool = False

    def __call__(self, x):
        raise NotImplementedError

    def forward(self, x):
        """The quantized value without the custom gradient (what inference computes)."""
        raise NotImplementedError

    def scale(self, x):
        """The per-output-channel scale alpha_c, shape (channels,)."""
        from keras import ops

        return ops.ones((x.shape[-1],), dtype=x.dtype)

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="tfcompress")
class SteSign(Quantizer):
    """Binary {-1, +1}, sign(0) = +1, clipped straight-through gradient.

    Forward: BinaryConnect (Courbariaux et al. 2015) eq. 1, w_b = +1 if w >= 0 else -1.
    Backward: BNN (Hubara et al. 2016) eq. 4, g_x = g_q * 1{|x| <= clip_value}
    (``clip_value=None``: g_x = g_q).

    Args:
        clip_value: the gradient is zero where |x| > clip_value (1.0 in BNN).

    Example:
        >>> x = keras.ops.convert_to_tensor([-2.0, -0.5, 0.5, 2.0])
        >>> [float(v) for v in SteSign()(x)]
        [-1.0, -1.0, 1.0, 1.0]
        >>> import tensorflow as tf
        >>> with tf.GradientTape() as tape:
        ...     tape.watch(x)
        ...     y = keras.ops.sum(SteSign(clip_value=1.0)(x))
        >>> [float(g) for g in tape.gradient(y, x)]               # straight through inside |x| <= 1
        [0.0, 1.0, 1.0, 0.0]
    """

    levels = 2
    bits = 1.0
    packed_bits = 1
    activation = True

    def __init__(self, clip_value: float | None = 1.0):
        self.clip_value = _check_clip(clip_value, "SteSign(clip_value)")

    def forward(self, x):
        return sign(x)

    def __call__(self, x):
        import tensorflow as tf

        clip = self.clip_value

        @tf.custom_gradient
        def op(value):
            def grad(dy):
                return dy * _inside(value, clip)

            return sign(value), grad

        # (a tensor, not a variable: custom_gradient would otherwise ask for variable gradients)
        return op(tf.identity(x))

    def get_config(self) -> dict[str, Any]:
        return {"clip_value": self.clip_value}


class _ScaledSign(Quantizer):
    levels = 2
    bits = 1.0
    packed_bits = 1
    scaled = True

    def __init__(self, clip_value: float | None = 1.0):
        self.clip_value = _check_clip(clip_value, f"{type(self).__name__}(clip_value)")

    def scale(self, x):
        from keras import ops

        return ops.reshape(_channel_mean(ops.abs(x)), (-1,))

    def forward(self, x):
        from keras import ops

        return _channel_mean(ops.abs(x)) * sign(x)

    def get_config(self) -> dict[str, Any]:
        return {"clip_value": self.clip_value}


@keras.saving.register_keras_serializable(package="tfcompress")
class XnorWeight(_ScaledSign):
    """XNOR-Net binary weights alpha_c sign(W_c), alpha_c = mean |W_c| per output channel.

    Forward: Rastegari et al. 2016, eq. 2-4 (the minimizer of ||W - alpha B||^2 over
    B in {-1, +1}^n, alpha >= 0). Backward, sec. 3.1:
    dC/dW_i = dC/dW~_i * (1/n + alpha_c * 1{|W_i| <= clip_value}), n = weights per channel.

    Args:
        clip_value: the sign's straight-through gradient is zero where |W| > clip_value
            (``None``: never zero).

    Example:
        >>> w = keras.ops.convert_to_tensor([[0.5, -1.0], [-1.5, 3.0]])
        >>> keras.ops.convert_to_numpy(XnorWeight()(w)).tolist()         # alpha_c = mean |W_c|: 1.0, 2.0
        [[1.0, -2.0], [-1.0, 2.0]]
    """

    def __call__(self, x):
        import tensorflow as tf

        clip = self.clip_value

        @tf.custom_gradient
        def op(value):
            alpha = _channel_mean(tf.abs(value))
            n = tf.cast(tf.size(value) // tf.shape(value)[-1], value.dtype)

            def grad(dy):
                return dy * (1.0 / n + alpha * _inside(value, clip))

            return alpha * sign(value), grad

        return op(tf.identity(x))


@keras.saving.register_keras_serializable(package="tfcompress")
class MagnitudeAwareSign(_ScaledSign):
    """alpha_c sign(W_c) with alpha_c = mean |W_c|, scale held constant in the backward pass.

    Forward as XNOR-Net (Rastegari et al. 2016, eq. 2-4); backward the magnitude-aware gradient
    of Bi-Real Net (Liu et al. 2018, sec. 3.3): dC/dW_i = dC/dW~_i * alpha_c * 1{|W_i| <= clip}.

    Example:
        >>> w = keras.ops.convert_to_tensor([[0.5, -1.0], [-1.5, 3.0]])   # 2 output channels (columns)
        >>> keras.ops.convert_to_numpy(MagnitudeAwareSign()(w)).tolist()
        [[1.0, -2.0], [-1.0, 2.0]]
    """

    def __call__(self, x):
        from keras import ops

        alpha = ops.stop_gradient(_channel_mean(ops.abs(x)))
        return alpha * SteSign(self.clip_value)(x)


@keras.saving.register_keras_serializable(package="tfcompress")
class TernaryWeight(Quantizer):
    """TWN ternary weights alpha_c sign(W) 1{|W| > Delta_c}, per output channel c.

    Li et al. 2016 (arXiv:1605.04711), eq. 9: Delta_c = t * E|W_c| with t = 0.7; eq. 5:
    alpha_c = mean of |W_i| over I_c = {i : |W_i| > Delta_c}. Straight-through gradient
    (identity, or 1{|W| <= clip_value} when a clip is given).

    Args:
        threshold_factor: t in (0, 2); 0.7 is TWN's approximation for Gaussian/uniform weights.
        clip_value: optional gradient clip as in `SteSign`.

    Example:
        >>> w = keras.ops.convert_to_tensor([[0.1], [-0.9], [1.1], [0.0]])
        >>> keras.ops.convert_to_numpy(TernaryWeight()(w)).ravel().tolist()   # Delta = 0.7 * mean |W| = 0.367
        [0.0, -1.0, 1.0, 0.0]
    """

    levels = 3
    bits = math.log2(3)
    packed_bits = 2
    scaled = True

    def __init__(self, threshold_factor: float = 0.7, clip_value: float | None = None):
        try:
            factor = float(threshold_factor)
        except (TypeError, ValueError):
            factor = float("nan")
        if not 0.0 < factor < 2.0:
            raise TfcompressError(
                f"threshold_factor must be in (0, 2), got {threshold_factor!r}",
                "TernaryWeight(threshold_factor)",
                "use 0.7 (TWN's Delta = 0.7 E|W|)",
            )
        self.threshold_factor = factor
        self.clip_value = _check_clip(clip_value, "TernaryWeight(clip_value)")

    def _parts(self, x):
        from keras import ops

        magnitude = ops.abs(x)
        delta = self.threshold_factor * _channel_mean(magnitude)
        keep = ops.cast(magnitude > delta, x.dtype)
        kept = ops.sum(keep, axis=_channel_axes(x), keepdims=True)
        alpha = ops.sum(magnitude * keep, axis=_channel_axes(x), keepdims=True) / ops.maximum(
            kept, 1.0
        )
        return keep, alpha

    def scale(self, x):
        from keras import ops

        return ops.reshape(self._parts(x)[1], (-1,))

    def forward(self, x):
        keep, alpha = self._parts(x)
        return sign(x) * keep * alpha

    def __call__(self, x):
        import tensorflow as tf

        clip = self.clip_value

        @tf.custom_gradient
        def op(value):
            def grad(dy):
                return dy * _inside(value, clip)

            return self.forward(value), grad

        return op(tf.identity(x))

    def get_config(self) -> dict[str, Any]:
        return {"threshold_factor": self.threshold_factor, "clip_value": self.clip_value}


_NAMES: dict[str, type[Quantizer]] = {
    "ste_sign": SteSign,
    "xnor_weight": XnorWeight,
    "magnitude_aware_sign": MagnitudeAwareSign,
    "ternary_weight": TernaryWeight,
}
_NAMES.update({cls.__name__: cls for cls in list(_NAMES.values())})


def get(identifier: Any) -> Quantizer | None:
    """A quantizer from None, a name (``"ste_sign"``, ``"xnor_weight"``,
    ``"magnitude_aware_sign"``, ``"ternary_weight"`` or the class name), a serialized config
    (`serialize`) or an instance (returned as is).

    Example:
        >>> type(get("xnor_weight")).__name__, get(None)
        ('XnorWeight', None)
        >>> get("round")
        Traceback (most recent call last):
        ...
        tfcompress.errors.TfcompressError: quantizer: unknown quantizer 'round' Fix: use one of [...]
    """
    if identifier is None or isinstance(identifier, Quantizer):
        return identifier
    if isinstance(identifier, str):
        if identifier in _NAMES:
            return _NAMES[identifier]()
        raise TfcompressError(
            f"unknown quantizer {identifier!r}", "quantizer", f"use one of {sorted(_NAMES)}"
        )
    if isinstance(identifier, dict):
        try:
            quantizer = keras.saving.deserialize_keras_object(identifier)
        except Exception as exc:
            raise TfcompressError(
                f"cannot deserialize the quantizer config {identifier!r} ({exc})",
                "quantizer",
                "pass a config made by tfcompress.quantizers.serialize",
            ) from None
        if isinstance(quantizer, Quantizer):
            return quantizer
    raise TfcompressError(
        f"a quantizer must be None, a name, a config dict or a Quantizer, got {identifier!r}",
        "quantizer",
        f"use one of {sorted(_NAMES)}",
    )


def serialize(quantizer: Quantizer | None) -> dict[str, Any] | None:
    """The Keras config of a quantizer (None stays None); `get` turns it back into one.

    Example:
        >>> config = serialize(TernaryWeight(threshold_factor=0.5))
        >>> get(config).threshold_factor
        0.5
    """
    return None if quantizer is None else keras.saving.serialize_keras_object(quantizer)


deserialize = get

__all__ = [
    "MagnitudeAwareSign",
    "Quantizer",
    "SteSign",
    "TernaryWeight",
    "XnorWeight",
    "deserialize",
    "get",
    "serialize",
    "sign",
]

"""Weight and activation quantizers: small serializable objects handed to layers (Larq style).

``SteSign``      sign(x) in {-1, +1} (sign(0) = +1), gradient by the straight-through estimator
                 clipped to |x| <= 1: d sign(x)/dx := 1_{|x| <= 1} (BinaryConnect, Courbariaux et
                 al. 2015, eq. 1; BNN, Hubara et al. 2016, eq. 4).
``XnorWeight``   alpha_c * sign(W_c) with alpha_c = mean |W_c| per output channel (XNOR-Net,
                 Rastegari et al. 2016, eq. 2-4: the scale minimizing ||W - alpha B||^2).
``TernaryWeight`` alpha_c * sign(W) * 1_{|W| > Delta_c}, Delta_c = t * mean |W_c| (t = 0.7) and
                 alpha_c = mean of |W| above Delta_c (Ternary Weight Networks, Li et al. 2016,
                 eq. 9-10); straight-through gradient.

Each has ``bits`` (the storage a weight needs) and ``levels(x)`` (the distinct values per
channel), used by `tfcompress.packing`.
"""

from __future__ import annotations

from typing import Any

import keras

from tfcompress.errors import TfcompressError


def _ste(forward, x, clip: float | None):
    """forward(x) with a straight-through gradient (1 inside |x| <= clip, or everywhere)."""
    import tensorflow as tf

    @tf.custom_gradient
    def op(value):
        def grad(dy):
            if clip is None:
                return dy
            return dy * tf.cast(tf.abs(value) <= clip, dy.dtype)

        return forward(value), grad

    # (a tensor, not a variable: custom_gradient would otherwise want variable gradients too)
    return op(tf.identity(x))


def _sign(x):
    from keras import ops

    return ops.where(x >= 0, ops.ones_like(x), -ops.ones_like(x))


def _channel_mean(values):
    """Mean over every axis but the last (the output channel)."""
    from keras import ops

    return ops.mean(values, axis=tuple(range(len(values.shape) - 1)), keepdims=True)


class Quantizer:
    bits: float = 32.0

    def __call__(self, x):
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfcompress")
class SteSign(Quantizer):
    """Binary {-1, +1} with the clipped straight-through estimator (BinaryConnect / BNN)."""

    bits = 1.0

    def __init__(self, clip_value: float = 1.0):
        self.clip_value = float(clip_value)

    def __call__(self, x):
        return _ste(_sign, x, self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


@keras.saving.register_keras_serializable(package="tfcompress")
class XnorWeight(Quantizer):
    """alpha_c * sign(W_c), alpha_c = mean |W_c| (XNOR-Net eq. 2-4); gradient straight through."""

    bits = 1.0

    def __call__(self, x):
        from keras import ops

        alpha = ops.stop_gradient(_channel_mean(ops.abs(x)))
        return _ste(_sign, x, None) * alpha


@keras.saving.register_keras_serializable(package="tfcompress")
class TernaryWeight(Quantizer):
    """TWN: alpha_c sign(W) 1{|W| > t mean|W_c|}, alpha_c = mean |W| above the threshold."""

    bits = 2.0

    def __init__(self, threshold_factor: float = 0.7):
        if not 0.0 < float(threshold_factor) < 2.0:
            raise TfcompressError(f"threshold_factor must be in (0, 2), got {threshold_factor}", "TernaryWeight")
        self.threshold_factor = float(threshold_factor)

    def ternarize(self, x):
        from keras import ops

        magnitude = ops.abs(x)
        delta = self.threshold_factor * _channel_mean(magnitude)
        keep = ops.cast(magnitude > delta, x.dtype)
        count = ops.maximum(_channel_mean(keep), 1e-12)
        alpha = _channel_mean(magnitude * keep) / count
        return _sign(x) * keep * alpha

    def __call__(self, x):
        from keras import ops

        # forward: the ternary weights; backward: identity (straight-through)
        return x + ops.stop_gradient(self.ternarize(x) - x)

    def get_config(self):
        return {"threshold_factor": self.threshold_factor}


_NAMES = {"ste_sign": SteSign, "xnor_weight": XnorWeight, "magnitude_aware_sign": XnorWeight,
          "ternary_weight": TernaryWeight, "twn": TernaryWeight}


def get(identifier: Any) -> Quantizer | None:
    """A quantizer from None, a name, a config dict or an instance."""
    if identifier is None or isinstance(identifier, Quantizer):
        return identifier
    if isinstance(identifier, str) and identifier in _NAMES:
        return _NAMES[identifier]()
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    raise TfcompressError(f"unknown quantizer {identifier!r}", "quantizer", f"use one of {sorted(_NAMES)}")


def serialize(quantizer: Quantizer | None):
    return None if quantizer is None else keras.saving.serialize_keras_object(quantizer)

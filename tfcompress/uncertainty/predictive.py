"""The posterior predictive and its uncertainty decomposition, in Keras ops and in NumPy.

For S posterior samples (ensemble members, frozen dropout masks, variational draws) with
class probabilities ``p_s = softmax(z_s)``, Vadera et al. (2021, "Challenges and
opportunities in approximate Bayesian deep learning for intelligent IoT systems") write

- the posterior predictive, eq. (2) and its Monte Carlo form eq. (4):
  ``p(y|x) ~ 1/S sum_s p(y|x, theta_s)``;
- total uncertainty ``H[E p]`` = knowledge uncertainty ``I[y, theta]`` + expected data
  uncertainty ``E[H p]``, eq. (3).

:class:`UncertaintyHead` computes all of them from the members' stacked logits inside the
model, with ops that the TFLite converter maps to int8 builtins TFLite Micro implements, so a
posterior compiles to one integer graph with the uncertainties as named outputs.
:func:`decompose` is the float64 NumPy reference.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["OUTPUT_NAMES", "UncertaintyHead", "decompose"]

#: the outputs of a compiled posterior, in this order
OUTPUT_NAMES = ("probs", "log_probs", "total", "data", "knowledge")


def decompose(logits: np.ndarray, axis: int = 1) -> dict[str, np.ndarray]:
    """Posterior predictive and the uncertainty decomposition, in float64 NumPy (eq. 2-4).

    Args:
        logits: the members' logits, members along ``axis`` (default ``[batch, S, classes]``).
        axis: the member axis.

    Returns:
        ``probs`` (predictive mean, eq. 4), ``log_probs`` (its log), ``total`` = H[E p],
        ``data`` = E[H p], ``knowledge`` = E_s KL(p_s || E p) = total - data (eq. 3), in nats.

    Example:
        >>> z = np.array([[[2.0, 0.0], [0.0, 2.0]]])        # two members that disagree
        >>> out = decompose(z)
        >>> bool(np.isclose(out["total"][0], np.log(2)))    # the mean is uniform
        True
        >>> bool(np.isclose(out["total"] - out["data"], out["knowledge"]).all())
        True
    """
    z = np.moveaxis(np.asarray(logits, dtype=np.float64), axis, -2)  # [..., S, C]
    log_p = z - _logsumexp(z, axis=-1)
    p = np.exp(log_p)
    log_mean = _logsumexp(log_p, axis=-2)[..., 0, :] - np.log(z.shape[-2])
    mean = np.exp(log_mean)
    total = -(mean * log_mean).sum(-1)
    data = -(p * log_p).sum(-1).mean(-1)
    knowledge = (p * (log_p - log_mean[..., None, :])).sum(-1).mean(-1)
    return {"probs": mean, "log_probs": log_mean, "total": total, "data": data, "knowledge": knowledge}


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = a.max(axis=axis, keepdims=True)
    return top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))


@keras.saving.register_keras_serializable(package="tfcompress")
class UncertaintyHead(keras.layers.Layer):
    """Stacked member logits ``[batch, S, classes]`` -> the posterior predictive and eq. (3).

    Returns a dict with :data:`OUTPUT_NAMES`: ``probs`` ``[batch, C]`` (eq. 4), ``log_probs``
    ``[batch, C]``, and ``total`` / ``data`` / ``knowledge`` ``[batch]`` in nats (Vadera et al.
    2021, eq. 2-4). ``knowledge`` is computed directly as ``E_s KL(p_s || E p)``, which equals
    total - data, so that it has an int8 scale of its own (in-distribution it is small beside
    the entropies; a difference of two int8 entropies would lose it). With one member
    (``S = 1``) there is no ``knowledge`` output and ``total`` is ``data``.

    Every op is chosen for the integer graph (see DEVELOPERS.md, "uncertainty"):
    ``log p_s`` is ``LOG_SOFTMAX`` (int8 output fixed at scale 16/256); ``log E p`` is the
    log-sum-exp over members written as ``v - log_softmax(v)`` over the member axis, so no
    EXP / LOG op (float-only in TFLite Micro) is needed; sums over classes are a 1x1
    ``CONV_2D`` with a ones kernel, because the int8 ``SUM`` of LiteRT's reference kernels
    returned a constant here (measured: benchmarks/NOTES.md); negations are a ``SUB`` from 0
    (int8 has no ``NEG``).

    Example:
        >>> head = UncertaintyHead()
        >>> z = np.array([[[2.0, 0.0], [0.0, 2.0]]], "float32")
        >>> out = head(z)
        >>> round(float(out["total"][0]), 4), round(float(out["knowledge"][0]), 4)
        (0.6931, 0.3278)
    """

    def call(self, logits):
        members, classes = logits.shape[-2], logits.shape[-1]
        log_p = ops.log_softmax(logits, axis=-1)                  # [B, S, C]
        p = ops.softmax(logits, axis=-1)
        mean = ops.mean(p, axis=1)                                # eq. (4)
        data = ops.mean(self._sum_classes(p * ops.subtract(0.0, log_p), classes), axis=-1)
        if members == 1:
            # one model: no knowledge uncertainty, and no constant (zero-range) tensor in the file,
            # which an int8 scale cannot represent
            return {"probs": mean, "log_probs": log_p[:, 0], "total": data, "data": data}
        per_class = ops.transpose(log_p, (0, 2, 1))               # [B, C, S]
        log_sum = ops.mean(per_class - ops.log_softmax(per_class, axis=-1), axis=-1)
        log_mean = log_sum - float(np.log(members))               # log E p, [B, C]
        total = self._sum_classes(mean * ops.subtract(0.0, log_mean), classes)
        knowledge = ops.mean(self._sum_classes(p * (log_p - ops.expand_dims(log_mean, 1)), classes), axis=-1)
        return {"probs": mean, "log_probs": log_mean, "total": total, "data": data, "knowledge": knowledge}

    @staticmethod
    def _sum_classes(x, classes: int):
        # a 1x1 convolution with a ones kernel: CONV_2D, which TFLite Micro and LiteRT's reference
        # kernels requantize alike (see the class docstring for why not SUM, and
        # tfcompress.export.dense_as_conv for why not FULLY_CONNECTED)
        shape = tuple(x.shape[1:-1])
        flat = ops.reshape(x, (-1, 1, 1, classes))
        total = ops.conv(flat, ops.ones((1, 1, classes, 1), dtype=x.dtype))
        return ops.reshape(total, (-1, *shape))

    def compute_output_spec(self, logits):
        batch, classes = logits.shape[0], logits.shape[-1]
        spec = keras.KerasTensor
        out = {"probs": spec((batch, classes)), "log_probs": spec((batch, classes)),
               "total": spec((batch,)), "data": spec((batch,)), "knowledge": spec((batch,))}
        if logits.shape[-2] == 1:
            del out["knowledge"]
        return out

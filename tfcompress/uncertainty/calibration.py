"""Temperature scaling of a posterior, folded into its members so the int8 graph does not grow.

Guo et al. (2017), "On calibration of modern neural networks", section 4.2: one scalar
``T > 0`` divides the logits, ``q = softmax(z / T)``, chosen to minimise the negative log
likelihood on a held-out set; the argmax (accuracy) is unchanged. For S members this module
uses one shared ``T`` on every member's logits before pooling,
``p(y|x) = 1/S sum_s softmax(z_s / T)`` (the "calibrate-then-pool" order of Rahaman and
Thiery 2021, "Uncertainty quantification and deep ensembles", sec. 3), so the file's
decomposition total = data + knowledge (eq. 3 of Vadera et al. 2021) still holds for the
calibrated members. Deep ensembles of regularised members are typically under-confident
(``T < 1``), single networks over-confident (``T > 1``).

The factor ``1 / T`` is folded into the kernel and bias of each member's last layer when it is
a linear ``Dense`` / ``Conv*`` (exact, no op added to the file); otherwise a ``Rescaling``
layer (one int8 ``MUL``) follows the member.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.uncertainty.predictive import _logsumexp

__all__ = ["fit_temperature", "scale_logits", "tempered_nll"]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def tempered_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of ``1/S sum_s softmax(z_s / T)`` (float64); ``logits`` ``[N, C]`` or ``[N, S, C]``.

    Example:
        >>> z = np.array([[2.0, 0.0], [0.0, 1.0]])
        >>> round(tempered_nll(z, np.array([0, 1]), 1.0), 4)
        0.2201
    """
    z = _members_last(logits)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    scaled = z / float(temperature)
    log_p = scaled - _logsumexp(scaled, -1)                          # [N, S, C]
    log_mean = _logsumexp(log_p, 1)[:, 0, :] - math.log(z.shape[1])  # [N, C]
    return float(-log_mean[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0),
                    tolerance: float = 1e-4) -> float:
    """The temperature minimising :func:`tempered_nll` on held-out logits (Guo et al. 2017, sec. 4.2).

    A golden-section search over ``log T`` in ``bounds`` (the NLL of a temperature-scaled
    softmax is convex in ``1 / T`` for one member; for S members the search still finds the
    minimum of the unimodal curves seen in practice, and the test checks it against SciPy).

    Args:
        logits: held-out logits, ``[N, C]`` for one model or ``[N, S, C]`` for S members.
        labels: ``[N]`` integer classes.
        bounds: the search interval for ``T``.
        tolerance: stop when the interval in ``log T`` is this narrow.

    Returns:
        ``T``; divide the logits by it (:func:`scale_logits` with ``1 / T``).

    Raises:
        TfcompressError: shapes disagree, labels are out of range, or ``bounds`` is not
            ``0 < low < high``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 2000)
        >>> guess = np.where(rng.random(2000) < 0.3, rng.integers(0, 3, 2000), y)   # 80% right
        >>> z = 6.0 * np.eye(3)[guess]                       # but 99.5% sure: over-confident
        >>> t = fit_temperature(z, y)
        >>> t > 1.0, tempered_nll(z, y, t) < tempered_nll(z, y, 1.0)
        (True, True)
    """
    z = _members_last(logits)
    y = np.asarray(labels)
    if y.ndim > 1 and y.shape[-1] > 1:
        raise TfcompressError(f"labels of shape {y.shape} look one-hot; integers in [0, {z.shape[-1]}) expected",
                              "fit_temperature", "pass class indices (np.argmax(one_hot, -1))")
    y = y.reshape(-1)
    if len(y) != z.shape[0] or len(y) == 0:
        raise TfcompressError(f"{len(y)} labels for {z.shape[0]} rows of logits", "fit_temperature",
                              "pass one integer label per held-out example")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[-1]:
        raise TfcompressError(f"labels must be integers in [0, {z.shape[-1]}), got {y.min()}..{y.max()}",
                              "fit_temperature", "pass class indices, not one-hot rows")
    low, high = float(bounds[0]), float(bounds[1])
    if not 0.0 < low < high:
        raise TfcompressError(f"bounds must satisfy 0 < low < high, got {bounds}", "fit_temperature",
                              "for example bounds=(0.05, 20.0)")
    a, b = math.log(low), math.log(high)

    def loss(log_t: float) -> float:
        return tempered_nll(z, y, math.exp(log_t))

    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tolerance:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = loss(d)
    return math.exp((a + b) / 2.0)


def scale_logits(model, factor: float):
    """A copy of ``model`` whose logits are multiplied by ``factor`` (``1 / T``).

    When the output comes from a ``Dense`` or ``Conv1D/2D/3D`` layer with no activation (also
    through ``Flatten`` / ``Reshape`` / ``Permute`` / ``Dropout`` / global pooling, which commute
    with a positive factor, and used by nothing else), its kernel and bias are scaled (the copy has the same layers and cost); otherwise the copy is
    ``model`` followed by ``keras.layers.Rescaling(factor)``. ``model`` is left unchanged.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> x = np.ones((2, 4), "float32")
        >>> colder = scale_logits(model, 0.5)
        >>> bool(np.allclose(colder.predict(x, verbose=0), 0.5 * model.predict(x, verbose=0), atol=1e-6))
        True
        >>> len(colder.layers) == len(model.layers)
        True
    """
    factor = float(factor)
    if not math.isfinite(factor) or factor <= 0.0:
        raise TfcompressError(f"the logit factor must be finite and > 0, got {factor}", "scale_logits",
                              "pass 1 / T for a fitted temperature T > 0")
    if isinstance(model, keras.Sequential) or _is_functional(model):
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        last = _logit_producer(clone) if len(clone.outputs) == 1 else None
        if _foldable(last):
            last.kernel.assign(last.kernel * factor)
            if last.bias is not None:
                last.bias.assign(last.bias * factor)
            return clone
    x = keras.Input(model.inputs[0].shape[1:], name=model.inputs[0].name.split(":")[0])
    return keras.Model(x, keras.layers.Rescaling(factor, name=f"{model.name}_temperature")(model(x)),
                       name=f"{model.name}_tempered")


# layers with f(a x) = a f(x) for a > 0 that the factor can pass through to reach the linear layer
_HOMOGENEOUS = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Permute, keras.layers.Dropout,
                keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
                keras.layers.GlobalAveragePooling3D, keras.layers.GlobalMaxPooling1D,
                keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling3D)


def _logit_producer(model):
    """The layer whose output, through homogeneous shape-only layers, is the model's logits."""
    layer, node_index = model.outputs[0]._keras_history[:2]
    while isinstance(layer, _HOMOGENEOUS):
        node = layer._inbound_nodes[node_index]
        if len(node.input_tensors) != 1 or len(layer._outbound_nodes) > 1:
            return None
        layer, node_index = node.input_tensors[0]._keras_history[:2]
    # scaling a layer whose output also feeds something else would change that path too
    return layer if len(layer._outbound_nodes) <= 1 else None


def _foldable(layer) -> bool:
    linear = getattr(layer, "activation", None) in (None, keras.activations.linear)
    return isinstance(layer, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)) and linear


def _is_functional(model) -> bool:
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth") and bool(model.outputs)


def _members_last(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2:
        z = z[:, None, :]
    if z.ndim != 3 or z.shape[-1] < 2 or not np.isfinite(z).all():
        raise TfcompressError(f"logits must be finite [N, C] or [N, S, C] with C >= 2, got shape {z.shape}",
                              "fit_temperature", "pass the members' float logits (Posterior.member_logits)")
    return z

"""Sparsity penalties as Keras regularizers (pass them as ``kernel_regularizer`` / ``gamma_regularizer``).

``L1``                    lambda * sum |w| (Tibshirani 1996; the lecture's "L1 regularization").
``GroupLasso``            lambda * sum_g sqrt(|g|) * ||w_g||_2 over output channels / units
                          (Yuan and Lin 2006, eq. 2.1; per-filter groups as in Wen et al. 2016,
                          "Learning Structured Sparsity in Deep Neural Networks", eq. 2).
``NetworkSlimming``       lambda * sum |gamma| on BatchNormalization scales (Liu et al., ICCV 2017,
                          "Learning Efficient Convolutional Networks through Network Slimming", eq. 1).
``SelectiveWeightDecay``  lambda * sum of w^2 over the weights a magnitude pruner would remove at
                          the target sparsity, the others unpenalized (Tessier et al. 2022,
                          "Rethinking Weight Decay for Efficient Neural Network Pruning", eq. 3).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfcompress.errors import TfcompressError


def _check(value: float, name: str, where: str) -> float:
    value = float(value)
    if value < 0:
        raise TfcompressError(f"{name} must be >= 0, got {value}", where)
    return value


@keras.saving.register_keras_serializable(package="tfcompress")
class L1(keras.regularizers.Regularizer):
    """``l1 * sum |w|``: unstructured sparsity (Keras' own ``L1`` with its argument checked).

    Example:
        >>> import numpy as np
        >>> float(L1(0.5)(np.array([1.0, -2.0], "float32")))
        1.5
    """

    def __init__(self, l1: float = 1e-5):
        self.l1 = _check(l1, "l1", "L1")

    def __call__(self, x):
        return self.l1 * ops.sum(ops.abs(x))

    def get_config(self) -> dict[str, Any]:
        return {"l1": self.l1}


@keras.saving.register_keras_serializable(package="tfcompress")
class GroupLasso(keras.regularizers.Regularizer):
    """Sum over output channels (last kernel axis) of sqrt(group size) * L2 norm.

    Example:
        >>> import numpy as np
        >>> kernel = np.ones((3, 2), "float32")        # 2 output channels of 3 weights: norms sqrt(3)
        >>> round(float(GroupLasso(0.1)(kernel)), 4)   # 0.1 * sqrt(3) * (sqrt(3) + sqrt(3))
        0.6
        >>> layer = keras.layers.Dense(4, kernel_regularizer=GroupLasso(1e-4))
    """

    def __init__(self, strength: float = 1e-4):
        self.strength = _check(strength, "strength", "GroupLasso")

    def __call__(self, x):
        groups = ops.reshape(x, (-1, ops.shape(x)[-1]))
        size = ops.cast(ops.shape(groups)[0], x.dtype)
        norms = ops.sqrt(ops.sum(ops.square(groups), axis=0) + 1e-12)
        return self.strength * ops.sqrt(size) * ops.sum(norms)

    def get_config(self) -> dict[str, Any]:
        return {"strength": self.strength}


@keras.saving.register_keras_serializable(package="tfcompress")
class NetworkSlimming(keras.regularizers.Regularizer):
    """L1 on BatchNormalization's gamma: use as ``gamma_regularizer``.

    Example:
        >>> import numpy as np
        >>> round(float(NetworkSlimming(0.01)(np.array([1.0, -3.0], "float32"))), 6)
        0.04
        >>> bn = keras.layers.BatchNormalization(gamma_regularizer=NetworkSlimming(1e-4))
    """

    def __init__(self, strength: float = 1e-4):
        self.strength = _check(strength, "strength", "NetworkSlimming")

    def __call__(self, x):
        return self.strength * ops.sum(ops.abs(x))

    def get_config(self) -> dict[str, Any]:
        return {"strength": self.strength}


@keras.saving.register_keras_serializable(package="tfcompress")
class SelectiveWeightDecay(keras.regularizers.Regularizer):
    """L2 only on the ``target_sparsity`` fraction of weights with the smallest magnitude.

    Example:
        >>> import numpy as np
        >>> w = np.array([0.1, -0.2, 3.0, 4.0], "float32")
        >>> round(float(SelectiveWeightDecay(1.0, target_sparsity=0.5)(w)), 4)   # only 0.1 and -0.2 decay
        0.05
    """

    def __init__(self, strength: float = 1e-3, target_sparsity: float = 0.9):
        self.strength = _check(strength, "strength", "SelectiveWeightDecay")
        if not 0.0 < float(target_sparsity) < 1.0:
            raise TfcompressError(f"target_sparsity must be in (0, 1), got {target_sparsity}", "SelectiveWeightDecay")
        self.target_sparsity = float(target_sparsity)

    def __call__(self, x):
        flat = ops.reshape(ops.abs(x), (-1,))
        n = flat.shape[0]
        k = max(1, int(round(self.target_sparsity * n)))
        # the k-th smallest magnitude is the pruning threshold; it is not differentiated through
        threshold = ops.stop_gradient(ops.sort(flat)[k - 1])
        selected = ops.cast(ops.abs(x) <= threshold, x.dtype)
        return self.strength * ops.sum(selected * ops.square(x))

    def get_config(self) -> dict[str, Any]:
        return {"strength": self.strength, "target_sparsity": self.target_sparsity}

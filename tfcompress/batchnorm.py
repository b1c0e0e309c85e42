"""Re-estimating BatchNormalization statistics from data.

After pruning, surgery or a short training run, BatchNormalization's moving
mean and variance lag behind the weights (Keras' default momentum of 0.99, and
MobileNetV2's 0.999, average over hundreds of steps). Inference then normalises
with stale statistics. Setting every BN layer's momentum to 0 and running one
forward pass in training mode replaces the moving statistics with the batch
statistics of ``x``, layer after layer in one pass (each layer sees inputs
already normalised by the corrected layers before it, because training mode
normalises with batch statistics); the weights are not touched.
"""

from __future__ import annotations

import keras
import numpy as np


def _batchnorm_layers(model):
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            yield layer


def recalibrate_batchnorm(model: keras.Model, x: np.ndarray) -> int:
    """Set the moving statistics of every BatchNormalization layer to those of ``x``.

    Args:
        model: a Keras model (nested models included).
        x: inputs representative of the data, in one batch (a few hundred samples).

    Returns:
        The number of BatchNormalization layers updated.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.BatchNormalization()])
        >>> x = np.random.default_rng(0).normal(3.0, 1.0, (256, 8)).astype("float32")
        >>> recalibrate_batchnorm(model, x)
        1
        >>> bn = model.layers[-1]
        >>> mean = np.asarray(model.layers[0](x)).mean(0)
        >>> bool(np.allclose(np.asarray(bn.moving_mean), mean, atol=1e-4)), bn.momentum
        (True, 0.99)
    """
    layers = list(_batchnorm_layers(model))
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        model(x, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)

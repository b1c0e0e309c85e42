"""The pruning layers: `PruneLowMagnitude` (computes with ``kernel * mask``) and
`MaskedBatchNormalization` (a BatchNormalization after a channel-pruned layer).

``tfcompress.prune`` wraps a model's layers in them, the `UpdatePruning` callback sets their
masks (`tfcompress.pruning.update_masks`) and ``tfcompress.strip`` bakes the masks into plain
Keras layers; see `tfcompress.pruning.magnitude` for granularities, scopes and criteria.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfcompress.core import WrapperHandler, handler_for, register_layer, registered_types
from tfcompress.core.registry import handler_for_type
from tfcompress.errors import TfcompressError
from tfcompress.layers._pruning_base import (
    SCOPES,
    _depthwise,
    _kernel_attr,
    channel_reduce,
    get_criterion,
    get_schedule,
    parse_granularity,
)


def prunable_types() -> tuple[type, ...]:
    """The registered layer types whose handler names a prunable kernel (``tfcompress.core``)."""
    return tuple(t for t in registered_types() if handler_for_type(t).prunable_kernel(None))


def is_prunable(layer) -> bool:
    """``prune`` can wrap ``layer``: its type (or a base type) has a prunable kernel."""
    return handler_for(layer, inherit=True).prunable_kernel(layer) is not None


#: kept for code that imports it; ``is_prunable`` asks the registry, which users extend
PRUNABLE_TYPES = prunable_types()


@keras.saving.register_keras_serializable(package="tfcompress")
class PruneLowMagnitude(keras.layers.Wrapper):
    """A prunable layer: computes with ``kernel * mask``; the mask is set by `UpdatePruning`.

    Args:
        layer: a Dense, Conv1D, Conv2D, DepthwiseConv2D or SeparableConv2D layer.
        pruning_schedule: a `tfcompress.pruning.schedules` schedule.
        granularity: ``"weight"``, ``"channel"`` or ``"N:M"``.
        scope: ``"layer"`` or ``"global"``.
        criterion: a criterion name or `PruningCriterion`.
        min_keep_fraction: with ``scope="global"``, the least fraction a layer keeps.

    Example:
        >>> from tfcompress.pruning import ConstantSparsity, update_masks
        >>> keras.utils.set_random_seed(0)
        >>> layer = PruneLowMagnitude(keras.layers.Dense(4), ConstantSparsity(0.5, begin_step=0))
        >>> model = keras.Sequential([keras.Input((8,)), layer])
        >>> float(keras.ops.mean(layer.mask))                     # dense until the masks are updated
        1.0
        >>> update_masks(model, step=0)
        {...: 0.5}
        >>> float(keras.ops.mean(layer.mask))                     # the 16 smallest |w| of 32 masked
        0.5
    """

    tfcompress_pruning_wrapper = True

    def __init__(self, layer, pruning_schedule, granularity: str = "weight", scope: str = "layer",
                 criterion: Any = "magnitude", min_keep_fraction: float = 0.02, **kwargs):
        super().__init__(layer, **kwargs)
        if not is_prunable(layer):
            raise TfcompressError(
                f"cannot prune a {type(layer).__name__} layer", getattr(layer, "name", "layer"),
                f"prune one of {[t.__name__ for t in prunable_types()]}, or register a handler "
                "(tfcompress.core.register_layer) that names its kernel",
            )
        self.pruning_schedule = get_schedule(pruning_schedule)
        self.granularity = granularity
        self.kind, self.n_m = parse_granularity(granularity)
        if scope not in SCOPES:
            raise TfcompressError(f"unknown scope {scope!r}", layer.name, f"use one of {SCOPES}")
        self.scope = scope
        self.criterion = get_criterion(criterion)
        self.min_keep_fraction = float(min_keep_fraction)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        kernel = self.kernel_variable
        self.mask = self.add_weight(name="mask", shape=tuple(kernel.shape), initializer="ones",
                                    trainable=False, dtype=kernel.dtype)
        self.pruning_step = self.add_weight(name="pruning_step", shape=(), initializer="zeros",
                                            trainable=False, dtype="int64")
        self.built = True

    @property
    def kernel_variable(self):
        return getattr(self.layer, _kernel_attr(self.layer))

    @property
    def bias_variable(self):
        return self.layer.bias if getattr(self.layer, "use_bias", False) else None

    def channel_mask_tensor(self):
        axes = tuple(range(len(self.mask.shape) - 1))
        if _depthwise(self.layer):
            return keras.ops.reshape(keras.ops.max(self.mask, axis=tuple(range(len(self.mask.shape) - 2))), (-1,))
        return keras.ops.max(self.mask, axis=axes)

    def call(self, inputs, training=None):
        kernel = self.kernel_variable
        mapping = [(kernel, kernel * self.mask)]
        bias = self.bias_variable
        if self.kind == "channel" and bias is not None:
            mapping.append((bias, bias * self.channel_mask_tensor()))
        with keras.StatelessScope(state_mapping=mapping):
            return self.layer(inputs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    # -- NumPy views, used by criteria, the callback, strip and metrics
    def masked_kernel_numpy(self) -> np.ndarray:
        return keras.ops.convert_to_numpy(self.kernel_variable) * keras.ops.convert_to_numpy(self.mask)

    def channel_mask_numpy(self) -> np.ndarray:
        return channel_reduce(self, keras.ops.convert_to_numpy(self.mask), np.max)

    def tfcompress_effective_weights(self) -> list[np.ndarray]:
        """The weights the layer really computes with (tfcompress.metrics protocol)."""
        return baked_weights(self)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
            "granularity": self.granularity,
            "scope": self.scope,
            "criterion": keras.saving.serialize_keras_object(self.criterion),
            "min_keep_fraction": self.min_keep_fraction,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(config["pruning_schedule"])
        config["criterion"] = keras.saving.deserialize_keras_object(config["criterion"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfcompress")
class MaskedBatchNormalization(keras.layers.Wrapper):
    """A BatchNormalization after a channel-pruned layer: multiplies its output by the channel
    mask of ``source`` (kept in ``channel_mask``), so a pruned channel is exactly 0. `strip`
    bakes the mask into gamma and beta (then BN maps the channel to exactly 0 too).

    Example:
        >>> from tfcompress.pruning import ConstantSparsity, prune
        >>> x = keras.Input((8,))
        >>> y = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(4, name="fc")(x))
        >>> pruned = prune(keras.Model(x, y), ConstantSparsity(0.5, 0), granularity="channel", verbose=0)
        >>> masked = pruned.layers[-1]
        >>> type(masked).__name__, masked.source, tuple(masked.channel_mask.shape)   # source: the wrapper
        ('MaskedBatchNormalization', 'prune_low_magnitude_fc', (4,))
    """

    tfcompress_pruning_wrapper = True

    def __init__(self, layer, source: str, **kwargs):
        super().__init__(layer, **kwargs)
        if not isinstance(layer, keras.layers.BatchNormalization):
            raise TfcompressError("MaskedBatchNormalization wraps a BatchNormalization", layer.name)
        self.source = source

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        channels = int(input_shape[self.layer.axis if self.layer.axis != -1 else -1])
        self.channel_mask = self.add_weight(name="channel_mask", shape=(channels,), initializer="ones",
                                            trainable=False)
        self.built = True

    def call(self, inputs, training=None, mask=None):
        return self.layer(inputs, training=training, mask=mask) * self.channel_mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def tfcompress_effective_weights(self) -> list[np.ndarray]:
        return baked_weights(self)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["source"] = self.source
        return config


def baked_weights(layer) -> list[np.ndarray]:
    """The inner layer's weights with the masks multiplied in (what `strip` keeps).

    Example:
        >>> from tfcompress.pruning import ConstantSparsity
        >>> layer = PruneLowMagnitude(keras.layers.Dense(2), ConstantSparsity(0.5, begin_step=0))
        >>> layer.build((None, 2))
        >>> _ = layer.layer.kernel.assign([[1.0, 2.0], [3.0, 4.0]])
        >>> _ = layer.mask.assign([[0.0, 1.0], [1.0, 0.0]])
        >>> kernel, bias = baked_weights(layer)
        >>> kernel.tolist(), bias.tolist()
        ([[0.0, 2.0], [3.0, 0.0]], [0.0, 0.0])
    """
    weights = [np.array(w) for w in layer.layer.get_weights()]
    inner = layer.layer
    if isinstance(layer, PruneLowMagnitude):
        names = [w.path.split("/")[-1] for w in inner.weights]
        kernel_name = _kernel_attr(inner)
        mask = keras.ops.convert_to_numpy(layer.mask)
        channel = layer.channel_mask_numpy()
        for i, name in enumerate(names):
            if name == kernel_name:
                weights[i] = weights[i] * mask
            elif name == "bias" and layer.kind == "channel":
                weights[i] = weights[i] * channel
        return weights
    # MaskedBatchNormalization: gamma and beta times the channel mask -> output exactly 0
    channel = keras.ops.convert_to_numpy(layer.channel_mask)
    names = [w.path.split("/")[-1] for w in inner.weights]
    for i, name in enumerate(names):
        if name in ("gamma", "beta"):
            weights[i] = weights[i] * channel
    return weights


# channels flow through a pruning wrapper as through the layer it wraps
register_layer(PruneLowMagnitude, WrapperHandler(why="strip pruning wrappers first (tfcompress.strip)"))
register_layer(MaskedBatchNormalization, WrapperHandler(why="strip pruning wrappers first (tfcompress.strip)"))

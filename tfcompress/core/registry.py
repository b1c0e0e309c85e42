"""The layer-type registry: one handler per layer type says what that type is to tfcompress.

In the spirit of Torch-Pruning's ``BasePruningFunc`` / ``register_customized_layer`` (Fang et al.,
CVPR 2023, "DepGraph"): the graph code never tests layer types; it asks the type's handler

* how channels flow through it (:meth:`LayerHandler.trace`: it creates channels, passes them
  through, ties its inputs' channels together, lays them side by side, or is opaque) and what a
  per-channel constant becomes through it (what ``shrink`` needs to remove a dead channel
  exactly);
* how to cut its input / output channels (:meth:`LayerHandler.cut`);
* which kernel ``prune`` may mask (:meth:`LayerHandler.prunable_kernel`) and how its output
  channels lie in that kernel;
* what QAT does with it (:attr:`LayerHandler.qat`);
* how to copy it (:meth:`LayerHandler.clone`) and its MACs (:meth:`LayerHandler.macs`).

Users support their own layers with :func:`register_layer`, without editing tfcompress.

Example:

>>> import keras
>>> from tfcompress.core import ChannelwiseHandler, register_layer, handler_for
>>> @keras.saving.register_keras_serializable(package="docs")
... class ChannelScale(keras.layers.Layer):
...     def build(self, shape):
...         self.scale = self.add_weight(name="scale", shape=(shape[-1],), initializer="ones")
...     def call(self, x):
...         return x * self.scale
>>> register_layer(ChannelScale, ChannelwiseHandler(per_channel=("scale",),
...                constant=lambda layer, c: c * keras.ops.convert_to_numpy(layer.scale)))
>>> type(handler_for(ChannelScale())).__name__
'ChannelwiseHandler'
"""

from __future__ import annotations

from typing import Any

from tfcompress.errors import TfcompressError

__all__ = [
    "LayerHandler",
    "UnknownLayerError",
    "handler_for",
    "handler_for_type",
    "is_registered",
    "register_customized_layer",
    "register_layer",
    "registered_types",
    "unregister_layer",
]

# QAT roles (LayerHandler.qat)
QAT_ROLES = (
    "kernel",      # weights folded (BN) and fake-quantized per channel by QuantizedLayer
    "activation",  # an elementwise activation: fused into the kernel layer before it when TFLite fuses it
    "pass",        # int8 in, same scale out (max pooling, reshape, padding): no range of its own
    "range",       # computes a new tensor in int8 (add, mul, average pooling, softmax...): its output gets a range
    "same_range",  # inputs and output on one scale (concatenate, maximum, minimum)
    "identity",    # nothing at inference (dropout, noise): removed by QAT, as the converter does
    "refuse",      # cannot be quantized exactly: quantize raises, naming the layer and the reason
)


class UnknownLayerError(TfcompressError):
    """A step met a layer type no handler describes.

    Example:
        >>> import keras
        >>> class Mystery(keras.layers.Layer):
        ...     def call(self, x):
        ...         return x
        >>> print(UnknownLayerError(Mystery(name="m"), "quantize"))
        layer 'm': quantize does not know the layer type ...Mystery Fix: describe it to tfcompress with tfcompress.core.register_layer(Mystery, handler)...
    """

    def __init__(self, layer, step: str, why: str = ""):
        cls = type(layer)
        super().__init__(
            f"{step} does not know the layer type {cls.__module__}.{cls.__name__}"
            + (f" ({why})" if why else ""),
            f"layer {getattr(layer, 'name', '?')!r}",
            "describe it to tfcompress with tfcompress.core.register_layer("
            f"{cls.__name__}, handler), e.g. ChannelwiseHandler(...) for a per-channel layer, "
            "OpaqueHandler() to keep its channels whole (see DEVELOPERS.md, "
            "'Adding support for a layer type')",
        )
        self.layer_name = getattr(layer, "name", None)
        self.layer_type = cls.__name__


class LayerHandler:
    """What one layer type is to tfcompress. The default is an opaque layer.

    Subclass it (or one of the handlers in ``tfcompress.core.handlers``) and register it with
    :func:`register_layer`. Attributes:

    * ``kind``: the MAC-counting kind (``"conv"``, ``"dense"``, ``"pool"``, ``"norm"``,
      ``"elementwise"``, ``"other"``), as ``tfcompress.metrics`` reports it;
    * ``qat``: one of :data:`QAT_ROLES`;
    * ``known``: False only for the fallback handler of unregistered types.

    Example:
        >>> import keras
        >>> from tfcompress.core import register_layer, unregister_layer
        >>> class Identity(keras.layers.Layer):
        ...     def call(self, x):
        ...         return x
        >>> class IdentityHandler(LayerHandler):               # channel c in = channel c out, QAT passes it
        ...     qat = "identity"
        ...     def trace(self, flow, node):
        ...         flow.passthrough(node)
        >>> register_layer(Identity, IdentityHandler())
        >>> is_registered(Identity()), handler_for(Identity()).qat
        (True, 'identity')
        >>> unregister_layer(Identity)
    """

    kind: str = "other"
    qat: str = "range"
    known: bool = True
    #: why QAT refuses it (``qat == "refuse"``)
    qat_reason: str = ""
    #: why full-integer export refuses it before the converter runs (None: it converts)
    int8_refusal: str | None = None

    # ---------------------------------------------------------------- copying
    def clone(self, layer):
        """A fresh, unbuilt copy of ``layer`` (weights are copied after it is called)."""
        return layer.__class__.from_config(layer.get_config())

    # ---------------------------------------------------------------- channels
    def trace(self, flow, node) -> None:
        """Set ``flow``'s channel origins (and constants) of ``node``'s outputs.

        The default keeps every channel flowing into the layer (they are required) and gives
        its output new, required channels: always safe, never exact removal through it.
        """
        flow.opaque(node, "an opaque layer: the channels flowing into it are kept whole")

    def cut(self, layer, cut) -> tuple[dict, dict[str, Any]] | None:
        """The config and weights (by name) of ``layer`` with channels removed.

        ``cut`` is a `tfcompress.core.channels.Cut` (``keep_in``: per input a boolean array
        over its channels, ``keep_out`` over the output channels, ``weights`` by name, and the
        folded constants). Return None to reuse the layer as it is (only when no channel of it
        changes). The default: no per-channel weights, the config unchanged.
        """
        if any(not k.all() for k in cut.keep_in) or not cut.keep_out.all():
            return layer.get_config(), dict(cut.weights)
        return None

    def qat_equivalent(self, layer, input_shape: tuple):
        """A layer computing the same function that QAT can quantize exactly, or None (the layer
        is quantized as it is, by its ``qat`` role). ``quantize`` swaps it in."""
        return None

    def produces_channels(self, layer) -> bool:
        """Whether the layer creates its output channels from all its inputs' (conv, dense):
        ``shrink``'s report lists these layers' channel counts."""
        return False

    # ---------------------------------------------------------------- pruning
    def prunable_kernel(self, layer) -> str | None:
        """The attribute name of the kernel ``prune`` may mask, or None."""
        return None

    def kernel_layout(self, layer) -> str:
        """How output channels lie in the prunable kernel: ``"last"`` (kernel[..., out]) or
        ``"depthwise"`` (kernel[..., in, multiplier], channel = in * multiplier + m)."""
        return "last"

    def kernel_input_axis(self, layer) -> int:
        """The kernel axis of input features (for N:M groups)."""
        return -2

    def prune_note(self, layer) -> tuple[bool, str] | None:
        """For a layer ``prune`` leaves dense: (whether that leaves a weight matrix dense, why)."""
        return None

    # ---------------------------------------------------------------- costs
    def macs(self, layer, input_shapes: list, output_shapes: list) -> int | None:
        """MACs of one call at batch 1; None when unknown. Default: 0 for a weight-free layer."""
        return None if getattr(layer, "weights", None) else 0


class _UnknownHandler(LayerHandler):
    """What tfcompress assumes of an unregistered type: opaque, and QAT refuses it."""

    known = False
    qat = "refuse"
    qat_reason = "no handler is registered for its type"

    def trace(self, flow, node) -> None:
        flow.opaque(node, "a layer type no handler describes", unknown=True)


_REGISTRY: dict[type, LayerHandler] = {}
_UNKNOWN = _UnknownHandler()


def register_layer(layer_type: type, handler: LayerHandler, *, override: bool = False) -> None:
    """Describe ``layer_type`` to every tfcompress step with ``handler``.

    Args:
        layer_type: a ``keras.layers.Layer`` subclass (or ``keras.ops`` operation class).
        handler: a `LayerHandler` instance (e.g. ``ChannelwiseHandler(per_channel=("scale",))``).
        override: replace an existing registration (tfcompress' own included).

    Example:

    >>> import keras
    >>> from tfcompress.core import OpaqueHandler, register_layer, unregister_layer
    >>> class Mystery(keras.layers.Layer):
    ...     def call(self, x):
    ...         return x[..., ::-1]
    >>> register_layer(Mystery, OpaqueHandler())
    >>> unregister_layer(Mystery)
    """
    if not isinstance(layer_type, type):
        raise TfcompressError(f"register_layer needs a class, got {layer_type!r}", "register_layer",
                              "pass the layer class itself, e.g. register_layer(MyLayer, handler)")
    if not isinstance(handler, LayerHandler):
        raise TfcompressError(f"handler must be a LayerHandler, got {type(handler).__name__}",
                              "register_layer", "pass an instance, e.g. OpaqueHandler()")
    if handler.qat not in QAT_ROLES:
        raise TfcompressError(f"unknown QAT role {handler.qat!r}", type(handler).__name__,
                              f"use one of {QAT_ROLES}")
    if layer_type in _REGISTRY and not override and _REGISTRY[layer_type] is not handler:
        raise TfcompressError(f"{layer_type.__name__} is already registered "
                              f"({type(_REGISTRY[layer_type]).__name__})", "register_layer",
                              "pass override=True to replace it")
    _REGISTRY[layer_type] = handler


#: Torch-Pruning's name for the same call.
register_customized_layer = register_layer


def unregister_layer(layer_type: type) -> None:
    """Forget a registration made with :func:`register_layer`.

    Example:
        >>> import keras
        >>> from tfcompress.core import OpaqueHandler
        >>> class Mine(keras.layers.Layer):
        ...     def call(self, x):
        ...         return x
        >>> register_layer(Mine, OpaqueHandler())
        >>> unregister_layer(Mine)
        >>> is_registered(Mine())
        False
    """
    _REGISTRY.pop(layer_type, None)


def registered_types() -> list[type]:
    """Every registered layer type.

    Example:
        >>> import keras
        >>> keras.layers.Dense in registered_types()
        True
    """
    return list(_REGISTRY)


def handler_for_type(layer_type: type) -> LayerHandler:
    """The handler registered for ``layer_type`` itself (the fallback when there is none).

    Example:
        >>> import keras
        >>> type(handler_for_type(keras.layers.Conv2D)).__name__
        'ProducerHandler'
    """
    return _REGISTRY.get(layer_type, _UNKNOWN)


def is_registered(layer) -> bool:
    """True when a handler describes ``layer`` (its type, or a base class whose ``call`` it keeps).

    Example:
        >>> import keras
        >>> is_registered(keras.layers.Dense(4)), is_registered(keras.layers.Layer())
        (True, False)
    """
    return handler_for(layer).known


def handler_for(layer, *, inherit: bool = False) -> LayerHandler:
    """The handler of ``layer``'s type.

    The exact type first; then the nearest registered base class, but only when the subclass
    leaves ``call`` alone (a subclass that computes something else is not what the base's
    handler describes) or ``inherit`` is set (``prune`` masks any subclass of a prunable type's
    kernel, as tfmot does). Otherwise a fallback handler that treats the layer as opaque and
    that QAT refuses; steps that need more raise `UnknownLayerError`.

    Example:

    >>> import keras
    >>> from tfcompress.core import handler_for
    >>> handler_for(keras.layers.Dense(3)).prunable_kernel(keras.layers.Dense(3))
    'kernel'
    """
    cls = type(layer)
    handler = _REGISTRY.get(cls)
    if handler is not None:
        return handler
    for base in cls.__mro__[1:]:
        handler = _REGISTRY.get(base)
        if handler is not None:
            if inherit or getattr(cls, "call", None) is getattr(base, "call", None):
                return handler
            break
    return _UNKNOWN

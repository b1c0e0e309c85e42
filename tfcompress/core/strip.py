"""Strip functions by layer kind: how a model with method-specific layers becomes plain Keras.

A method registers, when it is imported, a predicate on layers and the function that strips a
model holding such layers (``tfcompress.pruning`` its wrappers, ``tfcompress.bayesian`` its
Bayesian layers); :func:`strip_all` applies each registered function, in registration order,
to a model that has a matching layer (nested models included). ``tfcompress.shrink`` calls it,
so surgery does not import the methods: the imports flow one way, core -> methods.

Example:

>>> import keras
>>> from tfcompress.core.strip import strip_all
>>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
>>> strip_all(model) is model  # nothing to strip
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["register_stripper", "strip_all"]

from tfcompress.core.walk import iter_layers

_STRIPPERS: list[tuple[Callable[[Any], bool], Callable[[Any], Any]]] = []


def register_stripper(predicate: Callable[[Any], bool], strip_fn: Callable[[Any], Any]) -> None:
    """Make `strip_all` call ``strip_fn(model)`` when some layer has ``predicate(layer)``.

    Registering a function of the same module and name again replaces the entry in place.

    Example:
        >>> import keras
        >>> class Marker(keras.layers.Layer):           # a training-only layer
        ...     def call(self, x):
        ...         return x
        >>> def drop_markers(model):
        ...     kept = [layer for layer in model.layers if not isinstance(layer, Marker)]
        ...     return keras.Sequential([keras.Input(model.input_shape[1:]), *kept])
        >>> register_stripper(lambda layer: isinstance(layer, Marker), drop_markers)
        >>> model = keras.Sequential([keras.Input((8,)), Marker(), keras.layers.Dense(4)])
        >>> [type(layer).__name__ for layer in strip_all(model).layers]
        ['Dense']
        >>> _ = _STRIPPERS.pop()                          # forget the example's strip
    """
    key = (strip_fn.__module__, strip_fn.__qualname__)
    for i, (_, fn) in enumerate(_STRIPPERS):
        if (fn.__module__, fn.__qualname__) == key:
            _STRIPPERS[i] = (predicate, strip_fn)
            return
    _STRIPPERS.append((predicate, strip_fn))


def strip_all(model):
    """``model`` with every registered strip applied whose predicate matches one of its layers.

    Example:
        >>> import keras
        >>> from tfcompress.pruning import ConstantSparsity, prune
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), verbose=0)          # a PruneLowMagnitude
        >>> [type(layer).__name__ for layer in strip_all(pruned).layers]
        ['Dense']
    """
    for predicate, strip_fn in list(_STRIPPERS):
        if any(predicate(layer) for layer in iter_layers(model)):
            model = strip_fn(model)
    return model

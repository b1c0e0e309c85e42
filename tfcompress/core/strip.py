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
    """
    key = (strip_fn.__module__, strip_fn.__qualname__)
    for i, (_, fn) in enumerate(_STRIPPERS):
        if (fn.__module__, fn.__qualname__) == key:
            _STRIPPERS[i] = (predicate, strip_fn)
            return
    _STRIPPERS.append((predicate, strip_fn))


def strip_all(model):
    """``model`` with every registered strip applied whose predicate matches one of its layers."""
    for predicate, strip_fn in list(_STRIPPERS):
        if any(predicate(layer) for layer in iter_layers(model)):
            model = strip_fn(model)
    return model

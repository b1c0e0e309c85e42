"""One layer walker: every layer of a model, nested models and shared layers treated one way.

Example:

>>> import keras
>>> from tfcompress.core import iter_layers
>>> inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")], name="inner")
>>> outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1, name="head")])
>>> [layer.name for layer in iter_layers(outer)]
['inner', 'fc', 'head']
>>> [layer.name for layer in iter_layers(outer, models=False)]
['fc', 'head']
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras

__all__ = ["iter_layers"]


def iter_layers(model, *, models: bool = True, wrapped: bool = False) -> Iterator[Any]:
    """Each layer of ``model`` once, depth first, in layer order.

    Args:
        model: a Keras model (or layer).
        models: also yield the nested models themselves (before their layers).
        wrapped: also yield the layer a ``keras.layers.Wrapper`` wraps (after the wrapper).

    Example:
        >>> inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")], name="inner")
        >>> outer = keras.Sequential([keras.Input((8,)), inner, keras.layers.Dense(2, name="out")])
        >>> [layer.name for layer in iter_layers(outer)]
        ['inner', 'fc', 'out']
        >>> [layer.name for layer in iter_layers(outer, models=False)]
        ['fc', 'out']
    """
    seen: set[int] = set()

    def walk(container) -> Iterator[Any]:
        for layer in getattr(container, "layers", []):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            if isinstance(layer, keras.Model):
                if models:
                    yield layer
                yield from walk(layer)
                continue
            yield layer
            if wrapped and isinstance(layer, keras.layers.Wrapper) and id(layer.layer) not in seen:
                seen.add(id(layer.layer))
                yield layer.layer

    yield from walk(model)

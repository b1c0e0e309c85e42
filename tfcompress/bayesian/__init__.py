"""Bayesian structured pruning, model level (the Bayesian layers are in `tfcompress.layers`).

``conversion``  ``convert`` a trained model to one of the Bayesian methods (``METHODS``), read
                its ``structure``, ``strip`` it to a plain Keras model that ``tfcompress.shrink``
                cuts (the module docstring lists the methods and their papers)
``importance``  ``prune_to`` a chosen sub-architecture by posterior importance (``scored_layers``,
                ``validate_keep``, ``mask_to``), ``cost_scales`` for KL weights priced in MACs
                and parameters
"""

from tfcompress.bayesian import conversion as _conversion
from tfcompress.bayesian import importance as _importance
from tfcompress.bayesian.conversion import METHODS, convert, strip, structure
from tfcompress.bayesian.importance import (
    cost_scales,
    mask_to,
    mask_to_budget,
    prune_to,
    scored_layers,
    validate_keep,
)

__all__ = [
    "METHODS",
    "convert",
    "cost_scales",
    "mask_to",
    "mask_to_budget",
    "prune_to",
    "scored_layers",
    "strip",
    "structure",
    "validate_keep",
]


def __getattr__(name: str):
    # the layer classes and private helpers the former module tfcompress/bayesian.py held
    for module in (_conversion, _importance):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

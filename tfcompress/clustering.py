"""Deprecated alias: use tfcompress.quantization.clustering."""

from tfcompress.layers import cluster_weights as _cluster_weights
from tfcompress.quantization import clustering as _target
from tfcompress.quantization.clustering import *  # noqa: F403


def __getattr__(name: str):
    for module in (_target, _cluster_weights):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Deprecated alias: use tfcompress.pruning.regularizers."""

from tfcompress.pruning import regularizers as _target
from tfcompress.pruning.regularizers import *  # noqa: F403


def __getattr__(name: str):
    return getattr(_target, name)

"""Deprecated alias: use tfcompress.pruning.criteria."""

from tfcompress.pruning import criteria as _target
from tfcompress.pruning.criteria import *  # noqa: F403


def __getattr__(name: str):
    return getattr(_target, name)

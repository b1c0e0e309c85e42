"""Deprecated alias: use tfcompress.pruning.surgery."""

from tfcompress.pruning import surgery as _target
from tfcompress.pruning.surgery import *  # noqa: F403


def __getattr__(name: str):
    return getattr(_target, name)

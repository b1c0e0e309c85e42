"""Deprecated alias: use tfcompress.pruning.schedules."""

from tfcompress.pruning import schedules as _target
from tfcompress.pruning.schedules import *  # noqa: F403


def __getattr__(name: str):
    return getattr(_target, name)

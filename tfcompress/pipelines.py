"""Deprecated alias: use tfcompress.pruning.pipelines."""

from tfcompress.pruning import pipelines as _target
from tfcompress.pruning.pipelines import *  # noqa: F403


def __getattr__(name: str):
    return getattr(_target, name)

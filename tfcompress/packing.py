"""Deprecated alias: use tfcompress.quantization.packing."""

from tfcompress.quantization import packing as _target
from tfcompress.quantization.packing import *  # noqa: F403


def __getattr__(name: str):
    return getattr(_target, name)

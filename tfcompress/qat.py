"""Deprecated alias: use tfcompress.quantization.qat."""

from tfcompress.layers import fake_quant as _fake_quant
from tfcompress.quantization import qat as _target
from tfcompress.quantization.qat import *  # noqa: F403


def __getattr__(name: str):
    for module in (_target, _fake_quant):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

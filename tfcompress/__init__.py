"""tfcompress: Keras 3 model compression with verified edge export.

Importing tfcompress registers every tfcompress layer, quantizer, schedule, regularizer and
callback with Keras, so a model saved to ``.keras`` loads with ``keras.saving.load_model``
after ``import tfcompress``. Nothing is downloaded.

The ``tfcompress`` command imports the package without TensorFlow (``inspect``, ``bench``,
``micro`` and ``edgetpu`` only read flatbuffers and run interpreters); the public names below
are then imported on first use.
"""

from __future__ import annotations

import importlib
import os
import sys

__version__ = "0.1.0"

_SUBMODULES = (
    "bayesian", "budget", "callbacks", "datasets", "distillation", "errors", "export", "layers", "metrics", "models",
    "pruning", "quantization", "quantizers", "uncertainty",
)
# Deprecated aliases of modules that moved into the packages above (still importable).
_DEPRECATED_SUBMODULES = (
    "clustering", "criteria", "packing", "pipelines", "qat", "regularizers", "schedules", "surgery",
)
_FUNCTIONS = {
    "Budget": "tfcompress.budget",
    "model_cost": "tfcompress.budget",
    "prune": "tfcompress.pruning",
    "strip": "tfcompress.pruning",
    "pruning_summary": "tfcompress.pruning",
    "iterative_prune": "tfcompress.pruning.pipelines",
    "shrink": "tfcompress.pruning.surgery",
    "quantize": "tfcompress.quantization.qat",
    "cluster": "tfcompress.quantization.clustering",
    "strip_clustering": "tfcompress.quantization.clustering",
    "deep_compression_size": "tfcompress.quantization.clustering",
}
# Modules whose import registers Keras-serializable classes (and, for pruning and bayesian, the
# strip functions `shrink` applies, in this order).
_REGISTERING = ("layers", "callbacks", "budget", "pruning", "pruning.schedules", "pruning.criteria", "pruning.regularizers",
                "quantizers", "bayesian", "quantization.clustering", "quantization.qat", "distillation",
                "uncertainty")

__all__ = ["__version__", *sorted(_SUBMODULES + _DEPRECATED_SUBMODULES), *sorted(_FUNCTIONS)]


def __getattr__(name: str):
    if name in _SUBMODULES or name in _DEPRECATED_SUBMODULES:
        return importlib.import_module(f"tfcompress.{name}")
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'tfcompress' has no attribute {name!r}")


def register_all() -> None:
    """Import every module that registers Keras-serializable tfcompress objects."""
    for name in _REGISTERING:
        importlib.import_module(f"tfcompress.{name}")


def _invoked_as_command() -> bool:
    # the console script, or `python -m tfcompress.cli` (argv[0] is "-m" while runpy imports us)
    first = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return first in ("tfcompress", "tfcompress.exe", "-m")


if not _invoked_as_command():
    register_all()

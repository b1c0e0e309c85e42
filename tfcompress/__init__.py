"""tfcompress: Keras 3 model compression with verified edge export.

Importing tfcompress registers every tfcompress layer, schedule and callback with Keras, so a
model saved to ``.keras`` loads with ``keras.saving.load_model`` after ``import tfcompress``.
Nothing is downloaded.
"""

__version__ = "0.1.0"

from tfcompress import (
    callbacks,
    criteria,
    datasets,
    errors,
    export,
    layers,
    metrics,
    models,
    packing,
    quantizers,
    regularizers,
    schedules,
)
from tfcompress.clustering import cluster, deep_compression_size, strip_clustering
from tfcompress.pruning import prune, pruning_summary, strip
from tfcompress.qat import quantize
from tfcompress.surgery import shrink

__all__ = [
    "__version__",
    "callbacks",
    "cluster",
    "criteria",
    "datasets",
    "deep_compression_size",
    "errors",
    "export",
    "layers",
    "metrics",
    "models",
    "packing",
    "prune",
    "pruning_summary",
    "quantize",
    "quantizers",
    "regularizers",
    "schedules",
    "shrink",
    "strip",
    "strip_clustering",
]

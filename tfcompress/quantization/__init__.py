"""Quantization methods (the layers they build are in `tfcompress.layers`).

``qat``         ``quantize``: quantization-aware training that exports exactly to int8 TFLite
``clustering``  ``cluster`` / ``strip_clustering`` (weight sharing), ``deep_compression_size``
``packing``     bits per weight and bit-packed sizes of binary / ternary models

The quantizers the binary and ternary layers use are in `tfcompress.quantizers`.
"""

from tfcompress.quantization.clustering import cluster, deep_compression_size, strip_clustering
from tfcompress.quantization.packing import pack_kernel, unpack_kernel, weight_bits_report
from tfcompress.quantization.qat import quantize

__all__ = [
    "cluster",
    "deep_compression_size",
    "pack_kernel",
    "quantize",
    "strip_clustering",
    "unpack_kernel",
    "weight_bits_report",
]

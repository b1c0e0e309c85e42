"""Quantization methods (the layers they build are in `tfcompress.layers`).

``qat``         ``quantize``: quantization-aware training that exports exactly to int8 TFLite;
                ``kernel_arithmetic``: which interpreter's int8 rounding the QAT model reproduces
``clustering``  ``cluster`` / ``strip_clustering`` (weight sharing), ``deep_compression_size``
``packing``     bits per weight and bit-packed sizes of binary / ternary models

The quantizers the binary and ternary layers use are in `tfcompress.quantizers`.
"""

from tfcompress.layers.fake_quant import current_kernel_arithmetic, kernel_arithmetic
from tfcompress.quantization.clustering import cluster, deep_compression_size, strip_clustering
from tfcompress.quantization.packing import pack_kernel, unpack_kernel, weight_bits_report
from tfcompress.quantization.qat import quantize

__all__ = [
    "cluster",
    "current_kernel_arithmetic",
    "deep_compression_size",
    "kernel_arithmetic",
    "pack_kernel",
    "quantize",
    "strip_clustering",
    "unpack_kernel",
    "weight_bits_report",
]

"""Bits per weight and the bit-packed size a model's weights would take.

Binary kernels pack at 1 bit per weight, ternary at 2 bits (log2(3) = 1.58 is the entropy bound;
2-bit packing is what kernels use), plus one float32 scale per output channel; other weights and
every bias are counted at 32 bits. This is the storage a deployment format with packed bit
kernels (e.g. Larq Compute Engine) would need, next to the int8 TFLite file that tfcompress
exports.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np


@dataclass
class LayerBits:
    name: str
    weights: int
    bits_per_weight: float
    packed_bytes: int


@dataclass
class BitsReport:
    layers: list[LayerBits]

    @property
    def packed_bytes(self) -> int:
        return sum(layer.packed_bytes for layer in self.layers)

    @property
    def float32_bytes(self) -> int:
        return sum(4 * layer.weights for layer in self.layers)

    def text(self) -> str:
        lines = [f"{'layer':24s} {'weights':>9s} {'bits/w':>7s} {'packed bytes':>13s}"]
        lines += [f"{row.name:24s} {row.weights:9,d} {row.bits_per_weight:7.2f} {row.packed_bytes:13,d}"
                  for row in self.layers]
        lines.append(f"{'total':24s} {sum(r.weights for r in self.layers):9,d} {'':7s} {self.packed_bytes:13,d}"
                     f"   (float32: {self.float32_bytes:,d})")
        return "\n".join(lines)


def weight_bits_report(model) -> BitsReport:
    rows = []
    for layer in model.layers:
        if not layer.weights:
            continue
        quantizer = getattr(layer, "kernel_quantizer", None)
        if quantizer is not None and getattr(quantizer, "bits", 32.0) < 32:
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            channels = kernel.shape[-1]
            bits = float(quantizer.bits)
            other = sum(int(np.prod(w.shape)) for w in layer.weights if w is not layer.kernel)
            packed = int(np.ceil(kernel.size * bits / 8)) + 4 * channels + 4 * other
            rows.append(LayerBits(layer.name, kernel.size + other, (8 * packed) / (kernel.size + other), packed))
        else:
            count = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
            if count:
                rows.append(LayerBits(layer.name, count, 32.0, 4 * count))
    return BitsReport(rows)

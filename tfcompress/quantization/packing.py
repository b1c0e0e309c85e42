"""Bits per weight and the bit-packed size of binary / ternary models.

For each layer with weights, `weight_bits_report` gives

* ``bits_per_weight``: the information a kernel weight carries, log2(levels): 1 bit for binary
  ({-a, a}), log2(3) = 1.585 bits for ternary ({-a, 0, a}), 32 for float layers;
* ``packed_bits_per_weight``: what a bit-packed kernel stores: 1 (binary), 2 (ternary,
  2-bit codes), 32 (float);
* ``packed_bytes``: the kernel as one bit stream, ceil(n * packed_bits / 8) bytes, plus one
  float32 scale per output channel for scaled quantizers (XNOR-Net alpha_c, TWN alpha_c; none
  for ``ste_sign``), plus every other weight (biases, BatchNorm, float layers) at float32.

This is the storage a runtime with packed low-bit kernels (e.g. Larq Compute Engine) would
need; the int8 TFLite file that `tfcompress.export.to_tflite` writes stores 8 bits per weight.
`pack_kernel` / `unpack_kernel` do the packing for real (the sizes above are their output sizes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import keras
import numpy as np

from tfcompress.errors import TfcompressError

# 2-bit codes of a ternary kernel: 0 -> 0b00, +1 -> 0b01, -1 -> 0b10; binary: -1 -> 0, +1 -> 1.
_TERNARY_CODES = {0: 0, 1: 1, -1: 2}


@dataclass
class LayerBits:
    """Storage of one layer. ``kind`` is ``"binary"``, ``"ternary"`` or ``"float"``.

    Example:
        >>> from tfcompress.layers import TernaryDense
        >>> model = keras.Sequential([keras.Input((8,)), TernaryDense(4, name="tern")])
        >>> row = weight_bits_report(model).layers[0]
        >>> row.kind, row.kernel_weights, row.scales, round(row.bits_per_weight, 3), row.packed_bytes
        ('ternary', 32, 4, 1.585, 40)
        >>> row.float32_bytes                                     # 36 weights at 4 bytes
        144
    """

    name: str
    kind: str
    kernel_weights: int
    other_weights: int
    scales: int
    bits_per_weight: float
    packed_bits_per_weight: int
    packed_bytes: int

    @property
    def weights(self) -> int:
        """Kernel and other weights (scales are derived, not counted)."""
        return self.kernel_weights + self.other_weights

    @property
    def float32_bytes(self) -> int:
        return 4 * self.weights


@dataclass
class BitsReport:
    """Per-layer bits per weight and packed sizes; ``text()`` prints the table.

    Example:
        >>> from tfcompress.layers import BinaryDense
        >>> model = keras.Sequential([keras.Input((8,)), BinaryDense(4, name="bin"), keras.layers.Dense(2, name="fc")])
        >>> report = weight_bits_report(model)
        >>> report.packed_bytes, report.float32_bytes, round(report.compression, 2)
        (76, 184, 2.42)
        >>> print(report.text())
        layer                    kind        kernel   other scales bits/w packed packed bytes float32 bytes
        ---------------------------------------------------------------------------------------------------
        bin                      binary          32       4      4  1.000      1           36           144
        fc                       float            0      10      0 32.000     32           40            40
        ---------------------------------------------------------------------------------------------------
        total                                    32      14      4                         76           184   (2.4x smaller)
    """

    layers: list[LayerBits]

    @property
    def packed_bytes(self) -> int:
        return sum(layer.packed_bytes for layer in self.layers)

    @property
    def float32_bytes(self) -> int:
        return sum(layer.float32_bytes for layer in self.layers)

    @property
    def compression(self) -> float:
        """float32 bytes / packed bytes."""
        return self.float32_bytes / self.packed_bytes if self.packed_bytes else 1.0

    @property
    def bits_per_weight(self) -> float:
        """Mean information per weight of the model's kernels: log2(levels) for a quantized
        kernel (1 binary, log2 3 = 1.585 ternary), 32 for every weight of a float layer; biases
        and scales of quantized layers are left out (as "8 bits" describes an int8 kernel)."""
        count = sum(r.kernel_weights if r.kind != "float" else r.other_weights for r in self.layers)
        bits = sum(r.kernel_weights * r.bits_per_weight if r.kind != "float" else 32.0 * r.other_weights
                   for r in self.layers)
        return bits / count if count else 32.0

    def to_dict(self) -> dict:
        return {
            "layers": [asdict(layer) for layer in self.layers],
            "packed_bytes": self.packed_bytes,
            "float32_bytes": self.float32_bytes,
            "compression": self.compression,
            "bits_per_weight": self.bits_per_weight,
        }

    def text(self) -> str:
        header = (
            f"{'layer':24s} {'kind':8s} {'kernel':>9s} {'other':>7s} {'scales':>6s} "
            f"{'bits/w':>6s} {'packed':>6s} {'packed bytes':>12s} {'float32 bytes':>13s}"
        )
        lines = [header, "-" * len(header)]
        for r in self.layers:
            lines.append(
                f"{r.name[:24]:24s} {r.kind:8s} {r.kernel_weights:9,d} {r.other_weights:7,d} "
                f"{r.scales:6,d} {r.bits_per_weight:6.3f} {r.packed_bits_per_weight:6d} "
                f"{r.packed_bytes:12,d} {r.float32_bytes:13,d}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{'total':24s} {'':8s} {sum(r.kernel_weights for r in self.layers):9,d} "
            f"{sum(r.other_weights for r in self.layers):7,d} "
            f"{sum(r.scales for r in self.layers):6,d} "
            f"{'':6s} {'':6s} {self.packed_bytes:12,d} {self.float32_bytes:13,d}"
            f"   ({self.compression:.1f}x smaller)"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def packed_kernel_bytes(count: int, packed_bits: int) -> int:
    """Bytes of ``count`` weights as one bit stream of ``packed_bits`` bits each.

    Example:
        >>> packed_kernel_bytes(32, 2), packed_kernel_bytes(9, 1)     # 64 bits; 9 bits round up to 2 bytes
        (8, 2)
    """
    return math.ceil(count * packed_bits / 8)


def _walk(model):
    seen: set[int] = set()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _walk(layer)
        elif id(layer) not in seen:
            seen.add(id(layer))
            yield layer


def weight_bits_report(model) -> BitsReport:
    """Bits per weight and bit-packed bytes of every layer with weights (nested models walked).

    Quantized-kernel layers (`BinaryDense`, `BinaryConv2D`, `TernaryDense`, `TernaryConv2D`):
    the kernel at ``quantizer.packed_bits`` per weight, one float32 scale per output channel if
    the quantizer is scaled, the bias at float32. Every other layer: all its weights at float32.

    Example:
        >>> from tfcompress.layers import TernaryDense
        >>> model = keras.Sequential([keras.Input((8,)), TernaryDense(4)])
        >>> report = weight_bits_report(model)
        >>> report.packed_bytes, round(report.bits_per_weight, 3)
        (40, 1.585)
    """
    if not hasattr(model, "layers"):
        raise TfcompressError(
            "not a Keras model", type(model).__name__, "pass a Sequential or Functional model"
        )
    rows = []
    for layer in _walk(model):
        if not layer.weights:
            continue
        quantizer = getattr(layer, "kernel_quantizer", None)
        if getattr(layer, "tfcompress_quantized_kernel", False) and quantizer is not None:
            kernel = int(np.prod(layer.kernel.shape))
            other = sum(int(np.prod(w.shape)) for w in layer.weights if w is not layer.kernel)
            scales = int(layer.kernel.shape[-1]) if quantizer.scaled else 0
            packed = packed_kernel_bytes(kernel, quantizer.packed_bits) + 4 * (scales + other)
            kind = {2: "binary", 3: "ternary"}[quantizer.levels]
            rows.append(
                LayerBits(
                    layer.name,
                    kind,
                    kernel,
                    other,
                    scales,
                    float(quantizer.bits),
                    int(quantizer.packed_bits),
                    packed,
                )
            )
        else:
            count = sum(int(np.prod(w.shape)) for w in layer.weights)
            rows.append(LayerBits(layer.name, "float", 0, count, 0, 32.0, 32, 4 * count))
    return BitsReport(rows)


def pack_kernel(values: np.ndarray, levels: int) -> tuple[bytes, np.ndarray]:
    """Bit-pack a binary (``levels=2``) or ternary (``levels=3``) quantized kernel.

    Returns the packed bytes (1 bit per weight for binary: +1 -> 1, -1 -> 0; 2 bits per weight
    for ternary: 0 -> 00, +1 -> 01, -1 -> 10; C order, big-endian bit order as `np.packbits`)
    and the float32 per-output-channel scales alpha_c (the last axis).

    Example:
        >>> kernel = np.array([[0.5, -2.0], [-0.5, 0.0]], "float32")   # alpha = (0.5, 2.0), codes +-1 / 0
        >>> packed, scales = pack_kernel(kernel, levels=3)
        >>> len(packed), scales.tolist()
        (1, [0.5, 2.0])
        >>> unpack_kernel(packed, scales, kernel.shape, levels=3).tolist()
        [[0.5, -2.0], [-0.5, 0.0]]
    """
    values = np.asarray(values, dtype=np.float32)
    flat = values.reshape(-1, values.shape[-1])
    scales = np.abs(flat).max(axis=0).astype(np.float32)
    unit = np.divide(flat, scales, out=np.zeros_like(flat), where=scales > 0)
    codes = np.rint(unit).astype(np.int8)
    if not np.allclose(codes * scales, flat, rtol=1e-6, atol=0):
        raise TfcompressError(
            "the kernel is not of the form alpha_c * {-1, 0, 1} per output channel",
            "pack_kernel(values)",
            "pass a quantized kernel (layer.tfcompress_effective_weights()[0])",
        )
    codes = codes.reshape(values.shape)
    if levels == 2:
        if np.any(codes == 0):
            raise TfcompressError(
                "a binary kernel has zeros", "pack_kernel(values)", "use levels=3"
            )
        bits = (codes.ravel() > 0).astype(np.uint8)
    elif levels == 3:
        pairs = np.vectorize(_TERNARY_CODES.__getitem__, otypes=[np.uint8])(codes.ravel())
        bits = np.stack([(pairs >> 1) & 1, pairs & 1], axis=1).ravel()
    else:
        raise TfcompressError(f"levels must be 2 or 3, got {levels}", "pack_kernel(levels)")
    return np.packbits(bits).tobytes(), scales


def unpack_kernel(
    packed: bytes, scales: np.ndarray, shape: tuple[int, ...], levels: int
) -> np.ndarray:
    """The inverse of `pack_kernel`: the float32 kernel alpha_c * code.

    Example:
        >>> packed, scales = pack_kernel(np.array([[1.0, -3.0], [-1.0, 3.0]], "float32"), levels=2)
        >>> packed, scales.tolist()                              # bits 1 0 0 1, one scale per column
        (b'\\x90', [1.0, 3.0])
        >>> unpack_kernel(packed, scales, (2, 2), levels=2).tolist()
        [[1.0, -3.0], [-1.0, 3.0]]
    """
    count = int(np.prod(shape))
    width = 1 if levels == 2 else 2
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8))[: count * width]
    if bits.size != count * width:
        raise TfcompressError(
            f"{len(packed)} bytes hold fewer than {count} weights", "unpack_kernel(packed)"
        )
    if levels == 2:
        codes = np.where(bits == 1, 1.0, -1.0)
    else:
        pairs = bits.reshape(-1, 2)
        value = pairs[:, 0] * 2 + pairs[:, 1]
        codes = np.select([value == 1, value == 2], [1.0, -1.0], 0.0)
    return (codes.reshape(shape) * np.asarray(scales, dtype=np.float32)).astype(np.float32)


__all__ = [
    "BitsReport",
    "LayerBits",
    "pack_kernel",
    "packed_kernel_bytes",
    "unpack_kernel",
    "weight_bits_report",
]

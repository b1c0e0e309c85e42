"""Shared by the binary and ternary layers: a Dense / Conv2D whose kernel is quantized in ``call``.

`tfcompress.layers.binary` (BinaryConnect, XNOR-Net, BNN) and `tfcompress.layers.ternary` (TWN)
subclass :class:`_QuantizedKernelMixin` with their kernel quantizers from `tfcompress.quantizers`.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfcompress import quantizers
from tfcompress.errors import TfcompressError


def _resolve(identifier, where: str, argument: str) -> quantizers.Quantizer | None:
    try:
        return quantizers.get(identifier)
    except TfcompressError as exc:
        raise TfcompressError(exc.what, f"{where}({argument})", exc.fix) from None


def _check_no_lora(kwargs: dict[str, Any], where: str) -> None:
    if kwargs.get("lora_rank"):
        raise TfcompressError(
            "LoRA is not supported on quantized-kernel layers",
            f"{where}(lora_rank)",
            "drop lora_rank",
        )


class _QuantizedKernelMixin:
    """Shared by the binary and ternary layers: quantize the kernel (and optionally the inputs)
    in ``call``; `tfcompress_effective_weights` gives the weights a plain layer would hold."""

    tfcompress_quantized_kernel = True

    def _init_quantizers(self, kernel_quantizer, input_quantizer, levels: int) -> None:
        where = type(self).__name__
        kernel = _resolve(kernel_quantizer, where, "kernel_quantizer")
        if kernel is None or kernel.levels != levels:
            kinds = {2: "binary", 3: "ternary"}
            raise TfcompressError(
                f"{where} needs a {kinds[levels]} kernel quantizer, got {kernel!r}",
                f"{where}(kernel_quantizer)",
                "use BinaryDense/BinaryConv2D with 'xnor_weight', 'magnitude_aware_sign' or "
                "'ste_sign', TernaryDense/TernaryConv2D for ternary weights",
            )
        activation = _resolve(input_quantizer, where, "input_quantizer")
        if activation is not None and not activation.activation:
            raise TfcompressError(
                f"{activation!r} quantizes weights per output channel, not activations",
                f"{where}(input_quantizer)",
                "use input_quantizer='ste_sign' or None",
            )
        self.kernel_quantizer = kernel
        self.input_quantizer = activation

    def quantized_kernel(self):
        """The quantized kernel (a tensor; the gradient reaches the latent kernel by the STE)."""
        return self.kernel_quantizer(keras.ops.convert_to_tensor(self.kernel))

    def kernel_scale(self) -> np.ndarray:
        """The per-output-channel scale alpha_c of the quantized kernel (ones for ``ste_sign``)."""
        return keras.ops.convert_to_numpy(
            self.kernel_quantizer.scale(keras.ops.convert_to_tensor(self.kernel))
        )

    def call(self, inputs, training=None):
        from keras import ops

        if self.input_quantizer is not None:
            inputs = self.input_quantizer(inputs)
        kernel = self.quantized_kernel()
        if isinstance(self, keras.layers.Dense):
            outputs = ops.matmul(inputs, kernel)
            if self.use_bias:
                outputs = ops.add(outputs, self.bias)
        else:
            outputs = self.convolution_op(inputs, kernel)
            if self.use_bias:
                if self.data_format == "channels_last":
                    shape = (1,) * (self.rank + 1) + (self.filters,)
                else:
                    shape = (1, self.filters) + (1,) * self.rank
                outputs = ops.add(outputs, ops.reshape(self.bias, shape))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def tfcompress_effective_weights(self) -> list[np.ndarray]:
        """[quantized kernel, bias]: the weights of the equivalent plain Dense / Conv2D."""
        weights = [
            keras.ops.convert_to_numpy(
                self.kernel_quantizer.forward(keras.ops.convert_to_tensor(self.kernel))
            )
        ]
        if self.use_bias:
            weights.append(keras.ops.convert_to_numpy(self.bias))
        return weights

    def _quantizer_config(self) -> dict[str, Any]:
        return {"input_quantizer": quantizers.serialize(self.input_quantizer)}

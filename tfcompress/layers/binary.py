"""Binary and ternary Dense / Conv2D layers: latent float weights, quantized in the forward pass.

``BinaryDense`` / ``BinaryConv2D`` (BinaryConnect, Courbariaux et al. 2015; XNOR-Net, Rastegari
et al. 2016) and ``TernaryDense`` / ``TernaryConv2D`` (TWN, Li et al. 2016) are the Keras layers
with a ``kernel_quantizer`` (see `tfcompress.quantizers`) applied to the kernel on every call
and an optional ``input_quantizer`` on the inputs (binarized activations, BNN). The optimizer
updates the latent float kernel (the straight-through estimator carries the gradient).

Export: `tfcompress.export.to_tflite` works on these models directly; the quantized kernel is
computed from constants and folded by the converter, so each output channel's int8 weights are
exactly {-127, 127} (binary) or {-127, 0, 127} (ternary) times the channel scale
alpha_c / 127. `materialize` returns the equivalent plain Keras model.
"""

from __future__ import annotations

from typing import Any

import keras

from tfcompress import quantizers


class _QuantizedKernelMixin:
    tfcompress_quantized_kernel = True

    def _init_quantizers(self, kernel_quantizer, input_quantizer) -> None:
        self.kernel_quantizer = quantizers.get(kernel_quantizer)
        self.input_quantizer = quantizers.get(input_quantizer)

    def quantized_kernel(self):
        return self.kernel_quantizer(keras.ops.convert_to_tensor(self.kernel))

    def call(self, inputs, training=None):
        if self.input_quantizer is not None:
            inputs = self.input_quantizer(inputs)
        with keras.StatelessScope(state_mapping=[(self.kernel, self.quantized_kernel())]):
            return super().call(inputs)

    def tfcompress_effective_weights(self):
        weights = [keras.ops.convert_to_numpy(self.quantized_kernel())]
        if self.use_bias:
            weights.append(keras.ops.convert_to_numpy(self.bias))
        return weights

    def _quantizer_config(self) -> dict[str, Any]:
        return {"kernel_quantizer": quantizers.serialize(self.kernel_quantizer),
                "input_quantizer": quantizers.serialize(self.input_quantizer)}


@keras.saving.register_keras_serializable(package="tfcompress")
class BinaryDense(_QuantizedKernelMixin, keras.layers.Dense):
    """Dense with binary weights (``kernel_quantizer="xnor_weight"``: per-unit scale; ``"ste_sign"``: +-1)."""

    def __init__(self, units, kernel_quantizer="xnor_weight", input_quantizer=None, **kwargs):
        super().__init__(units, **kwargs)
        self._init_quantizers(kernel_quantizer, input_quantizer)

    def get_config(self):
        return {**super().get_config(), **self._quantizer_config()}


@keras.saving.register_keras_serializable(package="tfcompress")
class BinaryConv2D(_QuantizedKernelMixin, keras.layers.Conv2D):
    """Conv2D with binary weights (per-filter XNOR scale by default)."""

    def __init__(self, filters, kernel_size, kernel_quantizer="xnor_weight", input_quantizer=None, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self._init_quantizers(kernel_quantizer, input_quantizer)

    def get_config(self):
        return {**super().get_config(), **self._quantizer_config()}


@keras.saving.register_keras_serializable(package="tfcompress")
class TernaryDense(_QuantizedKernelMixin, keras.layers.Dense):
    """Dense with TWN ternary weights {-a, 0, a} per unit."""

    def __init__(self, units, threshold_factor: float = 0.7, input_quantizer=None, **kwargs):
        kwargs.pop("kernel_quantizer", None)
        super().__init__(units, **kwargs)
        self.threshold_factor = float(threshold_factor)
        self._init_quantizers(quantizers.TernaryWeight(threshold_factor), input_quantizer)

    def get_config(self):
        config = {**super().get_config(), **self._quantizer_config(), "threshold_factor": self.threshold_factor}
        config.pop("kernel_quantizer")
        return config


@keras.saving.register_keras_serializable(package="tfcompress")
class TernaryConv2D(_QuantizedKernelMixin, keras.layers.Conv2D):
    """Conv2D with TWN ternary weights {-a, 0, a} per filter."""

    def __init__(self, filters, kernel_size, threshold_factor: float = 0.7, input_quantizer=None, **kwargs):
        kwargs.pop("kernel_quantizer", None)
        super().__init__(filters, kernel_size, **kwargs)
        self.threshold_factor = float(threshold_factor)
        self._init_quantizers(quantizers.TernaryWeight(threshold_factor), input_quantizer)

    def get_config(self):
        config = {**super().get_config(), **self._quantizer_config(), "threshold_factor": self.threshold_factor}
        config.pop("kernel_quantizer")
        return config


def materialize(model) -> keras.Model:
    """The same model with every quantized-kernel layer replaced by a plain Dense / Conv2D holding
    its quantized kernel (layers with an input quantizer are kept: their activations need it)."""
    pairs = []

    def replace(layer):
        if getattr(layer, "tfcompress_quantized_kernel", False) and layer.input_quantizer is None:
            base = keras.layers.Dense if isinstance(layer, keras.layers.Dense) else keras.layers.Conv2D
            config = {k: v for k, v in layer.get_config().items()
                      if k not in ("kernel_quantizer", "input_quantizer", "threshold_factor")}
            new = base.from_config(config)
        else:
            new = layer.__class__.from_config(layer.get_config())
        pairs.append((layer, new))
        return new

    plain = keras.models.clone_model(model, clone_function=replace)
    for source, target in pairs:
        if getattr(source, "tfcompress_quantized_kernel", False) and source.input_quantizer is None:
            target.set_weights(source.tfcompress_effective_weights())
        elif source.weights:
            target.set_weights(source.get_weights())
    return plain

"""Binary Dense / Conv2D layers (latent float weights, binarized in the forward pass) and
`materialize`, which turns binary and ternary models into plain Keras models.

``BinaryDense`` / ``BinaryConv2D`` apply a ``kernel_quantizer`` (see `tfcompress.quantizers`)
to the latent float kernel on every call: ``"xnor_weight"`` (default, XNOR-Net, Rastegari et
al. 2016, eq. 2-4: alpha_c sign(W_c) with alpha_c = mean |W_c| per output channel),
``"magnitude_aware_sign"`` (same value, Bi-Real Net gradient) or ``"ste_sign"``
(BinaryConnect, Courbariaux et al. 2015, eq. 1: sign(W) in {-1, +1}). An optional
``input_quantizer="ste_sign"`` binarizes the layer's inputs (BNN, Hubara et al. 2016, eq. 1
and 4). The optimizer updates the latent float kernel through the straight-through
estimator; the ternary layers (TWN) are in `tfcompress.layers.ternary`.

Export to int8 TFLite, two equivalent roads (both tested):

* `tfcompress.export.to_tflite(model, ...)` on the binary / ternary model: the converter freezes
  the latent kernel and constant-folds the quantizer, so each layer's weights become one
  constant. `to_tflite` materializes the layers first (see `materialize`) when some have no
  input quantizer.
* ``to_tflite(materialize(model), ...)``: a plain Keras model (Dense / Conv2D holding the
  quantized kernels; an input quantizer becomes a `QuantizeActivation` layer computing
  sign(x) with the TFLite int8 builtins GREATER_EQUAL and SELECT_V2).

Either way the converter quantizes weights per output channel with scale max|W_c| / 127, so a
binary channel {-a, a} is stored exactly as {-127, 127} and a ternary channel {-a, 0, a} as
{-127, 0, 127} with scale a / 127: the int8 file represents the quantized weights exactly.
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


@keras.saving.register_keras_serializable(package="tfcompress")
class BinaryDense(_QuantizedKernelMixin, keras.layers.Dense):
    """Dense with binary weights and optionally binarized inputs.

    Args:
        units: output size.
        kernel_quantizer: ``"xnor_weight"`` (default: alpha_c sign(W_c), XNOR-Net eq. 2-4),
            ``"magnitude_aware_sign"`` (same value, Bi-Real Net gradient) or ``"ste_sign"``
            (sign(W) in {-1, +1}, BinaryConnect eq. 1), or a `tfcompress.quantizers` instance.
        input_quantizer: None, or ``"ste_sign"`` to binarize the inputs (BNN).
        **kwargs: those of `keras.layers.Dense`.
    """

    def __init__(self, units: int, kernel_quantizer="xnor_weight", input_quantizer=None, **kwargs):
        _check_no_lora(kwargs, "BinaryDense")
        super().__init__(units, **kwargs)
        self._init_quantizers(kernel_quantizer, input_quantizer, levels=2)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            **self._quantizer_config(),
            "kernel_quantizer": quantizers.serialize(self.kernel_quantizer),
        }


@keras.saving.register_keras_serializable(package="tfcompress")
class BinaryConv2D(_QuantizedKernelMixin, keras.layers.Conv2D):
    """Conv2D with binary weights (per-filter XNOR scale by default) and optionally binarized
    inputs. Arguments as `BinaryDense` plus those of `keras.layers.Conv2D`."""

    def __init__(
        self,
        filters: int,
        kernel_size,
        kernel_quantizer="xnor_weight",
        input_quantizer=None,
        **kwargs,
    ):
        super().__init__(filters, kernel_size, **kwargs)
        self._init_quantizers(kernel_quantizer, input_quantizer, levels=2)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            **self._quantizer_config(),
            "kernel_quantizer": quantizers.serialize(self.kernel_quantizer),
        }


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeActivation(keras.layers.Layer):
    """Applies an activation quantizer (``"ste_sign"``: sign(x) with sign(0) = +1, BNN eq. 1;
    straight-through gradient, BNN eq. 4). What `materialize` puts in front of a plain layer
    whose source layer had an ``input_quantizer``; in TFLite it is GREATER_EQUAL + SELECT_V2."""

    def __init__(self, quantizer="ste_sign", **kwargs):
        super().__init__(**kwargs)
        self.quantizer = _resolve(quantizer, "QuantizeActivation", "quantizer")
        if self.quantizer is None or not self.quantizer.activation:
            raise TfcompressError(
                f"{self.quantizer!r} is not an activation quantizer",
                "QuantizeActivation(quantizer)",
                "use 'ste_sign'",
            )

    def call(self, inputs):
        return self.quantizer(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "quantizer": quantizers.serialize(self.quantizer)}


_STRIP = ("kernel_quantizer", "input_quantizer", "threshold_factor")


def _is_quantized(layer) -> bool:
    return bool(getattr(layer, "tfcompress_quantized_kernel", False))


def _plain_layer(layer):
    base = keras.layers.Dense if isinstance(layer, keras.layers.Dense) else keras.layers.Conv2D
    config = {k: v for k, v in layer.get_config().items() if k not in _STRIP}
    return base.from_config(config)


def _activation_for(layer) -> QuantizeActivation:
    return QuantizeActivation(layer.input_quantizer, name=f"{layer.name}_input_quantizer")


def materialize(model: keras.Model) -> keras.Model:
    """The same model with every binary / ternary layer replaced by a plain Keras layer.

    Each `BinaryDense` / `BinaryConv2D` / `TernaryDense` / `TernaryConv2D` becomes a
    `keras.layers.Dense` / `keras.layers.Conv2D` (same name and options) whose kernel is the
    quantized kernel (values {-a_c, a_c} or {-a_c, 0, a_c} per output channel) and whose bias
    is the layer's bias; a layer with an ``input_quantizer`` is preceded by a
    `QuantizeActivation` layer. Other layers are copied with their weights. Predictions equal
    the source model's. Works on Sequential and Functional models (nested ones included).
    """
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise TfcompressError(
            "materialize needs a built Sequential or Functional model",
            type(model).__name__,
            "build the model with keras.Input first",
        )
    pairs: list[tuple[Any, Any]] = []
    plain = _rebuild(model, pairs)
    for source, target in pairs:
        if _is_quantized(source):
            target.set_weights(source.tfcompress_effective_weights())
        elif source.weights:
            target.set_weights(source.get_weights())
    return plain


def _clone_layer(layer, pairs):
    if isinstance(layer, keras.Model):
        return _rebuild(layer, pairs)
    new = (
        _plain_layer(layer)
        if _is_quantized(layer)
        else layer.__class__.from_config(layer.get_config())
    )
    pairs.append((layer, new))
    return new


def _rebuild(model: keras.Model, pairs) -> keras.Model:
    if isinstance(model, keras.Sequential):
        if not getattr(model, "inputs", None):
            raise TfcompressError(
                "a nested Sequential model has no Input",
                model.name,
                "start it with keras.Input(shape)",
            )
        layers: list[Any] = [
            keras.Input(tuple(model.inputs[0].shape)[1:], dtype=model.inputs[0].dtype)
        ]
        for layer in model.layers:
            if _is_quantized(layer) and layer.input_quantizer is not None:
                layers.append(_activation_for(layer))
            layers.append(_clone_layer(layer, pairs))
        return keras.Sequential(layers, name=model.name)

    sources: dict[int, Any] = {}

    def clone_function(layer):
        new = _clone_layer(layer, pairs)
        sources[id(new)] = layer
        return new

    def call_function(layer, *args, **kwargs):
        source = sources.get(id(layer))
        if source is not None and _is_quantized(source) and source.input_quantizer is not None:
            args = (_activation_for(source)(args[0]), *args[1:])
        return layer(*args, **kwargs)

    return keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function
    )


def __getattr__(name: str):
    # The ternary layers live in tfcompress.layers.ternary; kept importable from here.
    if name in ("TernaryDense", "TernaryConv2D"):
        from tfcompress.layers import ternary

        return getattr(ternary, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BinaryConv2D", "BinaryDense", "QuantizeActivation", "materialize"]

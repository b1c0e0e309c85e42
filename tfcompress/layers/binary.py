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

from tfcompress import quantizers
from tfcompress.core import rebuild, trace
from tfcompress.errors import TfcompressError
from tfcompress.layers._quantized_kernel import _check_no_lora, _QuantizedKernelMixin, _resolve


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

    Example:
        >>> layer = BinaryDense(4)
        >>> model = keras.Sequential([keras.Input((8,)), layer])
        >>> kernel = keras.ops.convert_to_numpy(layer.tfcompress_effective_weights()[0])
        >>> kernel.shape, [len(set(abs(kernel[:, c]).round(6))) for c in range(4)]   # one |value| per unit
        ((8, 4), [1, 1, 1, 1])
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
    inputs. Arguments as `BinaryDense` plus those of `keras.layers.Conv2D`.

    Example:
        >>> import numpy as np
        >>> layer = BinaryConv2D(4, 3, input_quantizer="ste_sign")
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), layer])
        >>> model(np.ones((1, 8, 8, 1), "float32")).shape
        TensorShape([1, 6, 6, 4])
        >>> type(layer.kernel_quantizer).__name__, type(layer.input_quantizer).__name__
        ('XnorWeight', 'SteSign')
    """

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
    whose source layer had an ``input_quantizer``; in TFLite it is GREATER_EQUAL + SELECT_V2.

    Example:
        >>> import numpy as np
        >>> keras.ops.convert_to_numpy(QuantizeActivation()(np.array([[-0.5, 0.0, 2.0]], "float32"))).tolist()
        [[-1.0, 1.0, 1.0]]
    """

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

    Example:
        >>> import numpy as np
        >>> from tfcompress.layers import TernaryDense
        >>> model = keras.Sequential([keras.Input((8,)), BinaryDense(4, name="b"), TernaryDense(2, name="t")])
        >>> plain = materialize(model)
        >>> [type(layer).__name__ for layer in plain.layers]
        ['Dense', 'Dense']
        >>> x = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
        >>> bool(np.allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5))
        True
    """
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise TfcompressError(
            "materialize needs a built Sequential or Functional model",
            type(model).__name__,
            "build the model with keras.Input first",
        )
    return _rebuild(model)


def _rebuild(model: keras.Model) -> keras.Model:
    """``model`` with each binary / ternary layer replaced by its plain layer (quantized
    weights), preceded by its input quantizer as an activation."""

    def replace(node, args, kwargs):
        layer = node.op
        if not _is_quantized(layer):
            return None
        x = args[0]
        if layer.input_quantizer is not None:
            x = _activation_for(layer)(x)
        new = _plain_layer(layer)
        out = new(x, *args[1:], **kwargs)
        new.set_weights(layer.tfcompress_effective_weights())
        return out

    return rebuild(trace(model, where="materialize", inline=False), replace, as_clone=True)


def __getattr__(name: str):
    # The ternary layers live in tfcompress.layers.ternary; kept importable from here.
    if name in ("TernaryDense", "TernaryConv2D"):
        from tfcompress.layers import ternary

        return getattr(ternary, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BinaryConv2D", "BinaryDense", "QuantizeActivation", "materialize"]

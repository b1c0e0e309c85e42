"""The quantization-aware training layers and the export switch.

`ActivationQuantizer` and `SharedRangeQuantizer` fake-quantize activations to per-tensor
asymmetric int8 with moving-average ranges; `QuantizedLayer` is a Conv2D / DepthwiseConv2D /
Dense with its BatchNormalization folded, its ReLU / ReLU6 fused and its kernel fake-quantized
per output channel. ``tfcompress.quantize`` (`tfcompress.quantization.qat`) builds models from
them; its docstring gives the method and the papers.

:func:`export_mode` is the export switch `tfcompress.export.to_tflite` traces a QAT model in:
the weight fake quantization is left out (the converter quantizes the folded float kernels with
the same formula) and, with ``preserve_sparsity``, the folded kernels are computed once, eagerly.
Like Larq's ``quantized_scope``, it is scoped state in a `contextvars.ContextVar`: set only
inside the ``with`` block, in the thread (or task) that entered it, and restored on exit, also
when blocks nest; :func:`exporting` reads it.
"""

from __future__ import annotations

import contextlib
import contextvars
import types
from collections.abc import Iterator, Mapping
from typing import Any

import keras
import numpy as np

from tfcompress.core import FUSABLE_ACTIVATIONS
from tfcompress.errors import TfcompressError

# None outside export_mode. Inside: the folded kernels computed eagerly for export, by
# id(QuantizedLayer): the converter does not constant-fold element-wise ops on large kernels
# (it left fc1's SELECT in float), so preserve_sparsity's survivor lifting reaches it as a
# ready constant
_EXPORT: contextvars.ContextVar[Mapping[int, np.ndarray] | None] = contextvars.ContextVar(
    "tfcompress_export", default=None)


@contextlib.contextmanager
def export_mode(model: keras.Model | None = None) -> Iterator[None]:
    """While tracing for the converter: weights stay float (the converter quantizes them)."""
    kernels = dict(_EXPORT.get() or {})
    if model is not None:
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, QuantizedLayer) and layer.sparsity_mask is not None:
                kernels[id(layer)] = keras.ops.convert_to_numpy(layer.folded_kernel_and_bias()[0])
    token = _EXPORT.set(types.MappingProxyType(kernels))
    try:
        yield
    finally:
        _EXPORT.reset(token)


def exporting() -> bool:
    """True inside `export_mode` (in this thread or task)."""
    return _EXPORT.get() is not None


def fake_quant_per_channel(kernel, channel_axis_last: bool = True):
    """Symmetric narrow-range int8 fake quantization per output channel (last axis)."""
    import tensorflow as tf

    flat = tf.reshape(kernel, (-1, tf.shape(kernel)[-1]))
    bound = tf.reduce_max(tf.abs(flat), axis=0)
    bound = tf.maximum(bound, 1e-8)
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, -bound, bound, num_bits=8,
                                                                    narrow_range=True)


@keras.saving.register_keras_serializable(package="tfcompress")
class ActivationQuantizer(keras.layers.Layer):
    """Per-tensor asymmetric int8 fake quantization with EMA-tracked ranges (Jacob et al. 2018, sec. 3.1).

    Args:
        ema_decay: decay of the moving averages of the batch min and max.
        start_step: training steps before fake quantization is switched on (ranges are
            tracked from the first step).
        fixed_range: ``(min, max)`` for an output whose int8 quantization TFLite fixes, instead
            of a tracked range: softmax and logistic outputs have scale 1/256 and zero point
            -128, i.e. ``(0, 255/256)``; tanh has scale 1/128 and zero point 0, ``(-1, 127/128)``
            (TFLite 8-bit quantization specification, SOFTMAX / LOGISTIC / TANH "restriction").

    Example:

    >>> import numpy as np
    >>> from tfcompress.layers import ActivationQuantizer
    >>> q = ActivationQuantizer(fixed_range=(0.0, 255 / 256))
    >>> out = q(np.array([[0.3, 0.7]], "float32"))
    >>> np.round(np.asarray(out) * 256).tolist()
    [[77.0, 179.0]]
    """

    tfcompress_fake_quant = True

    def __init__(self, ema_decay: float = 0.99, start_step: int = 0, fixed_range: tuple | list | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.ema_decay = float(ema_decay)
        self.start_step = int(start_step)
        self.fixed_range = None if fixed_range is None else (float(fixed_range[0]), float(fixed_range[1]))
        if self.fixed_range is not None and not self.fixed_range[0] <= 0.0 <= self.fixed_range[1] \
                or self.fixed_range is not None and self.fixed_range[0] >= self.fixed_range[1]:
            raise TfcompressError(f"fixed_range {fixed_range} must contain 0 and have min < max", self.name,
                                  "pass e.g. (0.0, 255 / 256)")

    def build(self, input_shape):
        low, high = self.fixed_range or (0.0, 0.0)
        self.range_min = self.add_weight(name="range_min", shape=(), initializer=keras.initializers.Constant(low),
                                         trainable=False)
        self.range_max = self.add_weight(name="range_max", shape=(), initializer=keras.initializers.Constant(high),
                                         trainable=False)
        self.steps = self.add_weight(name="steps", shape=(), initializer="zeros", trainable=False, dtype="int64")
        self.built = True

    def call(self, inputs, training=None):
        import tensorflow as tf

        if self.fixed_range is not None:
            low, high = self.fixed_range
            if training:
                self.steps.assign_add(1)
                quantized = self._quantize(inputs, low, high)
                return tf.where(tf.greater(self.steps, self.start_step), quantized, inputs)
            return self._quantize(inputs, low, high)
        if training:
            batch_min = tf.minimum(tf.reduce_min(inputs), 0.0)
            batch_max = tf.maximum(tf.reduce_max(inputs), 0.0)
            first = tf.equal(self.steps, 0)
            decay = self.ema_decay
            new_min = tf.where(first, batch_min, decay * self.range_min + (1 - decay) * batch_min)
            new_max = tf.where(first, batch_max, decay * self.range_max + (1 - decay) * batch_max)
            self.range_min.assign(new_min)
            self.range_max.assign(new_max)
            self.steps.assign_add(1)
            quantized = self._quantize(inputs, new_min, new_max)
            active = tf.greater(self.steps, self.start_step)
            return tf.where(active, quantized, inputs)
        return self._quantize(inputs, self.range_min, self.range_max)

    def _quantize(self, x, low, high):
        import tensorflow as tf

        # a degenerate range (never trained) would make the scale 0
        high = tf.maximum(high, low + 1e-6)
        return tf.quantization.fake_quant_with_min_max_vars(x, low, high, num_bits=8, narrow_range=False)

    def scale_and_zero_point(self) -> tuple[float, int]:
        """The int8 scale and zero point these ranges give (TF's nudging)."""
        low = float(keras.ops.convert_to_numpy(self.range_min))
        high = max(float(keras.ops.convert_to_numpy(self.range_max)), low + 1e-6)
        scale = (high - low) / 255.0
        zero_point = int(np.clip(np.round(-128 - low / scale), -128, 127))
        return scale, zero_point

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ema_decay": self.ema_decay, "start_step": self.start_step,
                "fixed_range": None if self.fixed_range is None else list(self.fixed_range)}


@keras.saving.register_keras_serializable(package="tfcompress")
class SharedRangeQuantizer(ActivationQuantizer):
    """One int8 range for several tensors: the inputs and output of a concatenation (or of a
    Maximum / Minimum), which TFLite requires on one scale and zero point (TFLite 8-bit
    quantization specification, CONCATENATION: "input and outputs must all have same
    scale/zero_point").

    The layer is called once per member tensor, ``quantizer(x, member=i)``. Each member keeps
    its own moving-average range (Jacob et al. 2018, sec. 3.1: EMA of the batch minimum and
    maximum); every member is fake-quantized with the union
    ``[min_i range_min_i, max_i range_max_i]``, which is the range of the concatenation's
    output. With one range for all, concatenating quantized members is exact, as the int8
    CONCATENATION op is.

    Args:
        members: how many tensors share the range.
        ema_decay, start_step: as for `ActivationQuantizer` (counted per member).
    """

    def __init__(self, members: int = 2, ema_decay: float = 0.99, start_step: int = 0, **kwargs):
        super().__init__(ema_decay, start_step, **kwargs)
        if int(members) < 1:
            raise TfcompressError(f"members must be >= 1, got {members}", self.name, "pass the number of tensors")
        self.members = int(members)

    def build(self, input_shape):
        shape = (self.members,)
        self.range_min = self.add_weight(name="range_min", shape=shape, initializer="zeros", trainable=False)
        self.range_max = self.add_weight(name="range_max", shape=shape, initializer="zeros", trainable=False)
        self.steps = self.add_weight(name="steps", shape=shape, initializer="zeros", trainable=False, dtype="int64")
        self.built = True

    def call(self, inputs, member: int = 0, training=None):
        import tensorflow as tf

        if not 0 <= member < self.members:
            raise TfcompressError(f"member {member} out of range", self.name, f"use 0 .. {self.members - 1}")
        if not training:
            return self._quantize(inputs, tf.reduce_min(self.range_min), tf.reduce_max(self.range_max))
        one_hot = tf.one_hot(member, self.members, on_value=True, off_value=False, dtype=tf.bool)
        batch_min = tf.minimum(tf.reduce_min(inputs), 0.0)
        batch_max = tf.maximum(tf.reduce_max(inputs), 0.0)
        steps = self.steps[member]
        first = tf.equal(steps, 0)
        decay = self.ema_decay
        own_min = tf.where(first, batch_min, decay * self.range_min[member] + (1 - decay) * batch_min)
        own_max = tf.where(first, batch_max, decay * self.range_max[member] + (1 - decay) * batch_max)
        # members not seen yet hold [0, 0], which every range contains: the union is unaffected
        new_min = tf.where(one_hot, own_min, self.range_min)
        new_max = tf.where(one_hot, own_max, self.range_max)
        self.range_min.assign(new_min)
        self.range_max.assign(new_max)
        self.steps.assign(self.steps + tf.cast(one_hot, "int64"))
        quantized = self._quantize(inputs, tf.reduce_min(new_min), tf.reduce_max(new_max))
        return tf.where(tf.greater(steps + 1, self.start_step), quantized, inputs)

    def scale_and_zero_point(self) -> tuple[float, int]:
        """The int8 scale and zero point of the shared (union) range."""
        low = float(np.min(keras.ops.convert_to_numpy(self.range_min)))
        high = max(float(np.max(keras.ops.convert_to_numpy(self.range_max))), low + 1e-6)
        scale = (high - low) / 255.0
        zero_point = int(np.clip(np.round(-128 - low / scale), -128, 127))
        return scale, zero_point

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "members": self.members}


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizedLayer(keras.layers.Wrapper):
    """A Conv2D / DepthwiseConv2D / Dense with its BatchNormalization folded, its activation fused,
    per-channel fake-quantized kernel and a quantized output.

    Args:
        layer: the convolution or dense layer (its own activation must be linear, relu or relu6).
        batch_norm: an optional BatchNormalization folded into it (moving statistics frozen).
        activation: ``"linear"``, ``"relu"`` or ``"relu6"`` applied after the folded layer.
        preserve_sparsity: keep the kernel's exact zeros at zero.
        ema_decay, start_step: for the output `ActivationQuantizer`.
        quantize_output: False when the output's range is shared with other tensors and a
            `SharedRangeQuantizer` after the layer quantizes it (``quantize`` decides).
    """

    tfcompress_fake_quant = True

    def __init__(self, layer, batch_norm=None, activation: str = "linear", preserve_sparsity: bool = False,
                 ema_decay: float = 0.99, start_step: int = 0, quantize_output: bool = True, **kwargs):
        super().__init__(layer, **kwargs)
        if not isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D | keras.layers.Dense):
            raise TfcompressError(f"cannot quantize a {type(layer).__name__} layer", layer.name,
                                  "QuantizedLayer wraps Conv2D, DepthwiseConv2D and Dense")
        if isinstance(layer, keras.layers.SeparableConv2D):
            raise TfcompressError("SeparableConv2D is not supported by QAT", layer.name,
                                  "rewrite it as DepthwiseConv2D + Conv2D(1x1)")
        inner_activation = getattr(layer.activation, "__name__", "linear")
        if inner_activation not in FUSABLE_ACTIVATIONS:
            raise TfcompressError(f"activation {inner_activation!r} cannot be fused", layer.name,
                                  "use relu / relu6 / linear, or a separate Activation layer")
        if batch_norm is not None and inner_activation != "linear":
            raise TfcompressError("BatchNormalization after an activation cannot be folded", layer.name,
                                  "put BatchNormalization before the activation")
        self.batch_norm = batch_norm
        self.activation = activation if inner_activation == "linear" else inner_activation
        if self.activation not in FUSABLE_ACTIVATIONS:
            raise TfcompressError(f"unknown activation {activation!r}", layer.name, "use linear, relu or relu6")
        self.preserve_sparsity = bool(preserve_sparsity)
        self.quantize_output = bool(quantize_output)
        self.output_quantizer = ActivationQuantizer(ema_decay, start_step, name="output_quantizer") \
            if self.quantize_output else None
        self.start_step = int(start_step)
        self.ema_decay = float(ema_decay)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        output_shape = self.layer.compute_output_shape(input_shape)
        if self.batch_norm is not None and not self.batch_norm.built:
            self.batch_norm.build(output_shape)
        kernel = self.layer.kernel
        self.sparsity_mask = self.add_weight(name="sparsity_mask", shape=tuple(kernel.shape), initializer="ones",
                                             trainable=False) if self.preserve_sparsity else None
        self.steps = self.add_weight(name="steps", shape=(), initializer="zeros", trainable=False, dtype="int64")
        if self.output_quantizer is not None:
            self.output_quantizer.build(output_shape)
        self.built = True

    def set_sparsity_mask_from_kernel(self) -> None:
        if self.sparsity_mask is not None:
            kernel = keras.ops.convert_to_numpy(self.layer.kernel)
            self.sparsity_mask.assign((kernel != 0).astype("float32"))

    def folded_kernel_and_bias(self):
        """W' and b' of the folded layer (what TFLite stores before quantizing)."""
        from keras import ops

        layer = self.layer
        kernel = layer.kernel
        if self.sparsity_mask is not None:
            kernel = kernel * self.sparsity_mask
        out_channels = kernel.shape[-2] * kernel.shape[-1] if isinstance(layer, keras.layers.DepthwiseConv2D) \
            else kernel.shape[-1]
        bias = layer.bias if layer.use_bias else ops.zeros((out_channels,))
        if self.batch_norm is None:
            return self._keep_survivors(kernel), bias
        bn = self.batch_norm
        gamma = bn.gamma if bn.scale else ops.ones((out_channels,))
        beta = bn.beta if bn.center else ops.zeros((out_channels,))
        factor = gamma / ops.sqrt(bn.moving_variance + bn.epsilon)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            folded = kernel * ops.reshape(factor, (1, 1, kernel.shape[2], kernel.shape[3]))
        else:
            folded = kernel * factor
        return self._keep_survivors(folded), beta + (bias - bn.moving_mean) * factor

    def _keep_survivors(self, kernel):
        """With ``preserve_sparsity``: a kept weight smaller than half an int8 step becomes one step.

        Per-channel symmetric int8 rounds ``w / s`` (``s = max|w_c| / 127``) to zero when
        ``|w| < s / 2``, which would add zeros the pruned model does not have. Such a survivor is
        set to ``sign(w) * s`` (a change below one step, as rounding itself makes), so training,
        the converter and the int8 file all see the pruned zeros and only those.
        """
        from keras import ops

        if self.sparsity_mask is None:
            return kernel
        kernels = _EXPORT.get()
        if kernels is not None and id(self) in kernels:
            return ops.convert_to_tensor(kernels[id(self)])
        mask = self.sparsity_mask
        if isinstance(self.layer, keras.layers.DepthwiseConv2D):
            flat = ops.reshape(ops.abs(kernel), (kernel.shape[0] * kernel.shape[1], -1))
            step = ops.reshape(ops.max(flat, axis=0), (1, 1, kernel.shape[2], kernel.shape[3])) / 127.0
        else:
            step = ops.max(ops.reshape(ops.abs(kernel), (-1, kernel.shape[-1])), axis=0) / 127.0
        # a survivor that is exactly 0 (possible after BN folding with gamma 0) gets +s
        direction = ops.where(kernel < 0, -1.0, 1.0)
        small = ops.logical_and(mask > 0, ops.abs(kernel) < 0.5 * step)
        lifted = ops.where(small, direction * step, kernel)
        # straight-through: a lifted weight still receives its gradient and can grow out of the band
        return kernel + ops.stop_gradient(lifted - kernel)

    def _quantized_kernel(self, kernel, training):
        import tensorflow as tf

        if exporting():
            return kernel
        if isinstance(self.layer, keras.layers.DepthwiseConv2D):
            shape = tf.shape(kernel)
            flat = tf.reshape(kernel, (shape[0], shape[1], -1))
            quantized = tf.reshape(fake_quant_per_channel(flat), shape)
        else:
            quantized = fake_quant_per_channel(kernel)
        if training and self.start_step > 0:
            return tf.where(tf.greater(self.steps, self.start_step), quantized, kernel)
        return quantized

    def call(self, inputs, training=None):
        import tensorflow as tf
        from keras import ops

        if training:
            self.steps.assign_add(1)
        kernel, bias = self.folded_kernel_and_bias()
        kernel = self._quantized_kernel(kernel, training)
        layer = self.layer
        if isinstance(layer, keras.layers.Dense):
            out = ops.matmul(inputs, kernel)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            out = ops.depthwise_conv(inputs, kernel, strides=layer.strides, padding=layer.padding,
                                     data_format=layer.data_format, dilation_rate=layer.dilation_rate)
        else:
            if layer.groups != 1:
                raise TfcompressError("grouped convolutions are not supported by QAT", layer.name)
            out = ops.conv(inputs, kernel, strides=layer.strides, padding=layer.padding,
                           data_format=layer.data_format, dilation_rate=layer.dilation_rate)
        out = out + bias
        if self.activation == "relu":
            out = tf.nn.relu(out)
        elif self.activation == "relu6":
            out = tf.nn.relu6(out)
        if self.output_quantizer is None:
            return out
        return self.output_quantizer(out, training=training)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def tfcompress_effective_weights(self) -> list[np.ndarray]:
        kernel, bias = self.folded_kernel_and_bias()
        return [keras.ops.convert_to_numpy(kernel), keras.ops.convert_to_numpy(bias)]

    def tfcompress_macs(self, input_shape, output_shape) -> int:
        from tfcompress.metrics import layer_macs

        return layer_macs(self.layer, [input_shape], [output_shape])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "batch_norm": keras.saving.serialize_keras_object(self.batch_norm) if self.batch_norm else None,
            "activation": self.activation,
            "preserve_sparsity": self.preserve_sparsity,
            "ema_decay": self.ema_decay,
            "start_step": self.start_step,
            "quantize_output": self.quantize_output,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        if config.get("batch_norm"):
            config["batch_norm"] = keras.saving.deserialize_keras_object(config["batch_norm"])
        return cls(**config)

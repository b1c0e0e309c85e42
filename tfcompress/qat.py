"""Quantization-aware training that exports exactly to full-int8 TFLite (tfmot's ``quantize_model`` for Keras 3).

``quantize(model)`` rebuilds a Sequential or Functional model so that training sees what the
int8 TFLite kernels will compute (Jacob et al., CVPR 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", sec. 3 and eq. 1-3):

* the input and every activation that TFLite stores (outputs of conv / dense blocks, of Add and
  Concatenate, of standalone activations) pass through :class:`ActivationQuantizer`: per-tensor
  asymmetric int8, the range [min, max] tracked by an exponential moving average of the batch
  minima and maxima (Jacob et al., sec. 3.1), applied with ``tf.quantization.fake_quant_with_min_max_vars``
  (a straight-through estimator for the gradient), the op the TFLite converter reads its
  scale and zero point from;
* Conv2D / DepthwiseConv2D / Dense are wrapped in :class:`QuantizedLayer`, which folds a
  following BatchNormalization into the kernel and bias the way the converter does
  (W' = W gamma / sqrt(var + eps), b' = beta + (b - mean) gamma / sqrt(var + eps); Krishnamoorthi
  2018, "Quantizing deep convolutional networks for efficient inference: A whitepaper", sec. 3.2,
  eq. 13-14, with the moving statistics frozen during QAT), fuses a following ReLU / ReLU6, and
  fake-quantizes the folded kernel per output channel, symmetric, narrow range [-127, 127]
  (scale = max|W'_c| / 127), which is what the converter does with the float kernel.

At export (`tfcompress.export.to_tflite` detects a QAT model and uses no calibration data) the
weight fake-quant is left out of the traced graph: the converter quantizes the folded float
kernel with the same per-channel formula, and takes every activation's scale from the learned
ranges. The int8 model then computes what the QAT model computes, up to the int32 rounding of
biases and requantization multipliers (tested: within 1 LSB on at least 99% of outputs, on
LiteRT and TFLite Micro).

Ranges TFLite requires to be equal are shared: int8 CONCATENATION, MAXIMUM and MINIMUM need
their inputs and output on one scale and zero point (TFLite 8-bit quantization specification,
"restriction: input and outputs must all have same scale/zero_point"; tfmot's QAT quantizes
only the concatenation's output for the same reason). ``quantize`` groups those tensors (through
pass-through layers such as MaxPooling2D, Flatten, Reshape back to the layer that produces
them) and quantizes every member with one :class:`SharedRangeQuantizer`, whose range is the
union of the members' moving-average ranges. Each member is rounded once, on the grid the int8
kernel writes it on, so the exported file needs no requantizing QUANTIZE op and no rescaling.

Options: ``skip_layers`` leaves named layers in float (their export then needs
``allow_float_fallback``); ``start_step`` keeps fake quantization off (ranges still tracked)
for the first N training steps; ``preserve_sparsity`` keeps the kernel's zeros exactly zero
(pruning-preserving QAT, as tfmot's PQAT) and its other weights non-zero (a kept weight below half
an int8 step is set to one step, which tfmot's PQAT does not do), so the int8 file has exactly the
pruned model's zeros.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError

logger = logging.getLogger("tfcompress")

_EXPORTING = [False]
# folded kernels computed eagerly for export, by id(QuantizedLayer): the converter does not
# constant-fold element-wise ops on large kernels (it left fc1's SELECT in float), so
# preserve_sparsity's survivor lifting reaches it as a ready constant
_EXPORT_KERNELS: dict[int, np.ndarray] = {}


@contextlib.contextmanager
def export_mode(model: keras.Model | None = None) -> Iterator[None]:
    """While tracing for the converter: weights stay float (the converter quantizes them)."""
    frozen = []
    if model is not None:
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, QuantizedLayer) and layer.sparsity_mask is not None:
                _EXPORT_KERNELS[id(layer)] = keras.ops.convert_to_numpy(layer.folded_kernel_and_bias()[0])
                frozen.append(id(layer))
    _EXPORTING.append(True)
    try:
        yield
    finally:
        _EXPORTING.pop()
        for key in frozen:
            _EXPORT_KERNELS.pop(key, None)


def exporting() -> bool:
    return _EXPORTING[-1]


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
    """

    tfcompress_fake_quant = True

    def __init__(self, ema_decay: float = 0.99, start_step: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.ema_decay = float(ema_decay)
        self.start_step = int(start_step)

    def build(self, input_shape):
        self.range_min = self.add_weight(name="range_min", shape=(), initializer="zeros", trainable=False)
        self.range_max = self.add_weight(name="range_max", shape=(), initializer="zeros", trainable=False)
        self.steps = self.add_weight(name="steps", shape=(), initializer="zeros", trainable=False, dtype="int64")
        self.built = True

    def call(self, inputs, training=None):
        import tensorflow as tf

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
        return {**super().get_config(), "ema_decay": self.ema_decay, "start_step": self.start_step}


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


_FUSABLE_ACTIVATIONS = {"linear", "relu", "relu6"}


def _activation_name(layer) -> str | None:
    if isinstance(layer, keras.layers.ReLU):
        if layer.negative_slope == 0 and layer.threshold == 0:
            if layer.max_value is None:
                return "relu"
            if float(layer.max_value) == 6.0:
                return "relu6"
        return None
    if isinstance(layer, keras.layers.Activation):
        name = getattr(layer.activation, "__name__", None)
        return name if name in _FUSABLE_ACTIVATIONS else None
    return None


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
        if inner_activation not in _FUSABLE_ACTIVATIONS:
            raise TfcompressError(f"activation {inner_activation!r} cannot be fused", layer.name,
                                  "use relu / relu6 / linear, or a separate Activation layer")
        if batch_norm is not None and inner_activation != "linear":
            raise TfcompressError("BatchNormalization after an activation cannot be folded", layer.name,
                                  "put BatchNormalization before the activation")
        self.batch_norm = batch_norm
        self.activation = activation if inner_activation == "linear" else inner_activation
        if self.activation not in _FUSABLE_ACTIVATIONS:
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
        if exporting() and id(self) in _EXPORT_KERNELS:
            return ops.convert_to_tensor(_EXPORT_KERNELS[id(self)])
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


_QUANTIZABLE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
_NEEDS_OUTPUT_RANGE = (
    keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Concatenate,
    keras.layers.Average, keras.layers.Maximum, keras.layers.Minimum, keras.layers.ReLU,
    keras.layers.Activation, keras.layers.LeakyReLU, keras.layers.Softmax, keras.layers.BatchNormalization,
    # averages leave the input grid: TFLite rounds them, so the QAT model rounds them too
    keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
)
_PASS_THROUGH = (
    keras.layers.MaxPooling2D, keras.layers.MaxPooling1D, keras.layers.Flatten, keras.layers.Reshape,
    keras.layers.Dropout, keras.layers.ZeroPadding2D, keras.layers.GlobalMaxPooling2D, keras.layers.Cropping2D,
    keras.layers.SpatialDropout2D, keras.layers.UpSampling2D,
)
# int8 TFLite kernels that need their inputs and output on one scale and zero point
_SAME_RANGE = (keras.layers.Concatenate, keras.layers.Maximum, keras.layers.Minimum)


def quantize(model, *, skip_layers: tuple[str, ...] | list[str] = (), start_step: int = 0,
             preserve_sparsity: bool = False, ema_decay: float = 0.99) -> keras.Model:
    """A quantization-aware copy of ``model`` (tfmot's ``quantize_model``), with its weights.

    Args:
        model: a built Sequential or Functional model.
        skip_layers: names of layers to leave in float.
        start_step: training steps before fake quantization switches on.
        preserve_sparsity: keep every kernel zero exactly zero (pruning-preserving QAT).
        ema_decay: decay of the activation ranges' moving averages.

    Returns:
        A Functional model; train it, then ``to_tflite(qat_model, path, "int8")``. The inputs
        and output of every Concatenate / Maximum / Minimum share one `SharedRangeQuantizer`
        (named ``quantize_<first such layer>``), as the int8 TFLite kernels require.
    """
    from tfcompress.surgery import _graph

    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise TfcompressError("quantize needs a built Sequential or Functional model",
                              getattr(model, "name", "model"), "build it with keras.Input first")
    if type(model).__name__ not in ("Functional", "Sequential"):
        raise TfcompressError(f"cannot quantize a subclassed model ({type(model).__name__})", model.name,
                              "build the model with the Functional API or keras.Sequential")
    if any(getattr(layer, "tfcompress_pruning_wrapper", False) for layer in model.layers):
        from tfcompress.pruning import strip

        model = strip(model)
    if any(getattr(layer, "tfcompress_fake_quant", False) for layer in model.layers):
        raise TfcompressError("the model is already quantization-aware", model.name, "quantize the float model")
    names = {layer.name for layer in model.layers}
    unknown = sorted(set(skip_layers) - names)
    if unknown:
        raise TfcompressError(f"skip_layers names unknown layers {unknown}", "skip_layers", f"layers are {sorted(names)}")
    nodes, inputs, outputs, tensors = _graph(model)
    consumers: dict[int, list] = {}
    for node in nodes:
        for t in node.inputs:
            consumers.setdefault(t, []).append(node)
    skip = set(skip_layers)
    absorbed: dict[int, int] = {}  # absorbed node output -> the tensor id that replaces it
    plans: dict[int, dict] = {}

    def single_consumer(tid):
        users = consumers.get(tid, [])
        return users[0] if len(users) == 1 and tid not in outputs else None

    for node in nodes:
        layer = node.layer
        if not isinstance(layer, _QUANTIZABLE) or layer.name in skip or isinstance(layer, keras.layers.SeparableConv2D):
            continue
        plan = {"batch_norm": None, "activation": "linear", "last": node.output}
        inner_act = getattr(layer.activation, "__name__", "linear")
        nxt = single_consumer(node.output)
        if (inner_act == "linear" and nxt is not None and isinstance(nxt.layer, keras.layers.BatchNormalization)
                and nxt.layer.name not in skip and nxt.layer.axis in (-1, len(tensors[nxt.output].shape) - 1)):
            plan["batch_norm"] = nxt.layer
            absorbed[nxt.output] = node.output
            plan["last"] = nxt.output
            nxt = single_consumer(nxt.output)
        if inner_act == "linear" and nxt is not None and _activation_name(nxt.layer) and nxt.layer.name not in skip:
            plan["activation"] = _activation_name(nxt.layer)
            absorbed[nxt.output] = node.output
            plan["last"] = nxt.output
        plans[node.output] = plan

    shared = _shared_ranges(nodes, inputs, absorbed, skip, ema_decay, start_step)
    new_tensors: dict[int, Any] = {}
    new_inputs = []
    for tid in inputs:
        t = tensors[tid]
        new = keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=t.name)
        new_inputs.append(new)
        if tid in shared:
            quantizer, member = shared[tid]
            new_tensors[tid] = quantizer(new, member=member)
        else:
            new_tensors[tid] = ActivationQuantizer(ema_decay, start_step, name=f"quantize_{t.name}")(new)
    wrapped: list[tuple[Any, QuantizedLayer]] = []
    for node in nodes:
        layer = node.layer
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if node.output in absorbed:
            new_tensors[node.output] = new_tensors[absorbed[node.output]]
            continue
        args = [new_tensors[t] for t in node.inputs]
        if node.output in plans:
            plan = plans[node.output]
            fresh = layer.__class__.from_config(layer.get_config())
            bn = plan["batch_norm"]
            fresh_bn = bn.__class__.from_config(bn.get_config()) if bn is not None else None
            q = QuantizedLayer(fresh, fresh_bn, plan["activation"], preserve_sparsity, ema_decay, start_step,
                               quantize_output=node.output not in shared, name=f"quant_{layer.name}")
            out = q(args[0])
            if node.output in shared:
                quantizer, member = shared[node.output]
                out = quantizer(out, member=member)
            fresh.set_weights(layer.get_weights())
            if fresh_bn is not None:
                fresh_bn.set_weights(bn.get_weights())
            q.set_sparsity_mask_from_kernel()
            wrapped.append((layer, q))
            new_tensors[node.output] = out
            continue
        fresh = layer.__class__.from_config(layer.get_config())
        call_input = args if isinstance(layer, keras.layers.Concatenate | keras.layers.Add | keras.layers.Subtract
                                        | keras.layers.Multiply | keras.layers.Average | keras.layers.Maximum
                                        | keras.layers.Minimum) else args[0]
        out = fresh(call_input)
        if layer.weights:
            fresh.set_weights(layer.get_weights())
        if layer.name in skip:
            logger.info("quantize: %s stays in float (skip_layers)", layer.name)
        elif node.output in shared:
            quantizer, member = shared[node.output]
            out = quantizer(out, member=member)
        elif isinstance(layer, _NEEDS_OUTPUT_RANGE):
            out = ActivationQuantizer(ema_decay, start_step, name=f"quantize_{layer.name}")(out)
        elif not isinstance(layer, _PASS_THROUGH):
            logger.info("quantize: %s (%s) has no quantized form; its output gets a range", layer.name,
                        type(layer).__name__)
            out = ActivationQuantizer(ema_decay, start_step, name=f"quantize_{layer.name}")(out)
        new_tensors[node.output] = out
    new_outputs = [new_tensors[t] for t in outputs]
    return keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs,
                       new_outputs[0] if len(new_outputs) == 1 else new_outputs, name=f"{model.name}_qat")


def _shared_ranges(nodes, inputs, absorbed: dict[int, int], skip: set[str], ema_decay: float,
                   start_step: int) -> dict[int, tuple[SharedRangeQuantizer, int]]:
    """Tensor id -> (its group's `SharedRangeQuantizer`, member index), for the tensors that
    TFLite needs on one scale: a Concatenate / Maximum / Minimum's output and inputs, each input
    followed back through pass-through layers (MaxPooling2D, Flatten, ...: same scale in TFLite)
    and absorbed BatchNormalization / activation layers to the tensor that gets quantized.
    Groups chain: a concatenation of concatenations is one group. Outputs of ``skip_layers``
    stay float and out of groups."""
    producer = {node.output: node for node in nodes}

    def owner(tid: int) -> int:
        while True:
            tid = absorbed.get(tid, tid)
            node = producer.get(tid)
            if node is None or not isinstance(node.layer, _PASS_THROUGH) or len(node.inputs) != 1:
                return tid
            tid = node.inputs[0]

    def floating(tid: int) -> bool:
        node = producer.get(tid)
        return node is not None and node.layer.name in skip

    parent: dict[int, int] = {}

    def find(tid: int) -> int:
        parent.setdefault(tid, tid)
        while parent[tid] != tid:
            parent[tid] = parent[parent[tid]]
            tid = parent[tid]
        return tid

    for node in nodes:
        if not isinstance(node.layer, _SAME_RANGE) or node.layer.name in skip:
            continue
        members = [m for m in [node.output, *(owner(t) for t in node.inputs)] if not floating(m)]
        for m in members:
            parent[find(m)] = find(members[0])
    order = [*inputs, *(node.output for node in nodes)]
    groups: dict[int, list[int]] = {}
    for tid in order:
        if tid in parent:
            groups.setdefault(find(tid), []).append(tid)
    shared: dict[int, tuple[SharedRangeQuantizer, int]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        # every group holds the output of the (first) layer that asked for it: name it after that
        first = next(producer[m].layer.name for m in members
                     if m in producer and isinstance(producer[m].layer, _SAME_RANGE))
        quantizer = SharedRangeQuantizer(len(members), ema_decay, start_step, name=f"quantize_{first}")
        for index, tid in enumerate(members):
            shared[tid] = (quantizer, index)
    return shared

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

from tfcompress.core import FUSABLE_ACTIVATIONS, handler_for
from tfcompress.errors import TfcompressError

# None outside export_mode. Inside: the folded (kernel, bias) computed eagerly for export, by
# id(QuantizedLayer): the converter does not constant-fold element-wise ops on large kernels
# (it left fc1's SELECT in float), so preserve_sparsity's survivor lifting reaches it as a
# ready constant, and its BN folding would round differently from the QAT model's
_EXPORT: contextvars.ContextVar[Mapping[int, np.ndarray] | None] = contextvars.ContextVar(
    "tfcompress_export", default=None)


@contextlib.contextmanager
def export_mode(model: keras.Model | None = None) -> Iterator[None]:
    """While tracing for the converter: weights stay float (the converter quantizes them).

    Example:
        >>> exporting()
        False
        >>> with export_mode():
        ...     exporting()
        True
    """
    kernels = dict(_EXPORT.get() or {})
    if model is not None:
        # every folded kernel and bias as a ready constant: the converter would otherwise fold the
        # BatchNormalization itself, in another float order, and its kernel could then differ from
        # the QAT model's by an ulp, enough to move a weight's level or a weight scale
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, QuantizedLayer):
                kernel, bias = layer.folded_kernel_and_bias()
                kernels[id(layer)] = (keras.ops.convert_to_numpy(kernel), keras.ops.convert_to_numpy(bias))
    token = _EXPORT.set(types.MappingProxyType(kernels))
    try:
        yield
    finally:
        _EXPORT.reset(token)


# which int8 kernels the QAT forward pass computes, bit for bit: "reference" (LiteRT's reference
# kernels, which TFLite Micro runs) or "xnnpack" (LiteRT's default XNNPACK delegate on x86-64)
_ARITHMETIC: contextvars.ContextVar[str] = contextvars.ContextVar("tfcompress_kernel_arithmetic",
                                                                  default="reference")
KERNEL_ARITHMETICS = ("reference", "xnnpack")


@contextlib.contextmanager
def kernel_arithmetic(kernels: str, model: keras.Model | None = None) -> Iterator[None]:
    """Inside the block, QAT models compute as the int8 ``kernels`` of the exported file will.

    A QAT model (`tfcompress.quantize`) equals its int8 file within 1 LSB only for the kernels
    whose arithmetic it reproduces; the interpreters round differently near a rounding boundary
    (`tfcompress.layers.xnnpack_kernels`). ``"reference"``, the default outside any block, is
    LiteRT's reference kernels and TFLite Micro; ``"xnnpack"`` is LiteRT's default XNNPACK
    delegate on x86-64 (``ModelRunner(path)``). Only the forward values change, not training or
    export; the choice is read when the model is traced, so call the model inside the block, or
    pass ``model``: its compiled predict / evaluate functions are rebuilt on entry and on exit.

    Example:
        >>> import numpy as np, tfcompress
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> qat = tfcompress.quantize(model)
        >>> _ = qat(np.random.default_rng(0).normal(size=(16, 8)).astype("float32"), training=True)
        >>> with kernel_arithmetic("xnnpack", qat):
        ...     on_xnnpack = qat.predict(np.ones((1, 8), "float32"), verbose=0)
        >>> on_xnnpack.shape, current_kernel_arithmetic()
        ((1, 4), 'reference')
    """
    if kernels not in KERNEL_ARITHMETICS:
        raise TfcompressError(f"unknown kernels {kernels!r}", "kernel_arithmetic",
                              f"use one of {', '.join(KERNEL_ARITHMETICS)}")

    def forget_traces():
        if model is not None:
            for name in ("predict_function", "test_function"):
                if getattr(model, name, None) is not None:
                    setattr(model, name, None)

    token = _ARITHMETIC.set(kernels)
    forget_traces()
    try:
        yield
    finally:
        _ARITHMETIC.reset(token)
        forget_traces()


def current_kernel_arithmetic() -> str:
    """The int8 kernels QAT models compute as here (see `kernel_arithmetic`).

    Example:
        >>> with kernel_arithmetic("xnnpack"):
        ...     inside = current_kernel_arithmetic()
        >>> inside, current_kernel_arithmetic()
        ('xnnpack', 'reference')
    """
    return _ARITHMETIC.get()


def exporting() -> bool:
    """True inside `export_mode` (in this thread or task).

    Example:
        >>> with export_mode():
        ...     inside = exporting()
        >>> inside, exporting()
        (True, False)
    """
    return _EXPORT.get() is not None


def tf_stop(value):
    import tensorflow as tf

    return tf.stop_gradient(tf.convert_to_tensor(value))


def _scale_and_zero(low, high):
    """The converter's float64 scale and int8 zero point of the range [low, high] (MLIR's
    ``getNudgedScaleAndZeroPoint``: ``scale = (max - min) / 255``, zero point
    ``round(-128 - min / scale)`` with ties away from zero, clamped to [-128, 127])."""
    import tensorflow as tf

    low64, high64 = tf.cast(tf_stop(low), tf.float64), tf.cast(tf_stop(high), tf.float64)
    scale = (high64 - low64) / 255.0
    zero_from_min = -128.0 - low64 / scale
    zero = tf.clip_by_value(tf.sign(zero_from_min) * tf.floor(tf.abs(zero_from_min) + 0.5), -128.0, 127.0)
    return scale, zero


def _requantize_levels(acc, multiplier):
    """``acc M`` rounded as TFLite's fixed-point rescaling rounds it (float64 tensors, ``acc`` integer):
    ``M = q 2^-31 2^shift`` (TFLite's ``QuantizeMultiplier``, ``q`` an int32); gemmlowp's
    ``SaturatingRoundingDoublingHighMul`` rounds ``acc q 2^max(shift, 0) / 2^31`` to an integer
    (half up), then ``RoundingDivideByPOT`` divides by ``2^max(-shift, 0)`` rounding half away from
    zero (`tfcompress.layers.int8_kernels.requantize`, in int64: exact, where a float64 product
    with the 53-bit ``M`` instead of the 31-bit ``q`` moves a value within ``acc 2^-32`` of a half)."""
    import tensorflow as tf

    from tfcompress.layers import int8_kernels

    return tf.cast(int8_kernels.requantize(tf.cast(acc, tf.int64), multiplier), tf.float64)


def per_channel_levels(kernel):
    """(levels, scale) of the converter's symmetric narrow-range int8 per-channel quantization of
    ``kernel`` (output channels last), in float64: ``s = max |w_c| / 127``, levels ``round(w / s)``
    with ties away from zero (MLIR's ``UniformQuantizedPerAxisValueConverter``). No gradient."""
    import tensorflow as tf

    kernel = tf.cast(tf.stop_gradient(kernel), tf.float64)
    flat = tf.reshape(kernel, (-1, tf.shape(kernel)[-1]))
    bound = tf.maximum(tf.reduce_max(tf.abs(flat), axis=0), 1e-8)
    scale = bound / 127.0
    ratio = kernel / scale
    return tf.clip_by_value(tf.sign(ratio) * tf.floor(tf.abs(ratio) + 0.5), -127.0, 127.0), scale


def fake_quant_per_channel(kernel, channel_axis_last: bool = True):
    """Symmetric narrow-range int8 fake quantization per output channel (last axis).

    The levels are the converter's: ``round(w / s)`` with ``s = max |w_c| / 127`` computed in
    float64 and ties rounded away from zero (MLIR's ``UniformQuantizedPerAxisValueConverter``).
    ``tf.quantization.fake_quant_with_min_max_vars_per_channel`` rounds ``(w - min) / s`` in
    float32, which puts a weight within float32 precision of a half level on the other level now
    and then (1 weight in ~10^4 in MobileNetV1): that weight then differs from the int8 file's by
    one level and moves outputs by a fraction of an LSB, enough to flip their rounding. The TF op
    still gives the gradient (straight-through inside the range, and to the range itself).

    Example:
        >>> kernel = np.array([[1.0, 0.5], [0.3, -0.25]], "float32")   # scales 1/127 and 0.5/127
        >>> q = keras.ops.convert_to_numpy(fake_quant_per_channel(kernel))
        >>> np.round(q * 127 / np.array([1.0, 0.5]), 3).tolist()        # the int8 levels; -63.5 rounds to -64
        [[127.0, 127.0], [38.0, -64.0]]
    """
    import tensorflow as tf

    flat = tf.reshape(kernel, (-1, tf.shape(kernel)[-1]))
    bound = tf.reduce_max(tf.abs(flat), axis=0)
    bound = tf.maximum(bound, 1e-8)
    simulated = tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, -bound, bound, num_bits=8,
                                                                         narrow_range=True)
    levels, scale = per_channel_levels(kernel)
    exact = tf.cast(levels * scale, kernel.dtype)
    return simulated + tf.stop_gradient(exact - simulated)


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

    def call(self, inputs, training=None, operands=None):
        import tensorflow as tf

        if self.fixed_range is not None:
            low, high = self.fixed_range
            if training:
                self.steps.assign_add(1)
                quantized = self._quantize(inputs, low, high, operands, training=True)
                return tf.where(tf.greater(self.steps, self.start_step), quantized, inputs)
            return self._quantize(inputs, low, high, operands)
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
            quantized = self._quantize(inputs, new_min, new_max, operands, training=True)
            active = tf.greater(self.steps, self.start_step)
            return tf.where(active, quantized, inputs)
        return self._quantize(inputs, self.range_min, self.range_max, operands)

    def _quantize(self, x, low, high, operands=None, training=None):
        import tensorflow as tf

        # a degenerate range (never trained) would make the scale 0
        high = tf.maximum(high, low + 1e-6)
        if exporting():  # the converter reads its scale and zero point from the TF op
            return tf.quantization.fake_quant_with_min_max_vars(x, low, high, num_bits=8, narrow_range=False)
        # the forward value on the int8 file's grid, rounded as TFLite quantizes a float tensor
        # (the converter's scale and zero point from the float64 range, stored as float32;
        # round(x / scale) + zero point in float32, ties to even as NumPy and the QUANTIZE op of
        # the reference kernels do). fake_quant rounds (x - min) / scale + 0.5 down, which for an
        # input within float32 precision of a half level can pick the other level: one input off
        # by one LSB, and a deep network carries that to its output. The TF op gives the gradient.
        scale64, zero64 = _scale_and_zero(low, high)
        scale, zero = tf.cast(scale64, x.dtype), tf.cast(zero64, x.dtype)
        pooled = self._pooled_levels(x, scale64, zero64)
        kernel = getattr(self, "_kernel", None)
        if pooled is not None:
            levels = tf.cast(pooled, x.dtype)
        elif kernel is not None and operands is not None:
            # the op that produced x, computed on its operands' int8 levels as its int8 kernel does
            levels = tf.cast(tf.reshape(kernel.levels(operands, tf.cast(tf.cast(scale64, tf.float32), tf.float64),
                                                      zero64), tf.shape(x)), x.dtype)
        else:
            levels = tf.clip_by_value(tf.round(tf.stop_gradient(x) / scale) + zero, -128.0, 127.0)
        exact = (levels - zero) * scale
        if not training:  # inference: the levels alone (the TF op only carries the gradient)
            return exact
        simulated = tf.quantization.fake_quant_with_min_max_vars(x, low, high, num_bits=8, narrow_range=False)
        return simulated + tf.stop_gradient(exact - simulated)

    def __call__(self, inputs, *args, **kwargs):
        # after an AveragePooling layer, the int8 file averages on the pool's input grid, then
        # requantizes (see _pooled_levels): find that grid. After an op whose int8 kernel this
        # quantizer computes (IntegerOp: ADD, MUL, MEAN, HARD_SWISH, LOGISTIC, SOFTMAX, swish),
        # the op's inputs are passed along as ``operands`` (recorded in the graph, so a reloaded
        # model passes them too)
        if isinstance(inputs, keras.KerasTensor) and type(self) is ActivationQuantizer:
            object.__setattr__(self, "_pool", None)  # a link past Keras' tracking, as QuantizedLayer's
            object.__setattr__(self, "_kernel", None)
            history = getattr(inputs, "_keras_history", None)
            layer = history[0] if history is not None else None
            if isinstance(layer, keras.layers.AveragePooling1D | keras.layers.AveragePooling2D) \
                    and layer.padding == "valid":
                source = keras.tree.flatten(layer._inbound_nodes[history[1]].input_tensors)[0]
                quantizer = upstream_quantizer(source)
                if quantizer is not None:
                    object.__setattr__(self, "_pool", (int(np.prod(layer.pool_size)), quantizer))
            found = IntegerOp.of(inputs, fixed=self.fixed_range is not None)
            if found is not None:
                kernel, operands = found
                object.__setattr__(self, "_kernel", kernel)
                kwargs.setdefault("operands", operands)
        return super().__call__(inputs, *args, **kwargs)

    def compute_output_spec(self, inputs, *args, **kwargs):
        return keras.KerasTensor(inputs.shape, dtype=inputs.dtype)

    def _pooled_levels(self, x, scale64, zero64):
        """The int8 levels of an average pool's output as TFLite computes them, or None.

        int8 AVERAGE_POOL_2D keeps its input's scale and zero point (TFLite 8-bit quantization
        specification) and rounds the mean of the int8 values half away from zero (the reference
        kernel: ``(sum + count / 2) / count``); the converter then requantizes it to this
        quantizer's scale with a QUANTIZE op, which rounds twice as every fixed-point rescaling
        does (see `QuantizedLayer._integer_output`). Rounding the float mean once on this grid
        differs from that for ~5% of the pooled values."""
        import tensorflow as tf

        pool = getattr(self, "_pool", None)
        if pool is None or exporting():
            return None
        count, source = pool
        f64 = tf.float64
        in_scale = source.file_scale()
        in_zero = source.file_zero_point()
        total = tf.round((tf.cast(tf.stop_gradient(x), f64) / in_scale + in_zero) * count)  # sum of the int8 q
        mean = tf.sign(total) * tf.floor((tf.abs(total) + count // 2) / count)  # C division truncates
        acc = tf.clip_by_value(mean, -128.0, 127.0) - in_zero
        out_scale = tf.cast(tf.cast(scale64, tf.float32), f64)
        if current_kernel_arithmetic() == "xnnpack":  # AVERAGE_POOL_2D stays on the builtin kernel
            from tfcompress.layers import xnnpack_kernels

            return tf.cast(xnnpack_kernels.quantize(tf.cast(acc, tf.int64), 0, in_scale, out_scale,
                                                    tf.cast(zero64, tf.int64)), f64)
        return tf.clip_by_value(_requantize_levels(acc, in_scale / out_scale) + zero64, -128.0, 127.0)

    def file_zero_point(self):
        """The int8 zero point the converter gives this quantizer's output (float64 tensor)."""
        low, high = (tf_stop(t) for t in self.range_tensors())
        return _scale_and_zero(low, keras.ops.maximum(high, low + 1e-6))[1]

    def range_tensors(self):
        """(min, max) of the range this quantizer applies in inference, as tensors."""
        return self.range_min, self.range_max

    def file_scale(self, stored: bool = True):
        """The int8 scale the converter gives this quantizer's output, as a float64 tensor (no
        gradient): ``(max - min) / 255`` in float64 (what the converter quantizes biases with),
        rounded to the float32 the file stores with ``stored`` (what the kernels compute with)."""
        import tensorflow as tf

        low, high = (tf.stop_gradient(tf.convert_to_tensor(t)) for t in self.range_tensors())
        high = tf.maximum(high, low + 1e-6)
        scale = (tf.cast(high, tf.float64) - tf.cast(low, tf.float64)) / 255.0
        return tf.cast(tf.cast(scale, tf.float32), tf.float64) if stored else scale

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

    Example:
        >>> quantizer = SharedRangeQuantizer(members=2)
        >>> a, b = np.array([[0.0, 1.0]], "float32"), np.array([[-3.0, 2.0]], "float32")
        >>> _ = quantizer(a, member=0, training=True); _ = quantizer(b, member=1, training=True)
        >>> quantizer.range_min.numpy().tolist(), quantizer.range_max.numpy().tolist()
        ([0.0, -3.0], [1.0, 2.0])
        >>> out = keras.ops.convert_to_numpy(quantizer(a, member=0))     # on the shared range [-3, 2]
        >>> bool(abs(out[0, 1] - 1.0) < 5.0 / 255)
        True
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
        quantized = self._quantize(inputs, tf.reduce_min(new_min), tf.reduce_max(new_max), training=True)
        return tf.where(tf.greater(steps + 1, self.start_step), quantized, inputs)

    def range_tensors(self):
        return keras.ops.min(self.range_min), keras.ops.max(self.range_max)

    def scale_and_zero_point(self) -> tuple[float, int]:
        """The int8 scale and zero point of the shared (union) range."""
        low = float(np.min(keras.ops.convert_to_numpy(self.range_min)))
        high = max(float(np.max(keras.ops.convert_to_numpy(self.range_max))), low + 1e-6)
        scale = (high - low) / 255.0
        zero_point = int(np.clip(np.round(-128 - low / scale), -128, 127))
        return scale, zero_point

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "members": self.members}


def averages_one_value(layer, input_shape) -> bool:
    """A global average pooling (or ``ops.mean``, average pooling of size 1) that averages a single
    value: an identity, which the converter drops together with the fake-quant after it (MobileNetV3's
    squeeze-and-excite and head pooling on a 1x1 map). ``input_shape``: the layer's input shape."""
    shape = tuple(input_shape)
    if isinstance(layer, keras.layers.GlobalAveragePooling1D | keras.layers.GlobalAveragePooling2D):
        if layer.data_format != "channels_last":
            return False
        axes = (1,) if isinstance(layer, keras.layers.GlobalAveragePooling1D) else (1, 2)
    elif type(layer).__name__ == "Mean" and not isinstance(layer, keras.layers.Layer) and getattr(layer, "axis", None):
        axes = tuple(int(a) % len(shape) for a in keras.tree.flatten(layer.axis))
    elif isinstance(layer, keras.layers.AveragePooling1D | keras.layers.AveragePooling2D):
        return all(int(p) == 1 for p in keras.tree.flatten(layer.pool_size)) and \
            all(int(p) == 1 for p in keras.tree.flatten(layer.strides))
    else:
        return False
    return all(shape[a] == 1 for a in axes)


def upstream_quantizer(tensor) -> ActivationQuantizer | None:
    """The quantizer whose int8 grid a symbolic tensor is on: its producer if that is a quantizer
    (or a `QuantizedLayer` with its own output quantizer), followed back through layers whose int8
    op keeps the scale (QAT role ``"pass"``: pooling by max, Flatten, Reshape, padding, Dropout; a
    mean over one position, `averages_one_value`)."""
    for _ in range(10_000):
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        layer, node_index = history[0], history[1]
        if isinstance(layer, QuantizedLayer):
            return layer.output_quantizer
        if isinstance(layer, ActivationQuantizer):
            return layer
        if isinstance(layer, keras.layers.InputLayer):
            return None
        inputs = keras.tree.flatten(layer._inbound_nodes[node_index].input_tensors)
        if len(inputs) != 1:
            return None
        if handler_for(layer).qat != "pass" and not averages_one_value(layer, inputs[0].shape):
            return None
        tensor = inputs[0]
    return None


_ACTIVATION_KERNELS = {"hard_silu": "hard_swish", "hard_swish": "hard_swish", "sigmoid": "logistic",
                       "silu": "swish", "swish": "swish", "softmax": "softmax"}
# kernels whose int8 output range TFLite fixes (scale 1/256, zero point -128)
_FIXED_OUTPUT = {"logistic", "softmax"}


def fused_relu(layer) -> str | None:
    """"relu" / "relu6" for a ReLU layer (or ReLU / ReLU6 activation) that TFLite fuses into the op
    before it, else None."""
    if isinstance(layer, keras.layers.ReLU):
        if layer.negative_slope == 0 and layer.threshold == 0:
            if layer.max_value is None:
                return "relu"
            if float(layer.max_value) == 6.0:
                return "relu6"
        return None
    if isinstance(layer, keras.layers.Activation):
        name = getattr(layer.activation, "__name__", None)
        return name if name in ("relu", "relu6") else None
    return None


def _producer(tensor):
    """(operation, node) that produced a symbolic tensor, or None."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    return history[0], history[0]._inbound_nodes[history[1]]


class IntegerOp:
    """An int8 op between quantized tensors, computed as its TFLite kernel computes it
    (`tfcompress.layers.int8_kernels`).

    :meth:`of` finds it from the graph that produced a quantizer's input: a standalone activation
    (hard swish -> HARD_SWISH, sigmoid -> LOGISTIC, swish -> LOGISTIC then MUL, softmax ->
    SOFTMAX), an Add / Multiply of two tensors or of a tensor and a Python constant (ADD / MUL,
    with a ReLU / ReLU6 that follows the Add fused, as the converter fuses it), or a global
    average pooling / ``ops.mean`` (MEAN). Its operands are the op's inputs, each on the int8 grid
    of its upstream quantizer; a constant is stored by the converter as an int8 tensor on the
    range ``[min(0, c), max(0, c)]``, which represents ``c`` exactly.
    """

    def __init__(self, kind: str, sources: list, constants: list, activation: str | None = None,
                 axes: tuple[int, ...] = (), count: int = 1):
        self.kind, self.sources, self.constants = kind, sources, constants
        self.activation, self.axes, self.count = activation, axes, count

    @classmethod
    def of(cls, tensor, fixed: bool = False) -> tuple[IntegerOp, list] | None:
        """(the op, its tensor operands) when ``tensor`` is the output of an op computed here, else None."""
        found = _producer(tensor)
        if found is None:
            return None
        op, node = found
        activation = fused_relu(op)
        if activation is not None:
            inner = keras.tree.flatten(node.input_tensors)
            found = _producer(inner[0]) if len(inner) == 1 else None
            if found is None or type(found[0]).__name__ != "Add":
                return None
            op, node = found
        args = list(node.arguments.args)
        kind, values, axes, count = None, [], (), 1
        if isinstance(op, keras.layers.Activation):
            kind = _ACTIVATION_KERNELS.get(getattr(op.activation, "__name__", None))
            values = args[:1]
        elif isinstance(op, keras.layers.Softmax) and op.axis in (-1, len(args[0].shape) - 1):
            kind, values = "softmax", args[:1]
        elif type(op).__name__ in ("Add", "Multiply"):
            values = list(args[0]) if isinstance(op, keras.layers.Layer) else args[:2]
            kind = "add" if type(op).__name__ == "Add" else "mul"
        elif isinstance(op, keras.layers.GlobalAveragePooling1D | keras.layers.GlobalAveragePooling2D) \
                and op.data_format == "channels_last":
            kind, values = "mean", args[:1]
            axes = (1,) if isinstance(op, keras.layers.GlobalAveragePooling1D) else (1, 2)
        elif type(op).__name__ == "Mean" and not isinstance(op, keras.layers.Layer) and getattr(op, "axis", None):
            kind, values = "mean", args[:1]
            axes = tuple(int(a) % len(args[0].shape) for a in keras.tree.flatten(op.axis))
        if kind is None or (kind in _FIXED_OUTPUT) != fixed or (kind in ("add", "mul") and len(values) != 2):
            return None
        if activation is not None and kind != "add":
            return None
        sources, constants, operands = [], [], []
        for value in values:
            if isinstance(value, keras.KerasTensor):
                quantizer = upstream_quantizer(value)
                if quantizer is None:
                    return None
                sources.append(quantizer)
                constants.append(None)
                operands.append(value)
            elif isinstance(value, int | float | np.floating | np.integer) and float(value) != 0.0:
                sources.append(None)
                constants.append(float(value))
            else:
                return None
        if not operands:
            return None
        if kind == "mean":
            shape = operands[0].shape
            if any(shape[a] is None for a in axes):
                return None
            count = int(np.prod([shape[a] for a in axes]))
        return cls(kind, sources, constants, activation, axes, count), operands

    def levels(self, operands, scale, zero):
        """The op's int8 output levels (float64) from its operands' values, on the output grid
        (``scale``: the stored float32 scale, ``zero``: the zero point, float64 tensors)."""
        import tensorflow as tf

        from tfcompress.layers import int8_kernels as k
        from tfcompress.layers import xnnpack_kernels as xnn

        # XNNPACK runs ADD, MUL (swish's too) and MEAN its own way; its int8 LOGISTIC table equals the
        # reference one, and HARD_SWISH and SOFTMAX stay on the builtin kernels, which equal the
        # reference ones (benchmarks/qat_diff.py --kernels)
        xnnpack = current_kernel_arithmetic() == "xnnpack"
        f64 = tf.float64
        q, s, z = [], [], []
        values = iter(keras.tree.flatten(operands))
        for source, constant in zip(self.sources, self.constants, strict=True):
            if source is None:
                low, high = min(0.0, constant), max(0.0, constant)
                scale_c, zero_c = _scale_and_zero(tf.constant(low, tf.float32), tf.constant(high, tf.float32))
                scale_c = tf.cast(tf.cast(scale_c, tf.float32), f64)
                ratio = tf.constant(constant, f64) / scale_c
                level = tf.clip_by_value(tf.sign(ratio) * tf.floor(tf.abs(ratio) + 0.5) + zero_c, -128.0, 127.0)
            else:
                scale_c, zero_c = source.file_scale(), source.file_zero_point()
                value = tf.cast(tf.stop_gradient(next(values)), f64)
                level = tf.clip_by_value(tf.round(value / scale_c) + zero_c, -128.0, 127.0)
            q.append(tf.cast(level, tf.int64))
            s.append(scale_c)
            z.append(tf.cast(zero_c, tf.int64))
        zero_i = tf.cast(zero, tf.int64)
        kind = self.kind
        if kind == "hard_swish":
            out = k.lookup(k.hard_swish_table(s[0], z[0], scale, zero_i), q[0])
        elif kind == "logistic":
            out = k.lookup(k.logistic_table(s[0], z[0]), q[0])
        elif kind == "swish":  # LOGISTIC (scale 1/256, zero point -128), then MUL by the input
            sigmoid = k.lookup(k.logistic_table(s[0], z[0]), q[0])
            out = (xnn if xnnpack else k).mul(q[0], z[0], s[0], sigmoid, -128, tf.constant(1 / 256, f64), scale, zero_i)
        elif kind == "softmax":
            out = k.softmax(q[0], s[0])
        elif kind == "mean":
            total = tf.reduce_sum(q[0], axis=self.axes, keepdims=True)
            out = (xnn if xnnpack else k).mean(total, self.count, z[0], s[0], scale, zero_i)
        else:
            low, high = tf.constant(-128, tf.int64), tf.constant(127, tf.int64)
            if self.activation is not None:  # CalculateActivationRangeQuantized
                low = tf.maximum(low, zero_i)
            if self.activation == "relu6":
                six = tf.constant(6.0, tf.float32) / tf.cast(scale, tf.float32)
                high = tf.minimum(high, zero_i + tf.cast(tf.sign(six) * tf.floor(tf.abs(six) + 0.5), tf.int64))
            kernels = xnn if xnnpack else k
            fn = kernels.add if kind == "add" else kernels.mul
            out = fn(q[0], z[0], s[0], q[1], z[1], s[1], scale, zero_i, low, high)
        return tf.cast(out, f64)


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

    Example:
        >>> dense = keras.layers.Dense(4, activation="relu")
        >>> layer = QuantizedLayer(dense, activation="linear")
        >>> model = keras.Sequential([keras.Input((8,)), layer])
        >>> model(np.ones((2, 8), "float32"), training=True).shape
        TensorShape([2, 4])
        >>> kernel, bias = layer.folded_kernel_and_bias()
        >>> tuple(kernel.shape), tuple(bias.shape)
        ((8, 4), (4,))
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

    def __call__(self, inputs, *args, **kwargs):
        # called on a symbolic tensor (quantize's rebuild, or a .keras file's graph being rebuilt):
        # find the quantizer whose grid the input is on, for the int32 bias (see _quantized_bias)
        if isinstance(inputs, keras.KerasTensor):
            # set past Keras' attribute tracking: a link, not a sub-layer (nor saved with this one)
            object.__setattr__(self, "_input_quantizer", upstream_quantizer(inputs))
        return super().__call__(inputs, *args, **kwargs)

    def input_quantizer(self):
        """The quantizer that puts this layer's input on its int8 grid (None: unknown, e.g. a float input)."""
        return getattr(self, "_input_quantizer", None)

    def _integer_output(self, inputs, kernel, bias):
        """The output of TFLite's integer kernel, in real units, or None when the scales are unknown.

        CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED (the reference kernels, which TFLite Micro
        runs; TFLite 8-bit quantization specification and Jacob et al. 2018, sec. 2.2) compute

        * the int32 accumulator ``acc = sum (q_in - z_in) w_q + b_q`` exactly, with the bias on the
          int32 grid ``b_q = round(b / (s_in s_w[c]))``;
        * ``acc M`` with ``M = s_in s_w[c] / s_out = q 2^-31 2^-r`` in fixed point: gemmlowp's
          ``SaturatingRoundingDoublingHighMul`` rounds ``acc M 2^r`` to an integer, then
          ``RoundingDivideByPOT`` divides by ``2^r`` rounding half away from zero.

        A float convolution of the dequantized tensors rounds once, from a value off by the bias
        rounding (up to ``0.5 s_in s_w / s_out`` LSB) and float32 error: it lands on the other
        side of a rounding boundary for ~0.2% of the outputs, and a deep network compounds those
        flips (MobileNetV1: 12.5% of its outputs within 1 LSB). Here the accumulator is computed
        in float64 on integers (exact), then rounded twice as the kernel does. The float path
        still gives the gradient (straight-through).
        """
        import tensorflow as tf

        source, target = self.input_quantizer(), self.output_quantizer
        if source is None or target is None or exporting():
            return None
        f64 = tf.float64
        input_scale = source.file_scale()
        output_scale = target.file_scale()
        levels, weight_scale = per_channel_levels(self._depthwise_flat(kernel))
        levels = tf.reshape(levels, tf.shape(kernel))
        x_int = tf.round(tf.cast(tf.stop_gradient(inputs), f64) / input_scale)  # q_in - z_in
        acc = self._apply(x_int, levels)
        # the converter rounds the bias with its float64 scales, the kernel multiplies with the
        # float32 ones the file stores
        ratio = tf.cast(tf.stop_gradient(bias), f64) / (source.file_scale(stored=False) * weight_scale)
        acc = acc + tf.sign(ratio) * tf.floor(tf.abs(ratio) + 0.5)
        stored_weight_scale = tf.cast(tf.cast(weight_scale, tf.float32), f64)
        if current_kernel_arithmetic() == "xnnpack":
            from tfcompress.layers import xnnpack_kernels

            rounded = tf.cast(xnnpack_kernels.requantize(tf.cast(acc, tf.int64), input_scale, stored_weight_scale,
                                                         output_scale), f64)
        else:
            rounded = _requantize_levels(acc, input_scale * stored_weight_scale / output_scale)
        return tf.cast(rounded * output_scale, inputs.dtype)

    def _depthwise_flat(self, kernel):
        """The kernel with its output channels on the last axis (a depthwise kernel's in x multiplier)."""
        from keras import ops

        if isinstance(self.layer, keras.layers.DepthwiseConv2D):
            return ops.reshape(kernel, (kernel.shape[0], kernel.shape[1], -1))
        return kernel

    def _apply(self, inputs, kernel):
        from keras import ops

        layer = self.layer
        if isinstance(layer, keras.layers.Dense):
            return ops.matmul(inputs, kernel)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            return ops.depthwise_conv(inputs, kernel, strides=layer.strides, padding=layer.padding,
                                      data_format=layer.data_format, dilation_rate=layer.dilation_rate)
        if layer.groups != 1:
            raise TfcompressError("grouped convolutions are not supported by QAT", layer.name)
        return ops.conv(inputs, kernel, strides=layer.strides, padding=layer.padding,
                        data_format=layer.data_format, dilation_rate=layer.dilation_rate)

    def set_sparsity_mask_from_kernel(self) -> None:
        if self.sparsity_mask is not None:
            kernel = keras.ops.convert_to_numpy(self.layer.kernel)
            self.sparsity_mask.assign((kernel != 0).astype("float32"))

    def folded_kernel_and_bias(self):
        """W' and b' of the folded layer (what TFLite stores before quantizing)."""
        from keras import ops

        kernels = _EXPORT.get()
        if kernels is not None and id(self) in kernels:
            kernel, bias = kernels[id(self)]
            return ops.convert_to_tensor(kernel), ops.convert_to_tensor(bias)
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
        # in float64, rounded once to float32: graph mode (Grappler rewrites gamma / sqrt(v) as
        # gamma * rsqrt(v)) and eager mode (what export_mode hands the converter) then agree to
        # the bit; an ulp of difference in a kernel can move a weight's level or a channel's scale
        dtype = kernel.dtype
        f64 = "float64"
        gamma = ops.cast(bn.gamma, f64) if bn.scale else ops.ones((out_channels,), f64)
        beta = ops.cast(bn.beta, f64) if bn.center else ops.zeros((out_channels,), f64)
        factor = gamma / ops.sqrt(ops.cast(bn.moving_variance, f64) + bn.epsilon)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            folded = ops.cast(kernel, f64) * ops.reshape(factor, (1, 1, kernel.shape[2], kernel.shape[3]))
        else:
            folded = ops.cast(kernel, f64) * factor
        folded_bias = beta + (ops.cast(bias, f64) - ops.cast(bn.moving_mean, f64)) * factor
        return self._keep_survivors(ops.cast(folded, dtype)), ops.cast(folded_bias, dtype)

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

        if training:
            self.steps.assign_add(1)
        kernel, bias = self.folded_kernel_and_bias()
        exact = None if training and self.start_step > 0 else self._integer_output(inputs, kernel, bias)
        if exact is not None and not training:
            out = exact  # inference: the integer kernel alone (the float path only carries the gradient)
        else:
            out = self._apply(inputs, self._quantized_kernel(kernel, training)) + bias
            if exact is not None:
                out = out + tf.stop_gradient(exact - out)
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

"""Handlers of the Keras layer types and ``keras.ops`` operations tfcompress knows.

One handler per kind of layer, each registered for the types that behave that way. Users add
their own types with :func:`tfcompress.core.register_layer`, most often with one of the public
handlers below:

=========================  ======================================================================
``ProducerHandler``        creates its output channels from all input channels (Dense, Conv)
``DepthwiseHandler``       keeps its input's channels, ``depth_multiplier`` copies each
``ChannelwiseHandler``     per-channel: output channel ``c`` reads only input channel ``c``
                           (activations, BatchNormalization, pooling, a user's channel scale)
``MergeHandler``           elementwise merge of tensors: ties their channels into one group
``ConcatenateHandler``     lays its inputs' channels side by side
``MixingHandler``          mixes the channels into as many outputs (softmax): keeps them whole
``OpaqueHandler``          cannot be traced: the channels into it are kept whole
=========================  ======================================================================

Example (a user's per-channel layer, cut and pruned through like BatchNormalization):

>>> import keras, numpy as np
>>> from tfcompress.core import ChannelwiseHandler, register_layer, unregister_layer
>>> class Scale(keras.layers.Layer):
...     def build(self, shape):
...         self.scale = self.add_weight(name="scale", shape=(shape[-1],), initializer="ones")
...     def call(self, x):
...         return x * self.scale
>>> register_layer(Scale, ChannelwiseHandler(per_channel=("scale",),
...                constant=lambda layer, c: c * keras.ops.convert_to_numpy(layer.scale)))
>>> unregister_layer(Scale)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np

from tfcompress.core.channels import eval_elementwise
from tfcompress.core.registry import LayerHandler, handler_for, register_layer
from tfcompress.errors import TfcompressError

__all__ = [
    "ChannelwiseHandler",
    "ConcatenateHandler",
    "DepthwiseHandler",
    "MergeHandler",
    "MixingHandler",
    "OpaqueHandler",
    "PassThroughHandler",
    "ProducerHandler",
    "WrapperHandler",
    "ELEMENTWISE_ACTIVATIONS",
    "FUSABLE_ACTIVATIONS",
    "activation_name",
]

L = keras.layers

# Elementwise activation functions (softmax, log_softmax, glu, sparsemax mix channels).
ELEMENTWISE_ACTIVATIONS = frozenset({
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish",
    "hard_silu", "hard_swish", "mish", "sigmoid", "hard_sigmoid", "log_sigmoid", "tanh",
    "hard_tanh", "softplus", "softsign", "exponential", "squareplus", "sparse_plus",
    "sparse_sigmoid", "soft_shrink", "hard_shrink", "tanh_shrink",
})
# Activations a TFLite conv / fully-connected kernel fuses (and QuantizedLayer with it).
FUSABLE_ACTIVATIONS = frozenset({"linear", "relu", "relu6"})


def activation_name(layer) -> str | None:
    """The name of ``layer``'s activation function (None when it has none).

    Example:
        >>> activation_name(keras.layers.Dense(4, activation="relu")), activation_name(keras.layers.Dense(4))
        ('relu', 'linear')
        >>> activation_name(keras.layers.Flatten()) is None
        True
    """
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    return getattr(act, "__name__", str(act))


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _last_axis(layer, rank: int) -> bool:
    axis = getattr(layer, "axis", -1)
    if isinstance(axis, list | tuple):
        axis = axis[0] if len(axis) == 1 else None
    return axis in (-1, rank - 1)


def _out_el(shape) -> int | None:
    dims = tuple(shape)[1:]
    return None if any(d is None for d in dims) else int(math.prod(dims))


def _slice_last(value: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return value[..., keep] if value.ndim and value.shape[-1] == keep.size else value


class OpaqueHandler(LayerHandler):
    """A layer whose channels tfcompress cannot trace: the channels flowing into it are kept
    whole, its outputs are new channels that are never removed. ``reuse=True`` rebuilds the
    model with the layer object itself instead of a ``from_config`` copy (a ``Lambda``, whose
    function a config cannot carry safely). ``barrier=True`` declares that keeping its channels
    whole is intended, so ``shrink`` (strict by default) does not stop at it.

    Example:
        >>> from tfcompress.core import unregister_layer
        >>> class Shuffle(keras.layers.Layer):                 # reorders channels: nothing to trace
        ...     def call(self, x):
        ...         return keras.ops.flip(x, axis=-1)
        >>> register_layer(Shuffle, OpaqueHandler(qat="range", why="it reorders channels"))
        >>> handler_for(Shuffle()).known, handler_for(Shuffle()).qat
        (True, 'range')
        >>> unregister_layer(Shuffle)
    """

    def __init__(self, *, qat: str = "range", reuse: bool = False, why: str = "an opaque layer",
                 barrier: bool = False):
        self.qat = qat
        self.reuse = reuse
        self.why = why
        self.barrier = barrier

    def clone(self, layer):
        return layer if self.reuse else super().clone(layer)

    def trace(self, flow, node) -> None:
        flow.opaque(node, self.why, barrier=self.barrier)


class PassThroughHandler(LayerHandler):
    """Output channel ``c`` is input channel ``c`` and a per-channel constant stays the same
    constant (max / average pooling, dropout, cropping, upsampling, identity).

    Example:
        >>> type(handler_for(keras.layers.MaxPooling2D())).__name__, handler_for(keras.layers.Flatten()).qat
        ('PassThroughHandler', 'pass')
    """

    def __init__(self, *, qat: str = "pass", kind: str = "other", zero_only: bool = False,
                 macs: Callable | None = None):
        self.qat = qat
        self.kind = kind
        self.zero_only = zero_only  # zero padding keeps a constant only when it is 0
        self._macs = macs

    def trace(self, flow, node) -> None:
        layer = node.op
        if not _channels_last(layer):
            return flow.opaque(node, "channels_first data format")
        value = (lambda c: np.where(c == 0, 0.0, np.nan)) if self.zero_only else None
        flow.passthrough(node, value)

    def macs(self, layer, input_shapes, output_shapes):
        if self._macs is not None:
            return self._macs(layer, input_shapes, output_shapes)
        return 0


class ChannelwiseHandler(LayerHandler):
    """Per-channel layers: output channel ``c`` depends on input channel ``c`` only.

    Args:
        per_channel: names of the weights with one entry per channel on their last axis,
            sliced when channels are removed (``("gamma", "beta", ...)``, ``("alpha",)``).
        constant: ``constant(layer, c) -> c'`` maps a per-channel constant (NaN = not a
            constant) through the layer; None evaluates the layer itself on the constants
            (elementwise layers), ``"none"`` says constants do not survive it.
        config_per_channel: config keys holding per-channel lists to slice (Rescaling's list
            scale).
        qat: the QAT role (default ``"range"``: its output gets an int8 range).
        kind: the MAC-counting kind.
        macs_per_element: MACs per output element.

    Example:
        >>> from tfcompress.core import unregister_layer
        >>> class ChannelScale(keras.layers.Layer):            # y[..., c] = x[..., c] * scale[c]
        ...     def build(self, shape):
        ...         self.scale = self.add_weight(name="scale", shape=(shape[-1],), initializer="ones")
        ...     def call(self, x):
        ...         return x * self.scale
        >>> handler = ChannelwiseHandler(per_channel=("scale",), qat="range")
        >>> register_layer(ChannelScale, handler)
        >>> handler_for(ChannelScale()) is handler
        True
        >>> unregister_layer(ChannelScale)
    """

    def __init__(self, per_channel: tuple[str, ...] = (), *, constant: Callable | str | None = None,
                 config_per_channel: tuple[str, ...] = (), qat: str = "range", kind: str = "other",
                 macs_per_element: int | None = 0):
        self.per_channel = tuple(per_channel)
        self.constant = constant
        self.config_per_channel = tuple(config_per_channel)
        self.qat = qat
        self.kind = kind
        self.macs_per_element = macs_per_element

    def applies(self, layer, rank: int) -> str | None:
        """None when the layer is per-channel on the last axis, else why not."""
        if not _channels_last(layer):
            return "channels_first data format"
        return None

    def trace(self, flow, node) -> None:
        layer = node.op
        why = self.applies(layer, len(flow.graph.shape(node.inputs[0])))
        if why is not None:
            return flow.opaque(node, why)
        if self.constant == "none":
            return flow.passthrough(node, lambda c: np.full(c.shape, np.nan))
        if self.constant is None:
            return flow.passthrough(node, lambda c: eval_elementwise(layer, c))
        return flow.passthrough(node, lambda c: np.asarray(self.constant(layer, c), np.float64))

    def cut(self, layer, cut):
        keep = cut.keep_out
        if keep.all():
            return None
        weights = {k: (_slice_last(v, keep) if k in self.per_channel else v) for k, v in cut.weights.items()}
        config = layer.get_config()
        for key in self.config_per_channel:
            value = config.get(key)
            if isinstance(value, list | tuple) and len(value) == keep.size:
                config[key] = [v for v, k in zip(value, keep, strict=True) if k]
        unsliced = [k for k, v in cut.weights.items() if k not in self.per_channel and np.ndim(v)]
        if unsliced:
            raise TfcompressError(f"cannot cut channels of {layer.name}: its weights {unsliced} are not "
                                  "declared per channel", layer.name,
                                  "list them in the handler's per_channel=(...)")
        return config, weights

    def macs(self, layer, input_shapes, output_shapes):
        if self.macs_per_element is None:
            return None
        el = _out_el(output_shapes[0]) if output_shapes else 0
        return None if el is None else el * self.macs_per_element


class BatchNormalizationHandler(ChannelwiseHandler):
    """BatchNormalization on the last axis: ``(x - mean) * gamma / sqrt(var + eps) + beta``."""

    def __init__(self):
        super().__init__(("gamma", "beta", "moving_mean", "moving_variance"), qat="range", kind="norm",
                         macs_per_element=1)
        self.constant = self._constant

    def applies(self, layer, rank: int) -> str | None:
        return None if _last_axis(layer, rank) else f"axis={layer.axis} is not the channel axis"

    @staticmethod
    def _constant(layer, c):
        count = c.size
        w = {v.path.split("/")[-1]: keras.ops.convert_to_numpy(v).astype(np.float64) for v in layer.weights}
        gamma = w.get("gamma", np.ones(count))
        beta = w.get("beta", np.zeros(count))
        scale = gamma / np.sqrt(w["moving_variance"] + layer.epsilon)
        return (c - w["moving_mean"]) * scale + beta


class NormalizationHandler(ChannelwiseHandler):
    """``keras.layers.Normalization``: ``(x - mean) / sqrt(variance)`` per channel (EfficientNet's input)."""

    def __init__(self):
        super().__init__(("mean", "variance"), qat="range", kind="other", macs_per_element=None,
                         config_per_channel=("mean", "variance"))
        self.constant = self._constant

    def applies(self, layer, rank: int) -> str | None:
        axis = layer.axis
        return None if axis in ((-1,), (rank - 1,), -1, rank - 1) else f"axis={axis} is not the channel axis"

    @staticmethod
    def _constant(layer, c):
        mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), np.float64).reshape(-1)
        var = np.asarray(keras.ops.convert_to_numpy(layer.variance), np.float64).reshape(-1)
        if layer.invert:
            return c * np.sqrt(np.maximum(var, 1e-7)) + mean
        return (c - mean) / np.maximum(np.sqrt(var), 1e-7)

    def cut(self, layer, cut):
        keep = cut.keep_out
        if keep.all():
            return None
        weights = {k: (_slice_last(v, keep) if k in ("mean", "variance") else v) for k, v in cut.weights.items()}
        config = layer.get_config()
        for key in ("mean", "variance"):
            if config.get(key) is not None:
                config[key] = np.asarray(config[key]).reshape(-1)[keep].tolist()
        return config, weights


class RescalingHandler(ChannelwiseHandler):
    """``keras.layers.Rescaling``: ``x * scale + offset``, scale / offset scalars or per channel."""

    def __init__(self):
        super().__init__((), qat="range", macs_per_element=0, config_per_channel=("scale", "offset"))
        self.constant = self._constant

    @staticmethod
    def _constant(layer, c):
        scale = np.asarray(layer.scale, np.float64).reshape(-1)
        offset = np.asarray(layer.offset, np.float64).reshape(-1)
        return c * scale + offset

    def qat_equivalent(self, layer, input_shape: tuple):
        """``x * scale + offset`` as a 1x1 DepthwiseConv2D (kernel = scale, bias = offset): the
        converter leaves a MUL / ADD by float constants in float in a QAT graph, while a
        depthwise kernel of one weight per channel is exact in int8 (it quantizes to +-127)."""
        if len(input_shape) != 4 or input_shape[-1] is None:
            return None
        channels = int(input_shape[-1])
        scale = np.broadcast_to(np.asarray(layer.scale, np.float32).reshape(-1), (channels,))
        offset = np.broadcast_to(np.asarray(layer.offset, np.float32).reshape(-1), (channels,))
        conv = keras.layers.DepthwiseConv2D(1, use_bias=True, name=layer.name)
        conv.build(tuple(input_shape))
        conv.set_weights([scale.reshape(1, 1, channels, 1).copy(), offset.copy()])
        return conv


class ActivationHandler(ChannelwiseHandler):
    """An ``Activation`` layer: elementwise for elementwise functions, mixing for softmax and the like."""

    def __init__(self):
        super().__init__((), qat="activation", kind="other")

    def trace(self, flow, node) -> None:
        name = activation_name(node.op)
        if name not in ELEMENTWISE_ACTIVATIONS:
            return flow.mixing(node, f"activation {name!r} mixes channels")
        return super().trace(flow, node)


class PReLUHandler(ChannelwiseHandler):
    def __init__(self):
        super().__init__(("alpha",), qat="range", macs_per_element=None)

    def applies(self, layer, rank: int) -> str | None:
        if layer.shared_axes is None or sorted(layer.shared_axes) != list(range(1, rank - 1)):
            return "a PReLU slope per position, not per channel"
        return None


class MixingHandler(LayerHandler):
    """Mixes its input's channels into as many outputs (Softmax): every channel into it stays.

    Example:
        >>> type(handler_for(keras.layers.Softmax())).__name__
        'MixingHandler'
    """

    qat = "range"

    def trace(self, flow, node) -> None:
        flow.mixing(node, f"{type(node.op).__name__} mixes channels")


class MergeHandler(LayerHandler):
    """Elementwise merge of tensors (Add, Multiply, ...): their channels form one group.

    Args:
        combine: ``combine(stacked constants) -> constant`` (None: not constant-preserving).

    Example:
        >>> handler = handler_for(keras.layers.Add())
        >>> type(handler).__name__, handler.qat
        ('MergeHandler', 'range')
    """

    kind = "elementwise"

    def __init__(self, combine: Callable | None, *, qat: str = "range"):
        self.combine = combine
        self.qat = qat

    def trace(self, flow, node) -> None:
        flow.merge(node, self.combine)

    def macs(self, layer, input_shapes, output_shapes):
        el = _out_el(output_shapes[0]) if output_shapes else 0
        return None if el is None else max(1, len(input_shapes) - 1) * el


class ConcatenateHandler(LayerHandler):
    """Concatenate along the channel axis: each input's channels keep their own groups, at their
    offsets in the output; QAT gives the inputs and the output one range (``same_range``).

    Example:
        >>> handler = handler_for(keras.layers.Concatenate())
        >>> type(handler).__name__, handler.qat
        ('ConcatenateHandler', 'same_range')
    """

    qat = "same_range"

    def trace(self, flow, node) -> None:
        if not _last_axis(node.op, len(flow.graph.shape(node.output))):
            return flow.opaque(node, f"concatenation on axis {node.op.axis}, not the channel axis")
        flow.concat(node)


class FlattenHandler(LayerHandler):
    qat = "pass"

    def trace(self, flow, node) -> None:
        if not _channels_last(node.op):
            return flow.opaque(node, "channels_first data format")
        shape = flow.graph.shape(node.inputs[0])
        if any(d is None for d in shape[1:]):
            return flow.opaque(node, "Flatten of an input with unknown dimensions")
        flow.repeat(node, int(np.prod(shape[1:-1])) if len(shape) > 2 else 1)


class ReshapeHandler(LayerHandler):
    """Reshape keeps channel identity when the last axis keeps its size (row-major layout: the
    channel of an element is its flat index modulo C), e.g. an SE head's (C,) -> (1, 1, C); a
    last axis of k * C repeats the channels k times."""

    qat = "pass"

    def trace(self, flow, node) -> None:
        src = node.inputs[0]
        cin, cout = flow.channels(src), flow.channels(node.output)
        if len(flow.graph.shape(src)) >= 2 and cin == cout:
            return flow.passthrough(node)
        if cin and cout % cin == 0 and len(flow.graph.shape(src)) >= 2:
            return flow.repeat(node, cout // cin)
        flow.opaque(node, f"a reshape from {cin} to {cout} channels")

    def cut(self, layer, cut):
        if cut.keep_out.all():
            return None
        config = layer.get_config()
        target = list(config["target_shape"])
        target[-1] = int(cut.keep_out.sum())
        config["target_shape"] = tuple(target)
        return config, {}


class _Producer(LayerHandler):
    """Shared by the producers: weights, contributions, the cut of kernel and bias."""

    kernel_attr = "kernel"
    units_key = "filters"

    def produces_channels(self, layer) -> bool:
        return self.traceable(layer) is None

    def prunable_kernel(self, layer) -> str | None:
        return self.kernel_attr

    def traceable(self, layer) -> str | None:
        return None

    def contributions(self, layer, w, zero) -> tuple[np.ndarray, np.ndarray]:
        kernel = w[self.kernel_attr]
        flat = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])
        return np.any(~zero(flat), axis=0), flat.sum(0, dtype=np.float64)

    def foldable(self, layer) -> bool:
        return True

    def trace(self, flow, node) -> None:
        layer = node.op
        why = self.traceable(layer)
        if why is not None:
            return flow.opaque(node, why)
        touch = unit = bias = None
        if flow.constants:
            w = flow.weights(layer)
            touch, unit = self.contributions(layer, w, flow.zero)
            bias = w.get("bias")
        name = activation_name(layer)
        flow.producer(node, layer, touch, unit, bias, getattr(layer, "activation", None), self.foldable(layer),
                      name in ELEMENTWISE_ACTIVATIONS or name is None,
                      f"with padding={getattr(layer, 'padding', None)!r} (a non-zero constant is not exact at "
                      "the borders)")

    def cut_kernel(self, layer, w: dict, kin: np.ndarray, keep_out: np.ndarray) -> dict:
        kernel = np.take(w[self.kernel_attr], np.flatnonzero(kin), axis=-2)
        return {self.kernel_attr: kernel[..., keep_out]}

    def cut(self, layer, cut):
        w, keep_out, kin = cut.weights, cut.keep_out, cut.keep_in[0]
        if keep_out.all() and kin.all():
            return None
        config = layer.get_config()
        if not keep_out.any():
            raise TfcompressError(
                f"shrink would leave {layer.name!r} with no output channel: none of its channels is "
                "live and read on a path to the model's output",
                f"layer {layer.name!r}",
                "a layer on that path has every channel pruned (zero or masked kernel, or below its "
                "Bayesian threshold); prune less (a lower sparsity or KL weight), or choose the channels "
                "to keep per layer (bayesian.prune_to, shrink(keep=...))")
        const_in = cut.const_in[0]
        take = ~kin & np.isfinite(const_in) & (const_in != 0)
        if not self.foldable(layer):  # only forced removals get here; the borders are not exact
            take &= False
        _, unit = self.contributions(layer, w, cut.flow.zero)
        delta = (np.where(take, const_in, 0.0) @ unit)[keep_out]
        new = dict(w)
        new.update(self.cut_kernel(layer, w, kin, keep_out))
        bias = w["bias"][keep_out].astype(np.float64) if "bias" in w else None
        if np.any(delta != 0):
            if bias is None:  # the folded constant needs a bias
                config["use_bias"], bias = True, np.zeros(int(keep_out.sum()))
            bias = bias + delta
            cut.notes.append(f"{layer.name}: folded the constant of {int(take.sum())} removed input "
                             "channel position(s) into the bias")
        if bias is not None:
            new["bias"] = bias.astype(w.get("bias", np.zeros(1, "float32")).dtype)
        config[self.units_key] = int(keep_out.sum())
        return config, new


class ProducerHandler(_Producer):
    """Creates its output channels from all its input channels: Dense, Conv1D / 2D / 3D, and a
    user's layer of that shape (its kernel ``(..., in, out)``, a ``bias`` of ``out``, the
    output count in config key ``units_key``).

    Args:
        kernel: the kernel's attribute / weight name.
        units_key: the config key of the output channel count.
        qat: QAT role (``"kernel"`` for types `QuantizedLayer` wraps).
        kind: ``"conv"`` or ``"dense"`` for MAC counting.
        input_axis: the kernel axis of input features.

    Example:
        >>> handler = handler_for(keras.layers.Dense(4))
        >>> type(handler).__name__, handler.qat, handler.kind
        ('ProducerHandler', 'kernel', 'dense')
    """

    def __init__(self, *, kernel: str = "kernel", units_key: str = "filters", qat: str = "range",
                 kind: str = "conv", input_axis: int = -2, prunable: bool = True):
        self.prunable = prunable
        self.kernel_attr = kernel
        self.units_key = units_key
        self.qat = qat
        self.kind = kind
        self.input_axis = input_axis

    def kernel_input_axis(self, layer) -> int:
        return self.input_axis

    def prunable_kernel(self, layer) -> str | None:
        return self.kernel_attr if self.prunable else None

    def traceable(self, layer) -> str | None:
        if not _channels_last(layer):
            return "channels_first data format"
        if getattr(layer, "groups", 1) != 1:
            return "a grouped convolution"
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None) is not None:
            return "a LoRA-enabled or Keras-quantized layer"
        return None

    def foldable(self, layer) -> bool:
        """A constant input adds exactly ``c * sum of its kernel slice`` everywhere: Dense, and
        convolutions without padding (``"valid"``, or a 1x1 kernel)."""
        if self.kind == "dense":
            return True
        return layer.padding == "valid" or all(int(k) == 1 for k in layer.kernel_size)

    def macs(self, layer, input_shapes, output_shapes):
        out_el = _out_el(output_shapes[0]) if output_shapes else None
        if out_el is None:
            return None
        kernel = tuple(getattr(layer, self.kernel_attr).shape)
        return out_el * int(math.prod(kernel[:-1]))


class SeparableHandler(_Producer):
    """SeparableConv1D / 2D: depthwise then pointwise; prunable is the pointwise kernel."""

    kernel_attr = "pointwise_kernel"
    kind = "conv"
    qat = "range"

    def __init__(self, *, prunable: bool = True):
        self.prunable = prunable

    def prunable_kernel(self, layer) -> str | None:
        return self.kernel_attr if self.prunable else None

    def traceable(self, layer) -> str | None:
        return None if _channels_last(layer) else "channels_first data format"

    def contributions(self, layer, w, zero):
        depthwise, pointwise = w["depthwise_kernel"], w["pointwise_kernel"]
        cin, mult = depthwise.shape[-2:]
        dw = depthwise.reshape(-1, cin, mult)
        pw = pointwise.reshape(cin, mult, -1)  # depthwise output k * mult + j feeds pw row
        touch = np.any(np.any(~zero(dw), axis=0)[:, :, None] & ~zero(pw), axis=1)
        unit = np.einsum("cm,cmf->cf", dw.sum(0, dtype=np.float64), pw.astype(np.float64))
        return touch, unit

    def foldable(self, layer) -> bool:
        return layer.padding == "valid" or all(int(k) == 1 for k in layer.kernel_size)

    def cut_kernel(self, layer, w, kin, keep_out):
        mult = w["depthwise_kernel"].shape[-1]
        pointwise = w["pointwise_kernel"][..., np.repeat(kin, mult), :]
        return {"depthwise_kernel": w["depthwise_kernel"][..., kin, :], "pointwise_kernel": pointwise[..., keep_out]}

    def macs(self, layer, input_shapes, output_shapes):
        out_el = _out_el(output_shapes[0]) if output_shapes else None
        if out_el is None:
            return None
        depthwise = tuple(layer.depthwise_kernel.shape)
        spatial = out_el // layer.filters
        return spatial * (math.prod(depthwise) + depthwise[-2] * depthwise[-1] * layer.filters)


class DepthwiseHandler(LayerHandler):
    """DepthwiseConv1D / 2D: output channel ``c * m + j`` reads input channel ``c`` only, so it
    belongs to the group of its input channel; its kernel ``(..., in, m)`` is prunable.

    Example:
        >>> type(handler_for(keras.layers.DepthwiseConv2D(3))).__name__
        'DepthwiseHandler'
    """

    kind = "conv"

    def __init__(self, *, qat: str = "kernel", prunable: bool = True):
        self.qat = qat
        self.prunable = prunable

    def prunable_kernel(self, layer) -> str | None:
        return "kernel" if self.prunable else None

    def kernel_layout(self, layer) -> str:
        return "depthwise"

    def trace(self, flow, node) -> None:
        layer = node.op
        if not _channels_last(layer):
            return flow.opaque(node, "channels_first data format")
        src = node.inputs[0]
        mult = int(layer.depth_multiplier)
        origin = np.repeat(flow.origin[src], mult)
        const = None
        if flow.constants:
            w = flow.weights(layer)
            kernel = w["kernel"]
            flat = kernel.reshape(-1, kernel.shape[-2] * mult)  # column k * mult + j
            const_in = np.repeat(flow.const[src], mult)
            bias = w.get("bias", np.zeros(origin.size)).astype(np.float64)
            dead = ~np.any(~flow.zero(flat), axis=0)
            no_padding = layer.padding == "valid" or all(int(k) == 1 for k in layer.kernel_size)
            pre = np.full(origin.size, np.nan)
            pre[dead] = bias[dead]
            from_const = ~dead & np.isfinite(const_in) & ((const_in == 0) | no_padding)
            pre[from_const] = (const_in * flat.sum(0, dtype=np.float64) + bias)[from_const]
            const = eval_elementwise(layer.activation, pre)
        flow.set(node.output, origin, const)
        flow.members[layer.name] = origin
        flow.apply_keep(layer.name, origin)

    def cut(self, layer, cut):
        kin, keep_out = cut.keep_in[0], cut.keep_out
        if kin.all() and keep_out.all():
            return None
        w = dict(cut.weights)
        w["kernel"] = cut.weights["kernel"][..., kin, :]
        if "bias" in w:
            w["bias"] = cut.weights["bias"][keep_out]
        return layer.get_config(), w

    def macs(self, layer, input_shapes, output_shapes):
        out_el = _out_el(output_shapes[0]) if output_shapes else None
        return None if out_el is None else out_el * math.prod(tuple(layer.kernel.shape)[:-2])


class _TransposeConvHandler(OpaqueHandler):
    def __init__(self):
        super().__init__(qat="range", why="a transposed convolution (channel surgery not supported)")
        self.kind = "conv"

    def macs(self, layer, input_shapes, output_shapes):
        in_el = _out_el(input_shapes[0]) if input_shapes else None
        kernel = tuple(layer.kernel.shape)
        return None if in_el is None else in_el * math.prod(kernel[:-2]) * kernel[-2]


class _RecurrentHandler(OpaqueHandler):
    """LSTM / GRU / SimpleRNN: TensorFlow's int8 calibrator crashes the process on them (a
    segfault inside TF 2.21, with or without float fallback), so full-integer export refuses
    them by name before it starts; QAT refuses them too."""

    int8_refusal = ("TensorFlow's full-integer calibrator crashes on recurrent layers; export with "
                    "quantization='dynamic' or 'float16', or replace the layer (e.g. by Conv1D)")

    def __init__(self):
        super().__init__(qat="refuse", why="a recurrent layer (channel surgery not supported)")
        self.qat_reason = "TFLite has no exact int8 form of it that QAT can simulate"


class _FixedMacs(OpaqueHandler):
    def __init__(self, macs: int | None, *, kind: str = "other", why: str):
        super().__init__(qat="range", why=f"{why} (channel surgery not supported)")
        self.fixed, self.kind = macs, kind

    def macs(self, layer, input_shapes, output_shapes):
        return self.fixed


class _TimeDistributedHandler(OpaqueHandler):
    """``TimeDistributed(inner)``: the inner layer's MACs once per step."""

    def __init__(self):
        super().__init__(qat="range", why="TimeDistributed (channel surgery not supported)")

    def macs(self, layer, input_shapes, output_shapes):
        steps = input_shapes[0][1]
        inner = handler_for(layer.layer, inherit=True).macs(
            layer.layer, [(1, *input_shapes[0][2:])], [(1, *output_shapes[0][2:])])
        return None if inner is None or steps is None else steps * inner


def _pool_macs(layer, input_shapes, output_shapes):
    out_el = _out_el(output_shapes[0]) if output_shapes else None
    return None if out_el is None else out_el * math.prod(layer.pool_size)


def _global_pool_macs(layer, input_shapes, output_shapes):
    return _out_el(input_shapes[0]) if input_shapes else 0


class WrapperHandler(LayerHandler):
    """A tfcompress training wrapper (pruning mask, fake quantization, clustering) around a layer:
    channels flow as through the layer it wraps; its kind and MACs are the wrapped layer's.

    Example:
        >>> from tfcompress.core.registry import handler_for_type
        >>> from tfcompress.layers import PruneLowMagnitude
        >>> handler = handler_for_type(PruneLowMagnitude)
        >>> type(handler).__name__, handler.qat
        ('WrapperHandler', 'refuse')
    """

    def __init__(self, *, qat: str = "refuse", why: str = "strip the wrapper first"):
        self.qat = qat
        self.qat_reason = why

    def trace(self, flow, node) -> None:
        import dataclasses

        inner = node.op.layer
        handler_for(inner).trace(flow, dataclasses.replace(node, op=inner))

    def macs(self, layer, input_shapes, output_shapes):
        return handler_for(layer.layer).macs(layer.layer, input_shapes, output_shapes)


class _InputHandler(LayerHandler):
    qat = "pass"

    def trace(self, flow, node) -> None:  # inputs are set up by the flow itself
        return None


# ------------------------------------------------------------------------------ registration


def _combine_mul(c):
    return np.where((c == 0).any(0), 0.0, c.prod(0))  # 0 * anything is 0


_MERGES = {
    L.Add: MergeHandler(lambda c: c.sum(0)),
    L.Subtract: MergeHandler(lambda c: c[0] - c[1]),
    L.Multiply: MergeHandler(_combine_mul),
    L.Maximum: MergeHandler(lambda c: c.max(0), qat="same_range"),
    L.Minimum: MergeHandler(lambda c: c.min(0), qat="same_range"),
    L.Average: MergeHandler(lambda c: c.mean(0)),
}


class _NumpyBinaryOp(LayerHandler):
    """``keras.ops`` arithmetic in a Functional graph (``x + 3.0``, ``x * y``): with one tensor and a
    constant it is per-channel; with two tensors, a merge."""

    kind = "elementwise"
    qat = "range"

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        self.fn = fn

    def trace(self, flow, node) -> None:
        args = node.arguments.args
        if len(node.inputs) == 1:
            tensor_first = hasattr(args[0], "_keras_history")
            other = args[1] if tensor_first else args[0]
            if not np.isscalar(other) and np.size(other) not in (1, flow.channels(node.inputs[0])):
                return flow.opaque(node, "a constant operand that is not per channel")
            other = np.asarray(other, np.float64).reshape(-1)
            fn = self.fn

            def value(c):
                return fn(c, other) if tensor_first else fn(other, c)
            return flow.passthrough(node, value)
        if len(node.inputs) == 2:
            return flow.merge(node, lambda c: self.fn(c[0], c[1]))
        flow.opaque(node, "an operation of more than two tensors")

    def cut(self, layer, cut):
        return None

    def macs(self, layer, input_shapes, output_shapes):
        el = _out_el(output_shapes[0]) if output_shapes else 0
        return el


class _ElementwiseOp(LayerHandler):
    """A unary ``keras.ops`` function applied elementwise (``keras.ops.relu6(x)``, ``sigmoid``)."""

    qat = "range"

    def trace(self, flow, node) -> None:
        if len(node.inputs) != 1:
            return flow.opaque(node, "an operation of several tensors")
        op = node.op
        flow.passthrough(node, lambda c: eval_elementwise(lambda x: op(x), c))

    def cut(self, layer, cut):
        return None


def _register_builtins() -> None:
    reg = register_layer
    reg(L.InputLayer, _InputHandler())
    # prunable ones first, in the order prune's messages list them; the 1-D / 3-D variants trace
    # and shrink like their 2-D kin, but prune does not mask them yet
    reg(L.Dense, ProducerHandler(units_key="units", qat="kernel", kind="dense", input_axis=0))
    reg(L.Conv1D, ProducerHandler())
    reg(L.Conv2D, ProducerHandler(qat="kernel"))
    reg(L.DepthwiseConv2D, DepthwiseHandler())
    reg(L.SeparableConv2D, SeparableHandler())
    reg(L.Conv3D, ProducerHandler(prunable=False))
    reg(L.SeparableConv1D, SeparableHandler(prunable=False))
    reg(L.DepthwiseConv1D, DepthwiseHandler(qat="range", prunable=False))
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        reg(cls, _TransposeConvHandler())
    reg(L.BatchNormalization, BatchNormalizationHandler())
    reg(L.Normalization, NormalizationHandler())
    reg(L.Rescaling, RescalingHandler())
    for cls, qat in ((L.MaxPooling1D, "pass"), (L.MaxPooling2D, "pass"), (L.MaxPooling3D, "pass"),
                     (L.AveragePooling1D, "range"), (L.AveragePooling2D, "range"), (L.AveragePooling3D, "range")):
        reg(cls, PassThroughHandler(qat=qat, kind="pool", macs=_pool_macs))
    for cls, qat in ((L.GlobalMaxPooling1D, "pass"), (L.GlobalMaxPooling2D, "pass"), (L.GlobalMaxPooling3D, "pass"),
                     (L.GlobalAveragePooling1D, "range"), (L.GlobalAveragePooling2D, "range"),
                     (L.GlobalAveragePooling3D, "range")):
        reg(cls, PassThroughHandler(qat=qat, kind="pool", macs=_global_pool_macs))
    for cls in (L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianNoise,
                L.GaussianDropout, L.AlphaDropout, L.Cropping1D, L.Cropping2D, L.Cropping3D,
                L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.Identity, L.ActivityRegularization):
        reg(cls, PassThroughHandler(qat="pass"))
    for cls in (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D):
        reg(cls, PassThroughHandler(qat="pass", zero_only=True))
    reg(L.Activation, ActivationHandler())
    for cls in (L.ReLU, L.LeakyReLU, L.ELU):
        reg(cls, ChannelwiseHandler(qat="activation" if cls is L.ReLU else "range"))
    reg(L.PReLU, PReLUHandler())
    reg(L.Softmax, MixingHandler())
    for cls, handler in _MERGES.items():
        reg(cls, handler)
    reg(L.Concatenate, ConcatenateHandler())
    reg(L.Flatten, FlattenHandler())
    reg(L.Reshape, ReshapeHandler())
    reg(L.Lambda, OpaqueHandler(reuse=True, why="a Lambda layer (its function is not traced)"))
    for cls in (L.MultiHeadAttention, L.LayerNormalization, L.GroupNormalization, L.UnitNormalization,
                L.Permute, L.RepeatVector, L.Attention):
        reg(cls, OpaqueHandler(qat="range", why=f"{cls.__name__} (channel surgery not supported)"))
    for cls in (L.LSTM, L.GRU, L.SimpleRNN, L.ConvLSTM1D, L.ConvLSTM2D):
        reg(cls, _RecurrentHandler())
    reg(L.Embedding, _FixedMacs(0, why="an Embedding (a lookup: no MACs)"))
    reg(L.EinsumDense, _FixedMacs(None, kind="dense", why="an EinsumDense"))
    bidirectional = _FixedMacs(None, why="a Bidirectional recurrent layer")
    bidirectional.int8_refusal = _RecurrentHandler.int8_refusal
    bidirectional.qat, bidirectional.qat_reason = "refuse", "TFLite has no exact int8 form of it"
    reg(L.Bidirectional, bidirectional)
    reg(L.TimeDistributed, _TimeDistributedHandler())
    _register_ops()


def _register_ops() -> None:
    from keras.src.ops import nn as knn
    from keras.src.ops import numpy as knp

    for name, fn in (("Add", np.add), ("Subtract", np.subtract), ("Multiply", np.multiply),
                     ("Divide", np.divide), ("TrueDivide", np.true_divide), ("Maximum", np.maximum),
                     ("Minimum", np.minimum)):
        cls = getattr(knp, name, None)
        if cls is not None:
            register_layer(cls, _NumpyBinaryOp(fn))
    for name in ("Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu", "HardSilu", "Tanh", "LeakyRelu", "Elu"):
        cls = getattr(knn, name, None) or getattr(knp, name, None)
        if cls is not None:
            register_layer(cls, _ElementwiseOp())


_register_builtins()

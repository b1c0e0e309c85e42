"""Single-pass ensembles: BatchEnsemble layers and MIMO models, and their S member models.

BatchEnsemble (Wen, Tran and Ba, ICLR 2020, "BatchEnsemble: an Alternative Approach to Efficient
Ensemble and Lifelong Learning", eq. 1): member ``i`` of a layer with shared weights ``W`` uses
the fast weights ``W_i = W o F_i``, ``F_i = s_i r_i^T`` (rank 1; ``s_i`` over the inputs,
``r_i`` over the outputs), so a batch of rows of all members is computed with one shared
matmul / convolution (eq. 2)::

    y = phi(((x o s_i) W) o r_i + b_i)

Layout (the one `tfcompress.uncertainty.TileMembers` and `mc_dropout` use): the S members run
on a batch of ``batch * S`` rows, *sample-minor* (row ``b * S + i`` is input ``b`` for member
``i``). A BatchEnsemble model reads ``x [batch, ...]``, repeats it with ``TileMembers(S)``, runs
its BatchEnsemble (and ordinary) layers, and ends with ``StackMembers(S)``: ``[batch, S,
classes]`` logits, which `tfcompress.uncertainty.from_stacked` compiles as is. Train it with the
labels repeated for each member (``np.repeat(y[:, None], S, axis=1)``). Layers between the
BatchEnsemble layers see ``batch * S`` rows (a BatchNormalization in training mode pools its
statistics over all members, as in the paper's code).

MIMO (Havasi, Jenatton, Fort, Liu, Snoek, Lakshminarayanan, Dai and Tran, ICLR 2021, "Training
independent subnetworks for robust prediction", sec. 2): M inputs concatenated on the channel
axis feed one backbone and M output heads; trained on M independently shuffled examples
(`mimo_inputs`, with the input repetition of sec. 3.4), tested on M copies of one input
(`mimo_inference_model`).

`batch_ensemble_members` and `mimo_members` turn either into S standard member models (input ->
logits) for `tfcompress.uncertainty.ensemble`.

Example:

>>> import keras, numpy as np
>>> from tfcompress.uncertainty import TileMembers
>>> from tfcompress.uncertainty.batch_ensemble import (BatchEnsembleDense, StackMembers,
...                                                     batch_ensemble_members)
>>> x = keras.Input((4,))
>>> h = BatchEnsembleDense(8, members=3, activation="relu")(TileMembers(3)(x))
>>> model = keras.Model(x, StackMembers(3)(BatchEnsembleDense(2, members=3)(h)))
>>> model(np.ones((5, 4), "float32")).shape
TensorShape([5, 3, 2])
>>> [m.output_shape for m in batch_ensemble_members(model)]
[(None, 2), (None, 2), (None, 2)]
"""

from __future__ import annotations

from math import prod
from typing import Any

import keras
import numpy as np
from keras import ops

from tfcompress.errors import TfcompressError
from tfcompress.uncertainty.collect import member_copy
from tfcompress.uncertainty.mc_dropout import TileMembers

__all__ = ["BatchEnsembleConv2D", "BatchEnsembleDense", "StackMembers", "batch_ensemble_members", "mimo_inference_model",
           "mimo_inputs", "mimo_members", "mimo_model"]

#: the fast weights' default initializer: N(1, 0.5^2) (uncertainty-baselines' ``random_sign_init=-0.5``)
FAST_WEIGHT_INITIALIZER = {"class_name": "RandomNormal", "config": {"mean": 1.0, "stddev": 0.5}}


def _positive(value: Any, where: str, name: str = "members") -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise TfcompressError(f"{name} must be a positive integer, got {value!r}", where, f"pass {name} >= 1")
    return int(value)


def _per_member(x, scale, shift=None):
    """``x * scale[i] (+ shift[i])`` on the rows of member ``i`` (row ``b * S + i``)."""
    members, channels = scale.shape
    feat = tuple(x.shape[1:-1])
    y = ops.reshape(x, (-1, members, prod(feat), channels)) * ops.expand_dims(scale, 1)
    if shift is not None:
        y = y + ops.expand_dims(shift, 1)
    return ops.reshape(y, (-1, *feat, channels))


class _BatchEnsembleBase(keras.layers.Layer):
    """The fast weights ``s`` (``input_scale``), ``r`` (``output_scale``) and per-member bias."""

    def __init__(self, members: int, activation: Any, use_bias: bool, kernel_initializer: Any,
                 fast_weight_initializer: Any, bias_initializer: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.members = _positive(members, f"{type(self).__name__}({self.name})")
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.fast_weight_initializer = keras.initializers.get(
            fast_weight_initializer if fast_weight_initializer is not None else FAST_WEIGHT_INITIALIZER)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def _add_weights(self, kernel_shape: tuple) -> None:
        inputs, outputs = kernel_shape[-2], kernel_shape[-1]
        self.kernel = self.add_weight(shape=kernel_shape, name="kernel", initializer=self.kernel_initializer)
        self.input_scale = self.add_weight(shape=(self.members, inputs), name="input_scale",
                                           initializer=self.fast_weight_initializer)
        self.output_scale = self.add_weight(shape=(self.members, outputs), name="output_scale",
                                            initializer=self.fast_weight_initializer)
        self.bias = self.add_weight(shape=(self.members, outputs), name="bias",
                                    initializer=self.bias_initializer) if self.use_bias else None

    def call(self, inputs):
        y = self._linear(_per_member(inputs, self.input_scale))
        return self.activation(_per_member(y, self.output_scale, self.bias))

    def member_weights(self, member: int) -> list[np.ndarray]:
        """``[W o (s_i r_i^T), b_i]`` of member ``i`` (eq. 1): the kernel and bias of its plain layer.

        Example:

        >>> layer = BatchEnsembleDense(2, members=3)
        >>> layer.build((None, 4))
        >>> [w.shape for w in layer.member_weights(1)]
        [(4, 2), (2,)]
        """
        if not 0 <= member < self.members:
            raise TfcompressError(f"member {member} out of range [0, {self.members})", self.name,
                                  "pass a member index below members")
        kernel = keras.ops.convert_to_numpy(self.kernel)
        s = keras.ops.convert_to_numpy(self.input_scale)[member]
        r = keras.ops.convert_to_numpy(self.output_scale)[member]
        bias = keras.ops.convert_to_numpy(self.bias)[member] if self.use_bias else np.zeros(r.shape, kernel.dtype)
        return [kernel * s[:, None] * r, bias]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "members": self.members,
                "activation": keras.activations.serialize(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "fast_weight_initializer": keras.initializers.serialize(self.fast_weight_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


@keras.saving.register_keras_serializable(package="tfcompress")
class BatchEnsembleDense(_BatchEnsembleBase):
    """Dense layer of S BatchEnsemble members (Wen et al. 2020, eq. 1-2) on ``[batch * S, ..., in]`` rows.

    Args:
        units: output units.
        members: S.
        activation, use_bias, kernel_initializer, bias_initializer: as ``keras.layers.Dense``
            (the bias is per member).
        fast_weight_initializer: of ``s`` and ``r`` (default ``N(1, 0.5^2)``).

    Example:

    >>> layer = BatchEnsembleDense(2, members=2)
    >>> layer(np.ones((4, 3), "float32")).shape  # 2 inputs x 2 members
    TensorShape([4, 2])
    """

    def __init__(self, units: int, members: int = 4, activation: Any = None, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", fast_weight_initializer: Any = None,
                 bias_initializer: Any = "zeros", **kwargs: Any):
        super().__init__(members, activation, use_bias, kernel_initializer, fast_weight_initializer,
                         bias_initializer, **kwargs)
        self.units = _positive(units, f"BatchEnsembleDense({self.name})", "units")

    def build(self, input_shape):
        self._add_weights((int(input_shape[-1]), self.units))

    def _linear(self, x):
        return ops.matmul(x, self.kernel)

    def plain_layer(self, name: str) -> keras.layers.Dense:
        """The ``Dense`` a member's weights (`member_weights`) go into.

        Example:

        >>> BatchEnsembleDense(5, members=2).plain_layer("fc").units
        5
        """
        return keras.layers.Dense(self.units, activation=self.activation, name=name)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="tfcompress")
class BatchEnsembleConv2D(_BatchEnsembleBase):
    """Conv2D (channels last) of S BatchEnsemble members (Wen et al. 2020, eq. 1-2): ``s`` scales the
    input channels, ``r`` the filters, on ``[batch * S, H, W, C]`` rows.

    Args:
        filters, kernel_size, strides, padding, dilation_rate: as ``keras.layers.Conv2D``.
        members and the rest: as `BatchEnsembleDense`.

    Example:

    >>> layer = BatchEnsembleConv2D(4, 3, members=2, padding="same")
    >>> layer(np.ones((2, 5, 5, 3), "float32")).shape
    TensorShape([2, 5, 5, 4])
    """

    def __init__(self, filters: int, kernel_size: int | tuple, members: int = 4, strides: int | tuple = 1,
                 padding: str = "valid", dilation_rate: int | tuple = 1, activation: Any = None,
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 fast_weight_initializer: Any = None, bias_initializer: Any = "zeros", **kwargs: Any):
        super().__init__(members, activation, use_bias, kernel_initializer, fast_weight_initializer,
                         bias_initializer, **kwargs)
        try:  # Keras checks and normalizes the convolution's arguments
            conv = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                                       dilation_rate=dilation_rate)
        except (TypeError, ValueError) as exc:
            raise TfcompressError(f"invalid convolution arguments ({exc})", f"BatchEnsembleConv2D({self.name})",
                                  "pass arguments keras.layers.Conv2D accepts") from None
        self.filters, self.kernel_size, self.strides = conv.filters, conv.kernel_size, conv.strides
        self.padding, self.dilation_rate = conv.padding, conv.dilation_rate

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise TfcompressError(f"expected a 4-D channels-last input, got {tuple(input_shape)}",
                                  f"BatchEnsembleConv2D({self.name})", "feed [batch * S, H, W, C] rows")
        self._add_weights((*self.kernel_size, int(input_shape[-1]), self.filters))

    def _linear(self, x):
        return ops.conv(x, self.kernel, strides=self.strides, padding=self.padding,
                        dilation_rate=self.dilation_rate, data_format="channels_last")

    def plain_layer(self, name: str) -> keras.layers.Conv2D:
        """The ``Conv2D`` a member's weights (`member_weights`) go into.

        Example:

        >>> BatchEnsembleConv2D(5, 3, members=2, strides=2).plain_layer("conv").strides
        (2, 2)
        """
        return keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides, padding=self.padding,
                                   dilation_rate=self.dilation_rate, activation=self.activation, name=name)

    def compute_output_shape(self, input_shape):
        return self.plain_layer("shape").compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "dilation_rate": self.dilation_rate}


@keras.saving.register_keras_serializable(package="tfcompress")
class StackMembers(keras.layers.Layer):
    """``[batch * S, *features]`` (sample-minor) -> ``[batch, S, *features]``: the members' outputs
    side by side, as `tfcompress.uncertainty.from_stacked` reads them.

    Example:

    >>> StackMembers(2)(np.arange(4, dtype="float32").reshape(4, 1)).numpy()[:, :, 0].tolist()
    [[0.0, 1.0], [2.0, 3.0]]
    """

    def __init__(self, members: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.members = _positive(members, f"StackMembers({self.name})")

    def call(self, x):
        return ops.reshape(x, (-1, self.members, *x.shape[1:]))

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] // self.members
        return (batch, self.members, *input_shape[1:])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "members": self.members}


def batch_ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The S members of a BatchEnsemble model as standard models ``x -> [batch, classes]`` logits.

    Member ``i``: every `BatchEnsembleDense` / `BatchEnsembleConv2D` becomes a ``Dense`` /
    ``Conv2D`` with the kernel ``W o (s_i r_i^T)`` and bias ``b_i`` (eq. 1), ``TileMembers`` and
    `StackMembers` are dropped, the other layers are copied with their weights; every layer is
    renamed ``<name>_member_<i>`` (`tfcompress.uncertainty.collect.member_copy`).

    Example:

    >>> x = keras.Input((4,))
    >>> layer = BatchEnsembleDense(2, members=2)
    >>> model = keras.Model(x, StackMembers(2)(layer(TileMembers(2)(x))))
    >>> members = batch_ensemble_members(model)
    >>> z = np.ones((1, 4), "float32")
    >>> bool(np.allclose(members[1](z), model(z)[:, 1], atol=1e-6))
    True
    """
    from tfcompress.core import rebuild, trace

    graph = trace(model, where="batch_ensemble_members")
    counts = {node.op.members for node in graph.nodes
              if isinstance(node.op, _BatchEnsembleBase | StackMembers)}
    counts |= {node.op.samples for node in graph.nodes if isinstance(node.op, TileMembers)}
    if not any(isinstance(node.op, _BatchEnsembleBase) for node in graph.nodes):
        raise TfcompressError("the model has no BatchEnsemble layer", model.name,
                              "build it with BatchEnsembleDense / BatchEnsembleConv2D")
    if len(counts) != 1:
        raise TfcompressError(f"the layers disagree on the number of members: {sorted(counts)}", model.name,
                              "give every BatchEnsemble layer, TileMembers and StackMembers the same S")
    (members,) = counts

    def replace_for(i: int):
        def replace(node, args, kwargs):
            layer = node.op
            if isinstance(layer, TileMembers | StackMembers):
                return args[0]
            if isinstance(layer, _BatchEnsembleBase):
                plain = layer.plain_layer(layer.name)
                out = plain(*args)
                plain.set_weights(layer.member_weights(i))
                return out
            return None

        return replace

    return [member_copy(rebuild(graph, replace_for(i)), f"_member_{i}") for i in range(members)]


# ------------------------------------------------------------------ MIMO


def mimo_model(backbone: keras.Model, members: int, classes: int, *, name: str = "mimo") -> keras.Model:
    """MIMO (Havasi et al. 2021, sec. 2): ``[batch, ..., M * C]`` -> ``backbone`` -> M heads ->
    ``[batch, M, classes]`` logits.

    The input holds the M members' inputs concatenated on the last (channel) axis (`mimo_inputs`);
    the heads are one ``Dense(M * classes)`` (named ``mimo_head``) reshaped to ``[M, classes]``.

    Args:
        backbone: a Keras model from the concatenated input to features ``[batch, F]``.
        members: M.
        classes: the number of classes.

    Example:

    >>> x = keras.Input((6,))
    >>> backbone = keras.Model(x, keras.layers.Dense(8, activation="relu")(x))
    >>> mimo_model(backbone, members=3, classes=4).output_shape  # inputs of 2 features, x 3
    (None, 3, 4)
    """
    members = _positive(members, "mimo_model")
    shape = tuple(backbone.inputs[0].shape[1:]) if getattr(backbone, "inputs", None) else ()
    if not shape or shape[-1] is None or shape[-1] % members:
        raise TfcompressError(f"the backbone's input {shape} does not hold {members} inputs on its last axis",
                              "mimo_model(backbone=...)", f"give the backbone an input of members x channels ({members} x C)")
    if len(backbone.outputs) != 1 or len(backbone.outputs[0].shape) != 2:
        raise TfcompressError("the backbone must return one [batch, features] tensor", backbone.name,
                              "end the backbone with Flatten / GlobalAveragePooling2D")
    inputs = keras.Input(shape, name="mimo_inputs")
    features = backbone(inputs)
    logits = keras.layers.Dense(members * classes, name="mimo_head")(features)
    return keras.Model(inputs, keras.layers.Reshape((members, classes), name="mimo_logits")(logits), name=name)


def _mimo_parts(model: keras.Model) -> tuple[int, int, int]:
    """(M, classes, channels of one member's input) of a `mimo_model`."""
    try:
        model.get_layer("mimo_head")
        members, classes = model.get_layer("mimo_logits").target_shape
    except ValueError:
        raise TfcompressError("not a model built by mimo_model (no mimo_head / mimo_logits layer)", model.name,
                              "build the MIMO model with tfcompress.uncertainty.batch_ensemble.mimo_model") from None
    return int(members), int(classes), int(model.inputs[0].shape[-1]) // int(members)


def mimo_inference_model(model: keras.Model, *, name: str | None = None) -> keras.Model:
    """``x [batch, ..., C]`` -> M copies on the channel axis -> `mimo_model` -> ``[batch, M, classes]``.

    Example:

    >>> x = keras.Input((6,))
    >>> mimo = mimo_model(keras.Model(x, keras.layers.Dense(8)(x)), members=3, classes=4)
    >>> mimo_inference_model(mimo).input_shape
    (None, 2)
    """
    members, _, channels = _mimo_parts(model)
    x = keras.Input((*model.inputs[0].shape[1:-1], channels), name="x")
    repeated = keras.layers.Concatenate(axis=-1, name="mimo_repeat")([x] * members)
    return keras.Model(x, model(repeated), name=name or f"{model.name}_inference")


def mimo_members(model: keras.Model) -> list[keras.Model]:
    """The M members of a `mimo_model` as standard models ``x -> [batch, classes]`` logits.

    Member ``m`` reads ``x`` repeated M times (as at test time), runs a copy of the backbone
    (`tfcompress.uncertainty.collect.member_copy`: every member holds the backbone's weights, so
    an ensemble of them stores M backbones; `mimo_inference_model` runs all members in one pass
    of one backbone) and the head's columns ``m * classes ... (m + 1) * classes - 1`` as its own
    ``Dense(classes)``.

    Example:

    >>> x = keras.Input((6,))
    >>> mimo = mimo_model(keras.Model(x, keras.layers.Dense(8)(x)), members=3, classes=4)
    >>> [m.output_shape for m in mimo_members(mimo)]
    [(None, 4), (None, 4), (None, 4)]
    """
    members, classes, channels = _mimo_parts(model)
    head = model.get_layer("mimo_head")
    backbone_layers = [layer for layer in model.layers if layer is not head and isinstance(layer, keras.Model)]
    if len(backbone_layers) != 1:
        raise TfcompressError("expected one backbone model inside the MIMO model", model.name,
                              "build the MIMO model with mimo_model")
    kernel, bias = head.get_weights()
    out = []
    for m in range(members):
        x = keras.Input((*model.inputs[0].shape[1:-1], channels), name="x")
        repeated = keras.layers.Concatenate(axis=-1, name=f"mimo_repeat_{m}")([x] * members)
        dense = keras.layers.Dense(classes, name=f"mimo_head_{m}")
        logits = dense(member_copy(backbone_layers[0], f"_member_{m}")(repeated))
        dense.set_weights([kernel[:, m * classes:(m + 1) * classes], bias[m * classes:(m + 1) * classes]])
        out.append(keras.Model(x, logits, name=f"{model.name}_member_{m}"))
    return out


def mimo_inputs(x: np.ndarray, y: np.ndarray, members: int, *, repetition: float = 0.0,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training data of a MIMO model: member ``m`` of row ``n`` sees example ``index[n, m]``.

    Each member's column is an independent permutation of the examples (Havasi et al. 2021,
    sec. 2); with probability ``repetition`` a row feeds the same example to every member
    (input repetition, sec. 3.4). Returns ``x`` concatenated on the last axis ``[N, ..., M * C]``
    and labels ``[N, M]``.

    Example:

    >>> xs, ys = mimo_inputs(np.arange(8.0).reshape(4, 2), np.arange(4), members=2, seed=1)
    >>> xs.shape, ys.shape
    ((4, 4), (4, 2))
    """
    members = _positive(members, "mimo_inputs")
    if not 0.0 <= repetition <= 1.0:
        raise TfcompressError(f"repetition must be in [0, 1], got {repetition!r}", "mimo_inputs",
                              "pass the probability of feeding one example to every member")
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise TfcompressError(f"{len(x)} inputs but {len(y)} labels", "mimo_inputs", "pass one label per input")
    rng = np.random.default_rng(seed)
    index = np.stack([rng.permutation(len(x)) for _ in range(members)], axis=1)
    repeat = rng.random(len(x)) < repetition
    index[repeat] = index[repeat, :1]
    return np.concatenate([x[index[:, m]] for m in range(members)], axis=-1), y[index]

"""Magnitude-style pruning for Keras 3: ``prune`` (wrap), ``UpdatePruning`` (fit), ``strip`` (bake).

The user flow and names follow tfmot's ``prune_low_magnitude`` / ``UpdatePruningStep`` /
``strip_pruning``, so migration is a find-and-replace::

    pruned = tfcompress.prune(model, schedule=PolynomialDecay(0.0, 0.9, 0, 2000))
    pruned.compile(...); pruned.fit(x, y, callbacks=[tfcompress.callbacks.UpdatePruning()])
    plain = tfcompress.strip(pruned)

Each prunable layer (Dense, Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D's pointwise
kernel) is wrapped in :class:`PruneLowMagnitude`, which holds a ``mask`` (kernel-shaped, 0/1)
and a ``pruning_step`` as non-trainable variables, so ``.keras`` saving, ``BackupAndRestore``
and ``MirroredStrategy`` carry them like any other weight. The forward pass computes with
``kernel * mask`` (a ``keras.StatelessScope`` maps the kernel variable to the masked tensor, so
the wrapped layer's own ``call`` is used unchanged and the gradient of a pruned weight is 0).

Granularity:

``"weight"``   unstructured: the ``round(s * n)`` lowest-scoring weights of a layer are masked.
``"channel"``  structured: whole output channels / units (their kernel slice and bias); a
               BatchNormalization that directly follows the layer is wrapped in
               :class:`MaskedBatchNormalization`, so a pruned channel outputs exactly 0 and
               ``tfcompress.shrink`` can remove it.
``"N:M"``      semi-structured (e.g. ``"2:4"``, as named by tfmot, TFLite and XNNPACK): in every
               group of M consecutive weights along the input dimension, the N largest are
               kept (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"). The
               sparsity is 1 - N/M; the schedule only decides when masks are updated.

Scope: ``"layer"`` gives every layer the schedule's sparsity; ``"global"`` ranks all scores of
all globally-scoped layers together (weights by |w|; channels by the criterion's
``global_channel_scores``, for magnitude the channel's norm per weight, L2 / sqrt(n) or
L1 / n with n the channel's fan-in, so layers of different fan-in compare), while no layer
keeps less than ``min_keep_fraction`` of its weights / channels: Tanaka et al. (NeurIPS 2020,
"Pruning neural networks without any data by iteratively conserving synaptic flow") show that
global magnitude pruning otherwise collapses whole layers at high sparsity.

Layers `prune` cannot handle (LSTM, Conv2DTranspose, Embedding, ...) are left dense with a
WARNING on the ``"tfcompress"`` logger naming the layer type and the supported ones.

Criteria are small serializable objects (:class:`PruningCriterion`); the default
``"magnitude"`` scores weights by |w| and channels by their L2 norm (``"l1"`` for the L1 norm).
Criteria that need statistics from training (activations, gradients) implement ``observe``,
which the `UpdatePruning` callback calls; see ``tfcompress.criteria``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.schedules import PruningSchedule
from tfcompress.schedules import get as get_schedule

logger = logging.getLogger("tfcompress")

PRUNABLE_TYPES = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
)
GRANULARITIES = ("weight", "channel")
SCOPES = ("layer", "global")


# --------------------------------------------------------------------------- criteria


class PruningCriterion:
    """How important each weight (or output channel) is; the lowest scores are pruned first.

    Subclasses implement :meth:`scores` (kernel-shaped, larger = keep). :meth:`channel_scores`
    defaults to a norm of the scores over each output channel. :meth:`observe` receives
    training statistics from the callback when :attr:`needs_statistics` is set.
    """

    needs_statistics = False

    def scores(self, wrapper: PruneLowMagnitude) -> np.ndarray:
        raise NotImplementedError

    def channel_scores(self, wrapper: PruneLowMagnitude) -> np.ndarray:
        """Per output channel: the L2 norm of the channel's scores."""
        return np.sqrt(channel_reduce(wrapper, self.scores(wrapper) ** 2, np.sum))

    def global_channel_scores(self, wrapper: PruneLowMagnitude) -> np.ndarray:
        """Channel scores made comparable across layers for ``scope="global"``.

        The default divides by sqrt(group size), the number of kernel entries per channel
        (fan-in), so an L2 norm becomes the root mean square of the channel's scores; criteria
        whose channel scores are already per-channel estimates (activation statistics, loss
        changes) override this and return :meth:`channel_scores` unchanged.
        """
        return self.channel_scores(wrapper) / math.sqrt(channel_group_size(wrapper))

    def observe(self, wrapper: PruneLowMagnitude, inputs, outputs, grads) -> None:  # noqa: B027
        """Accumulate statistics (no-op for weight-only criteria)."""

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfcompress")
class MagnitudeCriterion(PruningCriterion):
    """|w| for weights (Han et al. 2015, "Learning both Weights and Connections"); for channels
    the L1 or L2 norm of the channel's weights (Li et al. 2017, "Pruning Filters for Efficient
    ConvNets", eq. 1 uses the L1 norm)."""

    def __init__(self, norm: str = "l2"):
        if norm not in ("l1", "l2"):
            raise TfcompressError(f"unknown norm {norm!r}", "MagnitudeCriterion", "use 'l1' or 'l2'")
        self.norm = norm

    def scores(self, wrapper: PruneLowMagnitude) -> np.ndarray:
        return np.abs(wrapper.masked_kernel_numpy())

    def channel_scores(self, wrapper: PruneLowMagnitude) -> np.ndarray:
        w = np.abs(wrapper.masked_kernel_numpy())
        if self.norm == "l1":
            return channel_reduce(wrapper, w, np.sum)
        return np.sqrt(channel_reduce(wrapper, w**2, np.sum))

    def global_channel_scores(self, wrapper: PruneLowMagnitude) -> np.ndarray:
        """Per-weight averages, so layers of different fan-in n compare: ||w_c||_2 / sqrt(n)
        (root mean square) for ``"l2"``, ||w_c||_1 / n (mean |w|) for ``"l1"``."""
        group = channel_group_size(wrapper)
        scores = self.channel_scores(wrapper)
        return scores / group if self.norm == "l1" else scores / math.sqrt(group)

    def get_config(self) -> dict[str, Any]:
        return {"norm": self.norm}


_CRITERIA: dict[str, Callable[[], PruningCriterion]] = {
    "magnitude": lambda: MagnitudeCriterion("l2"),
    "l2": lambda: MagnitudeCriterion("l2"),
    "l1": lambda: MagnitudeCriterion("l1"),
}


def register_criterion(name: str, factory: Callable[[], PruningCriterion]) -> None:
    """Make ``criterion=name`` available to :func:`prune`."""
    _CRITERIA[name] = factory


def get_criterion(identifier: Any) -> PruningCriterion:
    if isinstance(identifier, PruningCriterion):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, str) and identifier in _CRITERIA:
        return _CRITERIA[identifier]()
    raise TfcompressError(
        f"unknown pruning criterion {identifier!r}", "criterion", f"use one of {sorted(_CRITERIA)}"
    )


# --------------------------------------------------------------------------- helpers


def parse_granularity(granularity: str) -> tuple[str, tuple[int, int] | None]:
    """``"weight"`` / ``"channel"`` / ``"N:M"`` -> (kind, (N, M) or None)."""
    if granularity in GRANULARITIES:
        return granularity, None
    if isinstance(granularity, str) and granularity.count(":") == 1:
        n_str, m_str = granularity.split(":")
        if n_str.isdigit() and m_str.isdigit() and 0 < int(n_str) < int(m_str):
            return "n:m", (int(n_str), int(m_str))
    raise TfcompressError(
        f"unknown granularity {granularity!r}", "granularity",
        "use 'weight', 'channel' or 'N:M' with 0 < N < M, e.g. '2:4'",
    )


def _kernel_attr(layer) -> str:
    return "pointwise_kernel" if isinstance(layer, keras.layers.SeparableConv2D) else "kernel"


def _input_axis(layer) -> int:
    """The kernel axis of input features: Dense (in, out) -> 0; convolutions (..., in, out) -> -2."""
    return 0 if isinstance(layer, keras.layers.Dense) else -2


def channel_reduce(wrapper: PruneLowMagnitude, values: np.ndarray, reduce: Callable) -> np.ndarray:
    """Reduce kernel-shaped values to one number per output channel (bias-sized)."""
    if isinstance(wrapper.layer, keras.layers.DepthwiseConv2D):
        kh, kw, cin, mult = values.shape  # output channel c * mult + k
        return reduce(values.reshape(kh * kw, cin * mult), axis=0)
    return reduce(values.reshape(-1, values.shape[-1]), axis=0)


def channel_group_size(wrapper: PruneLowMagnitude) -> int:
    """Kernel entries per output channel (kh * kw for a depthwise channel, the fan-in otherwise)."""
    size = int(np.prod(wrapper.mask.shape))
    return max(size // max(int(wrapper.channel_mask_numpy().size), 1), 1)


def channel_to_kernel(wrapper: PruneLowMagnitude, channel_mask: np.ndarray) -> np.ndarray:
    shape = tuple(wrapper.mask.shape)
    if isinstance(wrapper.layer, keras.layers.DepthwiseConv2D):
        return np.broadcast_to(channel_mask.reshape(1, 1, shape[2], shape[3]), shape).copy()
    return np.broadcast_to(channel_mask.reshape((1,) * (len(shape) - 1) + (-1,)), shape).copy()


def _lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Boolean array marking exactly ``count`` lowest entries (ties broken by position)."""
    flat = scores.reshape(-1)
    marked = np.zeros(flat.size, dtype=bool)
    if count > 0:
        order = np.argsort(flat, kind="stable")
        marked[order[:count]] = True
    return marked.reshape(scores.shape)


def n_m_mask(kernel_scores: np.ndarray, n: int, m: int, input_axis: int) -> np.ndarray:
    """Keep the N largest of every M consecutive entries along ``input_axis``.

    A last group shorter than M keeps min(N, its length) entries.
    """
    moved = np.moveaxis(kernel_scores, input_axis, -1)
    length = moved.shape[-1]
    pad = (-length) % m
    padded = np.concatenate([moved, np.full((*moved.shape[:-1], pad), np.inf)], axis=-1) if pad else moved
    groups = padded.reshape(*padded.shape[:-1], -1, m)
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    keep = keep.reshape(*padded.shape[:-1], -1)[..., :length]
    if pad:
        # the padded slots (inf) took keep places in the last group; give them back
        tail = moved[..., length - (length % m):]
        tail_keep = np.argsort(-tail, axis=-1, kind="stable")[..., : min(n, tail.shape[-1])]
        last = np.zeros_like(tail, dtype=bool)
        np.put_along_axis(last, tail_keep, True, axis=-1)
        keep[..., length - (length % m):] = last
    return np.moveaxis(keep, -1, input_axis).astype(np.float32)


# --------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="tfcompress")
class PruneLowMagnitude(keras.layers.Wrapper):
    """A prunable layer: computes with ``kernel * mask``; the mask is set by `UpdatePruning`.

    Args:
        layer: a Dense, Conv1D, Conv2D, DepthwiseConv2D or SeparableConv2D layer.
        pruning_schedule: a `tfcompress.schedules` schedule.
        granularity: ``"weight"``, ``"channel"`` or ``"N:M"``.
        scope: ``"layer"`` or ``"global"``.
        criterion: a criterion name or `PruningCriterion`.
        min_keep_fraction: with ``scope="global"``, the least fraction a layer keeps.
    """

    tfcompress_pruning_wrapper = True

    def __init__(self, layer, pruning_schedule, granularity: str = "weight", scope: str = "layer",
                 criterion: Any = "magnitude", min_keep_fraction: float = 0.02, **kwargs):
        super().__init__(layer, **kwargs)
        if not isinstance(layer, PRUNABLE_TYPES):
            raise TfcompressError(
                f"cannot prune a {type(layer).__name__} layer", getattr(layer, "name", "layer"),
                f"prune one of {[t.__name__ for t in PRUNABLE_TYPES]}",
            )
        self.pruning_schedule = get_schedule(pruning_schedule)
        self.granularity = granularity
        self.kind, self.n_m = parse_granularity(granularity)
        if scope not in SCOPES:
            raise TfcompressError(f"unknown scope {scope!r}", layer.name, f"use one of {SCOPES}")
        self.scope = scope
        self.criterion = get_criterion(criterion)
        self.min_keep_fraction = float(min_keep_fraction)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        kernel = self.kernel_variable
        self.mask = self.add_weight(name="mask", shape=tuple(kernel.shape), initializer="ones",
                                    trainable=False, dtype=kernel.dtype)
        self.pruning_step = self.add_weight(name="pruning_step", shape=(), initializer="zeros",
                                            trainable=False, dtype="int64")
        self.built = True

    @property
    def kernel_variable(self):
        return getattr(self.layer, _kernel_attr(self.layer))

    @property
    def bias_variable(self):
        return self.layer.bias if getattr(self.layer, "use_bias", False) else None

    def channel_mask_tensor(self):
        axes = tuple(range(len(self.mask.shape) - 1))
        if isinstance(self.layer, keras.layers.DepthwiseConv2D):
            return keras.ops.reshape(keras.ops.max(self.mask, axis=(0, 1)), (-1,))
        return keras.ops.max(self.mask, axis=axes)

    def call(self, inputs, training=None):
        kernel = self.kernel_variable
        mapping = [(kernel, kernel * self.mask)]
        bias = self.bias_variable
        if self.kind == "channel" and bias is not None:
            mapping.append((bias, bias * self.channel_mask_tensor()))
        with keras.StatelessScope(state_mapping=mapping):
            return self.layer(inputs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    # -- NumPy views, used by criteria, the callback, strip and metrics
    def masked_kernel_numpy(self) -> np.ndarray:
        return keras.ops.convert_to_numpy(self.kernel_variable) * keras.ops.convert_to_numpy(self.mask)

    def channel_mask_numpy(self) -> np.ndarray:
        return channel_reduce(self, keras.ops.convert_to_numpy(self.mask), np.max)

    def tfcompress_effective_weights(self) -> list[np.ndarray]:
        """The weights the layer really computes with (tfcompress.metrics protocol)."""
        return baked_weights(self)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
            "granularity": self.granularity,
            "scope": self.scope,
            "criterion": keras.saving.serialize_keras_object(self.criterion),
            "min_keep_fraction": self.min_keep_fraction,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(config["pruning_schedule"])
        config["criterion"] = keras.saving.deserialize_keras_object(config["criterion"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfcompress")
class MaskedBatchNormalization(keras.layers.Wrapper):
    """A BatchNormalization after a channel-pruned layer: multiplies its output by the channel
    mask of ``source`` (kept in ``channel_mask``), so a pruned channel is exactly 0. `strip`
    bakes the mask into gamma and beta (then BN maps the channel to exactly 0 too)."""

    tfcompress_pruning_wrapper = True

    def __init__(self, layer, source: str, **kwargs):
        super().__init__(layer, **kwargs)
        if not isinstance(layer, keras.layers.BatchNormalization):
            raise TfcompressError("MaskedBatchNormalization wraps a BatchNormalization", layer.name)
        self.source = source

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        channels = int(input_shape[self.layer.axis if self.layer.axis != -1 else -1])
        self.channel_mask = self.add_weight(name="channel_mask", shape=(channels,), initializer="ones",
                                            trainable=False)
        self.built = True

    def call(self, inputs, training=None, mask=None):
        return self.layer(inputs, training=training, mask=mask) * self.channel_mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def tfcompress_effective_weights(self) -> list[np.ndarray]:
        return baked_weights(self)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["source"] = self.source
        return config


# --------------------------------------------------------------------------- model level


def _walk(model) -> list:
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_walk(layer))
    return out


def pruning_wrappers(model) -> list[PruneLowMagnitude]:
    """Every `PruneLowMagnitude` in the model, nested models included, in layer order."""
    return [layer for layer in _walk(model) if isinstance(layer, PruneLowMagnitude)]


def masked_batch_norms(model) -> list[MaskedBatchNormalization]:
    return [layer for layer in _walk(model) if isinstance(layer, MaskedBatchNormalization)]


def _check_graph_model(model, action: str) -> None:
    if not isinstance(model, keras.Model):
        raise TfcompressError(f"expected a Keras model, got {type(model).__name__}", action)
    functional = type(model).__name__ == "Functional" or isinstance(model, keras.Sequential)
    if not functional:
        raise TfcompressError(
            f"cannot {action} a subclassed model ({type(model).__name__}): its layers' connections are "
            "not known",
            model.name,
            "build the model with the Functional API or keras.Sequential, or wrap its layers with "
            "tfcompress.pruning.PruneLowMagnitude inside your own class",
        )
    if not model.built or not getattr(model, "inputs", None):
        raise TfcompressError(f"cannot {action} a model that is not built", model.name,
                              "give it a keras.Input, or call it on data first")
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _check_graph_model(layer, action)


def _producer(layer):
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1 or len(nodes[0].parent_nodes) != 1:
        return None
    return nodes[0].parent_nodes[0].operation


def _supported_names() -> str:
    return ", ".join(t.__name__ for t in PRUNABLE_TYPES)


def _unsupported_reason(layer) -> tuple[bool, str] | None:
    """Why `prune` leaves a layer with weights alone: (has a weight matrix, reason), or None for
    layers whose weights are pruned with their producer (BatchNormalization) or have none."""
    if not layer.weights or isinstance(layer, keras.layers.BatchNormalization):
        return None
    matrices = [w.path.split("/")[-1] for w in layer.weights if len(w.shape) >= 2]
    kind = type(layer).__name__
    if matrices:
        return True, (f"{kind} layers are not supported (weights {', '.join(sorted(set(matrices)))} stay dense); "
                      f"prunable layer types are {_supported_names()} and their subclasses")
    return False, (f"{kind} has no weight matrix to prune (only vectors); prunable layer types are "
                   f"{_supported_names()}")


def _settings_for(layer, layers, defaults: dict) -> dict | None:
    if layers is None:
        return dict(defaults)
    if callable(layers):
        chosen = layers(layer)
    elif isinstance(layers, dict):
        if layer.name not in layers:
            return None
        chosen = layers[layer.name]
    else:
        raise TfcompressError(
            f"layers must be a dict or a callable, got {type(layers).__name__}", "layers",
            "pass {layer_name: {settings} or {}} or a function layer -> settings dict or None",
        )
    if chosen is None:
        return None
    if chosen is True:
        chosen = {}
    if not isinstance(chosen, dict):
        raise TfcompressError(f"settings for layer {layer.name!r} must be a dict or None", "layers")
    unknown = set(chosen) - {"schedule", "granularity", "scope", "criterion", "min_keep_fraction"}
    if unknown:
        raise TfcompressError(f"unknown settings {sorted(unknown)} for layer {layer.name!r}", "layers",
                              "use schedule, granularity, scope, criterion, min_keep_fraction")
    return {**defaults, **chosen}


def _clone_with(model, clone_function):
    return keras.models.clone_model(model, clone_function=clone_function, recursive=True)


def _copy_weights(pairs: list[tuple[Any, Any]]) -> None:
    for source, target in pairs:
        if isinstance(target, PruneLowMagnitude | MaskedBatchNormalization):
            target.layer.set_weights(source.get_weights())
        elif source.weights and not isinstance(source, keras.Model):
            target.set_weights(source.get_weights())


def prune(model, schedule: PruningSchedule, granularity: str = "weight", scope: str = "layer",
          criterion: Any = "magnitude", *, layers=None, min_keep_fraction: float = 0.02) -> keras.Model:
    """A copy of ``model`` whose prunable layers are wrapped in `PruneLowMagnitude`.

    Args:
        model: a built Sequential or Functional model (nested models are handled).
        schedule: `tfcompress.schedules.ConstantSparsity` / `PolynomialDecay`.
        granularity: ``"weight"``, ``"channel"`` or ``"N:M"`` (e.g. ``"2:4"``).
        scope: ``"layer"`` or ``"global"``.
        criterion: ``"magnitude"`` (``"l2"``), ``"l1"``, or a `PruningCriterion`.
        layers: which layers to prune and how: ``None`` (every prunable layer), a dict
            ``{layer_name: {overrides} or {}}`` (only those; overrides among ``schedule``,
            ``granularity``, ``scope``, ``criterion``, ``min_keep_fraction``), or a function
            ``layer -> dict | None`` (None leaves the layer alone).
        min_keep_fraction: with ``scope="global"``, no layer keeps less than this fraction.

    Returns:
        A new model with the original's weights; train it with `UpdatePruning`.
    """
    _check_graph_model(model, "prune")
    get_schedule(schedule)
    parse_granularity(granularity)
    if scope not in SCOPES:
        raise TfcompressError(f"unknown scope {scope!r}", "scope", f"use one of {SCOPES}")
    get_criterion(criterion)
    if not 0.0 <= min_keep_fraction < 1.0:
        raise TfcompressError(f"min_keep_fraction must be in [0, 1), got {min_keep_fraction}", "min_keep_fraction")
    if pruning_wrappers(model):
        raise TfcompressError("the model is already wrapped for pruning", model.name,
                              "call tfcompress.strip(model) first, or keep training the wrapped model")

    defaults = {"schedule": schedule, "granularity": granularity, "scope": scope,
                "criterion": criterion, "min_keep_fraction": min_keep_fraction}
    if isinstance(layers, dict):
        names = {layer.name for layer in _walk(model)}
        missing = sorted(set(layers) - names)
        if missing:
            raise TfcompressError(f"no layer named {missing}", "layers", f"layers are: {sorted(names)}")

    # Which BatchNormalization follows a channel-pruned layer (decided on the original graph).
    plan: dict[int, dict] = {}
    output_layers = [t._keras_history.operation for t in model.outputs]
    for layer in _walk(model):
        if isinstance(layer, keras.Model):
            continue
        settings = _settings_for(layer, layers, defaults)
        if settings is None:
            continue
        explicit = isinstance(layers, dict) or callable(layers)
        if not isinstance(layer, PRUNABLE_TYPES):
            reason = _unsupported_reason(layer)
            if reason is not None:
                # a weight matrix left dense, or a layer the user asked for: say so where users look
                level = logging.WARNING if reason[0] or explicit else logging.INFO
                logger.log(level, "prune: leaving %s (%s) alone: %s", layer.name, type(layer).__name__, reason[1])
            continue
        if parse_granularity(settings["granularity"])[0] == "channel" and layer in output_layers:
            level = logging.WARNING if explicit else logging.INFO
            logger.log(level, "prune: leaving %s (%s) alone for channel pruning: its units are model outputs "
                       "(removing one would change the output shape); prune it with granularity='weight' "
                       "or 'N:M' through layers=", layer.name, type(layer).__name__)
            continue
        plan[id(layer)] = settings
    followers: dict[int, str] = {}
    for layer in _walk(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            source = _producer(layer)
            if source is not None and id(source) in plan and parse_granularity(plan[id(source)]["granularity"])[0] == "channel":
                followers[id(layer)] = f"prune_low_magnitude_{source.name}"

    pairs: list[tuple[Any, Any]] = []

    def wrap(layer):
        if isinstance(layer, keras.Model):
            return layer
        fresh = layer.__class__.from_config(layer.get_config())
        if id(layer) in plan:
            s = plan[id(layer)]
            new = PruneLowMagnitude(fresh, get_schedule(s["schedule"]), s["granularity"], s["scope"],
                                    get_criterion(s["criterion"]), s["min_keep_fraction"],
                                    name=f"prune_low_magnitude_{layer.name}")
        elif id(layer) in followers:
            new = MaskedBatchNormalization(fresh, followers[id(layer)], name=f"masked_{layer.name}")
        else:
            new = fresh
        pairs.append((layer, new))
        return new

    pruned = _clone_with(model, wrap)
    _copy_weights(pairs)
    if not pruning_wrappers(pruned):
        logger.warning("prune: no layer of %s was wrapped", model.name)
    return pruned


def baked_weights(layer) -> list[np.ndarray]:
    """The inner layer's weights with the masks multiplied in (what `strip` keeps)."""
    weights = [np.array(w) for w in layer.layer.get_weights()]
    inner = layer.layer
    if isinstance(layer, PruneLowMagnitude):
        names = [w.path.split("/")[-1] for w in inner.weights]
        kernel_name = _kernel_attr(inner)
        mask = keras.ops.convert_to_numpy(layer.mask)
        channel = layer.channel_mask_numpy()
        for i, name in enumerate(names):
            if name == kernel_name:
                weights[i] = weights[i] * mask
            elif name == "bias" and layer.kind == "channel":
                weights[i] = weights[i] * channel
        return weights
    # MaskedBatchNormalization: gamma and beta times the channel mask -> output exactly 0
    channel = keras.ops.convert_to_numpy(layer.channel_mask)
    names = [w.path.split("/")[-1] for w in inner.weights]
    for i, name in enumerate(names):
        if name in ("gamma", "beta"):
            weights[i] = weights[i] * channel
    return weights


def strip(model) -> keras.Model:
    """A plain Keras model: wrappers removed, masks multiplied into the weights (tfmot's strip_pruning).

    The result holds only Keras layers, loads without tfcompress, and computes the same outputs.
    """
    if not isinstance(model, keras.Model):
        raise TfcompressError(f"expected a Keras model, got {type(model).__name__}", "strip")
    baked: list[tuple[Any, Any]] = []

    def unwrap(layer):
        if isinstance(layer, keras.Model):
            return layer
        if isinstance(layer, PruneLowMagnitude | MaskedBatchNormalization):
            config = layer.layer.get_config()
            new = layer.layer.__class__.from_config(config)
            baked.append((layer, new))
            return new
        new = layer.__class__.from_config(layer.get_config())
        baked.append((layer, new))
        return new

    plain = _clone_with(model, unwrap)
    for source, target in baked:
        if isinstance(source, PruneLowMagnitude | MaskedBatchNormalization):
            target.set_weights(baked_weights(source))
        elif source.weights:
            target.set_weights(source.get_weights())
    return plain


# --------------------------------------------------------------------------- mask updates


def _pruned_first(wrapper: PruneLowMagnitude, scores: np.ndarray, nested: bool, channel: bool) -> np.ndarray:
    """With ``nested``, entries the current mask has pruned score -inf: they stay pruned."""
    if not nested:
        return scores
    current = wrapper.channel_mask_numpy() if channel else keras.ops.convert_to_numpy(wrapper.mask)
    return np.where(current.reshape(scores.shape) == 0, -np.inf, scores.astype(np.float64))


def _layer_mask(wrapper: PruneLowMagnitude, sparsity: float, nested: bool = False) -> np.ndarray:
    if wrapper.kind == "n:m":
        n, m = wrapper.n_m
        return n_m_mask(wrapper.criterion.scores(wrapper), n, m, _input_axis(wrapper.layer))
    if wrapper.kind == "channel":
        scores = _pruned_first(wrapper, wrapper.criterion.channel_scores(wrapper), nested, True)
        count = min(int(round(sparsity * scores.size)), scores.size - 1)
        return channel_to_kernel(wrapper, (~_lowest(scores, count)).astype(np.float32))
    scores = _pruned_first(wrapper, wrapper.criterion.scores(wrapper), nested, False)
    count = int(round(sparsity * scores.size))
    return (~_lowest(scores, count)).astype(np.float32)


def _global_masks(wrappers: list[PruneLowMagnitude], sparsity: float, nested: bool = False) -> list[np.ndarray]:
    """One ranking over all layers; layers that would fall below their floor keep their floor.

    Channels are ranked by `PruningCriterion.global_channel_scores` (for magnitude: the norm
    per weight of the channel, so layers of different fan-in compare).
    """
    channel = wrappers[0].kind == "channel"
    scores = []
    for w in wrappers:
        if channel:
            scores.append(_pruned_first(w, w.criterion.global_channel_scores(w), nested, True))
        else:
            scores.append(_pruned_first(w, w.criterion.scores(w), nested, False).reshape(-1))
    sizes = [s.size for s in scores]
    floors = [max(1, math.ceil(w.min_keep_fraction * n)) for w, n in zip(wrappers, sizes, strict=True)]
    total_prune = int(round(sparsity * sum(sizes)))
    floored: set[int] = set()
    while True:
        free = [i for i in range(len(wrappers)) if i not in floored]
        budget = total_prune - sum(sizes[i] - floors[i] for i in floored)
        pool = np.concatenate([scores[i].reshape(-1) for i in free]) if free else np.zeros(0)
        budget = max(0, min(budget, pool.size))
        marked = _lowest(pool, budget)
        counts, offset = {}, 0
        for i in free:
            counts[i] = int(marked[offset : offset + sizes[i]].sum())
            offset += sizes[i]
        over = [i for i in free if sizes[i] - counts[i] < floors[i]]
        if not over:
            break
        floored.update(over)
    masks = []
    offset = 0
    for i, w in enumerate(wrappers):
        if i in floored:
            keep = ~_lowest(scores[i].reshape(-1), sizes[i] - floors[i])
        else:
            keep = ~marked[offset : offset + sizes[i]]
            offset += sizes[i]
        keep = keep.astype(np.float32)
        masks.append(channel_to_kernel(w, keep) if channel else keep.reshape(tuple(w.mask.shape)))
    return masks


def update_masks(model, step: int, force_sparsity: float | None = None, *, nested: bool = False) -> dict[str, float]:
    """Apply every wrapper's schedule at ``step``: recompute masks where it says so.

    Returns the sparsity each updated layer now has. Runs eagerly (cross-replica under a
    distribution strategy); also zeroes the pruned kernel entries so they are really 0.
    With ``nested=True`` what is pruned now stays pruned (the new masks are subsets of the old
    ones, as in iterative pruning) whatever the criterion's scores, provided the sparsity does
    not decrease (N:M masks are recomputed as usual).
    """
    wrappers = pruning_wrappers(model)
    updated: dict[str, float] = {}
    due: list[tuple[PruneLowMagnitude, float]] = []
    for w in wrappers:
        should, sparsity = w.pruning_schedule(step)
        if force_sparsity is not None:
            should, sparsity = True, force_sparsity
        if should:
            due.append((w, sparsity))
    prepared: set[int] = set()
    for w, _ in due:
        criterion = w.criterion
        if criterion.needs_statistics and id(criterion) not in prepared:
            sharing = [v for v, _ in due if v.criterion is criterion]
            criterion.prepare(model, sharing)
            prepared.add(id(criterion))
    local = [(w, s) for w, s in due if w.scope == "layer" or w.kind == "n:m"]
    global_ = [(w, s) for w, s in due if w.scope == "global" and w.kind != "n:m"]
    new_masks = [(w, _layer_mask(w, s, nested)) for w, s in local]
    for kind in ("weight", "channel"):
        group = [(w, s) for w, s in global_ if w.kind == kind]
        if group:
            masks = _global_masks([w for w, _ in group], group[0][1], nested)
            new_masks += list(zip([w for w, _ in group], masks, strict=True))
    for w, mask in new_masks:
        w.mask.assign(mask.astype(w.mask.dtype))
        kernel = w.kernel_variable
        kernel.assign(keras.ops.convert_to_numpy(kernel) * mask)
        updated[w.name] = float(1.0 - mask.mean())
    if new_masks:
        _sync_followers(model)
    return updated


def _sync_followers(model) -> None:
    by_name = {w.name: w for w in pruning_wrappers(model)}
    for bn in masked_batch_norms(model):
        source = by_name.get(bn.source)
        if source is not None:
            bn.channel_mask.assign(source.channel_mask_numpy().astype("float32"))


def mask_sparsity(wrappers) -> float:
    """Fraction of zero mask entries over all the given pruning wrappers."""
    masks = [keras.ops.convert_to_numpy(w.mask) for w in wrappers]
    total = sum(m.size for m in masks)
    return sum(int(m.size - np.count_nonzero(m)) for m in masks) / max(total, 1)


def pruning_summary(model) -> dict[str, dict[str, float]]:
    """Per wrapped layer: its weight sparsity, pruned channels and step."""
    out = {}
    for w in pruning_wrappers(model):
        mask = keras.ops.convert_to_numpy(w.mask)
        channels = w.channel_mask_numpy()
        out[w.layer.name] = {
            "sparsity": float(1.0 - mask.mean()),
            "pruned_channels": int((channels == 0).sum()),
            "channels": int(channels.size),
            "step": int(keras.ops.convert_to_numpy(w.pruning_step)),
        }
    return out

"""Base objects of the pruning layers: criteria, schedules and kernel helpers.

`tfcompress.layers.PruneLowMagnitude` holds a :class:`PruningCriterion` (how important each
weight or channel is) and a :class:`PruningSchedule` (when, and to which sparsity, its mask is
updated); both are small serializable objects stored in the layer's config. The concrete
schedules are in `tfcompress.pruning.schedules`, the data-driven criteria in
`tfcompress.pruning.criteria`, the model-level functions (``prune``, ``update_masks``,
``strip``) in `tfcompress.pruning`; they all import from here, so the layers do not depend on
the methods.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from tfcompress.core import handler_for
from tfcompress.errors import TfcompressError

if TYPE_CHECKING:
    from tfcompress.layers.prune_low_magnitude import PruneLowMagnitude

GRANULARITIES = ("weight", "channel")
SCOPES = ("layer", "global")


# --------------------------------------------------------------------------- schedules


class PruningSchedule:
    """Base class: ``schedule(step) -> (should_prune: bool, sparsity: float)``.

    Example:
        >>> class EveryStep(PruningSchedule):             # prune to 50% at every step
        ...     def should_prune(self, step):
        ...         return True
        ...     def sparsity(self, step):
        ...         return 0.5
        >>> EveryStep()(3)
        (True, 0.5)
    """

    begin_step: int
    end_step: int
    frequency: int

    def _validate_steps(self, where: str, end_required: bool) -> None:
        if self.begin_step < 0:
            raise TfcompressError(f"begin_step must be >= 0, got {self.begin_step}", where)
        if self.frequency <= 0:
            raise TfcompressError(f"frequency must be > 0, got {self.frequency}", where)
        if end_required and self.end_step < 0:
            raise TfcompressError(f"end_step must be >= 0, got {self.end_step}", where, "set the step pruning ends at")
        if self.end_step >= 0 and self.end_step < self.begin_step:
            raise TfcompressError(
                f"end_step ({self.end_step}) is before begin_step ({self.begin_step})", where,
                "use end_step >= begin_step, or -1 for no end",
            )

    def should_prune(self, step: int) -> bool:
        """tfmot's ``_should_prune_in_step``: in [begin, end] and on a frequency boundary."""
        in_range = step >= self.begin_step and (self.end_step < 0 or step <= self.end_step)
        return bool(in_range and (step - self.begin_step) % self.frequency == 0)

    def sparsity(self, step: int) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> tuple[bool, float]:
        step = int(step)
        return self.should_prune(step), self.sparsity(step)

    @property
    def final_sparsity(self) -> float:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls(**config)


def get_schedule(identifier: Any) -> PruningSchedule:
    """A schedule from an instance or a serialized config.

    Example:
        >>> from tfcompress.pruning import PolynomialDecay
        >>> schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=10)
        >>> config = keras.saving.serialize_keras_object(schedule)
        >>> get_schedule(config).final_sparsity, get_schedule(schedule) is schedule
        (0.8, True)
    """
    if isinstance(identifier, PruningSchedule):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    raise TfcompressError(
        f"not a pruning schedule: {identifier!r}", "schedule",
        "pass tfcompress.schedules.ConstantSparsity(...) or PolynomialDecay(...)",
    )


# --------------------------------------------------------------------------- criteria


class PruningCriterion:
    """How important each weight (or output channel) is; the lowest scores are pruned first.

    Subclasses implement :meth:`scores` (kernel-shaped, larger = keep). :meth:`channel_scores`
    defaults to a norm of the scores over each output channel. :meth:`observe` receives
    training statistics from the callback when :attr:`needs_statistics` is set.

    Example:
        >>> from tfcompress.layers import PruneLowMagnitude
        >>> from tfcompress.pruning import ConstantSparsity
        >>> wrapper = PruneLowMagnitude(keras.layers.Dense(2), ConstantSparsity(0.5, begin_step=0))
        >>> wrapper.build((None, 3))
        >>> _ = wrapper.layer.kernel.assign([[1.0, -4.0], [2.0, 0.0], [-2.0, 3.0]])
        >>> class Largest(PruningCriterion):              # keep the largest kernel entries, as |w| does
        ...     def scores(self, wrapper):
        ...         return np.abs(wrapper.masked_kernel_numpy())
        >>> Largest().channel_scores(wrapper).tolist()    # L2 norms of the columns
        [3.0, 5.0]
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
    ConvNets", eq. 1 uses the L1 norm).

    Example:
        >>> from tfcompress.layers import PruneLowMagnitude
        >>> from tfcompress.pruning import ConstantSparsity
        >>> wrapper = PruneLowMagnitude(keras.layers.Dense(2), ConstantSparsity(0.5, begin_step=0))
        >>> wrapper.build((None, 3))
        >>> _ = wrapper.layer.kernel.assign([[1.0, -4.0], [2.0, 0.0], [-2.0, 3.0]])
        >>> MagnitudeCriterion("l2").channel_scores(wrapper).tolist(), MagnitudeCriterion("l1").channel_scores(wrapper).tolist()
        ([3.0, 5.0], [5.0, 7.0])
        >>> [round(float(v), 3) for v in MagnitudeCriterion().global_channel_scores(wrapper)]   # / sqrt(fan-in 3)
        [1.732, 2.887]
    """

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
    """Make ``criterion=name`` available to :func:`prune`.

    Example:
        >>> register_criterion("l1_alias", lambda: MagnitudeCriterion("l1"))
        >>> get_criterion("l1_alias").norm
        'l1'
        >>> del _CRITERIA["l1_alias"]                     # forget the example's name
    """
    _CRITERIA[name] = factory


def get_criterion(identifier: Any) -> PruningCriterion:
    """A criterion from an instance, a serialized config or a registered name (`register_criterion`).

    Example:
        >>> type(get_criterion("magnitude")).__name__, get_criterion("l1").norm
        ('MagnitudeCriterion', 'l1')
        >>> get_criterion("random")
        Traceback (most recent call last):
        ...
        tfcompress.errors.TfcompressError: criterion: unknown pruning criterion 'random' Fix: use one of [...]
    """
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
    """``"weight"`` / ``"channel"`` / ``"N:M"`` -> (kind, (N, M) or None).

    Example:
        >>> parse_granularity("channel"), parse_granularity("2:4")
        (('channel', None), ('n:m', (2, 4)))
    """
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
    """The kernel ``prune`` masks, from the layer type's handler (``tfcompress.core``)."""
    return handler_for(layer, inherit=True).prunable_kernel(layer) or "kernel"


def _input_axis(layer) -> int:
    """The kernel axis of input features: Dense (in, out) -> 0; convolutions (..., in, out) -> -2."""
    return handler_for(layer, inherit=True).kernel_input_axis(layer)


def _depthwise(layer) -> bool:
    return handler_for(layer, inherit=True).kernel_layout(layer) == "depthwise"


def channel_reduce(wrapper: PruneLowMagnitude, values: np.ndarray, reduce: Callable) -> np.ndarray:
    """Reduce kernel-shaped values to one number per output channel (bias-sized).

    Example:
        >>> from tfcompress.layers import PruneLowMagnitude
        >>> from tfcompress.pruning import ConstantSparsity
        >>> wrapper = PruneLowMagnitude(keras.layers.Dense(2), ConstantSparsity(0.5, begin_step=0))
        >>> wrapper.build((None, 3))
        >>> _ = wrapper.layer.kernel.assign([[1.0, -4.0], [2.0, 0.0], [-2.0, 3.0]])
        >>> channel_reduce(wrapper, np.abs(wrapper.masked_kernel_numpy()), np.max).tolist()
        [2.0, 4.0]
    """
    if _depthwise(wrapper.layer):
        cin, mult = values.shape[-2:]  # output channel c * mult + k
        return reduce(values.reshape(-1, cin * mult), axis=0)
    return reduce(values.reshape(-1, values.shape[-1]), axis=0)


def channel_group_size(wrapper: PruneLowMagnitude) -> int:
    """Kernel entries per output channel (kh * kw for a depthwise channel, the fan-in otherwise).

    Example:
        >>> from tfcompress.layers import PruneLowMagnitude
        >>> from tfcompress.pruning import ConstantSparsity
        >>> wrapper = PruneLowMagnitude(keras.layers.Dense(2), ConstantSparsity(0.5, begin_step=0))
        >>> wrapper.build((None, 3))
        >>> _ = wrapper.layer.kernel.assign([[1.0, -4.0], [2.0, 0.0], [-2.0, 3.0]])
        >>> channel_group_size(wrapper)                   # 3 inputs per output unit
        3
    """
    size = int(np.prod(wrapper.mask.shape))
    return max(size // max(int(wrapper.channel_mask_numpy().size), 1), 1)


def channel_to_kernel(wrapper: PruneLowMagnitude, channel_mask: np.ndarray) -> np.ndarray:
    """A per-output-channel mask broadcast to the kernel's shape (the wrapper's ``mask``).

    Example:
        >>> from tfcompress.layers import PruneLowMagnitude
        >>> from tfcompress.pruning import ConstantSparsity
        >>> wrapper = PruneLowMagnitude(keras.layers.Dense(2), ConstantSparsity(0.5, begin_step=0))
        >>> wrapper.build((None, 3))
        >>> _ = wrapper.layer.kernel.assign([[1.0, -4.0], [2.0, 0.0], [-2.0, 3.0]])
        >>> channel_to_kernel(wrapper, np.array([1.0, 0.0])).tolist()
        [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    """
    shape = tuple(wrapper.mask.shape)
    if _depthwise(wrapper.layer):
        return np.broadcast_to(channel_mask.reshape((1,) * (len(shape) - 2) + shape[-2:]), shape).copy()
    return np.broadcast_to(channel_mask.reshape((1,) * (len(shape) - 1) + (-1,)), shape).copy()

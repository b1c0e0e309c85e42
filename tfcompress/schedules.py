"""Pruning schedules: when masks are updated and to which sparsity, with tfmot's names and semantics.

A schedule is called with the training step and returns ``(should_prune, sparsity)``. The
parameters (``begin_step``, ``end_step``, ``frequency``, ``power``) mean what they mean in
``tfmot.sparsity.keras``, so a tfmot user changes only the import:

* masks are updated at steps ``begin_step, begin_step + frequency, ...`` up to ``end_step``
  inclusive (``end_step = -1``: no end);
* :class:`PolynomialDecay` is Zhu and Gupta, "To prune, or not to prune" (2017), eq. 1::

      s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_n - t_0)) ** power,   t_0 <= t <= t_n

  with the progress clipped to [0, 1] (so ``s_t = s_f`` after ``end_step``).

Steps are Python integers: the masks are updated by the `UpdatePruning` callback, which
counts batches, so the schedule never enters the compiled training step.
"""

from __future__ import annotations

from typing import Any

import keras

from tfcompress.errors import TfcompressError


def _check_sparsity(value: float, name: str, where: str, *, allow_zero: bool = True) -> float:
    value = float(value)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value < 1.0):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise TfcompressError(f"{name} must be in {bound}, got {value}", where, f"pass a fraction in {bound}")
    return value


class PruningSchedule:
    """Base class: ``schedule(step) -> (should_prune: bool, sparsity: float)``."""

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


@keras.saving.register_keras_serializable(package="tfcompress")
class ConstantSparsity(PruningSchedule):
    """Prune to ``target_sparsity`` every ``frequency`` steps from ``begin_step`` (tfmot's ConstantSparsity)."""

    def __init__(self, target_sparsity: float, begin_step: int, end_step: int = -1, frequency: int = 100):
        self.target_sparsity = _check_sparsity(target_sparsity, "target_sparsity", "ConstantSparsity")
        self.begin_step, self.end_step, self.frequency = int(begin_step), int(end_step), int(frequency)
        self._validate_steps("ConstantSparsity", end_required=False)

    def sparsity(self, step: int) -> float:
        return self.target_sparsity

    @property
    def final_sparsity(self) -> float:
        return self.target_sparsity

    def get_config(self) -> dict[str, Any]:
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency}


@keras.saving.register_keras_serializable(package="tfcompress")
class PolynomialDecay(PruningSchedule):
    """Gradual pruning of Zhu and Gupta (2017), eq. 1 (tfmot's PolynomialDecay)."""

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int,
                 power: float = 3, frequency: int = 100):
        self.initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity", "PolynomialDecay")
        self._final = _check_sparsity(final_sparsity, "final_sparsity", "PolynomialDecay")
        self.begin_step, self.end_step, self.frequency = int(begin_step), int(end_step), int(frequency)
        self.power = float(power)
        self._validate_steps("PolynomialDecay", end_required=True)

    def sparsity(self, step: int) -> float:
        span = max(self.end_step - self.begin_step, 1)
        progress = min(1.0, max(0.0, (step - self.begin_step) / span))
        return self._final + (self.initial_sparsity - self._final) * (1.0 - progress) ** self.power

    @property
    def final_sparsity(self) -> float:
        return self._final

    def get_config(self) -> dict[str, Any]:
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self._final,
                "begin_step": self.begin_step, "end_step": self.end_step, "power": self.power,
                "frequency": self.frequency}


def get(identifier: Any) -> PruningSchedule:
    """A schedule from an instance or a serialized config."""
    if isinstance(identifier, PruningSchedule):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    raise TfcompressError(
        f"not a pruning schedule: {identifier!r}", "schedule",
        "pass tfcompress.schedules.ConstantSparsity(...) or PolynomialDecay(...)",
    )

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

The base class :class:`PruningSchedule` and ``get`` are defined in
`tfcompress.layers._pruning_base`, beside the layer that holds a schedule.
"""

from __future__ import annotations

from typing import Any

import keras

from tfcompress.errors import TfcompressError
from tfcompress.layers._pruning_base import PruningSchedule, get_schedule


def _check_sparsity(value: float, name: str, where: str, *, allow_zero: bool = True) -> float:
    value = float(value)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value < 1.0):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise TfcompressError(f"{name} must be in {bound}, got {value}", where, f"pass a fraction in {bound}")
    return value


@keras.saving.register_keras_serializable(package="tfcompress")
class ConstantSparsity(PruningSchedule):
    """Prune to ``target_sparsity`` every ``frequency`` steps from ``begin_step`` (tfmot's ConstantSparsity).

    Example:
        >>> schedule = ConstantSparsity(0.8, begin_step=0, frequency=10)
        >>> schedule(0), schedule(5), schedule(20)          # (update the masks?, sparsity)
        ((True, 0.8), (False, 0.8), (True, 0.8))
        >>> ConstantSparsity.from_config(schedule.get_config()).final_sparsity
        0.8
    """

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
    """Gradual pruning of Zhu and Gupta (2017), eq. 1 (tfmot's PolynomialDecay).

    Example:
        >>> schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=100, frequency=50)
        >>> [round(schedule.sparsity(step), 4) for step in (0, 50, 100, 200)]
        [0.0, 0.7875, 0.9, 0.9]
        >>> [schedule.should_prune(step) for step in (0, 25, 50, 150)]
        [True, False, True, False]
    """

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


# a schedule from an instance or a serialized config (the layers' own resolver)
get = get_schedule

"""Rewinding after pruning: lottery-ticket weight rewinding and learning-rate rewinding.

``WeightRewinding`` (Frankle and Carbin, ICLR 2019, "The Lottery Ticket Hypothesis", Algorithm
sec. 1, with the rewinding to an early iteration k of Frankle et al., ICML 2020, "Linear Mode
Connectivity and the Lottery Ticket Hypothesis", sec. 3): it records the weights at step
``rewind_step``; when the pruning schedule has made its last mask update, every weight is reset
to its recorded value times its mask (theta_k * m), and training continues from there with the
masks fixed. The optimizer state is reset too (Adam moments belong to the old trajectory).

``LearningRateRewinding`` (Renda, Frankle and Carbin, ICLR 2020, "Comparing Rewinding and
Fine-tuning in Neural Network Pruning", sec. 3): the weights are kept, but the learning-rate
schedule is replayed from ``rewind_step`` once pruning ends: lr(t) = schedule(t) before the
rewind point, schedule(rewind_step + t - t_rewind) after.

Both read the end of pruning from the wrappers' schedules (the largest ``end_step``), so they
are placed after `UpdatePruning` in the callback list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.pruning import pruning_wrappers


def pruning_end_step(model) -> int:
    """The last step at which any wrapper's schedule updates its mask."""
    ends = []
    for wrapper in pruning_wrappers(model):
        schedule = wrapper.pruning_schedule
        if schedule.end_step < 0:
            raise TfcompressError(
                f"{wrapper.name}: the schedule has no end_step", wrapper.name,
                "give the pruning schedule an end_step so rewinding knows when pruning is over",
            )
        last = schedule.begin_step + ((schedule.end_step - schedule.begin_step) // schedule.frequency) * schedule.frequency
        ends.append(last)
    if not ends:
        raise TfcompressError("no pruned layer in the model", "rewinding", "wrap the model with tfcompress.prune first")
    return max(ends)


def _step(model) -> int:
    return int(keras.ops.convert_to_numpy(pruning_wrappers(model)[0].pruning_step))


def snapshot_weights(model) -> list[np.ndarray]:
    """The values of ``model.trainable_variables`` (a rewind point theta_k for `rewind_weights`)."""
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.trainable_variables]


def rewind_weights(model, saved: list[np.ndarray]) -> None:
    """Set every trainable variable to its saved value, pruned kernels to saved * mask: theta_k * m
    (Frankle and Carbin 2019, sec. 1, step 4; Frankle et al. 2020, sec. 3 for k > 0)."""
    variables = model.trainable_variables
    if len(variables) != len(saved):
        raise TfcompressError(
            f"{len(saved)} saved values for {len(variables)} trainable variables", "rewind_weights",
            "take the snapshot with snapshot_weights on this same model",
        )
    masks = {id(w.kernel_variable): keras.ops.convert_to_numpy(w.mask) for w in pruning_wrappers(model)}
    for variable, value in zip(variables, saved, strict=True):
        mask = masks.get(id(variable))
        variable.assign(value * mask if mask is not None else value)


def reset_optimizer(optimizer, *, iterations: bool = False, learning_rate: float | None = None) -> None:
    """Zero the optimizer's slot variables (moments): they belong to the old trajectory.

    With ``iterations=True`` the step counter restarts at 0 too, so a
    ``keras.optimizers.schedules.LearningRateSchedule`` replays from its start (learning-rate
    rewinding, Renda et al. 2020, sec. 3); ``learning_rate`` restores a constant rate.
    """
    if optimizer is None or not getattr(optimizer, "built", False):
        return
    keep = {id(optimizer.iterations), id(getattr(optimizer, "_learning_rate", None))}
    for v in optimizer.variables:
        name = v.path.split("/")[-1]
        if id(v) in keep or "iteration" in name or "learning_rate" in name:
            continue
        v.assign(np.zeros(v.shape, dtype=v.dtype))
    if iterations:
        optimizer.iterations.assign(0)
    if learning_rate is not None and not callable(getattr(optimizer, "_learning_rate", None)):
        optimizer.learning_rate = learning_rate  # a constant rate (a schedule replays from iterations)


@keras.saving.register_keras_serializable(package="tfcompress")
class WeightRewinding(keras.callbacks.Callback):
    """Rewind the surviving weights to their values at ``rewind_step`` once pruning is over.

    Args:
        rewind_step: the training step whose weights are the "winning ticket" initialization
            (0 rewinds to the weights the model had when ``fit`` started).
        reset_optimizer: also reset the optimizer's slot variables (moments).
    """

    def __init__(self, rewind_step: int = 0, reset_optimizer: bool = True):
        super().__init__()
        if rewind_step < 0:
            raise TfcompressError(f"rewind_step must be >= 0, got {rewind_step}", "WeightRewinding")
        self.rewind_step = int(rewind_step)
        self.reset_optimizer = bool(reset_optimizer)
        self._saved: list[np.ndarray] | None = None
        self.rewound = False

    def on_train_begin(self, logs=None):
        self._end = pruning_end_step(self.model)
        if self.rewind_step >= self._end:
            raise TfcompressError(
                f"rewind_step {self.rewind_step} is not before the end of pruning (step {self._end})",
                "WeightRewinding", "rewind to an earlier step",
            )
        self.rewound = _step(self.model) > self._end

    def on_train_batch_begin(self, batch, logs=None):
        step = _step(self.model)  # UpdatePruning ran first: the step of the batch about to run, + 1
        if self._saved is None and step - 1 == self.rewind_step:
            self._saved = snapshot_weights(self.model)
        if not self.rewound and step - 1 >= self._end:
            self._rewind()

    def _rewind(self) -> None:
        if self._saved is None:
            raise TfcompressError("the rewind point was never reached in this fit", "WeightRewinding",
                                  "start fit before rewind_step (or use rewind_step=0)")
        rewind_weights(self.model, self._saved)
        if self.reset_optimizer:
            # reset the slots (moments), never the step counter or the learning rate
            reset_optimizer(self.model.optimizer)
        self.rewound = True

    def get_config(self) -> dict[str, Any]:
        return {"rewind_step": self.rewind_step, "reset_optimizer": self.reset_optimizer}


@keras.saving.register_keras_serializable(package="tfcompress")
class LearningRateRewinding(keras.callbacks.Callback):
    """Replay the learning-rate schedule from ``rewind_step`` once pruning is over.

    Args:
        schedule: a function ``step -> learning rate`` (or a ``keras.optimizers.schedules``
            object); the optimizer's learning rate is set from it before every batch.
        rewind_step: the step of the schedule to go back to.
    """

    def __init__(self, schedule: Callable[[int], float], rewind_step: int = 0):
        super().__init__()
        self.schedule = schedule
        self.rewind_step = int(rewind_step)

    def on_train_begin(self, logs=None):
        self._end = pruning_end_step(self.model)

    def learning_rate(self, step: int) -> float:
        if step > self._end:
            step = self.rewind_step + (step - self._end - 1)
        return float(keras.ops.convert_to_numpy(self.schedule(step)))

    def on_train_batch_begin(self, batch, logs=None):
        step = _step(self.model) - 1
        self.model.optimizer.learning_rate = self.learning_rate(step)

    def get_config(self) -> dict[str, Any]:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "rewind_step": self.rewind_step}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)

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

Both read the end of pruning from the wrappers' schedules (the largest ``end_step``) and the
step from the wrappers' ``pruning_step`` at the start of each epoch, so they work before or after
`UpdatePruning` and ``BackupAndRestore`` in the callback list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from tfcompress.callbacks._state import attach_state, detach_state
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


class _PruningStepCallback(keras.callbacks.Callback):
    """Knows the pruning step of the batch that runs, whatever the callbacks' order.

    The step is the wrappers' ``pruning_step`` read in ``on_epoch_begin``: after every
    callback's ``on_train_begin`` (so after ``BackupAndRestore`` restored it) and before any
    ``on_train_batch_begin`` (so before `UpdatePruning` or `SparseTraining` advance it), then
    counted one per batch. Reading the variable at batch begin instead gives the step or the
    step + 1 depending on whether `UpdatePruning` comes before or after in ``callbacks``.
    """

    _next: int | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._next = _step(self.model)

    def _begin_batch(self) -> int:
        """The step of the batch about to run (call once per batch, in on_train_batch_begin)."""
        if self._next is None:  # a batch outside an epoch (the callback driven by hand)
            self._next = _step(self.model)
        self._next += 1
        return self._next - 1


#: the model attribute that holds WeightRewinding's state while fit runs
_REWIND_STATE = "_tfcompress_weight_rewinding"


@keras.saving.register_keras_serializable(package="tfcompress")
class WeightRewinding(_PruningStepCallback):
    """Rewind the surviving weights to their values at ``rewind_step`` once pruning is over.

    Before the batch of step ``rewind_step`` it records the trainable weights (theta_k, after
    k updates); at the end of the batch of the schedule's last mask update (every callback has
    then updated the masks for it) it sets every weight to theta_k times its mask and, with
    ``reset_optimizer``, zeroes the optimizer's moments. Training continues from there.

    Resuming: the rewind point and whether the weights were rewound are variables that
    ``BackupAndRestore`` (and ``ModelCheckpoint`` / ``save_weights`` during ``fit``) save with
    the model's weights (``tfcompress.callbacks._state``), so a run killed after ``rewind_step``
    and resumed rewinds to the same theta_k as an uninterrupted one, in any callback order.

    Args:
        rewind_step: the training step whose weights are the "winning ticket" initialization
            (0 rewinds to the weights the model had when ``fit`` started).
        reset_optimizer: also reset the optimizer's slot variables (moments).

    Example:

    >>> import keras, numpy as np, tfcompress
    >>> from tfcompress.callbacks import UpdatePruning, WeightRewinding
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="fc"), keras.layers.Dense(2)])
    >>> pruned = tfcompress.prune(model, tfcompress.pruning.PolynomialDecay(0.0, 0.5, 0, 4, frequency=2))
    >>> pruned.compile("sgd", "mse")
    >>> rewind = WeightRewinding(rewind_step=1)
    >>> _ = pruned.fit(np.ones((16, 4)), np.ones((16, 2)), batch_size=4, epochs=2, verbose=0,
    ...                callbacks=[UpdatePruning(), rewind])
    >>> rewind.rewound
    True
    """

    def __init__(self, rewind_step: int = 0, reset_optimizer: bool = True):
        super().__init__()
        if rewind_step < 0:
            raise TfcompressError(f"rewind_step must be >= 0, got {rewind_step}", "WeightRewinding",
                                  "pass a training step >= 0")
        self.rewind_step = int(rewind_step)
        self.reset_optimizer = bool(reset_optimizer)
        self._state = None
        self._state_model = None

    def set_model(self, model) -> None:
        super().set_model(model)
        if getattr(model, "built", False):
            self._attach()

    def _attach(self) -> None:
        specs = {f"theta_{i}": (tuple(v.shape), v.dtype) for i, v in enumerate(self.model.trainable_variables)}
        specs.update(taken=((), "int32"), rewound=((), "int32"))
        reuse = self._state if self._state_model is self.model else None
        self._state = attach_state(self.model, _REWIND_STATE, specs, reuse=reuse)
        self._state_model = self.model

    def _flag(self, name: str) -> bool:
        return self._state is not None and bool(int(self._state.values[name].numpy()))

    @property
    def rewound(self) -> bool:
        """True once the weights were rewound (restored from a checkpoint with it)."""
        return self._flag("rewound")

    def on_train_begin(self, logs=None):
        self._end = pruning_end_step(self.model)
        if self.rewind_step >= self._end:
            raise TfcompressError(
                f"rewind_step {self.rewind_step} is not before the end of pruning (step {self._end})",
                "WeightRewinding", "rewind to an earlier step",
            )
        if self._state is None or self._state_model is not self.model:
            self._attach()  # a model built by fit itself

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._record_if_due()

    def on_train_batch_begin(self, batch, logs=None):
        self._begin_batch()

    def on_train_batch_end(self, batch, logs=None):
        self._record_if_due()
        if not self.rewound and self._next - 1 >= self._end:
            self._rewind()

    def _record_if_due(self) -> None:
        # theta_k after k updates, recorded between batches (at the end of step k - 1, or at the
        # start of an epoch), where no tfcompress callback changes weights: the same values
        # whether UpdatePruning's mask update of step k comes before or after in the list
        if not self._flag("taken") and self._next == self.rewind_step:
            for variable, value in zip(self._state_values(), self.model.trainable_variables, strict=True):
                variable.assign(value)
            self._state.values["taken"].assign(1)

    def on_train_end(self, logs=None):
        detach_state(self.model, _REWIND_STATE)

    def _state_values(self) -> list:
        return [v for k, v in self._state.values.items() if k.startswith("theta_")]

    def _rewind(self) -> None:
        if not self._flag("taken"):
            raise TfcompressError(
                f"the rewind point (step {self.rewind_step}) was never recorded", "WeightRewinding",
                "start fit before rewind_step (or use rewind_step=0); when resuming, keep the "
                "BackupAndRestore directory of the run that passed it",
            )
        rewind_weights(self.model, [keras.ops.convert_to_numpy(v) for v in self._state_values()])
        if self.reset_optimizer:
            # reset the slots (moments), never the step counter or the learning rate
            reset_optimizer(self.model.optimizer)
        self._state.values["rewound"].assign(1)

    def get_config(self) -> dict[str, Any]:
        return {"rewind_step": self.rewind_step, "reset_optimizer": self.reset_optimizer}


@keras.saving.register_keras_serializable(package="tfcompress")
class LearningRateRewinding(_PruningStepCallback):
    """Replay the learning-rate schedule from ``rewind_step`` once pruning is over.

    The rate is a function of the pruning step only (restored by ``BackupAndRestore`` with the
    wrappers), so a resumed run sets the rates an uninterrupted one does, in any callback order.

    Args:
        schedule: a function ``step -> learning rate`` (or a ``keras.optimizers.schedules``
            object); the optimizer's learning rate is set from it before every batch.
        rewind_step: the step of the schedule to go back to.

    Example:

    >>> import keras
    >>> from tfcompress.callbacks import LearningRateRewinding
    >>> callback = LearningRateRewinding(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5))
    >>> callback._end = 20  # the last mask update, read from the model when fit begins
    >>> round(callback.learning_rate(10), 4), round(callback.learning_rate(21), 4)
    (0.05, 0.1)
    """

    def __init__(self, schedule: Callable[[int], float], rewind_step: int = 0):
        super().__init__()
        self.schedule = schedule
        self.rewind_step = int(rewind_step)

    def on_train_begin(self, logs=None):
        self._end = pruning_end_step(self.model)

    def learning_rate(self, step: int) -> float:
        """The learning rate at pruning step ``step``."""
        if step > self._end:
            step = self.rewind_step + (step - self._end - 1)
        return float(keras.ops.convert_to_numpy(self.schedule(step)))

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = self.learning_rate(self._begin_batch())

    def get_config(self) -> dict[str, Any]:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "rewind_step": self.rewind_step}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)

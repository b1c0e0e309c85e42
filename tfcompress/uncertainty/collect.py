"""Collecting posterior samples as member models: cyclical SG-MCMC, snapshot and deep ensembles.

Cyclical SG-MCMC (Zhang, Li, Zhang, Chen and Wilson, ICLR 2020, "Cyclical Stochastic Gradient
MCMC for Bayesian Deep Learning", eq. 1): over ``K`` iterations in ``M`` cycles of
``L = ceil(K / M)`` steps, the step size of iteration ``k = 1, ..., K`` is

    alpha_k = alpha_0 / 2 * (cos(pi * mod(k - 1, L) / L) + 1)

Each cycle starts with an *exploration* stage (``r(k) = mod(k - 1, L) / L < beta``: the sampler
runs without noise, i.e. SGD / SGD with momentum) and ends with a *sampling* stage
(``r(k) >= beta``: SGLD / SGHMC noise on, samples collected; Algorithm 1). `CyclicalSGMCMC`
sets the optimizer's learning rate to ``alpha_k`` before every batch, switches the noise with the
optimizer's ``temperature`` variable (`tfcompress.uncertainty.samplers`), and keeps a copy of
the weights at sampling steps: after ``burn_in`` discarded cycles, at the cycle's last step
and every ``thinning`` steps before it within the sampling stage (at most ``samples_per_cycle``
of them, the latest).

Snapshot ensembles (Huang, Li, Pleiss, Liu, Hopcroft and Weinberger, ICLR 2017, "Snapshot
Ensembles: Train 1, get M for free", eq. 2) use the same cosine schedule with any optimizer and
take one snapshot at the end of each cycle: `SnapshotEnsemble` (``beta = 1``, no noise).

Deep ensembles (Lakshminarayanan, Pritzel and Blundell, NeurIPS 2017, "Simple and Scalable
Predictive Uncertainty Estimation using Deep Ensembles", Algorithm 1, without the adversarial
term): `train_deep_ensemble` trains ``size`` models from independent random initializations.

Every function returns *members*: Keras models mapping the input to class logits, with their
own weights, for `tfcompress.uncertainty.ensemble`.

The step counter is the optimizer's ``iterations``, so the schedule continues across ``fit``
calls and after a model reloaded from ``.keras``; the samples are in memory (one copy of the
weights each), so save the members (``member.save(...)``) to keep them.

Example:

>>> import keras, numpy as np
>>> from tfcompress.uncertainty.collect import SnapshotEnsemble
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
>>> model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
>>> snapshots = SnapshotEnsemble(cycles=2, steps_per_cycle=4, initial_learning_rate=0.1)
>>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
>>> _ = model.fit(x, x[:, :3], batch_size=8, epochs=2, callbacks=[snapshots], verbose=0)
>>> len(snapshots.members()), snapshots.sample_steps
(2, [4, 8])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError

__all__ = ["CyclicalSGMCMC", "SnapshotEnsemble", "cyclical_learning_rate", "member_copy", "train_deep_ensemble"]


def cyclical_learning_rate(step: int | np.ndarray, steps_per_cycle: int, initial_learning_rate: float):
    """Zhang et al. 2020, eq. 1 (Huang et al. 2017, eq. 2): ``alpha_0 / 2 (cos(pi mod(k - 1, L) / L) + 1)``
    for iteration ``step = k >= 1`` and cycle length ``L``.

    Example:

    >>> [round(float(cyclical_learning_rate(k, 4, 1.0)), 4) for k in range(1, 6)]
    [1.0, 0.8536, 0.5, 0.1464, 1.0]
    """
    r = np.mod(np.asarray(step) - 1, steps_per_cycle) / steps_per_cycle
    return initial_learning_rate / 2.0 * (np.cos(np.pi * r) + 1.0)


def _count(value: Any, name: str, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise TfcompressError(f"{name} must be an integer >= {minimum}, got {value!r}", where,
                              f"pass {name} >= {minimum}")
    return int(value)


def member_copy(model: keras.Model, suffix: str, weights: list[np.ndarray] | None = None,
                name: str | None = None) -> keras.Model:
    """A clone of ``model`` (``keras.models.clone_model``) with ``weights`` (default: its own) and
    every layer renamed ``<name><suffix>``.

    The S members of an ensemble then have distinct layer names, so a graph that inlines them
    (`tfcompress.core.trace` of `tfcompress.uncertainty.ensemble`) stays valid.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="fc")])
    >>> [layer.name for layer in member_copy(model, "_s0").layers]
    ['fc_s0']
    """
    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "name": f"{layer.name}{suffix}"})

    member = keras.models.clone_model(model, clone_function=clone)
    member.set_weights(model.get_weights() if weights is None else weights)
    member.name = name or f"{model.name}{suffix}"
    return member


@keras.saving.register_keras_serializable(package="tfcompress")
class CyclicalSGMCMC(keras.callbacks.Callback):
    """Cyclical step sizes (Zhang et al. 2020, eq. 1) and posterior samples collected during ``fit``.

    Use it with `tfcompress.uncertainty.samplers.SGLD` or ``SGHMC`` (cSGLD / cSGHMC): the
    exploration stage sets the optimizer's ``temperature`` to 0 and the sampling stage back to
    ``temperature`` (default: the optimizer's own). With another optimizer (``exploration=1``)
    it only schedules the learning rate and collects snapshots.

    Args:
        cycles: ``M``; training past ``M * steps_per_cycle`` steps continues the cycles.
        steps_per_cycle: ``L`` (batches per cycle).
        initial_learning_rate: ``alpha_0``.
        exploration: ``beta`` in (0, 1], the share of each cycle without noise (paper: 0.8-0.94).
        thinning: keep one sample every ``thinning`` steps of the sampling stage, counted back
            from the cycle's last step.
        samples_per_cycle: at most this many (the latest) per cycle (None: all that thinning gives).
        burn_in: the number of first cycles whose samples are discarded.
        temperature: the sampling stage's temperature (None: the optimizer's configured one).

    Attributes:
        samples: the collected weight lists (``model.get_weights()`` copies).
        sample_steps: the iteration ``k`` (1-based) of each sample.

    Example:

    >>> import keras, numpy as np
    >>> from tfcompress.uncertainty.samplers import SGLD
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model.compile(optimizer=SGLD(0.05, dataset_size=32, seed=0), loss="mse")
    >>> sampler = CyclicalSGMCMC(cycles=2, steps_per_cycle=8, initial_learning_rate=0.05,
    ...                          exploration=0.5, thinning=2)
    >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    >>> _ = model.fit(x, x[:, :3], batch_size=8, epochs=4, callbacks=[sampler], verbose=0)
    >>> sampler.sample_steps  # sampling stages: steps 5-8 and 13-16, every 2nd from the end
    [6, 8, 14, 16]
    """

    def __init__(self, cycles: int, steps_per_cycle: int, initial_learning_rate: float, exploration: float = 0.8,
                 thinning: int = 1, samples_per_cycle: int | None = None, burn_in: int = 0,
                 temperature: float | None = None):
        super().__init__()
        where = type(self).__name__
        self.cycles = _count(cycles, "cycles", where)
        self.steps_per_cycle = _count(steps_per_cycle, "steps_per_cycle", where)
        self.initial_learning_rate = float(initial_learning_rate)
        if not self.initial_learning_rate > 0:
            raise TfcompressError(f"initial_learning_rate must be > 0, got {initial_learning_rate!r}", where,
                                  "pass alpha_0 > 0")
        self.exploration = float(exploration)
        if not 0.0 < self.exploration <= 1.0:
            raise TfcompressError(f"exploration must be in (0, 1], got {exploration!r}", where,
                                  "pass beta, the share of each cycle without noise (e.g. 0.8)")
        self.thinning = _count(thinning, "thinning", where)
        self.samples_per_cycle = None if samples_per_cycle is None else _count(samples_per_cycle,
                                                                              "samples_per_cycle", where)
        self.burn_in = _count(burn_in, "burn_in", where, minimum=0)
        if self.burn_in >= self.cycles:
            raise TfcompressError(f"burn_in ({burn_in}) leaves none of the {cycles} cycles", where,
                                  "use burn_in < cycles")
        self.temperature = None if temperature is None else float(temperature)
        self.samples: list[list[np.ndarray]] = []
        self.sample_steps: list[int] = []

    # -- the schedule (pure functions of the iteration k >= 1)
    def learning_rate(self, step: int) -> float:
        """``alpha_k`` (eq. 1)."""
        return float(cyclical_learning_rate(step, self.steps_per_cycle, self.initial_learning_rate))

    def is_sampling(self, step: int) -> bool:
        """``r(k) >= beta``, or the last step of a cycle (where a snapshot is taken)."""
        position = (step - 1) % self.steps_per_cycle
        return position / self.steps_per_cycle >= self.exploration or position == self.steps_per_cycle - 1

    def collects(self, step: int) -> bool:
        """Whether the weights after iteration ``step`` become a sample."""
        if (step - 1) // self.steps_per_cycle < self.burn_in or not self.is_sampling(step):
            return False
        before_end = self.steps_per_cycle - 1 - (step - 1) % self.steps_per_cycle
        if before_end % self.thinning:
            return False
        return self.samples_per_cycle is None or before_end // self.thinning < self.samples_per_cycle

    # -- Keras hooks
    def _step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) + 1  # the batch about to run

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        self._noise = getattr(optimizer, "temperature", None)
        if self._noise is None and self.exploration < 1.0:
            raise TfcompressError(
                f"{type(optimizer).__name__} has no temperature to switch the noise with",
                type(self).__name__,
                "compile with tfcompress.uncertainty.samplers.SGLD / SGHMC, or use SnapshotEnsemble (exploration=1)")
        if self._noise is not None:
            self._sampling_temperature = (self.temperature if self.temperature is not None
                                          else optimizer.initial_temperature)
        if not isinstance(getattr(optimizer, "_learning_rate", None), keras.Variable):
            raise TfcompressError("the optimizer's learning rate is a schedule; this callback sets it",
                                  type(self).__name__, "compile with a float learning rate")

    def on_train_batch_begin(self, batch, logs=None):
        step = self._step()
        self.model.optimizer.learning_rate = self.learning_rate(step)
        if self._noise is not None:
            self._noise.assign(self._sampling_temperature if self.is_sampling(step) else 0.0)

    def on_train_batch_end(self, batch, logs=None):
        step = self._step() - 1  # the iteration that just ran
        if self.collects(step):
            self.samples.append([np.array(w) for w in self.model.get_weights()])
            self.sample_steps.append(step)

    def members(self, model: keras.Model | None = None) -> list[keras.Model]:
        """One copy of the model per sample, with its weights (`member_copy`: layers renamed
        ``<name>_sample_<i>``)."""
        model = model if model is not None else self.model
        if model is None or not self.samples:
            raise TfcompressError("no sample has been collected", type(self).__name__,
                                  "fit the model with this callback past the first sampling stage")
        return [member_copy(model, f"_sample_{i}", weights) for i, weights in enumerate(self.samples)]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CyclicalSGMCMC:
        return cls(**config)

    def get_config(self) -> dict[str, Any]:
        return {"cycles": self.cycles, "steps_per_cycle": self.steps_per_cycle,
                "initial_learning_rate": self.initial_learning_rate, "exploration": self.exploration,
                "thinning": self.thinning, "samples_per_cycle": self.samples_per_cycle, "burn_in": self.burn_in,
                "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="tfcompress")
class SnapshotEnsemble(CyclicalSGMCMC):
    """Snapshot ensembles (Huang et al. 2017): the cosine cycles of eq. 2 with any optimizer, one
    snapshot at the end of each cycle after ``burn_in`` cycles.

    Example:

    >>> SnapshotEnsemble(cycles=3, steps_per_cycle=10, initial_learning_rate=0.1).collects(10)
    True
    """

    def __init__(self, cycles: int, steps_per_cycle: int, initial_learning_rate: float, burn_in: int = 0):
        super().__init__(cycles, steps_per_cycle, initial_learning_rate, exploration=1.0, thinning=1,
                         samples_per_cycle=1, burn_in=burn_in)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._noise = None  # an SG-MCMC optimizer keeps its own temperature

    def get_config(self) -> dict[str, Any]:
        return {"cycles": self.cycles, "steps_per_cycle": self.steps_per_cycle,
                "initial_learning_rate": self.initial_learning_rate, "burn_in": self.burn_in}


def train_deep_ensemble(build_fn: Callable[[], keras.Model], size: int, x: Any, y: Any = None, *,
                        seeds: Iterable[int] | None = None, **fit_kwargs: Any) -> list[keras.Model]:
    """Deep ensembles (Lakshminarayanan et al. 2017, Algorithm 1 without adversarial training).

    For each seed, ``keras.utils.set_random_seed(seed)`` (initialization, dropout and the
    shuffling of ``fit``), ``build_fn()`` (a new compiled model returning logits), then
    ``fit(x, y, **fit_kwargs)``.

    Args:
        build_fn: returns a new compiled Keras model each call.
        size: the number of members.
        x, y: the training data, as ``fit`` takes them.
        seeds: one seed per member (default ``0, ..., size - 1``).
        **fit_kwargs: passed to ``fit`` (``epochs``, ``batch_size``, ``verbose``, ...).

    Example:

    >>> import keras, numpy as np
    >>> def build():
    ...     m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    ...     m.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ...     return m
    >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    >>> members = train_deep_ensemble(build, 2, x, np.arange(16) % 3, epochs=1, verbose=0)
    >>> [m.name for m in members]
    ['member_0', 'member_1']
    """
    size = _count(size, "size", "train_deep_ensemble")
    seeds = list(range(size)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != size or len(set(seeds)) != size:
        raise TfcompressError(f"{len(seeds)} seeds ({len(set(seeds))} distinct) for {size} members",
                              "train_deep_ensemble(seeds=...)", "pass one distinct seed per member")
    members = []
    for i, seed in enumerate(seeds):
        keras.utils.set_random_seed(seed)
        model = build_fn()
        if not isinstance(model, keras.Model) or not getattr(model, "compiled", False):
            raise TfcompressError(f"build_fn returned {type(model).__name__}, not a compiled Keras model",
                                  "train_deep_ensemble(build_fn=...)",
                                  "build and compile a new model in build_fn")
        if members and model is members[-1]:
            raise TfcompressError("build_fn returned the same model twice", "train_deep_ensemble(build_fn=...)",
                                  "create a new model in every call")
        model.fit(x, y, **fit_kwargs)
        model.name = f"member_{i}"
        members.append(model)
    return members


"""Iterative pruning: prune a little, retrain, repeat; optionally rewind between rounds.

``iterative_prune(model, sparsities, train_fn)`` runs one round per target sparsity s_k
(non-decreasing). Round k:

1. sets every pruned layer's mask at sparsity s_k from the current weights (round 0 wraps the
   model with `tfcompress.prune`; later rounds re-mask the same wrappers). Masks are *nested*:
   what round k-1 pruned stays pruned (`tfcompress.pruning.update_masks` with ``nested=True``),
   and the wrappers' schedule is ``ConstantSparsity(s_k, begin_step=t, end_step=t)`` at the
   current step t, so `UpdatePruning` leaves the mask alone while ``train_fn`` trains;
2. rewinds, if asked (below);
3. calls ``train_fn(model, k)``, which trains with ``fit(..., callbacks=[UpdatePruning()])``.

This is iterative magnitude pruning with retraining (Han et al., NeurIPS 2015, "Learning both
Weights and Connections for Efficient Neural Networks", sec. 3.3 "Iterative Pruning": pruning
and retraining in several rounds reaches higher sparsity than one-shot pruning at equal
accuracy). Rewinding:

``rewind=None``             fine-tuning: weights and optimizer state carry on (Han et al. 2015).
``rewind="weights"``        lottery ticket (Frankle and Carbin, ICLR 2019, "The Lottery Ticket
                            Hypothesis", sec. 1, "Identifying winning tickets", steps 1-4 with
                            iterative pruning): the surviving weights are reset to their initial
                            values, theta = theta_0 * m (every other trainable weight, e.g. biases
                            and BN scales, to theta_0), and the optimizer starts afresh (moments
                            zeroed, iteration counter 0, initial learning rate), so each round
                            trains the sparse subnetwork like the dense one was trained.
                            theta_0 is ``initial_weights`` (in ``model.get_weights()`` order) or
                            the weights ``model`` has when `iterative_prune` is called; begin the
                            sparsities with 0.0 to train the dense network from theta_0 in round 0.
``rewind="learning_rate"``  learning-rate rewinding (Renda, Frankle and Carbin, ICLR 2020,
                            "Comparing Rewinding and Fine-tuning in Neural Network Pruning",
                            sec. 3): weights are kept, the optimizer starts afresh, so a
                            ``keras.optimizers.schedules.LearningRateSchedule`` replays from its
                            start (a constant rate is restored to its first observed value).

Rewinding to an early training step k > 0 (Frankle et al., ICML 2020) within one ``fit`` is the
`tfcompress.callbacks.WeightRewinding` callback; pass theta_k as ``initial_weights`` here.
If ``model`` is compiled, the pruned copy is compiled the same way (``get_compile_config``), so
``train_fn`` may just call ``fit``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import keras
import numpy as np

from tfcompress.callbacks.rewinding import reset_optimizer, rewind_weights, snapshot_weights
from tfcompress.core import rebuild, trace
from tfcompress.errors import TfcompressError
from tfcompress.layers._pruning_base import parse_granularity
from tfcompress.pruning.magnitude import mask_sparsity, prune, pruning_wrappers, update_masks
from tfcompress.pruning.schedules import ConstantSparsity

logger = logging.getLogger("tfcompress")

REWIND = (None, "weights", "learning_rate")


class IterativePruningResult(NamedTuple):
    """What `iterative_prune` returns: unpack as ``pruned, history = iterative_prune(...)``.

    ``history`` has one dict per round: ``round``, ``target`` (s_k), ``sparsity`` (fraction of
    zero mask entries over all pruned layers after the round), ``layers`` (per pruned layer) and
    ``train`` (what ``train_fn`` returned, e.g. a Keras ``History``).

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> result = iterative_prune(model, [0.5], lambda m, r: None)
        >>> pruned, history = result                        # a NamedTuple
        >>> result.model is pruned, history[0]["target"]
        (True, 0.5)
    """

    model: keras.Model
    history: list[dict[str, Any]]


def _check_sparsities(sparsities: Sequence[float]) -> list[float]:
    try:
        values = [float(s) for s in sparsities]
    except (TypeError, ValueError) as exc:
        raise TfcompressError(f"sparsities must be a sequence of numbers, got {sparsities!r}", "sparsities",
                              "pass e.g. [0.5, 0.75, 0.875]") from exc
    if not values:
        raise TfcompressError("no rounds: sparsities is empty", "sparsities", "pass e.g. [0.5, 0.75, 0.875]")
    for s in values:
        if not 0.0 <= s < 1.0:
            raise TfcompressError(f"sparsity {s} is not in [0, 1)", "sparsities", "pass fractions in [0, 1)")
    if any(b < a for a, b in zip(values, values[1:], strict=False)):
        raise TfcompressError(f"sparsities must not decrease, got {values}", "sparsities",
                              "a weight pruned in one round stays pruned; sort the targets")
    return values


def _compile_like(source, target) -> None:
    if not getattr(source, "compiled", False):
        return
    try:
        target.compile_from_config(source.get_compile_config())
    except Exception as exc:  # a custom loss / metric that does not deserialize
        logger.warning("iterative_prune: could not compile the pruned model like %s (%s); compile it in "
                       "train_fn", source.name, exc)


def _initial_snapshot(model, initial_weights, settings: dict) -> list[np.ndarray]:
    """theta_0 for the pruned model's trainable variables, from weights in ``model.get_weights()`` order."""
    twin = rebuild(trace(model, where="iterative_prune", inline=False), as_clone=True)
    try:
        twin.set_weights(list(initial_weights))
    except ValueError as exc:
        raise TfcompressError(f"initial_weights do not fit the model: {exc}", "initial_weights",
                              "pass model.get_weights() of this architecture, taken before training") from exc
    return snapshot_weights(prune(twin, **settings))


def _constant_lr(optimizer) -> float | None:
    if optimizer is None or callable(getattr(optimizer, "_learning_rate", None)):
        return None
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def iterative_prune(model: keras.Model, sparsities: Sequence[float], train_fn: Callable[[keras.Model, int], Any],
                    *, granularity: str = "weight", scope: str = "layer", criterion: Any = "magnitude",
                    rewind: str | None = None, initial_weights: Sequence[np.ndarray] | None = None,
                    layers=None, min_keep_fraction: float = 0.02) -> IterativePruningResult:
    """Prune ``model`` in rounds of rising sparsity, retraining with ``train_fn`` after each.

    Args:
        model: a built Sequential or Functional model, not yet wrapped for pruning.
        sparsities: the target sparsity of each round, non-decreasing, in [0, 1).
        train_fn: ``train_fn(pruned_model, round_index)``; trains the model (``fit`` with
            `tfcompress.callbacks.UpdatePruning`); its return value is kept in the history.
        granularity: ``"weight"`` or ``"channel"`` (N:M has a fixed sparsity: use `prune`).
        scope, criterion, layers, min_keep_fraction: as in `tfcompress.prune` (a ``schedule``
            given per layer is replaced by each round's ``ConstantSparsity``).
        rewind: ``None`` (fine-tune), ``"weights"`` (lottery ticket, theta_0 * m) or
            ``"learning_rate"`` (Renda et al. 2020).
        initial_weights: theta_0 for ``rewind="weights"``, as ``model.get_weights()`` returned
            it before training; default: ``model``'s weights now.

    Returns:
        ``(pruned, history)``: the wrapped model after the last round (``tfcompress.strip`` it
        for deployment) and one dict per round.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        >>> y = x @ np.ones((8, 4), "float32")
        >>> def train(m, round_index):                    # a few steps per round
        ...     m.compile("adam", "mse")
        ...     return m.fit(x, y, epochs=1, batch_size=16, verbose=0)
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> pruned, history = iterative_prune(model, [0.5, 0.75], train, rewind="learning_rate")
        >>> [(round(h["target"], 2), round(h["sparsity"], 2)) for h in history]
        [(0.5, 0.5), (0.75, 0.75)]
    """
    targets = _check_sparsities(sparsities)
    if parse_granularity(granularity)[0] == "n:m":
        raise TfcompressError(f"granularity {granularity!r} has a fixed sparsity", "iterative_prune",
                              "use tfcompress.prune for N:M, or granularity='weight' / 'channel' here")
    if rewind not in REWIND:
        raise TfcompressError(f"unknown rewind {rewind!r}", "iterative_prune", f"use one of {REWIND}")
    if not callable(train_fn):
        raise TfcompressError("train_fn is not callable", "iterative_prune",
                              "pass a function (model, round_index) that calls model.fit")
    if initial_weights is not None and rewind != "weights":
        raise TfcompressError("initial_weights is only used with rewind='weights'", "iterative_prune",
                              "pass rewind='weights', or drop initial_weights")

    settings = {"schedule": ConstantSparsity(targets[0], begin_step=0, end_step=0, frequency=1),
                "granularity": granularity, "scope": scope, "criterion": criterion, "layers": layers,
                "min_keep_fraction": min_keep_fraction}
    pruned = prune(model, **settings)
    wrappers = pruning_wrappers(pruned)
    if not wrappers:
        raise TfcompressError("no layer of the model can be pruned", model.name,
                              "see the warnings of tfcompress.prune for the layers it left alone")
    _compile_like(model, pruned)
    theta0 = None
    if rewind == "weights":
        theta0 = (_initial_snapshot(model, initial_weights, settings) if initial_weights is not None
                  else snapshot_weights(pruned))
    initial_lr = _constant_lr(getattr(pruned, "optimizer", None))

    history: list[dict[str, Any]] = []
    for k, target in enumerate(targets):
        step = int(keras.ops.convert_to_numpy(wrappers[0].pruning_step))
        for w in wrappers:
            w.pruning_schedule = ConstantSparsity(target, begin_step=step, end_step=step, frequency=1)
        update_masks(pruned, step, nested=True)
        for w in wrappers:
            w.pruning_step.assign(step + 1)  # this round's mask update is done: fit keeps the mask
        optimizer = getattr(pruned, "optimizer", None)
        if initial_lr is None:
            initial_lr = _constant_lr(optimizer)
        if rewind == "weights":
            rewind_weights(pruned, theta0)
        if rewind is not None:
            reset_optimizer(optimizer, iterations=True, learning_rate=initial_lr)
        result = train_fn(pruned, k)
        record = {"round": k, "target": target, "sparsity": mask_sparsity(wrappers),
                  "layers": {w.layer.name: float(1.0 - keras.ops.convert_to_numpy(w.mask).mean())
                             for w in wrappers},
                  "train": result}
        history.append(record)
        logger.info("iterative_prune: round %d, target %.4f, sparsity %.4f", k, target, record["sparsity"])
    return IterativePruningResult(pruned, history)

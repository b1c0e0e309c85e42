"""Gradual pruning of a Bayesian model to a chosen sub-architecture, by posterior importance.

``bayesian.prune_to`` cuts a trained Bayesian model to ``{layer: channels}`` at once (step 3 of
Dirichlet pruning, Adamczewski and Park 2021, Algorithm 1). At a large cut, say LeNet-5-Caffe's
20-50-500 to 6-13-55, that one step removes most of what the network computes and fine-tuning
must rebuild it. Zhu and Gupta (2017, "To prune, or not to prune", eq. 1) remove weights
gradually instead, along

    s_t = s_f * (1 - (1 - (t - t_0) / (t_n - t_0)) ** power),   t_0 <= t <= t_n

so the network adapts while it loses them. ``PosteriorPruning`` applies that schedule to channel
counts: at step t each named layer keeps

    k_t = total - round(s_t / s_f * (total - keep))

channels, the ones of highest posterior importance (``channel_importance()``: Dirichlet's
posterior mean, VCP's |mu|, SBP's SNR, BC's -log alpha, sparse VD's surviving weights), updated
every ``frequency`` steps from ``begin_step`` to ``end_step`` (tfmot's ``PolynomialDecay``
parameters, ``tfcompress.pruning.schedules.PolynomialDecay``). Masks are permanent and are layer
variables: a model saved mid-schedule reloads with them, and the step is the optimizer's
``iterations``, restored with it (``BackupAndRestore``, a ``.keras`` file), so a resumed run
continues the schedule where it stopped. At ``end_step`` the model is at ``keep``; ``strip`` and
``tfcompress.shrink`` then remove nothing it still uses.

    model = tfcompress.bayesian.convert(dense, "sbp", dataset_size=len(x))
    model.fit(x, y, epochs=6, callbacks=[
        KLAnnealing(warmup_epochs=3),
        PosteriorPruning({"conv1": 6, "conv2": 13, "fc1": 55}, begin_step=0, end_step=4 * steps_per_epoch),
    ])
    small = tfcompress.shrink(tfcompress.bayesian.strip(model))

With ``budget=tfcompress.Budget(...)`` instead of ``keep``, the target is a cost, not a
sub-architecture: at step t the masks are chosen for the budget ``s_t / s_f`` of the way from
the dense cost (every channel kept) to the budget, by posterior importance per unit cost
(``bayesian.mask_to_budget``: MorphNet's resource-weighted view, Gordon et al. 2018, as a
knapsack greedy over the exact costs of the stripped and shrunk model). ``end_step`` defaults to
two thirds of the fit's steps (read from ``fit``'s own parameters, the same after a resume), so
at the default settings every Bayesian method (``vcp``, ``dirichlet``, ``sbp``, ``sparse_vd``,
``bc``) reaches the budget within its ``fit`` and trains the last third at it::

    model.fit(x, y, epochs=6, callbacks=[PosteriorPruning(budget=tfcompress.Budget(macs=150_000))])
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfcompress.core.walk import iter_layers
from tfcompress.errors import TfcompressError
from tfcompress.pruning.schedules import PolynomialDecay


@keras.saving.register_keras_serializable(package="tfcompress")
class PosteriorPruning(keras.callbacks.Callback):
    """Cut the Bayesian layers to ``keep``, or to a ``budget``, gradually (Zhu and Gupta 2017,
    eq. 1, on channel counts or on the cost).

    Args:
        keep: ``{name: channels}`` at the end, as for ``bayesian.prune_to`` (a Bayesian layer's
            name, or the Conv2D / Dense whose channels it scores).
        begin_step: the first step that prunes.
        end_step: the step at which every layer reaches ``keep`` (or the model the budget);
            None (only with ``budget``): two thirds of the way through the fit.
        frequency: steps between mask updates.
        power: the schedule's exponent (3: fast at first, slow near the end).
        verbose: 1 prints the channels kept after each epoch.
        budget: a `tfcompress.Budget` (``params``, ``weight_bytes``, ``macs``) instead of ``keep``:
            channels chosen by posterior importance per unit cost (``bayesian.mask_to_budget``).

    Logs ``posterior_kept/<layer>`` (channels the layer keeps) after every epoch.

    Example:
        >>> import keras, numpy as np, tfcompress
        >>> x = keras.Input((16,))
        >>> h = keras.layers.Dense(32, activation="relu", name="fc1")(x)
        >>> model = tfcompress.bayesian.convert(keras.Model(x, keras.layers.Dense(4)(h)), "sbp",
        ...                                     dataset_size=64, verbose=0)
        >>> model.compile("adam", "mse")
        >>> budget = tfcompress.Budget(macs=320)
        >>> callback = tfcompress.callbacks.PosteriorPruning(budget=budget, frequency=4)
        >>> _ = model.fit(np.ones((64, 16)), np.ones((64, 4)), batch_size=8, epochs=2, verbose=0,
        ...               callbacks=[callback])
        >>> budget.check(tfcompress.model_cost(tfcompress.bayesian.strip(model), shrink=True)).met
        True
    """

    def __init__(self, keep: dict[str, int] | None = None, begin_step: int = 0, end_step: int | None = None,
                 frequency: int = 100, power: float = 3.0, verbose: int = 0, *, budget=None):
        super().__init__()
        from tfcompress.budget import Budget

        if (keep is None) == (budget is None):
            raise TfcompressError("pass keep or budget (one of them)", "PosteriorPruning",
                                  "keep={'conv1': 6, 'conv2': 13} for a sub-architecture, or "
                                  "budget=tfcompress.Budget(macs=...) for a cost")
        if keep is not None and not keep:
            raise TfcompressError("keep is empty", "PosteriorPruning",
                                  "pass the channels each layer keeps, e.g. {'conv1': 6, 'conv2': 13}")
        if budget is not None and not isinstance(budget, Budget):
            budget = keras.saving.deserialize_keras_object(budget) if isinstance(budget, dict) else budget
            if not isinstance(budget, Budget):
                raise TfcompressError(f"budget must be a tfcompress.Budget, got {type(budget).__name__}",
                                      "PosteriorPruning", "pass e.g. budget=tfcompress.Budget(macs=100_000)")
        if end_step is None and budget is None:
            raise TfcompressError("end_step is required with keep", "PosteriorPruning",
                                  "pass the step at which every layer reaches keep")
        self.keep = None if keep is None else {str(name): int(k) for name, k in keep.items()}
        self.budget = budget
        self.begin_step, self.end_step = int(begin_step), None if end_step is None else int(end_step)
        self.frequency, self.power = int(frequency), float(power)
        # the schedule's sparsity, divided by its final value, is the fraction of the way to keep
        self._schedule = None if end_step is None else PolynomialDecay(
            0.0, 0.5, begin_step, end_step, power=power, frequency=frequency)
        self.verbose = int(verbose)
        self._layers: dict[str, Any] = {}
        self._step: int | None = None

    def on_train_begin(self, logs=None):
        from tfcompress import bayesian

        if self.keep is not None:
            self._layers = bayesian.scored_layers(self.model, list(self.keep), "PosteriorPruning")
            bayesian.validate_keep(self._layers, self.keep, "PosteriorPruning")
        else:
            self._layers = {layer.name: layer for layer in iter_layers(self.model)
                            if getattr(layer, "tfcompress_bayesian", False) and hasattr(layer, "channel_importance")}
            if not self._layers:
                raise TfcompressError("PosteriorPruning found no Bayesian layer", self.model.name,
                                      "convert the model first: tfcompress.bayesian.convert(model, method, ...)")
        if self.end_step is None:
            # two thirds of this fit (fit's own parameters: the same when a resumed run repeats the call)
            steps = (self.params or {}).get("steps") or 1
            total = int(steps) * int((self.params or {}).get("epochs") or 1)
            end = max(self.begin_step, self.begin_step + (2 * (total - self.begin_step)) // 3 - 1)
            self._schedule = PolynomialDecay(0.0, 0.5, self.begin_step, end, power=self.power,
                                             frequency=self.frequency)
        self._step = None

    def progress(self, step: int) -> float:
        """The fraction of the way to the target at ``step`` (0 before ``begin_step``, 1 from ``end_step``)."""
        return self._schedule.sparsity(step) / self._schedule.final_sparsity

    def target(self, step: int) -> dict[str, int]:
        """The channels each layer keeps at ``step`` (with ``keep``)."""
        progress = self.progress(step)  # 0 before begin_step
        kept = {}
        for name, layer in self._layers.items():
            total = int(layer.mask.shape[0])
            kept[name] = total - int(np.round(progress * (total - self.keep[name])))
        return kept

    def on_train_batch_end(self, batch, logs=None):
        # the optimizer's step, read at the first batch (after BackupAndRestore, whatever the
        # callbacks' order, has restored it), then counted here instead of read every batch
        self._step = int(self.model.optimizer.iterations.numpy()) if self._step is None else self._step + 1
        if self._schedule.should_prune(self._step) or self._step == self._schedule.end_step:
            # imported here, not every batch: only the steps that prune need it
            from tfcompress import bayesian

            if self.budget is not None:
                bayesian.mask_to_budget(self.model, self.budget, progress=self.progress(self._step))
            else:
                bayesian.mask_to(self._layers, self.target(self._step))

    def kept(self) -> dict[str, int]:
        """Channels each named layer keeps now."""
        return {name: int(np.asarray(layer.keep_mask(), bool).sum()) for name, layer in self._layers.items()}

    def on_epoch_end(self, epoch, logs=None):
        kept = self.kept()
        if logs is not None:
            for name, count in kept.items():
                logs[f"posterior_kept/{name}"] = count
        if self.verbose:
            print(f"PosteriorPruning epoch {epoch + 1}: keeps {kept}")

    def get_config(self) -> dict[str, Any]:
        return {"keep": None if self.keep is None else dict(self.keep), "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency, "power": self.power, "verbose": self.verbose,
                "budget": None if self.budget is None else keras.saving.serialize_keras_object(self.budget)}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls(**config)

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
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.pruning.schedules import PolynomialDecay


@keras.saving.register_keras_serializable(package="tfcompress")
class PosteriorPruning(keras.callbacks.Callback):
    """Cut the Bayesian layers to ``keep`` gradually (Zhu and Gupta 2017, eq. 1, on channel counts).

    Args:
        keep: ``{name: channels}`` at the end, as for ``bayesian.prune_to`` (a Bayesian layer's
            name, or the Conv2D / Dense whose channels it scores).
        begin_step: the first step that prunes.
        end_step: the step at which every layer reaches ``keep``.
        frequency: steps between mask updates.
        power: the schedule's exponent (3: fast at first, slow near the end).
        verbose: 1 prints the channels kept after each epoch.

    Logs ``posterior_kept/<layer>`` (channels the layer keeps) after every epoch.
    """

    def __init__(self, keep: dict[str, int], begin_step: int, end_step: int, frequency: int = 100,
                 power: float = 3.0, verbose: int = 0):
        super().__init__()
        if not keep:
            raise TfcompressError("keep is empty", "PosteriorPruning",
                                  "pass the channels each layer keeps, e.g. {'conv1': 6, 'conv2': 13}")
        self.keep = {str(name): int(k) for name, k in keep.items()}
        # the schedule's sparsity, divided by its final value, is the fraction of the way to keep
        self._schedule = PolynomialDecay(0.0, 0.5, begin_step, end_step, power=power, frequency=frequency)
        self.verbose = int(verbose)
        self._layers: dict[str, Any] = {}
        self._step: int | None = None

    def on_train_begin(self, logs=None):
        from tfcompress import bayesian

        self._layers = bayesian.scored_layers(self.model, list(self.keep), "PosteriorPruning")
        bayesian.validate_keep(self._layers, self.keep, "PosteriorPruning")
        self._step = None

    def target(self, step: int) -> dict[str, int]:
        """The channels each layer keeps at ``step``."""
        progress = self._schedule.sparsity(step) / self._schedule.final_sparsity  # 0 before begin_step
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
        schedule = self._schedule
        return {"keep": dict(self.keep), "begin_step": schedule.begin_step, "end_step": schedule.end_step,
                "frequency": schedule.frequency, "power": schedule.power, "verbose": self.verbose}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls(**config)

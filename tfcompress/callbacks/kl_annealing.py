"""KL annealing (warm-up) for the Bayesian pruning layers.

The ELBO's KL term is switched on gradually so that the likelihood first shapes the
posterior; otherwise the prior can prune channels before they learned anything (the
"KL warm-up" of Sonderby et al., NeurIPS 2016, "Ladder Variational Autoencoders", and of
Molchanov et al. 2017, Sec. 4, who train sparse VD with the KL weight rising from 0 to 1).

Every layer that follows the protocol of ``tfcompress.layers.variational_bn`` (a
non-trainable scalar ``kl_weight`` variable and a ``kl_divergence()`` method) is found by
walking the model, nested models included, and its ``kl_weight`` set.

``layer_scales`` multiplies the weight of chosen layers. The ELBO weighs every layer's KL
alike; a scale per layer is a tempered prior that makes a layer's channels dearer to keep,
as MorphNet (Gordon et al., CVPR 2018, Sec. 3.2) weighs each channel's sparsity penalty by
the FLOPs it costs. ``tfcompress.bayesian.cost_scales`` derives such scales from the MACs and
parameters a channel of each layer carries; ``layer_scales="cost"`` recomputes them from the
model as it stands at the start of every epoch, so that as channels go (``VariationalPruning``)
the price of the rest follows the smaller model.
"""

from __future__ import annotations

import math
from typing import Any

import keras

from tfcompress.errors import TfcompressError

SCHEDULES = ("linear", "cosine")


def bayesian_layers(model: keras.Model) -> list:
    """The layers of ``model`` (nested models included) with a ``kl_weight`` variable."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(getattr(layer, "kl_weight", None), keras.Variable) and hasattr(
            layer, "kl_divergence"
        ):
            found.append(layer)
    return found


@keras.saving.register_keras_serializable(package="tfcompress")
class KLAnnealing(keras.callbacks.Callback):
    """Warm up the KL weight of every Bayesian layer from 0 to ``max_weight``.

    With ``t`` the epoch (0-based, plus the fraction of the epoch done when ``per_step``)::

        p = clip((t - start_epoch) / warmup_epochs, 0, 1)        (p = 1 if warmup_epochs == 0)
        linear: w = max_weight * p
        cosine: w = max_weight * (1 - cos(pi * p)) / 2

    so the weight is 0 until ``start_epoch`` and ``max_weight`` from
    ``start_epoch + warmup_epochs`` on. The weight in force during an epoch is written to
    ``logs["kl_weight"]`` at its end (the last step's value when ``per_step``).

    The weight is a function of the epoch (and step) only, so a run resumed with
    ``fit(initial_epoch=...)`` after loading a ``.keras`` file, or by ``BackupAndRestore``,
    continues the schedule where it stopped.

    Args:
        start_epoch: first epoch of the warm-up (the weight is 0 before it).
        warmup_epochs: length of the warm-up in epochs.
        schedule: ``"linear"`` or ``"cosine"``.
        max_weight: the weight after the warm-up (1.0 = the ELBO).
        per_step: update at every training step instead of every epoch.
        layer_scales: ``{layer name: factor}``; those layers get ``factor * w`` (default 1).
            Names that match no Bayesian layer are refused when training begins. ``"cost"``:
            ``tfcompress.bayesian.cost_scales(model)`` at the start of every epoch.

    Example:
        >>> import numpy as np
        >>> from tfcompress.layers import VariationalDense
        >>> model = keras.Sequential([keras.Input((8,)), VariationalDense(4, dataset_size=32, seed=0)])
        >>> model.compile("adam", "mse")
        >>> x, y = np.ones((32, 8), "float32"), np.zeros((32, 4), "float32")
        >>> history = model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[KLAnnealing(warmup_epochs=2)])
        >>> [round(w, 2) for w in history.history["kl_weight"]]            # 0, 1/2, then the full ELBO
        [0.0, 0.5, 1.0]
    """

    def __init__(
        self,
        start_epoch: int = 0,
        warmup_epochs: int = 5,
        schedule: str = "linear",
        max_weight: float = 1.0,
        per_step: bool = False,
        layer_scales: dict[str, float] | str | None = None,
    ):
        super().__init__()
        where = "KLAnnealing"
        if schedule not in SCHEDULES:
            raise TfcompressError(
                f"unknown schedule {schedule!r}", where, f"use one of {', '.join(SCHEDULES)}"
            )
        if int(start_epoch) < 0 or int(warmup_epochs) < 0:
            raise TfcompressError(
                f"start_epoch and warmup_epochs must be >= 0, got {start_epoch}, {warmup_epochs}",
                where,
                "pass non-negative epoch counts",
            )
        if not math.isfinite(float(max_weight)) or float(max_weight) < 0:
            raise TfcompressError(
                f"max_weight must be a finite number >= 0, got {max_weight}", where, "use e.g. 1.0"
            )
        self.start_epoch = int(start_epoch)
        self.warmup_epochs = int(warmup_epochs)
        self.schedule = schedule
        self.max_weight = float(max_weight)
        self.per_step = bool(per_step)
        if isinstance(layer_scales, str):
            if layer_scales != "cost":
                raise TfcompressError(f"unknown layer_scales {layer_scales!r}", where,
                                      'pass {layer name: factor} or "cost"')
            self.layer_scales: dict[str, float] | str = layer_scales
        else:
            self.layer_scales = {str(name): float(factor) for name, factor in (layer_scales or {}).items()}
        self._scales = {} if isinstance(self.layer_scales, str) else self.layer_scales
        for name, factor in self._scales.items():
            if not math.isfinite(factor) or factor < 0:
                raise TfcompressError(
                    f"layer_scales[{name!r}] must be a finite number >= 0, got {factor}", where, "use e.g. 2.0"
                )
        self._layers: list = []
        self._epoch = 0
        self._current = 0.0

    def weight_at(self, t: float) -> float:
        """The KL weight at (fractional) epoch ``t``."""
        if self.warmup_epochs == 0:
            progress = 1.0 if t >= self.start_epoch else 0.0
        else:
            progress = min(max((t - self.start_epoch) / self.warmup_epochs, 0.0), 1.0)
        if self.schedule == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.max_weight * progress

    def _set(self, value: float) -> None:
        self._current = value
        for layer in self._layers:
            layer.kl_weight.assign(value * self._scales.get(layer.name, 1.0))

    def on_train_begin(self, logs=None):
        self._layers = bayesian_layers(self.model)
        if not self._layers:
            raise TfcompressError(
                "the model has no Bayesian layer with a kl_weight variable",
                "KLAnnealing",
                "use VariationalBatchNormalization, DirichletSwitch, LogNormalDropout, "
                "VariationalDense/Conv2D, or remove the callback",
            )
        unknown = sorted(set(self._scales) - {layer.name for layer in self._layers})
        if unknown:
            raise TfcompressError(
                f"layer_scales names {unknown}, which are not Bayesian layers of the model",
                "KLAnnealing",
                f"use the names of its Bayesian layers: {sorted(layer.name for layer in self._layers)}",
            )

    def on_epoch_begin(self, epoch, logs=None):
        if self.layer_scales == "cost":
            from tfcompress.bayesian import cost_scales

            self._scales = cost_scales(self.model)
        self._epoch = epoch
        self._set(self.weight_at(epoch))

    def on_train_batch_begin(self, batch, logs=None):
        if self.per_step:
            steps = (self.params or {}).get("steps") or 1
            self._set(self.weight_at(self._epoch + batch / steps))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["kl_weight"] = self._current
            if self.layer_scales == "cost":
                for name, factor in self._scales.items():
                    logs[f"kl_scale/{name}"] = factor

    def get_config(self) -> dict[str, Any]:
        return {
            "start_epoch": self.start_epoch,
            "warmup_epochs": self.warmup_epochs,
            "schedule": self.schedule,
            "max_weight": self.max_weight,
            "per_step": self.per_step,
            "layer_scales": self.layer_scales if isinstance(self.layer_scales, str) else dict(self.layer_scales),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KLAnnealing:
        return cls(**config)

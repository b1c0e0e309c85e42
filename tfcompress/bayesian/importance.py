"""Cutting a trained Bayesian model by posterior importance: to a chosen sub-architecture
(``prune_to``; ``mask_to`` step by step, as `tfcompress.callbacks.PosteriorPruning` does) and
KL weights priced by what each layer's channels cost (``cost_scales``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tfcompress.bayesian.conversion import _BAYESIAN, strip
from tfcompress.core import iter_layers
from tfcompress.core.graph import input_layer
from tfcompress.errors import TfcompressError
from tfcompress.layers.dirichlet import DirichletSwitch
from tfcompress.layers.lognormal import LogNormalDropout
from tfcompress.layers.variational_bn import VariationalBatchNormalization, top_k_channels
from tfcompress.pruning.surgery import shrink

logger = logging.getLogger("tfcompress")


def scored_layers(model, names: list[str], where: str = "prune_to") -> dict[str, Any]:
    """``{name: the Bayesian layer that scores its channels}``: ``name`` is a Bayesian layer's name
    or that of the Conv2D / Dense whose outputs it multiplies (a clear error for any other)."""
    by_name: dict[str, Any] = {}
    for layer in iter_layers(model):
        if isinstance(layer, _BAYESIAN):
            by_name[layer.name] = layer
            if isinstance(layer, VariationalBatchNormalization | DirichletSwitch | LogNormalDropout):
                producer = input_layer(layer)
                if producer is not None:
                    by_name.setdefault(producer.name, layer)
    for name in names:
        if name not in by_name:
            raise TfcompressError(f"no Bayesian layer scores the channels of {name!r}", where,
                                  f"use one of {sorted(by_name)}")
    return {name: by_name[name] for name in names}


def prune_to(model, keep: dict[str, int]) -> dict[str, int]:
    """Cut a trained Bayesian model to a chosen sub-architecture, by posterior importance.

    Step 3 of Dirichlet pruning (Adamczewski and Park 2021, Algorithm 1: "remove unimportant
    channels according to the learned importance"; the paper prunes LeNet-5 to sub-architectures
    of a chosen size), for any method: in each named layer, keep the ``k`` channels of highest
    ``channel_importance()`` (Dirichlet: posterior mean; VCP: |mu|; SBP: SNR; BC: -log alpha of
    the group; sparse VD: surviving weights) among those the layer still keeps, and mask the
    rest. ``strip`` + ``tfcompress.shrink`` then remove them; fine-tune after (step 4).

    Args:
        model: a model from ``convert``, trained.
        keep: ``{name: k}``; ``name`` is a Bayesian layer's name or the name of the Conv2D /
            Dense whose channels it scores (``{"conv1": 5, "conv2": 15, "fc1": 45}``).

    Returns:
        ``{bayesian layer name: channels masked by this call}``.
    """
    layers = scored_layers(model, list(keep))
    validate_keep(layers, keep)
    return mask_to(layers, keep)


def validate_keep(layers: dict[str, Any], keep: dict[str, int], where: str = "prune_to") -> None:
    """Each ``keep[name]`` is a channel count from 1 to the size of ``layers[name]`` (a clear error otherwise)."""
    for name, k in keep.items():
        total = int(layers[name].mask.shape[0])
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= total:
            raise TfcompressError(f"keep[{name!r}] = {k!r} is not a channel count of a {total}-channel layer",
                                  where, f"pass an integer from 1 to {total}")


def mask_to(layers: dict[str, Any], keep: dict[str, int]) -> dict[str, int]:
    """Mask all but the ``keep[name]`` most important live channels of each of ``layers``
    (from :func:`scored_layers`, counts checked by :func:`validate_keep`); what :func:`prune_to`
    does once and ``callbacks.PosteriorPruning`` step by step. Returns the channels masked."""
    masked: dict[str, int] = {}
    for name, k in keep.items():
        layer = layers[name]
        alive = np.asarray(layer.keep_mask(), bool)
        if int(alive.sum()) <= k:
            logger.info("prune_to: %s keeps %d channels, already <= %d", layer.name, int(alive.sum()), k)
            masked[layer.name] = 0
            continue
        chosen = top_k_channels(layer.channel_importance(), alive, k)
        before = np.asarray(layer.mask.numpy()) > 0
        layer.mask.assign((before & chosen).astype(np.float32))
        masked[layer.name] = int(before.sum() - (before & chosen).sum())
    return masked


def cost_scales(model, *, macs_weight: float = 1.0, params_weight: float = 1.0) -> dict[str, float]:
    """KL weight factors that make each Bayesian layer's channels as dear as they are costly.

    The ELBO prices a channel of every layer alike, yet a first-layer channel of LeNet-5 costs
    about 14,400 MACs on its own and a hidden unit of the dense layer about 800. MorphNet
    (Gordon et al., CVPR 2018, Sec. 3.2, the FLOP regularizer) weighs each channel's sparsity
    penalty by the resources it costs; here each layer's KL is weighed alike::

        cost_l  = macs_weight * dMACs_l / MACs + params_weight * dParams_l / params
        scale_l = cost_l / mean_l(cost_l)

    where dMACs_l and dParams_l are what removing one more of layer l's channels would save in
    the model as it stands (its masks applied: ``strip`` + ``shrink`` with and without that
    channel), and MACs, params its current totals (MACs of the convolutions and dense layers,
    ``ModelSummary.linear_macs``). Pass the result to
    ``KLAnnealing(layer_scales=...)``. The scales are a tempered prior (a deliberate departure
    from the ELBO, towards a budget in MACs and parameters), not a posterior.

    Args:
        model: a model from ``convert``.
        macs_weight, params_weight: how much MACs and parameters count (>= 0, not both 0).

    Returns:
        ``{bayesian layer name: scale}``, with mean 1 over the layers that have a channel to
        spare (a layer down to one channel gets scale 1).
    """
    from tfcompress.metrics import summarize

    macs_weight, params_weight = float(macs_weight), float(params_weight)
    if min(macs_weight, params_weight) < 0 or macs_weight + params_weight <= 0:
        raise TfcompressError(f"macs_weight={macs_weight}, params_weight={params_weight}", "cost_scales",
                              "pass non-negative weights, at least one of them > 0")
    layers = [layer for layer in iter_layers(model)
              if isinstance(layer, _BAYESIAN)]
    if not layers:
        raise TfcompressError("the model has no Bayesian layer", "cost_scales",
                              "convert it first: tfcompress.bayesian.convert(model, method, dataset_size=N)")

    def totals() -> tuple[float, float]:
        summary = summarize(shrink(strip(model)))
        return float(summary.linear_macs), float(summary.params)

    base_macs, base_params = totals()
    costs: dict[str, float] = {}
    for layer in layers:
        alive = np.asarray(layer.keep_mask(), bool)
        if alive.sum() <= 1:
            continue
        before = layer.mask.numpy()
        weakest = np.flatnonzero(alive)[np.argmin(np.asarray(layer.channel_importance())[alive])]
        trial = before.copy()
        trial[weakest] = 0.0
        layer.mask.assign(trial)
        try:
            macs, params = totals()
        finally:
            layer.mask.assign(before)
        costs[layer.name] = (macs_weight * (base_macs - macs) / base_macs
                             + params_weight * (base_params - params) / base_params)
    mean = float(np.mean(list(costs.values()))) if costs else 0.0
    return {layer.name: (costs[layer.name] / mean if layer.name in costs and mean > 0 else 1.0)
            for layer in layers}

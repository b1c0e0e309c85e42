"""Cutting a trained Bayesian model by posterior importance: to a chosen sub-architecture
(``prune_to``; ``mask_to`` step by step, as `tfcompress.callbacks.PosteriorPruning` does), to a
`tfcompress.Budget` (``mask_to_budget``: posterior importance per unit cost) and KL weights
priced by what each layer's channels cost (``cost_scales``).
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
    or that of the Conv2D / Dense whose outputs it multiplies (a clear error for any other).

    Example:
        >>> import keras, tfcompress
        >>> x = keras.Input((8,))
        >>> dense = keras.Model(x, keras.layers.Dense(4, name="out")(keras.layers.Dense(16, "relu", name="fc1")(x)))
        >>> model = tfcompress.bayesian.convert(dense, "sbp", dataset_size=100, verbose=0)
        >>> {name: layer.name for name, layer in scored_layers(model, ["fc1", "fc1_sbp"]).items()}
        {'fc1': 'fc1_sbp', 'fc1_sbp': 'fc1_sbp'}
    """
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

    Example:
        >>> import keras, tfcompress
        >>> x = keras.Input((8,))
        >>> dense = keras.Model(x, keras.layers.Dense(4, name="out")(keras.layers.Dense(16, "relu", name="fc1")(x)))
        >>> model = tfcompress.bayesian.convert(dense, "sbp", dataset_size=100, verbose=0)
        >>> prune_to(model, {"fc1": 5})
        {'fc1_sbp': 11}
        >>> small = tfcompress.shrink(tfcompress.bayesian.strip(model))
        >>> small.get_layer("fc1").units
        5
    """
    layers = scored_layers(model, list(keep))
    validate_keep(layers, keep)
    return mask_to(layers, keep)


def validate_keep(layers: dict[str, Any], keep: dict[str, int], where: str = "prune_to") -> None:
    """Each ``keep[name]`` is a channel count from 1 to the size of ``layers[name]`` (a clear error otherwise).

    Example:
        >>> import keras, tfcompress
        >>> x = keras.Input((8,))
        >>> dense = keras.Model(x, keras.layers.Dense(4, name="out")(keras.layers.Dense(16, "relu", name="fc1")(x)))
        >>> model = tfcompress.bayesian.convert(dense, "sbp", dataset_size=100, verbose=0)
        >>> validate_keep(scored_layers(model, ["fc1"]), {"fc1": 17})
        Traceback (most recent call last):
        ...
        tfcompress.errors.TfcompressError: prune_to: keep['fc1'] = 17 is not a channel count of a 16-channel layer Fix: pass an integer from 1 to 16
    """
    for name, k in keep.items():
        total = int(layers[name].mask.shape[0])
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= total:
            raise TfcompressError(f"keep[{name!r}] = {k!r} is not a channel count of a {total}-channel layer",
                                  where, f"pass an integer from 1 to {total}")


def mask_to(layers: dict[str, Any], keep: dict[str, int]) -> dict[str, int]:
    """Mask all but the ``keep[name]`` most important live channels of each of ``layers``
    (from :func:`scored_layers`, counts checked by :func:`validate_keep`); what :func:`prune_to`
    does once and ``callbacks.PosteriorPruning`` step by step. Returns the channels masked.

    Example:
        >>> import keras, tfcompress
        >>> x = keras.Input((8,))
        >>> dense = keras.Model(x, keras.layers.Dense(4, name="out")(keras.layers.Dense(16, "relu", name="fc1")(x)))
        >>> model = tfcompress.bayesian.convert(dense, "sbp", dataset_size=100, verbose=0)
        >>> layers = scored_layers(model, ["fc1"])
        >>> mask_to(layers, {"fc1": 10}), int(layers["fc1"].keep_mask().sum())
        ({'fc1_sbp': 6}, 10)
    """
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

    Example:
        >>> import keras, tfcompress
        >>> x = keras.Input((8, 8, 1))
        >>> h = keras.layers.Flatten()(keras.layers.Conv2D(8, 3, name="conv")(x))
        >>> dense = keras.Model(x, keras.layers.Dense(4, name="out")(keras.layers.Dense(16, name="fc1")(h)))
        >>> model = tfcompress.bayesian.convert(dense, "sbp", dataset_size=100, verbose=0)
        >>> scales = cost_scales(model)
        >>> sorted(scales), scales["conv_sbp"] > scales["fc1_sbp"]        # a conv channel costs more
        (['conv_sbp', 'fc1_sbp'], True)
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


def mask_to_budget(model, budget, *, progress: float = 1.0, min_keep_fraction: float = 0.0) -> dict[str, int]:
    """Mask the channels of a Bayesian model of lowest posterior importance per unit cost until,
    stripped and shrunk, it meets ``budget`` (its ``params``, ``weight_bytes``, ``macs``).

    The greedy of `tfcompress.pruning.budget` (MorphNet's resource-weighted view, Gordon et al.
    2018, Sec. 3.2, as a knapsack greedy; exact costs of the model ``strip`` + ``shrink`` make),
    with each channel's importance its ``channel_importance()`` (Dirichlet: posterior mean;
    VCP: |mu|; SBP: SNR; BC: -log alpha; sparse VD: surviving weights) over that layer's mean
    over its live channels, so the layers' scales compare. Masked channels stay masked; a layer
    keeps at least ``max(1, ceil(min_keep_fraction * n))`` channels. With ``progress`` < 1 the
    target is that far from the model's dense cost (all channels kept) to ``budget``
    (``Budget.scaled``), what `tfcompress.callbacks.PosteriorPruning` ramps.

    Args:
        model: a model from ``convert`` (any method but ``slimming``).
        budget: a `tfcompress.Budget`.
        progress: the fraction of the way from the dense cost to the budget.
        min_keep_fraction: the least fraction of its channels a layer keeps.

    Returns:
        ``{bayesian layer name: channels masked by this call}``.

    Example:
        >>> import keras, tfcompress
        >>> x = keras.Input((16,))
        >>> h = keras.layers.Dense(32, activation="relu", name="fc1")(x)
        >>> dense = keras.Model(x, keras.layers.Dense(4, name="out")(h))
        >>> model = tfcompress.bayesian.convert(dense, "sbp", dataset_size=100, verbose=0)
        >>> tfcompress.bayesian.mask_to_budget(model, tfcompress.Budget(macs=320))   # 16 * 16 + 16 * 4
        {'fc1_sbp': 16}
        >>> tfcompress.model_cost(tfcompress.bayesian.strip(model), shrink=True).macs
        320
    """
    import math

    from tfcompress.budget import Budget
    from tfcompress.pruning.budget import AIMED, ChannelCostModel, greedy_keep
    from tfcompress.pruning.groups import channel_flow

    if not isinstance(budget, Budget):
        raise TfcompressError(f"budget must be a tfcompress.Budget, got {type(budget).__name__}", "mask_to_budget",
                              "pass e.g. tfcompress.Budget(macs=100_000)")
    layers = [layer for layer in iter_layers(model) if isinstance(layer, _BAYESIAN)]
    if not layers:
        raise TfcompressError("the model has no Bayesian layer", "mask_to_budget",
                              "convert it first: tfcompress.bayesian.convert(model, method, dataset_size=N) "
                              "(any method but slimming)")
    plain = strip(model)
    names = {layer.name for layer in iter_layers(plain)}
    flow = channel_flow(plain)
    costs = ChannelCostModel(plain, budget.precision, flow)
    r = costs.roots.size
    roots_of: dict[str, np.ndarray] = {}
    covered: set[str] = set()  # the producers whose channels a Bayesian layer scores
    for layer in layers:
        target = layer.name if layer.name in names else getattr(input_layer(layer), "name", None)
        bases = flow.members.get(target, flow.creator.get(target)) if target in names else None
        if bases is None or len(bases) != int(layer.mask.shape[0]):
            raise TfcompressError(f"cannot find the channels {layer.name} scores in the stripped model",
                                  layer.name, "use mask_to / prune_to with channel counts instead")
        covered.update(flow.base_index[int(b)][0] for b in bases)
        roots_of[layer.name] = np.array([costs.index[flow.root(int(b))] for b in bases], np.int64)
    required = {costs.index[flow.root(b)] for b in flow.required}
    creators: dict[int, set] = {}
    for base, (name, _) in enumerate(flow.base_index):
        creators.setdefault(costs.index[flow.root(base)], set()).add(name)
    scored: dict[int, list] = {}  # root index -> [(layer, channel)]
    for layer in layers:
        for channel, i in enumerate(roots_of[layer.name].tolist()):
            scored.setdefault(i, []).append((layer, channel))
    alive = {layer.name: np.asarray(layer.keep_mask(), bool) for layer in layers}
    importance = {layer.name: np.asarray(layer.channel_importance(), np.float64) for layer in layers}
    scale = {}
    for name, values in importance.items():
        live = np.abs(values[alive[name]])
        scale[name] = float(live.mean()) if live.size and live.mean() > 0 else 1.0
    prunable = np.zeros(r, bool)
    value = np.zeros(r)
    group_of = np.full(r, -1)
    kept = np.ones(r, bool)
    keys: dict[tuple, int] = {}
    for i, refs in scored.items():
        # a channel group goes only when every channel tied into it is scored (shrink removes it)
        if i in required or not creators.get(i, set()) <= covered:
            continue
        prunable[i] = True
        value[i] = float(np.mean([importance[layer.name][c] / scale[layer.name] for layer, c in refs]))
        kept[i] = all(alive[layer.name][c] for layer, c in refs)
        group_of[i] = keys.setdefault(tuple(sorted({layer.name for layer, _ in refs})), len(keys))
    sizes = np.bincount(group_of[prunable], minlength=len(keys))
    floors = np.array([min(n, max(1, math.ceil(min_keep_fraction * n))) for n in sizes], np.int64)
    dense = np.ones(r, bool)
    start = {q: costs.total(q, dense) for q in AIMED}
    target = budget.scaled(progress, start)
    limits = {q: float(v) for q, v in target.limits.items() if q in AIMED}
    if not limits:
        raise TfcompressError(f"{budget} limits nothing channel pruning can aim at", "mask_to_budget",
                              "give the budget params, weight_bytes or macs")
    chosen = greedy_keep(costs, limits, prunable, value, group_of, floors, kept)
    masked: dict[str, int] = {}
    for layer in layers:
        before = np.asarray(layer.mask.numpy()) > 0
        keep = chosen[roots_of[layer.name]] | ~prunable[roots_of[layer.name]]
        layer.mask.assign((before & keep).astype(np.float32))
        masked[layer.name] = int(before.sum() - (before & keep).sum())
    return masked

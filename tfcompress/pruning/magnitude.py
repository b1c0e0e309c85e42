"""Magnitude-style pruning for Keras 3: ``prune`` (wrap), ``UpdatePruning`` (fit), ``strip`` (bake).

The user flow and names follow tfmot's ``prune_low_magnitude`` / ``UpdatePruningStep`` /
``strip_pruning``, so migration is a find-and-replace::

    pruned = tfcompress.prune(model, schedule=PolynomialDecay(0.0, 0.9, 0, 2000))
    pruned.compile(...); pruned.fit(x, y, callbacks=[tfcompress.callbacks.UpdatePruning()])
    plain = tfcompress.strip(pruned)

Each prunable layer (Dense, Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D's pointwise
kernel) is wrapped in :class:`PruneLowMagnitude`, which holds a ``mask`` (kernel-shaped, 0/1)
and a ``pruning_step`` as non-trainable variables, so ``.keras`` saving, ``BackupAndRestore``
and ``MirroredStrategy`` carry them like any other weight. The forward pass computes with
``kernel * mask`` (a ``keras.StatelessScope`` maps the kernel variable to the masked tensor, so
the wrapped layer's own ``call`` is used unchanged and the gradient of a pruned weight is 0).

Granularity:

``"weight"``   unstructured: the ``round(s * n)`` lowest-scoring weights of a layer are masked.
``"channel"``  structured: whole output channels / units (their kernel slice and bias); a
               BatchNormalization that directly follows the layer is wrapped in
               :class:`MaskedBatchNormalization`, so a pruned channel outputs exactly 0 and
               ``tfcompress.shrink`` can remove it.
``"N:M"``      semi-structured (e.g. ``"2:4"``, as named by tfmot, TFLite and XNNPACK): in every
               group of M consecutive weights along the input dimension, the N largest are
               kept (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"). The
               sparsity is 1 - N/M; the schedule only decides when masks are updated.

Scope: ``"layer"`` gives every layer the schedule's sparsity; ``"global"`` ranks all scores of
all globally-scoped layers together (weights by |w|; channels by the criterion's
``global_channel_scores``, for magnitude the channel's norm per weight, L2 / sqrt(n) or
L1 / n with n the channel's fan-in, so layers of different fan-in compare), while no layer
keeps less than ``min_keep_fraction`` of its weights / channels: Tanaka et al. (NeurIPS 2020,
"Pruning neural networks without any data by iteratively conserving synaptic flow") show that
global magnitude pruning otherwise collapses whole layers at high sparsity.

Layers `prune` cannot handle (LSTM, Conv2DTranspose, Embedding, ...) are left dense; the
returned model's ``compression_report`` (`tfcompress.report.CompressionReport`) lists every layer
with weights, what ``prune`` did to it or why it left it alone and what to do, logged once as a
table (a WARNING when a weight matrix stays dense; ``verbose=0`` silences it).

Criteria are small serializable objects (:class:`PruningCriterion`); the default
``"magnitude"`` scores weights by |w| and channels by their L2 norm (``"l1"`` for the L1 norm).
Criteria that need statistics from training (activations, gradients) implement ``observe``,
which the `UpdatePruning` callback calls; see ``tfcompress.pruning.criteria``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import numpy as np

from tfcompress.core import ChannelFlow, copy_layer, handler_for, iter_layers, rebuild, trace
from tfcompress.core.strip import register_stripper
from tfcompress.errors import TfcompressError
from tfcompress.layers._pruning_base import (
    SCOPES,
    PruningSchedule,
    _input_axis,
    channel_to_kernel,
    get_criterion,
    get_schedule,
    parse_granularity,
)
from tfcompress.layers.prune_low_magnitude import (
    MaskedBatchNormalization,
    PruneLowMagnitude,
    baked_weights,
    is_prunable,
    prunable_types,
)
from tfcompress.pruning.budget import BudgetSchedule, budget_channel_masks
from tfcompress.pruning.groups import (
    channel_flow,
    follower_masks,
    group_channel_masks,
    removable_channels,
)
from tfcompress.report import SKIPPED, CompressionReport, attach, check_verbose

logger = logging.getLogger("tfcompress")


def _lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Boolean array marking exactly ``count`` lowest entries (ties broken by position)."""
    flat = scores.reshape(-1)
    marked = np.zeros(flat.size, dtype=bool)
    if count > 0:
        order = np.argsort(flat, kind="stable")
        marked[order[:count]] = True
    return marked.reshape(scores.shape)


def n_m_mask(kernel_scores: np.ndarray, n: int, m: int, input_axis: int) -> np.ndarray:
    """Keep the N largest of every M consecutive entries along ``input_axis``.

    A last group shorter than M keeps min(N, its length) entries.

    Example:
        >>> scores = np.array([[4.0, 1.0, 3.0, 2.0], [0.5, 0.1, 0.2, 0.9]]).T    # (in=4, out=2) kernel scores
        >>> n_m_mask(scores, 2, 4, input_axis=0).T.tolist()                    # 2 largest of every 4 inputs
        [[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]]
    """
    moved = np.moveaxis(kernel_scores, input_axis, -1)
    length = moved.shape[-1]
    pad = (-length) % m
    padded = np.concatenate([moved, np.full((*moved.shape[:-1], pad), np.inf)], axis=-1) if pad else moved
    groups = padded.reshape(*padded.shape[:-1], -1, m)
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    keep = keep.reshape(*padded.shape[:-1], -1)[..., :length]
    if pad:
        # the padded slots (inf) took keep places in the last group; give them back
        tail = moved[..., length - (length % m):]
        tail_keep = np.argsort(-tail, axis=-1, kind="stable")[..., : min(n, tail.shape[-1])]
        last = np.zeros_like(tail, dtype=bool)
        np.put_along_axis(last, tail_keep, True, axis=-1)
        keep[..., length - (length % m):] = last
    return np.moveaxis(keep, -1, input_axis).astype(np.float32)


# --------------------------------------------------------------------------- model level


def pruning_wrappers(model) -> list[PruneLowMagnitude]:
    """Every `PruneLowMagnitude` in the model, nested models included, in layer order.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc1"), keras.layers.Dense(2, name="fc2")])
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), layers={"fc1": {}}, verbose=0)
        >>> [w.name for w in pruning_wrappers(pruned)]
        ['prune_low_magnitude_fc1']
    """
    return [layer for layer in iter_layers(model) if isinstance(layer, PruneLowMagnitude)]


def masked_batch_norms(model) -> list[MaskedBatchNormalization]:
    """Every `MaskedBatchNormalization` in the model (nested models included), in layer order.

    Example:
        >>> import keras
        >>> from tfcompress.pruning import ConstantSparsity
        >>> x = keras.Input((8,))
        >>> model = keras.Model(x, keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(4)(x)))
        >>> [type(layer).__name__ for layer in masked_batch_norms(prune(model, ConstantSparsity(0.5, 0), "channel", verbose=0))]
        ['MaskedBatchNormalization']
    """
    return [layer for layer in iter_layers(model) if isinstance(layer, MaskedBatchNormalization)]


def _check_graph_model(model, action: str) -> None:
    if not isinstance(model, keras.Model):
        raise TfcompressError(f"expected a Keras model, got {type(model).__name__}", action)
    for sub in [model, *(m for m in iter_layers(model) if isinstance(m, keras.Model))]:
        if type(sub).__name__ not in ("Functional", "Sequential") and not hasattr(sub, "_run_through_graph"):
            raise TfcompressError(
                f"cannot {action} a subclassed model ({type(sub).__name__}): its layers' connections are "
                "not known",
                sub.name,
                "build the model with the Functional API or keras.Sequential, or wrap its layers with "
                "tfcompress.pruning.PruneLowMagnitude inside your own class",
            )
    if not model.built or not getattr(model, "inputs", None):
        raise TfcompressError(f"cannot {action} a model that is not built", model.name,
                              "give it a keras.Input, or call it on data first")


def _supported_names() -> str:
    return ", ".join(t.__name__ for t in prunable_types())


def _unsupported_reason(layer) -> tuple[bool, str] | None:
    """Why `prune` leaves a layer with weights alone: (has a weight matrix, reason), or None for
    layers whose weights are pruned with their producer (BatchNormalization) or have none."""
    if not layer.weights or handler_for(layer).kind == "norm":
        return None  # a normalization's vectors are pruned with the channels of its producer
    note = handler_for(layer).prune_note(layer)
    if note is not None:
        return note
    matrices = [w.path.split("/")[-1] for w in layer.weights if len(w.shape) >= 2]
    kind = type(layer).__name__
    if matrices:
        return True, (f"{kind} layers are not supported (weights {', '.join(sorted(set(matrices)))} stay dense); "
                      f"prunable layer types are {_supported_names()} and their subclasses")
    return False, (f"{kind} has no weight matrix to prune (only vectors); prunable layer types are "
                   f"{_supported_names()}")


def _settings_for(layer, layers, defaults: dict) -> dict | None:
    if layers is None:
        return dict(defaults)
    if callable(layers):
        chosen = layers(layer)
    elif isinstance(layers, dict):
        if layer.name not in layers:
            return None
        chosen = layers[layer.name]
    else:
        raise TfcompressError(
            f"layers must be a dict or a callable, got {type(layers).__name__}", "layers",
            "pass {layer_name: {settings} or {}} or a function layer -> settings dict or None",
        )
    if chosen is None:
        return None
    if chosen is True:
        chosen = {}
    if not isinstance(chosen, dict):
        raise TfcompressError(f"settings for layer {layer.name!r} must be a dict or None", "layers")
    unknown = set(chosen) - {"schedule", "granularity", "scope", "criterion", "min_keep_fraction"}
    if unknown:
        raise TfcompressError(f"unknown settings {sorted(unknown)} for layer {layer.name!r}", "layers",
                              "use schedule, granularity, scope, criterion, min_keep_fraction")
    return {**defaults, **chosen}


def prune(model, schedule: PruningSchedule | None = None, granularity: str | None = None, scope: str = "layer",
          criterion: Any = None, *, layers=None, min_keep_fraction: float = 0.02,
          verbose: int = 1, budget=None) -> keras.Model:
    """A copy of ``model`` whose prunable layers are wrapped in `PruneLowMagnitude`.

    Args:
        model: a built Sequential or Functional model (nested models are handled).
        schedule: `tfcompress.pruning.schedules.ConstantSparsity` / `PolynomialDecay` (None
            with ``budget``).
        granularity: ``"weight"`` (the default), ``"channel"`` (the default with ``budget``) or
            ``"N:M"`` (e.g. ``"2:4"``).
        scope: ``"layer"`` or ``"global"``.
        criterion: ``"magnitude"`` (``"l2"``, the default), ``"l1"`` (the default with
            ``budget``), or a `PruningCriterion`.
        layers: which layers to prune and how: ``None`` (every prunable layer), a dict
            ``{layer_name: {overrides} or {}}`` (only those; overrides among ``schedule``,
            ``granularity``, ``scope``, ``criterion``, ``min_keep_fraction``), or a function
            ``layer -> dict | None`` (None leaves the layer alone).
        min_keep_fraction: with ``scope="global"``, no layer keeps less than this fraction.
        verbose: how the report is shown (`tfcompress.report.CompressionReport.emit`): 0 not at
            all, 1 one log record (a warning when a weight matrix stays dense or a layer named in
            ``layers`` is left alone), 2 printed.
        budget: a `tfcompress.Budget` (``params``, ``weight_bytes``, ``macs``) to reach by channel
            pruning instead of a schedule's sparsity: channel counts per dependency group chosen
            by importance per unit cost (`tfcompress.pruning.budget`, after MorphNet). The returned
            model's masks already meet it once ``strip`` + ``shrink`` make it small; or a
            `tfcompress.pruning.BudgetSchedule` to reach it gradually in ``fit`` (`UpdatePruning`).

    Returns:
        A new model with the original's weights; train it with `UpdatePruning`. Its
        ``compression_report`` lists every layer with weights: pruned (with its settings),
        masked (a BatchNormalization after channel-pruned channels) or skipped, with the reason
        and what to do.

    Example:

    >>> import keras, tfcompress
    >>> x = keras.Input((6, 4))
    >>> h = keras.layers.LSTM(5, name="lstm")(x)
    >>> model = keras.Model(x, keras.layers.Dense(3, name="head")(h))
    >>> pruned = tfcompress.prune(model, tfcompress.pruning.ConstantSparsity(0.5, 0), verbose=0)
    >>> [(row.layer, row.action) for row in pruned.compression_report.rows]
    [('lstm', 'skipped'), ('head', 'pruned')]
    """
    _check_graph_model(model, "prune")
    verbose = check_verbose(verbose, "prune")
    if budget is not None:
        schedule, granularity, criterion = _budget_settings(model, budget, schedule, granularity, criterion)
        scope = "global"
    elif schedule is None:
        raise TfcompressError("prune needs a schedule or a budget", "prune",
                              "pass schedule=ConstantSparsity(0.5, 0) (or PolynomialDecay), or "
                              "budget=tfcompress.Budget(macs=...)")
    granularity = "weight" if granularity is None else granularity
    criterion = "magnitude" if criterion is None else criterion
    get_schedule(schedule)
    parse_granularity(granularity)
    if scope not in SCOPES:
        raise TfcompressError(f"unknown scope {scope!r}", "scope", f"use one of {SCOPES}")
    get_criterion(criterion)
    if not 0.0 <= min_keep_fraction < 1.0:
        raise TfcompressError(f"min_keep_fraction must be in [0, 1), got {min_keep_fraction}", "min_keep_fraction")
    if pruning_wrappers(model):
        raise TfcompressError("the model is already wrapped for pruning", model.name,
                              "call tfcompress.strip(model) first, or keep training the wrapped model")

    defaults = {"schedule": schedule, "granularity": granularity, "scope": scope,
                "criterion": criterion, "min_keep_fraction": min_keep_fraction}
    if isinstance(layers, dict):
        names = {layer.name for layer in iter_layers(model)}
        missing = sorted(set(layers) - names)
        if missing:
            raise TfcompressError(f"no layer named {missing}", "layers", f"layers are: {sorted(names)}")

    graph = trace(model, where="prune")
    output_layers = {id(graph.producer(t).op) for t in graph.outputs if graph.producer(t) is not None}
    plan: dict[int, dict] = {}
    explicit = isinstance(layers, dict) or callable(layers)
    report = CompressionReport("prune")
    rows: dict[int, tuple] = {}  # layer id -> its row's arguments, in graph order
    for layer in graph.layers():
        kind = type(layer).__name__
        settings = _settings_for(layer, layers, defaults)
        if settings is None:
            if layer.weights:
                rows[id(layer)] = (layer.name, kind, SKIPPED, "not selected by layers=", "")
            continue
        if not is_prunable(layer):
            reason = _unsupported_reason(layer)
            if reason is not None:
                # a weight matrix left dense, or a layer the user asked for: say so where users look
                why, _, fix = reason[1].partition("; ")
                rows[id(layer)] = (layer.name, kind, SKIPPED, why, fix, reason[0] or explicit)
            continue
        if parse_granularity(settings["granularity"])[0] == "channel" and id(layer) in output_layers:
            rows[id(layer)] = (layer.name, kind, SKIPPED,
                               "channel pruning: its units are model outputs (removing one would "
                               "change the output shape)",
                               "prune it with granularity='weight' or 'N:M' through layers=", explicit)
            continue
        plan[id(layer)] = settings
        rows[id(layer)] = (layer.name, kind, "pruned",
                           f"granularity {settings['granularity']}, scope {settings['scope']}, "
                           f"schedule {type(get_schedule(settings['schedule'])).__name__}", "")
    # A BatchNormalization whose channels come from a channel-pruned layer (right after it, or
    # through a concatenation, pooling, padding...) masks the pruned channels to exactly 0: its
    # shift would otherwise make them non-zero constants, which a "same"-padded convolution
    # cannot absorb, so shrink could not remove them.
    channel_pruned = {layer.name for layer in graph.layers() if id(layer) in plan
                      and parse_granularity(plan[id(layer)]["granularity"])[0] == "channel"}
    followers: dict[int, str] = {}
    if channel_pruned:
        flow = ChannelFlow(graph, constants=False).run()
        for node in graph.nodes:
            if not isinstance(node.op, keras.layers.BatchNormalization) or len(node.inputs) != 1:
                continue
            creators = [flow.base_index[int(b)][0] for b in flow.origin[node.inputs[0]]]
            source = next((name for name in creators if name in channel_pruned), None)
            if source is not None:
                followers[id(node.op)] = f"prune_low_magnitude_{source}"
                rows[id(node.op)] = (node.op.name, type(node.op).__name__, "masked",
                                     f"zeroes the channels pruned in {source}", "")

    def wrap(node, args, kwargs):
        layer = node.op
        if id(layer) in plan:
            s = plan[id(layer)]
            fresh = copy_layer(layer)
            new = PruneLowMagnitude(fresh, get_schedule(s["schedule"]), s["granularity"], s["scope"],
                                    get_criterion(s["criterion"]), s["min_keep_fraction"],
                                    name=f"prune_low_magnitude_{layer.name}")
        elif id(layer) in followers:
            fresh = copy_layer(layer)
            new = MaskedBatchNormalization(fresh, followers[id(layer)], name=f"masked_{layer.name}")
        else:
            return None
        out = new(*args, **kwargs)
        fresh.set_weights(layer.get_weights())
        return out

    # nested models stay nested, as keras.models.clone_model keeps them
    pruned = rebuild(trace(model, where="prune", inline=False), wrap, as_clone=True)
    for layer in graph.layers():  # in graph order
        if id(layer) in rows:
            args = rows[id(layer)]
            report.add(*args[:5], important=len(args) > 5 and bool(args[5]))
    nothing = not pruning_wrappers(pruned)
    if nothing:
        report.notes.append(f"no layer of {model.name} was wrapped: nothing will be pruned")
    elif budget is not None:
        update_masks(pruned, 0)  # a one-shot budget is met on return; a gradual one starts dense
        final = get_schedule(schedule)
        if final.target(0) != final.budget:  # gradual: find out now, not in fit, if the floors allow it
            wrappers = pruning_wrappers(pruned)
            budget_channel_masks(pruned, wrappers, final.budget, min_keep_fraction=wrappers[0].min_keep_fraction)
        report.notes.append(f"budget {final.budget}: masks chosen for {final.target(0)} at step 0")
    report.emit(verbose, warn=nothing)
    return attach(pruned, report)


def _budget_settings(model, budget, schedule, granularity, criterion) -> tuple:
    """``prune(budget=...)``'s schedule (a `BudgetSchedule` starting from the model's cost),
    granularity and criterion, checked."""
    from tfcompress.budget import Budget, model_cost
    from tfcompress.pruning.budget import AIMED, BudgetSchedule

    if schedule is not None:
        raise TfcompressError("prune got both a schedule and a budget", "prune(schedule=..., budget=...)",
                              "pass one: a budget is reached at once, or gradually with "
                              "budget=BudgetSchedule(Budget(...), begin_step, end_step)")
    if isinstance(budget, Budget):
        budget = BudgetSchedule(budget)
    if not isinstance(budget, BudgetSchedule):
        raise TfcompressError(f"budget must be a tfcompress.Budget or a BudgetSchedule, got {type(budget).__name__}",
                              "prune(budget=...)", "pass e.g. budget=tfcompress.Budget(macs=100_000)")
    if granularity not in (None, "channel"):
        raise TfcompressError(f"a budget is reached by channel pruning, not granularity={granularity!r}",
                              "prune(budget=...)", "leave granularity out (or pass 'channel')")
    if budget.start is None:
        cost = model_cost(model, budget.budget.precision)
        budget = BudgetSchedule(budget.budget, budget.begin_step, budget.end_step, budget.frequency, budget.power,
                                start={q: cost.get(q) for q in AIMED})
    return budget, "channel", "l1" if criterion is None else criterion


def strip(model) -> keras.Model:
    """A plain Keras model: wrappers removed, masks multiplied into the weights (tfmot's strip_pruning).

    The result holds only Keras layers, loads without tfcompress, and computes the same outputs.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc1"), keras.layers.Dense(2, name="fc2")])
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), verbose=0)
        >>> _ = update_masks(pruned, step=0)
        >>> plain = strip(pruned)
        >>> [type(layer).__name__ for layer in plain.layers], float(np.mean(plain.get_layer("fc1").kernel.numpy() == 0))
        (['Dense', 'Dense'], 0.5)
    """
    if not isinstance(model, keras.Model):
        raise TfcompressError(f"expected a Keras model, got {type(model).__name__}", "strip")
    graph = trace(model, where="strip", inline=False)

    def unwrap(node, args, kwargs):
        layer = node.op
        if not isinstance(layer, PruneLowMagnitude | MaskedBatchNormalization):
            return None
        new = copy_layer(layer.layer)
        out = new(*args, **kwargs)
        new.set_weights(baked_weights(layer))
        return out

    return rebuild(graph, unwrap, as_clone=True)


# --------------------------------------------------------------------------- mask updates


def _pruned_first(wrapper: PruneLowMagnitude, scores: np.ndarray, nested: bool, channel: bool) -> np.ndarray:
    """With ``nested``, entries the current mask has pruned score -inf: they stay pruned."""
    if not nested:
        return scores
    current = wrapper.channel_mask_numpy() if channel else keras.ops.convert_to_numpy(wrapper.mask)
    return np.where(current.reshape(scores.shape) == 0, -np.inf, scores.astype(np.float64))


def _layer_mask(wrapper: PruneLowMagnitude, sparsity: float, nested: bool = False) -> np.ndarray:
    if wrapper.kind == "n:m":
        n, m = wrapper.n_m
        return n_m_mask(wrapper.criterion.scores(wrapper), n, m, _input_axis(wrapper.layer))
    if wrapper.kind == "channel":
        scores = _pruned_first(wrapper, wrapper.criterion.channel_scores(wrapper), nested, True)
        count = min(int(round(sparsity * scores.size)), scores.size - 1)
        return channel_to_kernel(wrapper, (~_lowest(scores, count)).astype(np.float32))
    scores = _pruned_first(wrapper, wrapper.criterion.scores(wrapper), nested, False)
    count = int(round(sparsity * scores.size))
    return (~_lowest(scores, count)).astype(np.float32)


def _global_masks(wrappers: list[PruneLowMagnitude], sparsity: float, nested: bool = False) -> list[np.ndarray]:
    """One ranking over all layers; layers that would fall below their floor keep their floor.

    Channels are ranked by `PruningCriterion.global_channel_scores` (for magnitude: the norm
    per weight of the channel, so layers of different fan-in compare).
    """
    channel = wrappers[0].kind == "channel"
    scores = []
    for w in wrappers:
        if channel:
            scores.append(_pruned_first(w, w.criterion.global_channel_scores(w), nested, True))
        else:
            scores.append(_pruned_first(w, w.criterion.scores(w), nested, False).reshape(-1))
    sizes = [s.size for s in scores]
    floors = [max(1, math.ceil(w.min_keep_fraction * n)) for w, n in zip(wrappers, sizes, strict=True)]
    total_prune = int(round(sparsity * sum(sizes)))
    floored: set[int] = set()
    while True:
        free = [i for i in range(len(wrappers)) if i not in floored]
        budget = total_prune - sum(sizes[i] - floors[i] for i in floored)
        pool = np.concatenate([scores[i].reshape(-1) for i in free]) if free else np.zeros(0)
        budget = max(0, min(budget, pool.size))
        marked = _lowest(pool, budget)
        counts, offset = {}, 0
        for i in free:
            counts[i] = int(marked[offset : offset + sizes[i]].sum())
            offset += sizes[i]
        over = [i for i in free if sizes[i] - counts[i] < floors[i]]
        if not over:
            break
        floored.update(over)
    masks = []
    offset = 0
    for i, w in enumerate(wrappers):
        if i in floored:
            keep = ~_lowest(scores[i].reshape(-1), sizes[i] - floors[i])
        else:
            keep = ~marked[offset : offset + sizes[i]]
            offset += sizes[i]
        keep = keep.astype(np.float32)
        masks.append(channel_to_kernel(w, keep) if channel else keep.reshape(tuple(w.mask.shape)))
    return masks


def update_masks(model, step: int, force_sparsity: float | None = None, *, nested: bool = False,
                 channel_multiple: int = 1) -> dict[str, float]:
    """Apply every wrapper's schedule at ``step``: recompute masks where it says so.

    Returns the sparsity each updated layer now has. Runs eagerly (cross-replica under a
    distribution strategy); also zeroes the pruned kernel entries so they are really 0.
    With ``nested=True`` what is pruned now stays pruned (the new masks are subsets of the old
    ones, as in iterative pruning) whatever the criterion's scores, provided the sparsity does
    not decrease (N:M masks are recomputed as usual). ``channel_multiple``: channel pruning keeps
    a multiple of this many channels in every dependency group (rounded up; SIMD kernels pad
    channel counts to their tile, e.g. XNNPACK's 8 or 16).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc1"), keras.layers.Dense(2, name="fc2")])
        >>> pruned = prune(model, ConstantSparsity(0.5, begin_step=0, frequency=10), verbose=0)
        >>> update_masks(pruned, step=0)
        {'prune_low_magnitude_fc1': 0.5, 'prune_low_magnitude_fc2': 0.5}
        >>> update_masks(pruned, step=5)                             # not a multiple of the frequency
        {}
        >>> update_masks(pruned, step=5, force_sparsity=0.75)["prune_low_magnitude_fc1"]
        0.75
    """
    wrappers = pruning_wrappers(model)
    updated: dict[str, float] = {}
    due: list[tuple[PruneLowMagnitude, float]] = []
    for w in wrappers:
        should, sparsity = w.pruning_schedule(step)
        if force_sparsity is not None:
            should, sparsity = True, force_sparsity
        if should:
            due.append((w, sparsity))
    prepared: set[int] = set()
    for w, _ in due:
        criterion = w.criterion
        if criterion.needs_statistics and id(criterion) not in prepared:
            sharing = [v for v, _ in due if v.criterion is criterion]
            criterion.prepare(model, sharing)
            prepared.add(id(criterion))
    budgeted = [w for w, _ in due if isinstance(w.pruning_schedule, BudgetSchedule) and force_sparsity is None]
    channel = [(w, s) for w, s in due if w.kind == "channel" and w not in budgeted]
    local = [(w, s) for w, s in due if (w.scope == "layer" or w.kind == "n:m") and w.kind != "channel"]
    global_ = [(w, s) for w, s in due if w.scope == "global" and w.kind == "weight"]
    new_masks = [(w, _layer_mask(w, s, nested)) for w, s in local]
    if global_:
        masks = _global_masks([w for w, _ in global_], global_[0][1], nested)
        new_masks += list(zip([w for w, _ in global_], masks, strict=True))
    flows: list = []  # the model's channel groups, traced once per update when needed

    def flow():
        if not flows:
            flows.append(channel_flow(model))
        return flows[0]

    if channel:
        new_masks += _channel_masks(model, channel, nested, flow(), channel_multiple)
    if budgeted:
        new_masks += _budget_masks(model, budgeted, step, flow())
    for w, mask in new_masks:
        w.mask.assign(mask.astype(w.mask.dtype))
        kernel = w.kernel_variable
        kernel.assign(keras.ops.convert_to_numpy(kernel) * mask)
        updated[w.name] = float(1.0 - mask.mean())
    followers = masked_batch_norms(model) if new_masks else []
    if followers:
        _sync_followers(followers, follower_masks(model, flow()))
    return updated


def _channel_masks(model, due: list[tuple[PruneLowMagnitude, float]], nested: bool, flow,
                   channel_multiple: int = 1) -> list:
    """Channel masks chosen per dependency group (``tfcompress.pruning.groups``): coupled
    channels (depthwise, residual, squeeze-and-excitation, concatenation) are scored and cut as
    one, so the schedule's sparsity is what ``shrink`` removes. Wrappers that share a schedule
    setting (sparsity, scope, floor) are decided together."""
    out = []
    settings: dict[tuple, list[PruneLowMagnitude]] = {}
    for w, sparsity in due:
        floor = w.min_keep_fraction if w.scope == "global" else 0.0
        settings.setdefault((round(float(sparsity), 12), w.scope, floor), []).append(w)
    for (sparsity, scope, floor), wrappers in settings.items():
        masks = group_channel_masks(model, wrappers, sparsity, scope=scope, nested=nested,
                                    min_keep_fraction=floor, channel_multiple=channel_multiple, flow=flow)
        out += [(w, channel_to_kernel(w, masks[w.name])) for w in wrappers]
    return out


def _budget_masks(model, wrappers: list[PruneLowMagnitude], step: int, flow) -> list:
    """The masks of budget-pruned wrappers (`tfcompress.pruning.budget`): those that share a
    `BudgetSchedule` (equal configs) and floor are decided together, for its target at ``step``."""
    out = []
    shared: dict[str, list[PruneLowMagnitude]] = {}
    for w in wrappers:
        shared.setdefault(repr((w.pruning_schedule.get_config(), w.min_keep_fraction)), []).append(w)
    for group in shared.values():
        target = group[0].pruning_schedule.target(step)
        masks = budget_channel_masks(model, group, target, min_keep_fraction=group[0].min_keep_fraction, flow=flow)
        out += [(w, channel_to_kernel(w, masks[w.name])) for w in group]
    return out


def _sync_followers(followers, masks: dict) -> None:
    """Each `MaskedBatchNormalization` masks the channels whose group is pruned in every member
    (``tfcompress.pruning.groups.follower_masks``), wherever they reach it from."""
    for bn in followers:
        if bn.name in masks:
            bn.channel_mask.assign(masks[bn.name].astype("float32"))


def mask_sparsity(wrappers) -> float:
    """Fraction of zero mask entries over all the given pruning wrappers.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning import ConstantSparsity
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc1"), keras.layers.Dense(2, name="fc2")])
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), verbose=0)
        >>> mask_sparsity(pruning_wrappers(pruned))
        0.0
        >>> _ = update_masks(pruned, step=0)
        >>> mask_sparsity(pruning_wrappers(pruned))                 # 16 of 32 and 4 of 8 entries masked
        0.5
    """
    masks = [keras.ops.convert_to_numpy(w.mask) for w in wrappers]
    total = sum(m.size for m in masks)
    return sum(int(m.size - np.count_nonzero(m)) for m in masks) / max(total, 1)


def pruning_summary(model) -> dict[str, dict[str, float]]:
    """Per wrapped layer: its weight sparsity, pruned channels, step, and (channel granularity)
    ``removable_channels``: the output channels ``tfcompress.shrink`` will really remove (a
    channel goes only with every channel tied to it, ``tfcompress.pruning.groups``).

    Example:

    >>> import keras, tfcompress
    >>> from tfcompress.pruning import ConstantSparsity, prune, pruning_summary, update_masks
    >>> x = keras.Input((4,))
    >>> model = keras.Model(x, keras.layers.Dense(2, name="out")(keras.layers.Dense(8, name="fc")(x)))
    >>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel")
    >>> _ = update_masks(pruned, 0)
    >>> pruning_summary(pruned)["fc"]["removable_channels"]
    4
    """
    removable = removable_channels(model)
    out = {}
    for w in pruning_wrappers(model):
        mask = keras.ops.convert_to_numpy(w.mask)
        channels = w.channel_mask_numpy()
        out[w.layer.name] = {
            "sparsity": float(1.0 - mask.mean()),
            "pruned_channels": int((channels == 0).sum()),
            "channels": int(channels.size),
            "step": int(keras.ops.convert_to_numpy(w.pruning_step)),
        }
        if w.layer.name in removable:
            out[w.layer.name]["removable_channels"] = removable[w.layer.name]
    return out


# shrink strips pruning wrappers first
register_stripper(lambda layer: getattr(layer, "tfcompress_pruning_wrapper", False), strip)

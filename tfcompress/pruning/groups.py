"""Channel pruning by dependency group: coupled channels are scored and removed as one.

A depthwise convolution's channels are the channels of the convolution that feeds it; a
residual ``Add`` or the excitation ``Multiply`` of a squeeze-and-excitation block ties the
channels of its inputs; ``shrink`` can remove a channel only with every channel tied to it.
Chosen layer by layer, masks of coupled layers intersect and far more is removed than the
schedule says (a 50% target removed 86% of DS-CNN's parameters). So, as Torch-Pruning's group
importance does (Fang et al., CVPR 2023, "DepGraph", Sec. 3.3, eq. 5-6: one importance per
group, aggregated over the group's members), here:

* the units of pruning are the *channel groups* of ``tfcompress.core.channels`` (one channel
  position shared by every layer it ties together), and channel groups whose members are the
  same layers form one *dependency group* (e.g. conv1 + its depthwise + their BatchNorms);
* a channel group's importance is the mean over its member layers of the criterion's channel
  score (Torch-Pruning's ``group_reduction="mean"``); with layer scope each member's scores are
  first divided by that layer's mean score, so a layer's fan-in does not decide which member
  counts (Torch-Pruning's ``"mean"`` normalizer); with global scope they are the criterion's
  ``global_channel_scores``, per weight, which compare across layers;
* layer scope: each dependency group loses ``round(s * n)`` of its ``n`` channel groups;
  global scope: the lowest-ranked channel groups over all, until ``round(s * C)`` of the ``C``
  channels of the pruned layers are removed (a channel group costs one channel per member
  layer, so the sparsity means what it means for unrelated layers); either way a
  dependency group keeps at least ``max(1, ceil(min_keep_fraction * n))`` channels (and its
  kept count is rounded up to a multiple of ``channel_multiple`` when one is set, for SIMD
  friendly widths);
* every member's mask is set from its group's decision, so what the schedule reports is what
  ``shrink`` removes. Channel groups tied to a model input or output, to an opaque layer, or
  to a layer that is not channel-pruned are never pruned (``shrink`` could not remove them).

Example:

>>> import keras, tfcompress
>>> from tfcompress.pruning import ConstantSparsity, prune, update_masks
>>> from tfcompress.pruning.groups import channel_groups
>>> x = keras.Input((8, 8, 3))
>>> h = keras.layers.Conv2D(8, 1, name="pw")(x)
>>> h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
>>> model = keras.Model(x, keras.layers.Conv2D(4, 1, name="out")(h))
>>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel")
>>> _ = update_masks(pruned, 0)
>>> [(g.layers, g.channels, g.pruned) for g in channel_groups(pruned)]
[(('dw', 'pw'), 8, 4)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tfcompress.core import ChannelFlow, iter_layers, trace
from tfcompress.layers.prune_low_magnitude import MaskedBatchNormalization, PruneLowMagnitude

__all__ = ["ChannelGroup", "channel_flow", "channel_groups", "follower_masks", "group_channel_masks", "removable_channels"]


@dataclass
class ChannelGroup:
    """A dependency group: layers whose channels are pruned together.

    Attributes:
        layers: names of the member layers (the wrapped layers' own names).
        channels: channel groups in it (what each member has, per multiplier copy).
        pruned: how many of them are masked now.
        prunable: False when the group is tied to a model input / output, an opaque layer or a
            layer that is not channel-pruned (then nothing in it is pruned).

    Example:
        >>> import keras
        >>> from tfcompress.pruning import ConstantSparsity, prune, update_masks
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc2")(keras.layers.Dense(8, "relu", name="fc1")(inputs)))
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", verbose=0)
        >>> _ = update_masks(pruned, step=0)
        >>> [(g.layers, g.channels, g.pruned, g.prunable) for g in channel_groups(pruned)]
        [(('fc1',), 8, 4, True)]
    """

    layers: tuple[str, ...]
    channels: int
    pruned: int
    prunable: bool


def channel_flow(model) -> ChannelFlow:
    """The channel groups of ``model`` (they depend on its structure, not on its masks).

    Example:
        >>> import keras
        >>> from tfcompress.pruning import ConstantSparsity, prune, update_masks
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc2")(keras.layers.Dense(8, "relu", name="fc1")(inputs)))
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", verbose=0)
        >>> flow = channel_flow(pruned)
        >>> type(flow).__name__
        'ChannelFlow'
    """
    return ChannelFlow(trace(model, where="channel pruning"), constants=False, strict=False).run()


def _member_roots(flow: ChannelFlow, wrappers) -> dict[str, np.ndarray]:
    return {w.name: flow.group_of(w.layer.name) for w in wrappers}


def _dependency_groups(flow: ChannelFlow, wrappers) -> tuple[dict, dict]:
    """``roots``: root -> [(wrapper, positions)], ``blocked``: roots that cannot be pruned."""
    roots_of = _member_roots(flow, wrappers)
    members: dict[int, list] = {}
    for w in wrappers:
        for position, root in enumerate(roots_of[w.name].tolist()):
            members.setdefault(root, []).append((w, position))
    wrapped_names = {w.layer.name for w in wrappers}
    blocked = set(flow.required_roots())
    for base, (name, _) in enumerate(flow.base_index):
        # a channel created by a layer that is not channel-pruned stays, and so does its group
        if name != "<input>" and name not in wrapped_names:
            blocked.add(flow.root(base))
    return members, blocked


def group_channel_masks(model, wrappers, sparsity: float, *, scope: str = "layer", nested: bool = False,
                        min_keep_fraction: float = 0.0, channel_multiple: int = 1,
                        scores_of=None, flow: ChannelFlow | None = None) -> dict[str, np.ndarray]:
    """Channel masks (one 0/1 per output channel) of ``wrappers``, chosen by dependency group.

    Args:
        model: the pruned model (``tfcompress.prune`` with ``granularity="channel"``).
        wrappers: the channel-granularity `PruneLowMagnitude` layers to update.
        sparsity: the fraction of channel groups to remove (per dependency group for
            ``scope="layer"``, over all for ``"global"``).
        nested: channels masked now stay masked.
        min_keep_fraction: the least fraction of its channels a dependency group keeps (always
            at least one channel).
        channel_multiple: round each dependency group's kept count up to a multiple of this.
        scores_of: ``wrapper -> channel scores`` (default: the wrapper's criterion).
        flow: the model's traced channel groups (:func:`channel_flow`), when the caller has them.

    Returns:
        ``{wrapper name: channel mask}`` for every wrapper in ``wrappers``.

    Example:
        >>> import keras
        >>> from tfcompress.pruning import ConstantSparsity, prune, update_masks
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc2")(keras.layers.Dense(8, "relu", name="fc1")(inputs)))
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", verbose=0)
        >>> from tfcompress.pruning import pruning_wrappers
        >>> masks = group_channel_masks(pruned, pruning_wrappers(pruned), 0.75)
        >>> {name: mask.tolist().count(1.0) for name, mask in masks.items()}       # 2 of 8 channels kept
        {'prune_low_magnitude_fc1': 2}
    """
    if not wrappers:
        return {}
    flow = flow or channel_flow(model)
    members, blocked = _dependency_groups(flow, wrappers)
    if scores_of is None:
        # layer scope ranks within a dependency group: each member's scores over its mean make
        # the members comparable; global scope ranks across layers: the criterion's per-weight
        # scores (``global_channel_scores``) already compare
        scores_of = (lambda w: w.criterion.global_channel_scores(w)) if scope == "global" else \
            (lambda w: w.criterion.channel_scores(w))
    normalized: dict[str, np.ndarray] = {}
    current: dict[str, np.ndarray] = {}
    for w in wrappers:
        scores = np.asarray(scores_of(w), np.float64).reshape(-1)
        mean = float(np.mean(np.abs(scores))) if scores.size else 0.0
        normalized[w.name] = scores / mean if mean > 0 and scope != "global" else scores
        current[w.name] = np.asarray(w.channel_mask_numpy(), np.float64).reshape(-1)
    # importance of each channel group, its cost (member channels), its dependency group
    importance: dict[int, float] = {}
    cost: dict[int, int] = {}
    dependency: dict[tuple, list[int]] = {}
    for root, refs in members.items():
        if root in blocked:
            continue
        value = float(np.mean([normalized[w.name][p] for w, p in refs]))
        if nested and all(current[w.name][p] == 0 for w, p in refs):
            value = -np.inf
        importance[root] = value
        cost[root] = len(refs)
        key = tuple(sorted({w.name for w, _ in refs}))
        dependency.setdefault(key, []).append(root)

    def floor(n: int) -> int:
        return min(n, max(1, math.ceil(min_keep_fraction * n)))

    def rounded_keep(n: int, keep: int) -> int:
        if channel_multiple > 1:
            keep = min(n, math.ceil(keep / channel_multiple) * channel_multiple)
        return keep

    removed: set[int] = set()
    if scope == "global":
        # one ranking; the budget counts member channels (a channel shared by a convolution and
        # its depthwise layer costs two), so the sparsity is over all pruned layers' channels
        order = sorted(importance, key=lambda r: (importance[r], r))
        budget = int(round(sparsity * sum(cost.values())))
        left = {key: len(roots) for key, roots in dependency.items()}
        key_of = {r: key for key, roots in dependency.items() for r in roots}
        for root in order:
            if budget <= 0:
                break
            key = key_of[root]
            n = len(dependency[key])
            if left[key] - 1 < rounded_keep(n, floor(n)) or cost[root] > budget:
                continue
            removed.add(root)
            left[key] -= 1
            budget -= cost[root]
    else:
        for roots in dependency.values():
            n = len(roots)
            keep = rounded_keep(n, max(n - int(round(sparsity * n)), floor(n)))
            order = sorted(roots, key=lambda r: (importance[r], r))
            removed.update(order[: n - keep])
    masks: dict[str, np.ndarray] = {}
    roots_of = _member_roots(flow, wrappers)
    for w in wrappers:
        masks[w.name] = np.array([r not in removed for r in roots_of[w.name].tolist()], np.float32)
    return masks


def channel_groups(model) -> list[ChannelGroup]:
    """The dependency groups of a channel-pruned model and what is pruned in each: the channels
    ``shrink`` will remove (``ChannelGroup.pruned`` counts channel groups masked in every member).

    Example:
        >>> import keras
        >>> from tfcompress.pruning import ConstantSparsity, prune, update_masks
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc2")(keras.layers.Dense(8, "relu", name="fc1")(inputs)))
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", verbose=0)
        >>> _ = update_masks(pruned, step=0)
        >>> group = channel_groups(pruned)[0]
        >>> group.layers, f"{group.pruned} of {group.channels} pruned"
        (('fc1',), '4 of 8 pruned')
    """
    wrappers = [w for w in iter_layers(model) if isinstance(w, PruneLowMagnitude) and w.kind == "channel"]
    if not wrappers:
        return []
    flow = channel_flow(model)
    members, blocked = _dependency_groups(flow, wrappers)
    masks = {w.name: np.asarray(w.channel_mask_numpy()).reshape(-1) for w in wrappers}
    table: dict[tuple, list] = {}
    for root, refs in members.items():
        key = tuple(sorted({w.layer.name for w, _ in refs}))
        pruned = all(masks[w.name][p] == 0 for w, p in refs)
        table.setdefault(key, []).append((pruned, root in blocked))
    return [ChannelGroup(key, len(rows), sum(p for p, _ in rows), not any(b for _, b in rows))
            for key, rows in table.items()]


def removable_channels(model) -> dict[str, int]:
    """Per channel-pruned layer (its own name): how many of its output channels ``shrink`` will
    remove, i.e. those whose whole channel group is masked in every member and is not tied to a
    model input / output, an opaque layer or an unpruned layer.

    Example:
        >>> import keras
        >>> from tfcompress.pruning import ConstantSparsity, prune, update_masks
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc2")(keras.layers.Dense(8, "relu", name="fc1")(inputs)))
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", verbose=0)
        >>> _ = update_masks(pruned, step=0)
        >>> removable_channels(pruned)
        {'fc1': 4}
    """
    wrappers = [w for w in iter_layers(model) if isinstance(w, PruneLowMagnitude) and w.kind == "channel"]
    if not wrappers:
        return {}
    flow = channel_flow(model)
    members, blocked = _dependency_groups(flow, wrappers)
    masks = {w.name: np.asarray(w.channel_mask_numpy()).reshape(-1) for w in wrappers}
    gone = {root for root, refs in members.items()
            if root not in blocked and all(masks[w.name][p] == 0 for w, p in refs)}
    roots_of = _member_roots(flow, wrappers)
    return {w.layer.name: int(sum(r in gone for r in roots_of[w.name].tolist())) for w in wrappers}


def follower_masks(model, flow: ChannelFlow | None = None) -> dict[str, np.ndarray]:
    """``{MaskedBatchNormalization name: channel mask}``: 0 where the BatchNormalization's input
    channel belongs to a channel group masked in every member (pruned), 1 elsewhere.

    Example:
        >>> import keras
        >>> from tfcompress.pruning import ConstantSparsity, prune, update_masks
        >>> inputs = keras.Input((8,))
        >>> hidden = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(4, name="fc1")(inputs))
        >>> pruned = prune(keras.Model(inputs, keras.layers.Dense(2)(hidden)), ConstantSparsity(0.5, 0), "channel", verbose=0)
        >>> _ = update_masks(pruned, step=0)
        >>> {name: int(mask.sum()) for name, mask in follower_masks(pruned).items()}     # the BN follows fc1
        {'masked_bn': 2}
    """
    followers = [layer for layer in iter_layers(model) if isinstance(layer, MaskedBatchNormalization)]
    wrappers = [w for w in iter_layers(model) if isinstance(w, PruneLowMagnitude) and w.kind == "channel"]
    if not followers or not wrappers:
        return {}
    flow = flow or channel_flow(model)
    members, _ = _dependency_groups(flow, wrappers)
    masks = {w.name: np.asarray(w.channel_mask_numpy()).reshape(-1) for w in wrappers}
    pruned = {root for root, refs in members.items() if all(masks[w.name][p] == 0 for w, p in refs)}
    out = {}
    graph = flow.graph
    for bn in followers:
        nodes = graph.nodes_of(bn)
        if len(nodes) != 1:
            continue
        roots = [flow.root(b) for b in flow.origin[nodes[0].inputs[0]].tolist()]
        out[bn.name] = np.array([r not in pruned for r in roots], np.float32)
    return out

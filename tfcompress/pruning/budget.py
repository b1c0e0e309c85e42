"""Channel pruning to a budget: per-group channel counts chosen by importance per unit cost.

``tfcompress.prune(model, budget=Budget(macs=...))`` removes channels until the model, once
``strip`` + ``shrink`` have made it small, meets the budget's ``macs``, ``params`` and
``weight_bytes`` as ``tfcompress.model_cost`` counts them. Which channels go is MorphNet's
resource-weighted view (Gordon et al., CVPR 2018, "MorphNet", Sec. 3.2 and eq. 4-5: the cost of
a channel is the FLOPs / parameters it takes with it, its input side in the next layer
included), as a knapsack greedy instead of a regularizer: every channel group (a channel
position shared by every layer it ties together: `tfcompress.pruning.groups`) has

* an importance ``I_g``: with the magnitude criteria (``"l1"``, the default, ``"l2"``) the L1
  norm of every kernel weight the group takes with it, its producers' output slices and its
  readers' input slices (Li et al. 2017, "Pruning Filters for Efficient ConvNets", eq. 1's
  filter norm, with the next layer's kernels it feeds, Sec. 3.1), so ``I_g / dC_g`` is the
  mean ``|w|`` per parameter (or per MAC) removed; with a data-driven criterion the mean over
  the group's members of its ``global_channel_scores``,
* a cost ``dC_g``: what removing it saves, read off the exact cost model below, for every
  layer it touches (its producer's kernel slice and bias, its BatchNormalization, a depthwise
  layer on it, the next layer's input slice, the rows of a Dense after Flatten);

and the groups of lowest ``I_g / dC_g`` go first (with several limits, ``dC_g`` is the sum over
the limits not met yet of the saving over the remaining excess). Importance has diminishing
returns: while a dependency group keeps ``k`` of its ``n`` channels, its channels count ``n / k``
times their ``I_g``; the greedy then maximises ``sum_G I_G log k_G`` under the budget, whose
optimum under a linear cost keeps ``k_G`` in proportion to ``I_G / dC_G`` (Lagrange: ``I_G / k_G =
lambda dC_G``) instead of emptying every expensive layer down to its floor, which a knapsack of
additive importances does (on LeNet-5-Caffe at 1/15 of the MACs it kept 1 of conv1's 20 filters,
at 24% accuracy before fine-tuning). The costs change as channels
go (the next layer's input slice shrinks with its outputs), so they are recomputed after every
batch of removals, each batch at most a quarter of the remaining excess. Once the budget is met,
removed groups are given back greedily, most important per cost first, while the budget stays
met (what a knapsack greedy leaves over). A dependency group (`tfcompress.pruning.groups`)
keeps at least ``max(1, ceil(min_keep_fraction * n))`` of its ``n`` channels, groups tied to a
model input or output, an opaque layer or a layer that is not pruned are never pruned, so no
layer is emptied.

The cost model is exact, not an estimate: over the traced graph, each layer's MACs,
parameters and weight bytes are bilinear in the channels kept at its input ``k_in`` and
output ``k_out``: ``a * k_in * k_out + b * k_out + c * k_in + d`` (a convolution's MACs are
``spatial * prod(kernel) * k_in * k_out``; a depthwise layer's ``spatial * prod(kernel) *
k_out``; BatchNormalization, pooling and merges are linear in ``k_out``), with the conventions
of ``tfcompress.metrics`` and ``tfcompress.budget``; tests/test_budget.py checks it against
``model_cost`` of the shrunk model.

The budget is reached at once (``prune(model, budget=Budget(...))``: the returned model's masks
already meet it) or gradually during ``fit`` with `BudgetSchedule`: at step ``t`` the target
of every limit is ``C_0 - p_t (C_0 - limit)``, ``C_0`` the dense model's cost and ``p_t = 1 -
(1 - (t - t_0) / (t_n - t_0)) ** power`` the progress of Zhu and Gupta's schedule (2017, eq. 1,
tfmot's ``PolynomialDecay``), so the network adapts while it loses channels; `UpdatePruning`
applies it like any schedule.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from tfcompress.budget import PRECISIONS as _PRECISIONS
from tfcompress.budget import (
    Budget,
    check_precision,
    folded_norms,
    kernel_bits,
    layer_role,
    layer_weight_bytes,
)
from tfcompress.core import handler_for
from tfcompress.errors import TfcompressError
from tfcompress.layers._pruning_base import MagnitudeCriterion, PruningSchedule
from tfcompress.pruning.groups import _dependency_groups, channel_flow

__all__ = ["AIMED", "BudgetSchedule", "ChannelCostModel", "budget_channel_masks"]

#: the quantities channel pruning aims at (the others are measured on an export)
AIMED = ("params", "weight_bytes", "macs")


@keras.saving.register_keras_serializable(package="tfcompress")
class BudgetSchedule(PruningSchedule):
    """When `UpdatePruning` moves a budget-pruned model towards its `Budget`, and how far.

    Zhu and Gupta's gradual schedule (2017, "To prune, or not to prune", eq. 1) on the cost
    instead of the sparsity: at step ``t`` (``begin_step <= t``, on a ``frequency`` boundary, up
    and at ``end_step``) the masks are chosen for the budget ``p_t`` of the way from the
    dense cost ``start`` to ``budget``, ``p_t = 1 - (1 - (t - begin_step) / (end_step -
    begin_step)) ** power`` (1 from ``end_step`` on). ``begin_step = end_step`` (the default,
    0) is one shot: ``prune`` applies it before it returns.

    Args:
        budget: the `Budget` to reach (its ``params``, ``weight_bytes`` and ``macs``).
        begin_step, end_step, frequency, power: as for `PolynomialDecay`.
        start: ``{quantity: value}``, the cost the ramp starts from; ``prune`` sets it to the
            dense model's cost (`tfcompress.model_cost`).

    Example:
        >>> import tfcompress
        >>> from tfcompress.pruning import BudgetSchedule
        >>> schedule = BudgetSchedule(tfcompress.Budget(macs=1000), begin_step=0, end_step=100,
        ...                           frequency=10, power=1, start={"macs": 3000})
        >>> schedule.target(50).macs, schedule.target(100).macs, schedule(55)[0]
        (2000, 1000, False)
    """

    def __init__(self, budget: Budget | dict, begin_step: int = 0, end_step: int = 0, frequency: int = 100,
                 power: float = 3.0, start: dict[str, float] | None = None):
        if isinstance(budget, dict):
            budget = keras.saving.deserialize_keras_object(budget) if "class_name" in budget else Budget(**budget)
        if not isinstance(budget, Budget):
            raise TfcompressError(f"budget must be a tfcompress.Budget, got {type(budget).__name__}",
                                  "BudgetSchedule", "pass e.g. tfcompress.Budget(macs=100_000)")
        aimed = [q for q in budget.limits if q in AIMED]
        if not aimed:
            raise TfcompressError(f"{budget} limits nothing channel pruning can aim at", "BudgetSchedule",
                                  "give the budget params, weight_bytes or macs; arena_bytes and latency_ms "
                                  "are measured on an export: check them with budget.check(budget.cost(model))")
        self.budget = budget
        self.begin_step, self.end_step, self.frequency = int(begin_step), int(end_step), int(frequency)
        self.power = float(power)
        if self.power <= 0:
            raise TfcompressError(f"power must be > 0, got {power}", "BudgetSchedule", "pass e.g. power=3")
        self.start = None if start is None else {str(k): float(v) for k, v in start.items()}
        self._validate_steps("BudgetSchedule", end_required=True)

    def should_prune(self, step: int) -> bool:
        """On the frequency boundaries from ``begin_step``, and at ``end_step`` itself (so the
        budget is reached whatever the frequency)."""
        return super().should_prune(step) or int(step) == self.end_step

    def sparsity(self, step: int) -> float:
        """The progress ``p_t`` in [0, 1] (what the other schedules' sparsity is to them)."""
        if step < self.begin_step:
            return 0.0
        if self.end_step <= self.begin_step:
            return 1.0
        progress = min(1.0, (step - self.begin_step) / (self.end_step - self.begin_step))
        return 1.0 - (1.0 - progress) ** self.power

    @property
    def final_sparsity(self) -> float:
        return 1.0

    def target(self, step: int) -> Budget:
        """The budget the masks are chosen for at ``step``."""
        if self.start is None:
            return self.budget
        return self.budget.scaled(self.sparsity(int(step)), self.start)

    def get_config(self) -> dict[str, Any]:
        return {"budget": keras.saving.serialize_keras_object(self.budget), "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency, "power": self.power, "start": self.start}


# --------------------------------------------------------------------------- the cost model


def _unwrap(op):
    while getattr(op, "tfcompress_pruning_wrapper", False) or type(op).__name__ == "MaskedBatchNormalization":
        op = op.layer
    return op


def _batch1(shape) -> tuple:
    return (1, *tuple(shape)[1:]) if len(shape) else tuple(shape)


class ChannelCostModel:
    """MACs, parameters and weight bytes of a channel-pruned model as functions of the channel
    groups it keeps (exact for the model ``strip`` + ``shrink`` make; module docstring).

    Args:
        model: the model (wrapped by ``prune`` or plain); its traced channel groups are ``flow``.
        precision: the precision of the weight bytes (`tfcompress.budget`).
        flow: ``tfcompress.pruning.groups.channel_flow(model)`` when the caller has it.

    ``roots`` lists the channel groups (their union-find roots); ``total(q, kept)`` is quantity
    ``q`` with ``kept`` (a bool per root) kept, ``savings(q, kept)`` what removing each kept
    root alone saves, ``additions(q, kept)`` what giving each removed root back costs.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.pruning.budget import ChannelCostModel
        >>> x = keras.Input((6,))
        >>> model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(4, name="fc")(x)))
        >>> costs = ChannelCostModel(model)
        >>> kept = np.ones(len(costs.roots), bool)
        >>> costs.total("macs", kept), costs.total("params", kept)
        (32.0, 38.0)
        >>> kept[costs.index[costs.flow.group_of("fc")[0]]] = False   # one unit of fc less
        >>> costs.total("macs", kept), costs.total("params", kept)
        (24.0, 29.0)
    """

    def __init__(self, model, precision="int8", flow=None):
        from tfcompress.metrics import layer_macs

        self.flow = flow or channel_flow(model)
        self.precision = check_precision(precision, "ChannelCostModel(precision=...)")
        graph = self.flow.graph
        roots = sorted({self.flow.root(b) for b in range(len(self.flow.base_index))})
        self.roots = np.array(roots, np.int64)
        self.index = {int(r): i for i, r in enumerate(roots)}
        mode = "int8" if isinstance(self.precision, dict) else self.precision
        _, bias_bytes, _ = _PRECISIONS[mode]
        folded = folded_norms(graph)
        seen: set[int] = set()
        # per node: (input positions as root indices, output positions, {q: (a, b, c, d)})
        self.terms: list[tuple[np.ndarray, np.ndarray, dict[str, tuple[float, float, float, float]]]] = []
        #: per root: the L1 norm of every kernel weight it carries (its producers' output slices and
        #: its readers' input slices): what removing it takes from the network
        self.l1_mass = np.zeros(self.roots.size)
        for node in graph.nodes:
            if not node.outputs or node.outputs[0] not in self.flow.origin:
                continue
            op = _unwrap(node.op)
            in_idx = (self._positions(node.inputs[0]) if node.inputs and node.inputs[0] in self.flow.origin
                      else np.zeros(0, np.int64))
            out_idx = self._positions(node.outputs[0])
            in_shapes = [_batch1(graph.shape(t)) for t in node.inputs]
            out_shapes = [_batch1(graph.shape(t)) for t in node.outputs]
            first = id(op) not in seen
            seen.add(id(op))
            role = layer_role(op) if node.is_layer else "other"
            n_in, n_out = max(in_idx.size, 1), max(out_idx.size, 1)
            spatial = int(math.prod(out_shapes[0][1:-1])) if len(out_shapes[0]) > 2 else 1
            terms: dict[str, tuple[float, float, float, float]] = {}
            if role == "producer":
                kernel = tuple(getattr(op, handler_for(op, inherit=True).kernel_attr).shape)
                k = int(math.prod(kernel[:-2]))
                bits = kernel_bits(self.precision, op.name)
                bias = 1.0 if getattr(op, "use_bias", False) else 0.0
                terms["macs"] = (spatial * k, 0.0, 0.0, 0.0)
                terms["params"] = (k, bias, 0.0, 0.0) if first else (0.0,) * 4
                terms["weight_bytes"] = (k * bits / 8, bias_bytes, 0.0, 0.0) if first else (0.0,) * 4
            elif role == "separable":
                dw = tuple(op.depthwise_kernel.shape)
                k, m = int(math.prod(dw[:-2])), int(dw[-1])
                bits = kernel_bits(self.precision, op.name)
                bias = 1.0 if op.use_bias else 0.0
                terms["macs"] = (spatial * m, 0.0, spatial * k * m, 0.0)
                terms["params"] = (m, bias, k * m, 0.0) if first else (0.0,) * 4
                terms["weight_bytes"] = ((m * bits / 8, bias_bytes, k * m + bias_bytes * m, 0.0) if first
                                         else (0.0,) * 4)
            elif role == "depthwise":
                k = int(math.prod(tuple(op.kernel.shape)[:-2]))
                bias = 1.0 if op.use_bias else 0.0
                terms["macs"] = (0.0, spatial * k, 0.0, 0.0)
                terms["params"] = (0.0, k + bias, 0.0, 0.0) if first else (0.0,) * 4
                terms["weight_bytes"] = (0.0, k + bias_bytes, 0.0, 0.0) if first else (0.0,) * 4
            else:
                macs = layer_macs(op, in_shapes, out_shapes) if node.is_layer or hasattr(op, "name") else 0
                macs = float(macs or 0)
                params = float(sum(int(np.prod(w.shape)) for w in op.weights)) if node.is_layer and first else 0.0
                wbytes = (layer_weight_bytes(op, self.precision, folded=id(node.op) in folded, out_channels=n_out)
                          if node.is_layer and first else 0.0)
                terms["macs"] = (0.0, macs / n_out, 0.0, 0.0)
                terms["params"] = (0.0, params / n_out, 0.0, 0.0)
                terms["weight_bytes"] = (0.0, wbytes / n_out, 0.0, 0.0)
            if not in_idx.size:  # no traced input (a model input is its own group, always kept)
                terms = {q: (0.0, a * n_in + b, 0.0, c * n_in + d) for q, (a, b, c, d) in terms.items()}
            self.terms.append((in_idx, out_idx, terms))
            if first and role in ("producer", "separable", "depthwise"):
                self._add_mass(op, role, in_idx, out_idx)

    def _add_mass(self, layer, role: str, in_idx: np.ndarray, out_idx: np.ndarray) -> None:
        def add(idx, values):
            if idx.size == values.size:
                self.l1_mass += np.bincount(idx, weights=values, minlength=self.roots.size)

        if role == "depthwise":  # (..., in, m): output channel c * m + j
            kernel = np.abs(keras.ops.convert_to_numpy(layer.kernel))
            add(out_idx, kernel.reshape(-1, kernel.shape[-2] * kernel.shape[-1]).sum(0))
            return
        if role == "separable":
            dw = np.abs(keras.ops.convert_to_numpy(layer.depthwise_kernel))
            pw = np.abs(keras.ops.convert_to_numpy(layer.pointwise_kernel))
            cin, m = dw.shape[-2:]
            add(in_idx, dw.reshape(-1, cin, m).sum((0, 2)) + pw.reshape(cin, m, -1).sum((1, 2)))
            add(out_idx, pw.reshape(cin * m, -1).sum(0))
            return
        kernel = np.abs(keras.ops.convert_to_numpy(getattr(layer, handler_for(layer, inherit=True).kernel_attr)))
        flat = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])
        add(in_idx, flat.sum((0, 2)))
        add(out_idx, flat.sum((0, 1)))

    def _positions(self, tid: int) -> np.ndarray:
        return np.array([self.index[self.flow.root(int(b))] for b in self.flow.origin[tid]], np.int64)

    def total(self, quantity: str, kept: np.ndarray) -> float:
        """``quantity`` (``"macs"``, ``"params"``, ``"weight_bytes"``) with the roots ``kept``."""
        total = 0.0
        for in_idx, out_idx, terms in self.terms:
            a, b, c, d = terms[quantity]
            k_in, k_out = float(kept[in_idx].sum()), float(kept[out_idx].sum())
            total += a * k_in * k_out + b * k_out + c * k_in + d
        return total

    def _counts(self, idx: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.bincount(idx[mask[idx]], minlength=self.roots.size).astype(np.float64)

    def savings(self, quantity: str, kept: np.ndarray) -> np.ndarray:
        """Per root: what removing it alone saves (0 for a root already removed)."""
        return self._marginal(quantity, kept, kept, -1.0)

    def additions(self, quantity: str, kept: np.ndarray) -> np.ndarray:
        """Per root: what giving it back alone costs (0 for a root kept)."""
        return self._marginal(quantity, kept, ~kept, 1.0)

    def _marginal(self, quantity: str, kept: np.ndarray, moved: np.ndarray, sign: float) -> np.ndarray:
        # bilinear cost: moving r_in input and r_out output positions changes a * k_in * k_out
        # by a * (r_in * k_out + r_out * k_in + sign * r_in * r_out)
        out = np.zeros(self.roots.size)
        for in_idx, out_idx, terms in self.terms:
            a, b, c, _ = terms[quantity]
            if a == b == c == 0:
                continue
            r_in, r_out = self._counts(in_idx, moved), self._counts(out_idx, moved)
            k_in, k_out = float(kept[in_idx].sum()), float(kept[out_idx].sum())
            out += a * (r_in * k_out + r_out * k_in + sign * r_in * r_out) + b * r_out + c * r_in
        return out


# --------------------------------------------------------------------------- the allocation


def _importance(wrappers, members, blocked, scores_of) -> dict[int, float]:
    scores = {w.name: np.asarray(scores_of(w), np.float64).reshape(-1) for w in wrappers}
    return {root: float(np.mean([scores[w.name][p] for w, p in refs]))
            for root, refs in members.items() if root not in blocked}


def greedy_keep(costs: ChannelCostModel, limits: dict[str, float], prunable: np.ndarray, value: np.ndarray,
                group_of: np.ndarray, floors: np.ndarray, kept: np.ndarray | None = None) -> np.ndarray:
    """The roots to keep: lowest ``value`` per unit cost removed until ``limits`` are met, then
    the most valuable per cost given back while they stay met (the module docstring).

    ``prunable``, ``value`` (importance), ``group_of`` (dependency group index, -1 outside) are
    per root of ``costs``; ``floors`` per dependency group; ``kept``: the roots kept now (all by
    default; a root not kept stays removed). Raises `TfcompressError` when the floors make the
    limits unreachable.
    """
    r = costs.roots.size
    sizes = np.maximum(np.bincount(group_of[prunable], minlength=len(floors)), 1)
    kept = np.ones(r, bool) if kept is None else kept.copy()
    returnable = prunable & kept  # what is removed now stays removed

    def excess() -> dict[str, float]:
        return {q: costs.total(q, kept) - limit for q, limit in limits.items() if costs.total(q, kept) > limit}

    over = excess()
    for _ in range(10_000):
        if not over:
            break
        price = np.zeros(r)
        for q, gap in over.items():
            price += costs.savings(q, kept) / gap
        left = np.bincount(group_of[prunable & kept], minlength=len(floors))
        candidates = np.flatnonzero(prunable & kept & (price > 0))
        candidates = candidates[left[group_of[candidates]] > floors[group_of[candidates]]]
        if not candidates.size:
            names = ", ".join(f"{q} {costs.total(q, kept):,.0f} > {limits[q]:,.0f}" for q in over)
            raise TfcompressError(
                f"the budget cannot be met: with every prunable channel group at its floor, {names}",
                "prune(budget=...)",
                "raise the budget, lower min_keep_fraction, or prune more layers (the channels of layers "
                "that are not pruned, of model outputs and of opaque layers stay)")
        # diminishing returns: the k-th of a group's n channels is worth n / k times its importance
        worth = value[candidates] * sizes[group_of[candidates]] / left[group_of[candidates]]
        order = candidates[np.argsort(worth / price[candidates], kind="stable")]
        removed_share = 0.0
        for i in order:
            g = group_of[i]
            if left[g] <= floors[g]:
                continue
            kept[i] = False
            left[g] -= 1
            removed_share += price[i]
            if removed_share >= 0.25 * len(over):
                break
        over = excess()
    # give back what fits, most valuable per cost first
    for _ in range(3):
        slack = {q: limit - costs.total(q, kept) for q, limit in limits.items()}
        add = np.zeros(r)
        for q in limits:
            add = np.maximum(add, costs.additions(q, kept) / max(slack[q], 1e-9))
        back = np.flatnonzero(returnable & ~kept & (add <= 1.0))
        if not back.size:
            break
        changed = False
        left = np.bincount(group_of[prunable & kept], minlength=len(floors))
        worth = value[back] * sizes[group_of[back]] / (left[group_of[back]] + 1)
        for i in back[np.argsort(-worth / np.maximum(add[back], 1e-12), kind="stable")]:
            kept[i] = True
            if any(costs.total(q, kept) > limit for q, limit in limits.items()):
                kept[i] = False
            else:
                changed = True
        if not changed:
            break
    return kept


def budget_channel_masks(model, wrappers, budget: Budget, *, min_keep_fraction: float = 0.0, flow=None,
                         scores_of=None, return_info: bool = False):
    """Channel masks of ``wrappers`` that make ``model`` meet ``budget`` once shrunk.

    The greedy of the module docstring: channel groups of lowest importance per unit cost
    are removed until every aimed limit (``params``, ``weight_bytes``, ``macs``) is met, then
    the most valuable removed ones are given back while it stays met.

    Args:
        model: the model wrapped by ``prune(granularity="channel")``.
        wrappers: its channel-granularity `PruneLowMagnitude` layers to decide.
        budget: the `Budget`.
        min_keep_fraction: the least fraction of its channels a dependency group keeps (at least one).
        flow: ``tfcompress.pruning.groups.channel_flow(model)`` when the caller has it.
        scores_of: ``wrapper -> channel scores`` (default: for the magnitude criteria, the L1
            norm of every weight the channel group carries, ``ChannelCostModel.l1_mass``; for
            the others the mean of their ``global_channel_scores`` over the group's members).
        return_info: also return ``{"cost": {q: value}, "importance_kept": ..., "importance_total": ...}``.

    Returns:
        ``{wrapper name: channel mask}`` (and the info).

    Raises:
        TfcompressError: the budget cannot be met with every dependency group at its floor.

    Example:
        >>> import keras, tfcompress
        >>> from tfcompress.pruning import prune, pruning_wrappers
        >>> from tfcompress.pruning.budget import budget_channel_masks
        >>> x = keras.Input((16,))
        >>> model = keras.Model(x, keras.layers.Dense(4)(keras.layers.Dense(32, name="fc")(x)))
        >>> pruned = prune(model, budget=tfcompress.Budget(macs=10_000), verbose=0)
        >>> masks = budget_channel_masks(pruned, pruning_wrappers(pruned), tfcompress.Budget(macs=320))
        >>> int(masks["prune_low_magnitude_fc"].sum())   # 16 * 16 + 16 * 4 = 320 MACs
        16
    """
    flow = flow or channel_flow(model)
    limits = {q: float(v) for q, v in budget.limits.items() if q in AIMED}
    if not limits:
        raise TfcompressError(f"{budget} limits nothing channel pruning can aim at", "prune(budget=...)",
                              "give the budget params, weight_bytes or macs")
    members, blocked = _dependency_groups(flow, wrappers)
    costs = ChannelCostModel(model, budget.precision, flow)
    magnitude = scores_of is None and all(isinstance(w.criterion, MagnitudeCriterion) for w in wrappers)
    if scores_of is None:
        def scores_of(w):
            return w.criterion.global_channel_scores(w)
    importance = _importance(wrappers, members, blocked, scores_of)
    if magnitude:  # the L1 norm of all the weights the channel group takes with it
        importance = {root: float(costs.l1_mass[costs.index[root]]) for root in importance}
    r = costs.roots.size
    prunable = np.zeros(r, bool)
    value = np.zeros(r)
    group_of = np.full(r, -1)
    dependency: dict[tuple, int] = {}
    for root, v in importance.items():
        i = costs.index[root]
        prunable[i], value[i] = True, max(v, 0.0)
        key = tuple(sorted({w.name for w, _ in members[root]}))
        group_of[i] = dependency.setdefault(key, len(dependency))
    sizes = np.bincount(group_of[prunable], minlength=len(dependency))
    floors = np.array([min(n, max(1, math.ceil(min_keep_fraction * n))) for n in sizes], np.int64)
    kept = greedy_keep(costs, limits, prunable, value, group_of, floors)
    masks = {}
    for w in wrappers:
        roots = flow.group_of(w.layer.name)
        masks[w.name] = np.array([kept[costs.index[int(root)]] for root in roots], np.float32)
    if not return_info:
        return masks
    info = {"cost": {q: costs.total(q, kept) for q in AIMED},
            "importance_kept": float(value[prunable & kept].sum()), "importance_total": float(value[prunable].sum())}
    return masks, info

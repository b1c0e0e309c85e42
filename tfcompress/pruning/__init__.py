"""Pruning methods: magnitude pruning and its criteria, schedules, iterative pipelines and surgery.

==================  ===========================================================================
``magnitude``       ``prune`` (wrap), ``update_masks``, ``strip`` (bake), ``pruning_summary``;
                    granularities ``"weight"``, ``"channel"``, ``"N:M"``, layer / global scope
``schedules``       ``ConstantSparsity``, ``PolynomialDecay`` (tfmot semantics)
``criteria``        data-driven criteria (activations, gradients, second order) and
                    ``prune_at_initialization`` (SNIP, GraSP)
``pipelines``       ``iterative_prune``: prune and retrain in rounds, with rewinding
``regularizers``    sparsity penalties (L1, group lasso, network slimming, selective weight decay)
``surgery``         ``shrink``: remove the pruned channels for real
``budget``          ``prune(model, budget=Budget(...))``: channel counts by importance per unit
                    cost until a MAC / parameter / weight-byte budget is met; ``BudgetSchedule``
==================  ===========================================================================

The layers (`PruneLowMagnitude`, `MaskedBatchNormalization`) and the criterion and schedule
base classes are in `tfcompress.layers`; this package re-exports them with ``magnitude``'s
functions and the two schedules, so ``from tfcompress.pruning import prune, PruneLowMagnitude``
works as before the split.
"""

from tfcompress.layers import _pruning_base
from tfcompress.layers._pruning_base import (
    GRANULARITIES,
    SCOPES,
    MagnitudeCriterion,
    PruningCriterion,
    PruningSchedule,
    channel_group_size,
    channel_reduce,
    channel_to_kernel,
    get_criterion,
    get_schedule,
    parse_granularity,
    register_criterion,
)
from tfcompress.layers.prune_low_magnitude import (
    PRUNABLE_TYPES,
    MaskedBatchNormalization,
    PruneLowMagnitude,
    baked_weights,
)
from tfcompress.pruning import magnitude as _magnitude
from tfcompress.pruning.budget import BudgetSchedule
from tfcompress.pruning.magnitude import (
    mask_sparsity,
    masked_batch_norms,
    n_m_mask,
    prune,
    pruning_summary,
    pruning_wrappers,
    strip,
    update_masks,
)
from tfcompress.pruning.schedules import ConstantSparsity, PolynomialDecay

__all__ = [
    "GRANULARITIES",
    "PRUNABLE_TYPES",
    "SCOPES",
    "BudgetSchedule",
    "ConstantSparsity",
    "MagnitudeCriterion",
    "MaskedBatchNormalization",
    "PolynomialDecay",
    "PruneLowMagnitude",
    "PruningCriterion",
    "PruningSchedule",
    "baked_weights",
    "channel_group_size",
    "channel_reduce",
    "channel_to_kernel",
    "get_criterion",
    "get_schedule",
    "mask_sparsity",
    "masked_batch_norms",
    "n_m_mask",
    "parse_granularity",
    "prune",
    "pruning_summary",
    "pruning_wrappers",
    "register_criterion",
    "strip",
    "update_masks",
]


def __getattr__(name: str):
    # the private helpers (and imported names) of the former module tfcompress/pruning.py
    for module in (_magnitude, _pruning_base):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

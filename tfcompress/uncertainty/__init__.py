"""Uncertainty at the edge: posteriors compiled into one deterministic int8 graph (issue 21).

Vadera et al. (2021), "Challenges and opportunities in approximate Bayesian deep learning for
intelligent IoT systems": S posterior samples (ensemble members, frozen dropout masks,
variational draws, SG-MCMC samples) run as one graph on one input, and the file's outputs are
the posterior predictive and the decomposition total = knowledge + expected data uncertainty.
"""

from tfcompress.uncertainty.mc_dropout import FrozenNoise, TileMembers, mc_dropout, register_dropout
from tfcompress.uncertainty.posterior import (
    Posterior,
    PosteriorExport,
    ensemble,
    from_stacked,
    run_tflite,
)
from tfcompress.uncertainty.predictive import OUTPUT_NAMES, UncertaintyHead, decompose
from tfcompress.uncertainty.storage import StorageAccounting, storage_accounting

__all__ = [
    "OUTPUT_NAMES",
    "FrozenNoise",
    "Posterior",
    "PosteriorExport",
    "StorageAccounting",
    "TileMembers",
    "UncertaintyHead",
    "decompose",
    "ensemble",
    "from_stacked",
    "mc_dropout",
    "register_dropout",
    "run_tflite",
    "storage_accounting",
]

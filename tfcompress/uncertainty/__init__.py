"""Uncertainty at the edge: posteriors compiled into one deterministic int8 graph (issue 21).

Vadera et al. (2021), "Challenges and opportunities in approximate Bayesian deep learning for
intelligent IoT systems": S posterior samples (ensemble members, frozen dropout masks,
variational draws, SG-MCMC samples) run as one graph on one input, and the file's outputs are
the posterior predictive and the decomposition total = knowledge + expected data uncertainty.
"""

from tfcompress.uncertainty.batch_ensemble import (
    BatchEnsembleConv2D,
    BatchEnsembleDense,
    StackMembers,
    batch_ensemble_members,
    mimo_inference_model,
    mimo_inputs,
    mimo_members,
    mimo_model,
)
from tfcompress.uncertainty.calibration import fit_temperature, scale_logits, tempered_nll
from tfcompress.uncertainty.collect import CyclicalSGMCMC, SnapshotEnsemble, train_deep_ensemble
from tfcompress.uncertainty.distill import (
    DirichletHead,
    EnsembleDistributionDistiller,
    ExpectationHead,
    ParetoPoint,
    ParetoResult,
    PosteriorExpectationDistiller,
    StudentPruning,
    TemperatureAnnealing,
    bayesian_dark_knowledge,
    bdk_loss,
    dirichlet_uncertainty,
    distillation_pareto,
    end2_loss,
    gped_loss,
    gped_student,
    transfer_dataset,
    uncertainty_model,
)
from tfcompress.uncertainty.mc_dropout import FrozenNoise, TileMembers, mc_dropout, register_dropout
from tfcompress.uncertainty.metrics import (
    evaluate_posterior,
    evaluate_tflite_uncertainty,
    evaluate_uncertainty,
)
from tfcompress.uncertainty.posterior import (
    Posterior,
    PosteriorExport,
    ensemble,
    from_stacked,
    run_tflite,
)
from tfcompress.uncertainty.predictive import OUTPUT_NAMES, UncertaintyHead, decompose
from tfcompress.uncertainty.samplers import SGHMC, SGLD
from tfcompress.uncertainty.storage import StorageAccounting, storage_accounting
from tfcompress.uncertainty.variational import sample_members

__all__ = [
    "OUTPUT_NAMES",
    "BatchEnsembleConv2D",
    "BatchEnsembleDense",
    "CyclicalSGMCMC",
    "DirichletHead",
    "EnsembleDistributionDistiller",
    "ExpectationHead",
    "FrozenNoise",
    "ParetoPoint",
    "ParetoResult",
    "Posterior",
    "PosteriorExpectationDistiller",
    "PosteriorExport",
    "SGHMC",
    "SGLD",
    "SnapshotEnsemble",
    "StackMembers",
    "StorageAccounting",
    "StudentPruning",
    "TemperatureAnnealing",
    "TileMembers",
    "UncertaintyHead",
    "batch_ensemble_members",
    "bayesian_dark_knowledge",
    "bdk_loss",
    "decompose",
    "dirichlet_uncertainty",
    "distillation_pareto",
    "end2_loss",
    "ensemble",
    "evaluate_posterior",
    "evaluate_tflite_uncertainty",
    "evaluate_uncertainty",
    "fit_temperature",
    "from_stacked",
    "gped_loss",
    "gped_student",
    "mc_dropout",
    "mimo_inference_model",
    "mimo_inputs",
    "mimo_members",
    "mimo_model",
    "register_dropout",
    "run_tflite",
    "sample_members",
    "scale_logits",
    "storage_accounting",
    "tempered_nll",
    "train_deep_ensemble",
    "transfer_dataset",
    "uncertainty_model",
]

"""Keras callbacks: pruning schedules, KL annealing, Bayesian pruning."""

from tfcompress.callbacks.kl_annealing import KLAnnealing
from tfcompress.callbacks.posterior_pruning import PosteriorPruning
from tfcompress.callbacks.pruning import UpdatePruning, UpdatePruningStep
from tfcompress.callbacks.rewinding import LearningRateRewinding, WeightRewinding
from tfcompress.callbacks.sparse_training import SparseTraining
from tfcompress.callbacks.summaries import CompressionSummaries
from tfcompress.callbacks.variational_pruning import VariationalPruning

__all__ = [
    "CompressionSummaries",
    "KLAnnealing",
    "LearningRateRewinding",
    "PosteriorPruning",
    "SparseTraining",
    "UpdatePruning",
    "UpdatePruningStep",
    "VariationalPruning",
    "WeightRewinding",
]

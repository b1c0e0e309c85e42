"""Keras layers: Bayesian pruning layers, pruning wrappers, quantized and hashed layers."""

from tfcompress.layers.dirichlet import DirichletSwitch, freeze_all_but_switches
from tfcompress.layers.lognormal import LogNormalDropout
from tfcompress.layers.sparse_vd import VariationalConv2D, VariationalDense
from tfcompress.layers.variational_bn import VariationalBatchNormalization
from tfcompress.pruning import MaskedBatchNormalization, PruneLowMagnitude

__all__ = [
    "DirichletSwitch",
    "LogNormalDropout",
    "MaskedBatchNormalization",
    "PruneLowMagnitude",
    "VariationalBatchNormalization",
    "VariationalConv2D",
    "VariationalDense",
    "freeze_all_but_switches",
]

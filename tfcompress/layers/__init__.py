"""Keras layers: Bayesian pruning layers, pruning wrappers, quantized and hashed layers."""

from tfcompress.clustering import ClusterWeights
from tfcompress.layers.bayesian_compression import BCConv2D, BCDense
from tfcompress.layers.binary import BinaryConv2D, BinaryDense, QuantizeActivation
from tfcompress.layers.dirichlet import DirichletSwitch, freeze_all_but_switches
from tfcompress.layers.hashed import HashedConv2D, HashedDense
from tfcompress.layers.lognormal import LogNormalDropout
from tfcompress.layers.sparse_vd import VariationalConv2D, VariationalDense
from tfcompress.layers.ternary import TernaryConv2D, TernaryDense
from tfcompress.layers.variational_bn import VariationalBatchNormalization
from tfcompress.pruning import MaskedBatchNormalization, PruneLowMagnitude
from tfcompress.qat import ActivationQuantizer, QuantizedLayer, SharedRangeQuantizer

__all__ = [
    "ActivationQuantizer",
    "BCConv2D",
    "BCDense",
    "BinaryConv2D",
    "BinaryDense",
    "ClusterWeights",
    "DirichletSwitch",
    "HashedConv2D",
    "HashedDense",
    "LogNormalDropout",
    "MaskedBatchNormalization",
    "PruneLowMagnitude",
    "QuantizeActivation",
    "QuantizedLayer",
    "SharedRangeQuantizer",
    "TernaryConv2D",
    "TernaryDense",
    "VariationalBatchNormalization",
    "VariationalConv2D",
    "VariationalDense",
    "freeze_all_but_switches",
]

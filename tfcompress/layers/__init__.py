"""Keras layers: Bayesian pruning layers, pruning wrappers, quantized and hashed layers.

The layers sit below the methods: modules here import nothing from `tfcompress.pruning`,
`tfcompress.quantization`, `tfcompress.bayesian`, `tfcompress.export` or the callbacks
(tests/test_imports.py checks it).
"""

from tfcompress.layers.bayesian_compression import BCConv2D, BCDense
from tfcompress.layers.binary import BinaryConv2D, BinaryDense, QuantizeActivation
from tfcompress.layers.cluster_weights import ClusterWeights
from tfcompress.layers.dirichlet import DirichletSwitch, freeze_all_but_switches
from tfcompress.layers.fake_quant import ActivationQuantizer, QuantizedLayer, SharedRangeQuantizer
from tfcompress.layers.hashed import HashedConv2D, HashedDense
from tfcompress.layers.lognormal import LogNormalDropout
from tfcompress.layers.prune_low_magnitude import MaskedBatchNormalization, PruneLowMagnitude
from tfcompress.layers.sparse_vd import VariationalConv2D, VariationalDense
from tfcompress.layers.ternary import TernaryConv2D, TernaryDense
from tfcompress.layers.variational_bn import VariationalBatchNormalization

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

"""The graph core: one tracer / rebuilder, one layer walker, one layer-type registry.

Every tfcompress step is built on these: ``trace`` a model into nodes, ask each node's
``handler_for(layer)`` what the layer is (how its channels flow, how to cut it, how QAT treats
it), and ``rebuild`` a model from the nodes. Users describe their own layer types with
``register_layer`` (see DEVELOPERS.md, "Adding support for a layer type").
"""

from tfcompress.core.channels import ChannelFlow, Cut, UnionFind, weights_by_name
from tfcompress.core.graph import Graph, Node, call_copy, copy_layer, rebuild, trace
from tfcompress.core.handlers import (
    ELEMENTWISE_ACTIVATIONS,
    FUSABLE_ACTIVATIONS,
    ChannelwiseHandler,
    ConcatenateHandler,
    DepthwiseHandler,
    MergeHandler,
    MixingHandler,
    OpaqueHandler,
    PassThroughHandler,
    ProducerHandler,
    WrapperHandler,
    activation_name,
)
from tfcompress.core.registry import (
    QAT_ROLES,
    LayerHandler,
    UnknownLayerError,
    handler_for,
    is_registered,
    register_customized_layer,
    register_layer,
    registered_types,
    unregister_layer,
)
from tfcompress.core.walk import iter_layers

__all__ = [
    "ELEMENTWISE_ACTIVATIONS",
    "FUSABLE_ACTIVATIONS",
    "QAT_ROLES",
    "ChannelFlow",
    "ChannelwiseHandler",
    "ConcatenateHandler",
    "Cut",
    "DepthwiseHandler",
    "Graph",
    "LayerHandler",
    "MergeHandler",
    "MixingHandler",
    "Node",
    "OpaqueHandler",
    "PassThroughHandler",
    "ProducerHandler",
    "UnionFind",
    "WrapperHandler",
    "UnknownLayerError",
    "activation_name",
    "call_copy",
    "copy_layer",
    "handler_for",
    "is_registered",
    "iter_layers",
    "rebuild",
    "register_customized_layer",
    "register_layer",
    "registered_types",
    "trace",
    "unregister_layer",
    "weights_by_name",
]

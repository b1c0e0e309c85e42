"""Trace a Keras model into nodes, and rebuild a model from them: the one graph walker of tfcompress.

Every tfcompress step that changes a model's structure (``prune``, ``strip``, ``shrink``,
``quantize``, ``bayesian.convert`` / ``strip``, ``cluster``) goes through :func:`trace` and
:func:`rebuild`; no other module reads Keras' ``_inbound_nodes``.

:func:`trace` flattens Sequential and Functional models (nested models are inlined: their
inputs are bound to the tensors they were called on), records every call of a layer or of a
``keras.ops`` operation (``x + 3.0`` in MobileNetV3's hard-swish is an operation, not a layer)
as a :class:`Node` with the call's arguments exactly as written (positional structure, call
kwargs such as ``training=True``, Python constants), and gives each tensor one id.

:func:`rebuild` replays the nodes in topological order on new inputs. By default each layer is
copied by its registered handler (``from_config`` plus its weights: names, dtype policies and
call kwargs are kept; a ``Lambda`` is reused as it is, since its function cannot be rebuilt
from a config) and each operation is called again. A ``replace`` function may return other
outputs for any node, which is how a step inserts, swaps or removes layers.

Example:

>>> import keras
>>> from tfcompress.core import trace, rebuild
>>> inputs = keras.Input((4,))
>>> model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(inputs))
>>> graph = trace(model)
>>> [node.name for node in graph.nodes]
['fc']
>>> copy = rebuild(graph)
>>> copy.get_layer("fc").units
2
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import keras

from tfcompress.core.registry import handler_for
from tfcompress.errors import TfcompressError

__all__ = ["Graph", "Node", "rebuild", "trace"]


@dataclass(eq=False)
class Node:
    """One call of a layer (or operation) in a traced model.

    Attributes:
        op: the layer or ``keras.ops`` operation called.
        inputs: ids of the tensors it reads, in the order of its call's flattened arguments.
        outputs: ids of the tensors it writes.
        arguments: the call's arguments as Keras recorded them (tensors, constants, kwargs);
            :meth:`Graph.call_arguments` fills them in with new tensors.

    Example:
        >>> x = keras.Input((8,))
        >>> h = keras.layers.Dense(4, name="fc1")(x)
        >>> model = keras.Model(x, keras.layers.Add(name="add")([h, keras.layers.Dense(4, name="fc2")(h)]))
        >>> node = trace(model).nodes[-1]
        >>> node.name, node.is_layer, len(node.inputs), node.output == trace(model).outputs[0]
        ('add', True, 2, True)
    """

    op: Any
    inputs: list[int]
    outputs: list[int]
    arguments: Any
    index: int = 0  # position in topological order

    @property
    def layer(self) -> Any:
        return self.op

    @property
    def name(self) -> str:
        return self.op.name

    @property
    def output(self) -> int:
        """The single output's id (a clear error for a multi-output layer)."""
        if len(self.outputs) != 1:
            raise TfcompressError(f"layer {self.name} has {len(self.outputs)} outputs", self.name,
                                  "this step handles single-output layers")
        return self.outputs[0]

    @property
    def kwargs(self) -> dict:
        return dict(self.arguments.kwargs)

    @property
    def is_layer(self) -> bool:
        return isinstance(self.op, keras.layers.Layer)


@dataclass(eq=False)
class Graph:
    """A traced model: nodes in topological order, input and output tensor ids, and tensors.

    Example:
        >>> x = keras.Input((8,))
        >>> h = keras.layers.Dense(4, name="fc1")(x)
        >>> model = keras.Model(x, keras.layers.Add(name="add")([h, keras.layers.Dense(4, name="fc2")(h)]))
        >>> graph = trace(model)
        >>> [node.name for node in graph.nodes], graph.shape(graph.outputs[0])
        (['fc1', 'fc2', 'add'], (None, 4))
        >>> [n.name for n in graph.consumers(graph.nodes[0].output)]          # fc1's output feeds two layers
        ['fc2', 'add']
    """

    model: Any
    nodes: list[Node]
    inputs: list[int]
    outputs: list[int]
    tensors: dict[int, Any]
    _alias: dict[int, int] = field(default_factory=dict)
    _producers: dict[int, Node] = field(default_factory=dict)
    _consumers: dict[int, list[Node]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node in self.nodes:
            for t in node.outputs:
                self._producers[t] = node
            for t in node.inputs:
                users = self._consumers.setdefault(t, [])
                if node not in users:
                    users.append(node)

    def canon(self, tensor) -> int:
        """The id of ``tensor`` in this graph (a nested model's tensor maps to the outer one)."""
        tid = id(tensor)
        while tid in self._alias:
            tid = self._alias[tid]
        return tid

    def producer(self, tid: int) -> Node | None:
        """The node that writes tensor ``tid`` (None for a model input)."""
        return self._producers.get(tid)

    def consumers(self, tid: int) -> list[Node]:
        """The nodes that read tensor ``tid``."""
        return list(self._consumers.get(tid, []))

    def single_consumer(self, tid: int) -> Node | None:
        """The only node reading ``tid`` when there is one and ``tid`` is not a model output."""
        users = self._consumers.get(tid, [])
        return users[0] if len(users) == 1 and tid not in self.outputs else None

    def shape(self, tid: int) -> tuple:
        return tuple(self.tensors[tid].shape)

    def layers(self) -> Iterator[Any]:
        """Each layer called in the graph, once, in topological order (operations left out)."""
        seen: set[int] = set()
        for node in self.nodes:
            if node.is_layer and id(node.op) not in seen:
                seen.add(id(node.op))
                yield node.op

    def nodes_of(self, layer) -> list[Node]:
        return [node for node in self.nodes if node.op is layer]

    def shared_layers(self) -> list[Any]:
        """Layers called more than once (shared weights)."""
        counts: dict[int, list] = {}
        for node in self.nodes:
            if node.is_layer:
                counts.setdefault(id(node.op), []).append(node.op)
        return [calls[0] for calls in counts.values() if len(calls) > 1]

    def call_arguments(self, node: Node, new_tensors: dict[int, Any]) -> tuple[tuple, dict]:
        """``node``'s call arguments with each tensor replaced by ``new_tensors[its id]``."""
        lookup = {id(t): new_tensors[self.canon(t)] for t in node.arguments.keras_tensors}
        args, kwargs = node.arguments.fill_in(lookup)
        # Keras adds the previous layer's mask on its own; passing it again would duplicate it
        kwargs = {k: v for k, v in kwargs.items() if k != "mask"}
        return tuple(args), kwargs


def trace(model, *, where: str = "trace", inline: bool = True) -> Graph:
    """The nodes of a built Sequential / Functional model, nested models inlined.

    Args:
        model: a built ``keras.Sequential`` or Functional model (a subclassed model has no
            graph to trace: a clear error).
        where: the calling step's name, for error messages.
        inline: inline nested Sequential / Functional models (default). With False a nested
            model is one node, and :func:`rebuild` rebuilds it as a nested model (the
            structure ``keras.models.clone_model`` keeps).

    Returns:
        A :class:`Graph`.

    Example:
        >>> x = keras.Input((8,))
        >>> h = keras.layers.Dense(4, name="fc1")(x)
        >>> model = keras.Model(x, keras.layers.Add(name="add")([h, keras.layers.Dense(4, name="fc2")(h)]))
        >>> graph = trace(model)
        >>> len(graph.nodes), [type(layer).__name__ for layer in graph.layers()]
        (3, ['Dense', 'Dense', 'Add'])
    """
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise TfcompressError(f"{where} needs a built Sequential or Functional model",
                              getattr(model, "name", type(model).__name__),
                              "build it with keras.Input first (or call it once on data)")
    if type(model).__name__ not in ("Functional", "Sequential") and not _has_graph(model):
        raise TfcompressError(f"{where} cannot trace a subclassed model ({type(model).__name__})", model.name,
                              "build the model with the Functional API or keras.Sequential")
    tensors: dict[int, Any] = {}
    nodes: dict[int, Node] = {}  # keyed by id of the keras Node
    order: list[Node] = []
    alias: dict[int, int] = {}
    inputs = [id(t) for t in model.inputs]
    for t in model.inputs:
        tensors[id(t)] = t
    input_set = set(inputs)
    written: set[int] = set()

    def canon(tensor) -> int:
        tid = id(tensor)
        while tid in alias:
            tid = alias[tid]
        return tid

    inlined: dict[int, int] = {}  # nested model -> the one call of it this graph inlines

    def visit(tensor, active: tuple = ()) -> None:
        tid = canon(tensor)
        if tid in input_set or tid in written:
            return
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            raise TfcompressError(f"tensor {getattr(tensor, 'name', tensor)} has no Keras history",
                                  where, "build the model from keras.Input with Keras layers and keras.ops")
        op, node_index, _ = history
        keras_node = op._inbound_nodes[node_index]
        if id(keras_node) in nodes:
            return
        if isinstance(op, keras.Model) and _has_graph(op) and inline:
            if id(op) in active:
                raise TfcompressError(f"nested model {op.name} calls itself", op.name, "")
            outer_inputs = list(keras_node.input_tensors)
            inner_inputs = list(op.inputs)
            if len(outer_inputs) != len(inner_inputs):
                raise TfcompressError(f"cannot match the inputs of nested model {op.name}", op.name,
                                      "call the nested model on as many tensors as it has inputs")
            # inlining maps the nested model's own tensors onto this call's: it can be called once
            # in this graph (calls in other models, e.g. a member reused in two ensembles, do not count)
            if inlined.setdefault(id(op), id(keras_node)) != id(keras_node):
                raise TfcompressError(f"nested model {op.name} is called more than once", op.name,
                                      "call the nested model once, or build the model flat")
            for parent in outer_inputs:
                visit(parent, active)
            for inner, outer in zip(inner_inputs, outer_inputs, strict=True):
                alias[id(inner)] = canon(outer)
            for inner_out in op.outputs:
                visit(inner_out, (*active, id(op)))
            for outer_out, inner_out in zip(keras_node.output_tensors, op.outputs, strict=True):
                alias[id(outer_out)] = canon(inner_out)
            nodes[id(keras_node)] = None  # type: ignore[assignment]
            return
        if isinstance(op, keras.Model) and not _has_graph(op):
            raise TfcompressError(f"{where} cannot trace the subclassed model {op.name} used as a layer",
                                  op.name, "build it with the Functional API, or register a handler for it")
        for parent in keras_node.input_tensors:
            visit(parent, active)
        for t in keras_node.output_tensors:
            tensors[id(t)] = t
        node = Node(op, [canon(p) for p in keras_node.input_tensors],
                    [id(t) for t in keras_node.output_tensors], keras_node.arguments, len(order))
        nodes[id(keras_node)] = node
        order.append(node)
        for t in node.outputs:
            written.add(t)

    for t in model.outputs:
        visit(t)
    graph = Graph(model, order, inputs, [canon(t) for t in model.outputs], tensors, alias)
    return graph


def _has_graph(model) -> bool:
    """A Functional model, a built Sequential, or a subclass of Functional (keras.applications)."""
    if isinstance(model, keras.Sequential):
        return bool(getattr(model, "inputs", None))
    return hasattr(model, "_run_through_graph") and bool(getattr(model, "inputs", None))


def _unique(name: str, used: set[str]) -> str:
    k = 1
    while f"{name}_{k}" in used:
        k += 1
    return f"{name}_{k}"


def copy_layer(layer):
    """A fresh copy of ``layer`` by its registered handler (default: ``from_config``).

    Example:
        >>> dense = keras.layers.Dense(4, activation="relu", name="fc")
        >>> copy = copy_layer(dense)
        >>> copy is dense, copy.name, copy.units, copy.get_config()["activation"]
        (False, 'fc', 4, 'relu')
    """
    return handler_for(layer).clone(layer)


def rebuild(graph: Graph, replace: Callable[[Node, tuple, dict], Any] | None = None, *,
            name: str | None = None, copy_weights: bool = True,
            input_transform: Callable[[int, Any], Any] | None = None, as_clone: bool = False) -> keras.Model:
    """A new Functional model computing ``graph``, node by node.

    Args:
        graph: from :func:`trace`.
        replace: optional ``replace(node, args, kwargs) -> outputs | None``; ``args`` and
            ``kwargs`` are the node's call arguments filled in with the new tensors. Returning
            outputs (one tensor, or a list matching ``node.outputs``) stands them for the
            node's; returning None copies the node as :func:`rebuild` does by default.
        name: the new model's name (default: the traced model's).
        copy_weights: copy each copied layer's weights from the original (default True).
        input_transform: optional ``input_transform(tensor id, new input) -> tensor`` that the
            layers reading that input then read (QAT quantizes the inputs this way).
        as_clone: return what ``keras.models.clone_model`` would: a Sequential when the traced
            model is a ``keras.Sequential`` and the result is still a chain of single-tensor
            layers (code that indexes ``model.layers`` keeps working), compiled like the traced
            model when it was compiled.

    Returns:
        A Functional ``keras.Model`` with the traced model's input names and output structure
        (a single tensor, or a list).

    Example:
        >>> x = keras.Input((8,))
        >>> h = keras.layers.Dense(4, name="fc1")(x)
        >>> model = keras.Model(x, keras.layers.Add(name="add")([h, keras.layers.Dense(4, name="fc2")(h)]))
        >>> def widen(node, args, kwargs):                    # replace fc2 by a ReLU'd copy, keep the rest
        ...     if node.name == "fc2":
        ...         return keras.layers.Activation("relu", name="relu")(call_copy(node, args, kwargs))
        >>> new = rebuild(trace(model), widen)
        >>> [layer.name for layer in new.layers[1:]]
        ['fc1', 'fc2', 'relu', 'add']
    """
    new_tensors: dict[int, Any] = {}
    new_inputs = []
    for tid in graph.inputs:
        t = graph.tensors[tid]
        new = keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=t.name)
        new_tensors[tid] = new if input_transform is None else input_transform(tid, new)
        new_inputs.append(new)
    copies: dict[int, Any] = {}  # a shared layer is copied once and called as often as before
    names: set[str] = set()
    for node in graph.nodes:
        if isinstance(node.op, keras.layers.InputLayer):
            continue
        args, kwargs = graph.call_arguments(node, new_tensors)
        out = replace(node, args, kwargs) if replace is not None else None
        if out is None and isinstance(node.op, keras.Model) and id(node.op) not in copies:
            # a nested model (traced with inline=False): rebuilt nested, by the same rules
            copies[id(node.op)] = rebuild(trace(node.op, inline=False), replace, copy_weights=copy_weights,
                                          as_clone=as_clone)
        if out is None:
            if node.is_layer and id(node.op) in copies:
                out = copies[id(node.op)](*args, **kwargs)
            else:
                new = copy_layer(node.op) if node.is_layer else None
                if new is not None and new.name in names:
                    # inlined nested models may each have a "conv1"; a Functional model needs unique names
                    new.name = _unique(new.name, names)
                out = call_copy(node, args, kwargs, copy_weights=copy_weights, layer=new)
                if new is not None:
                    copies[id(node.op)] = new
                    names.add(new.name)
        outs = keras.tree.flatten(out)  # a list, a tuple or a dict of outputs (in Keras' order)
        if len(outs) != len(node.outputs):
            raise TfcompressError(f"{node.name} was replaced by {len(outs)} outputs, it has {len(node.outputs)}",
                                  node.name, "return one output per output of the layer")
        for tid, tensor in zip(node.outputs, outs, strict=True):
            new_tensors[tid] = tensor
    new_outputs = [new_tensors[t] for t in graph.outputs]
    structure = getattr(graph.model, "_outputs_struct", None)
    if isinstance(structure, dict):  # named outputs stay named (and keep their signature names)
        outputs = keras.tree.pack_sequence_as(structure, new_outputs)
    else:
        outputs = new_outputs[0] if len(new_outputs) == 1 else new_outputs
    model = keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs, outputs,
                        name=name or graph.model.name)
    if as_clone and isinstance(graph.model, keras.Sequential):
        chain = _as_chain(model)
        if chain is not None:
            model = keras.Sequential([keras.Input(shape=tuple(model.inputs[0].shape[1:]), dtype=model.inputs[0].dtype,
                                                  name=model.inputs[0].name), *chain], name=model.name)
    if as_clone and getattr(graph.model, "compiled", False):
        model.compile_from_config(graph.model.get_compile_config())
    return model


def _as_chain(model) -> list | None:
    """The layers of a single-input, single-output Functional model that is a plain chain."""
    graph = trace(model)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        return None
    layers, previous = [], graph.inputs[0]
    for node in graph.nodes:
        if isinstance(node.op, keras.layers.InputLayer):
            continue
        if not node.is_layer or node.inputs != [previous] or len(node.outputs) != 1 or node.kwargs \
                or len(node.arguments.args) != 1:
            return None
        layers.append(node.op)
        previous = node.outputs[0]
    return layers if previous == graph.outputs[0] else None


def call_copy(node: Node, args: tuple, kwargs: dict, *, copy_weights: bool = True, layer=None):
    """Call a copy of ``node``'s layer (or ``layer``) on ``args``; operations are called as they are.

    Example:
        >>> x = keras.Input((8,))
        >>> h = keras.layers.Dense(4, name="fc1")(x)
        >>> model = keras.Model(x, keras.layers.Add(name="add")([h, keras.layers.Dense(4, name="fc2")(h)]))
        >>> graph = trace(model)
        >>> y = call_copy(graph.nodes[0], (keras.Input((8,)),), {})       # a copy of fc1, with its weights
        >>> tuple(y.shape)
        (None, 4)
    """
    if not node.is_layer:
        return node.op(*args, **kwargs)
    source = node.op
    new = layer if layer is not None else copy_layer(source)
    out = new(*args, **kwargs)
    if copy_weights and new is not source and source.weights:
        new.set_weights(source.get_weights())
    return out


def input_layer(layer):
    """The layer (or operation) whose output ``layer`` reads on its first call, or None.

    For a layer found by walking a model (``iter_layers``) rather than by tracing it: a
    Bayesian switch's producer, a BatchNormalization's convolution.
    """
    nodes = getattr(layer, "_inbound_nodes", [])
    if not nodes or not nodes[0].parent_nodes:
        return None
    return nodes[0].parent_nodes[0].operation

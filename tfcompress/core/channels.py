"""Channel dependency groups: which channels of a traced model must be pruned together.

As in Torch-Pruning's dependency graph (Fang et al., CVPR 2023, "DepGraph: Towards Any
Structural Pruning", Sec. 3), every channel position of every tensor is traced back to a *base
channel*: the output channel of the layer that created it. Layers that tie channels together
(a residual ``Add``, the excitation ``Multiply`` of a squeeze-and-excitation block, ``Maximum``,
...) merge their inputs' base channels into one *group* (a union-find); ``Concatenate`` lays its
inputs' channels side by side; a depthwise convolution keeps the channels of its input
(``depth_multiplier`` copies each); ``Flatten`` repeats each channel once per spatial position.
How each layer type does this is its handler's :meth:`~tfcompress.core.registry.LayerHandler.trace`;
this module only holds the bookkeeping.

:class:`ChannelFlow` can also carry, per channel, a constant value (NaN when the channel is not a
constant): a channel whose kernel slice is all zero outputs ``act(bias)`` everywhere, and that
number can be carried through BatchNormalization, activations, pooling and merges and folded
into the bias of the layers that read it. ``tfcompress.shrink`` uses it to remove dead channels
exactly; ``prune`` uses the groups alone (``constants=False``).

Example:

>>> import keras
>>> from tfcompress.core import ChannelFlow, trace
>>> x = keras.Input((8, 8, 3))
>>> a = keras.layers.Conv2D(4, 1, name="a")(x)
>>> b = keras.layers.Conv2D(4, 1, name="b")(x)
>>> model = keras.Model(x, keras.layers.Add()([a, b]))
>>> flow = ChannelFlow(trace(model), constants=False).run()
>>> [sorted(members) for members in flow.groups().values()][:1]
[[('a', 0), ('b', 0)]]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfcompress.core.graph import Graph, Node
from tfcompress.core.registry import UnknownLayerError, handler_for
from tfcompress.errors import TfcompressError

__all__ = ["ChannelFlow", "Cut", "UnionFind"]


class UnionFind:
    """Disjoint sets over integers (path halving; the smaller root wins, so roots are stable).

    Example:
        >>> sets = UnionFind()
        >>> sets.union(3, 1); sets.union(1, 2)
        >>> sets.find(3), sets.find(2), sets.find(4)                # the smaller root wins
        (1, 1, 4)
    """

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class Cut:
    """What a handler's ``cut`` needs to remove channels of one layer.

    Attributes:
        keep_in: per input tensor, a boolean array over its channels.
        keep_out: boolean array over the output channels.
        weights: the layer's weights by name (``kernel``, ``bias``, ``gamma`` ...).
        const_in: per input, the per-channel constant (NaN where not constant).
        producer: whether the layer creates its output channels (False for a layer that only
            passes its input's channels, e.g. a depthwise convolution).
        flow: the `ChannelFlow` the decision came from.
        notes: the handler may append what it folded.

    Example:
        >>> import keras
        >>> from tfcompress.core import handler_for, trace
        >>> dense = keras.layers.Dense(4)
        >>> flow = ChannelFlow(trace(keras.Sequential([keras.Input((8,)), dense]))).run()
        >>> cut = Cut(keep_in=[np.ones(8, bool)], keep_out=np.array([True, False, True, True]),
        ...           weights=weights_by_name(dense), const_in=[np.full(8, np.nan)], producer=True, flow=flow)
        >>> config, weights = handler_for(dense).cut(dense, cut)   # unit 1 removed
        >>> config["units"], weights["kernel"].shape, weights["bias"].shape
        (3, (8, 3), (3,))
    """

    keep_in: list[np.ndarray]
    keep_out: np.ndarray
    weights: dict[str, np.ndarray]
    const_in: list[np.ndarray]
    producer: bool
    flow: Any
    notes: list[str] = field(default_factory=list)


def weights_by_name(layer) -> dict[str, np.ndarray]:
    """``{short name: value}`` of a layer's weights (``kernel``, ``bias``, ``gamma`` ...).

    Example:
        >>> import keras
        >>> bn = keras.layers.BatchNormalization()
        >>> bn.build((None, 4))
        >>> sorted(weights_by_name(bn))
        ['beta', 'gamma', 'moving_mean', 'moving_variance']
    """
    import keras

    return {w.path.split("/")[-1]: keras.ops.convert_to_numpy(w) for w in layer.weights}


class ChannelFlow:
    """Trace base channels (and optionally constants) through a :class:`Graph`.

    Args:
        graph: from ``tfcompress.core.trace``.
        constants: also carry per-channel constants (what ``shrink`` needs to fold dead
            channels; reading weights makes it slower). Without them every channel is treated
            as live.
        strict: an opaque layer is an error (``shrink``'s default) instead of a barrier that
            keeps the channels flowing into it.
        atol: kernel entries with ``|w| <= atol`` count as zero (constants only).
        keep: ``{layer name: bool array}`` that overrides the decision (``shrink(keep=)``).
        gone_before: base channels removed by a previous round of the decision.

    After :meth:`run`: ``origin[t]`` (per channel position of tensor ``t``, its base channel),
    ``const[t]``, ``base_index`` (base -> (creating layer, channel)), ``required`` (bases that
    can never be removed: model inputs and outputs, channels into an opaque layer).

    Example:
        >>> import keras
        >>> from tfcompress.core import trace
        >>> x = keras.Input((8,))
        >>> h = keras.layers.Dense(4, name="fc1")(x)
        >>> model = keras.Model(x, keras.layers.Dense(2, name="fc2")(keras.layers.ReLU()(h)))
        >>> flow = ChannelFlow(trace(model), constants=False).run()
        >>> sorted({name for members in flow.groups().values() for name, _ in members})
        ['fc1', 'fc2']
        >>> len(flow.group_of("fc1"))                               # one group per output unit of fc1
        4
    """

    def __init__(self, graph: Graph, *, constants: bool = True, strict: bool = False, atol: float = 0.0,
                 keep: dict[str, Any] | None = None, gone_before: frozenset = frozenset()):
        self.graph = graph
        self.constants, self.strict, self.atol = constants, strict, atol
        self.keep = keep or {}
        self.gone_before = gone_before
        self.uf = UnionFind()
        self.origin: dict[int, np.ndarray] = {}
        self.const: dict[int, np.ndarray] = {}
        self.base_index: list[tuple[str, int]] = []
        self.creator: dict[str, np.ndarray] = {}  # layer name -> the bases it created
        self.members: dict[str, np.ndarray] = {}  # layer name -> the bases its output channels are
        self.required: set[int] = set()
        self.required_why: dict[int, str] = {}
        self.blocked: set[int] = set()
        self.blocked_const: dict[int, str] = {}
        self.forced_remove: set[int] = set()
        self.kept_by_user: set[int] = set()
        self.notes: list[str] = []

    # ------------------------------------------------------------------ running
    def run(self) -> ChannelFlow:
        for tid in self.graph.inputs:
            bases = self.new_bases("<input>", self.channels(tid))
            self.set(tid, bases, np.full(bases.size, np.nan))
            self.require(bases, "a model input")
        for node in self.graph.nodes:
            if not node.inputs and not node.is_layer:
                continue
            if type(node.op).__name__ == "InputLayer":
                continue
            handler_for(node.op).trace(self, node)
            for tid in node.outputs:
                if tid not in self.origin:  # a handler that forgot an output: keep it whole
                    bases = self.new_bases(node.name, self.channels(tid))
                    self.set(tid, bases, np.full(bases.size, np.nan))
                    self.require(bases, f"an output of {node.name}")
        for tid in self.graph.outputs:
            self.require(self.origin[tid], "a model output")
        return self

    # ------------------------------------------------------------------ primitives
    def zero(self, a: np.ndarray) -> np.ndarray:
        return np.abs(a) <= self.atol

    def channels(self, tid: int) -> int:
        shape = self.graph.tensors[tid].shape
        return int(shape[-1]) if len(shape) and shape[-1] is not None else 1

    def new_bases(self, name: str, count: int) -> np.ndarray:
        start = len(self.base_index)
        self.base_index += [(name, i) for i in range(count)]
        bases = np.arange(start, start + count)
        if name != "<input>":
            self.creator.setdefault(name, bases)
        return bases

    def set(self, tid: int, origin: np.ndarray, const: np.ndarray | None = None) -> None:
        origin = np.asarray(origin, np.int64)
        self.origin[tid] = origin
        self.const[tid] = (np.full(origin.size, np.nan) if const is None or not self.constants
                           else np.asarray(const, np.float64))

    def require(self, bases, why: str) -> None:
        for b in np.asarray(bases).tolist():
            self.required.add(int(b))
            self.required_why.setdefault(int(b), why)

    def weights(self, layer) -> dict[str, np.ndarray]:
        return weights_by_name(layer)

    # ------------------------------------------------------------------ flows handlers use
    def passthrough(self, node: Node, value: Callable[[np.ndarray], np.ndarray] | None = None,
                    src: int | None = None) -> None:
        """Output channel ``i`` is input channel ``i``; ``value`` maps a constant (None: kept as is,
        a callable ``const -> const``; return NaN where it stops being constant)."""
        src = node.inputs[0] if src is None else src
        const = self.const[src]
        if self.constants and value is not None:
            const = value(const)
        for out in node.outputs:
            if self.channels(out) != self.origin[src].size:
                return self.opaque(node, f"its output has {self.channels(out)} channels, its input "
                                         f"{self.origin[src].size}")
            self.set(out, self.origin[src], const)
        self.members.setdefault(node.name, self.origin[src])

    def mixing(self, node: Node, why: str) -> None:
        """A layer that mixes its input channels into as many outputs (softmax): every channel
        into it stays, the output keeps the positions."""
        src = node.inputs[0]
        self.require(self.origin[src], f"read by {node.name} ({why})")
        for out in node.outputs:
            self.set(out, self.origin[src], None)

    def merge(self, node: Node, combine: Callable[[np.ndarray], np.ndarray] | None) -> None:
        """Elementwise merge of several tensors: their channels become one group.

        ``combine(stacked constants) -> constant`` (None: the output is not constant). Inputs
        of one channel (a broadcast scale) are joined to nothing.
        """
        origins = [self.origin[t] for t in node.inputs]
        full = [o for o in origins if o.size > 1]
        width = max((o.size for o in origins), default=1)
        if any(o.size != width for o in full):
            return self.opaque(node, "inputs with different channel counts")
        for other in full[1:]:
            for a, b in zip(full[0], other, strict=True):
                self.uf.union(int(a), int(b))
        base = full[0] if full else origins[0]
        const = None
        if self.constants and combine is not None:
            consts = np.stack([np.broadcast_to(self.const[t], (width,)) for t in node.inputs])
            const = combine(consts)
        self.set(node.output, base, const)
        self.members.setdefault(node.name, base)

    def concat(self, node: Node) -> None:
        self.set(node.output, np.concatenate([self.origin[t] for t in node.inputs]),
                 np.concatenate([self.const[t] for t in node.inputs]))

    def repeat(self, node: Node, times: int) -> None:
        """Flatten (channels_last): channel ``c`` of the input is feature ``pos * C + c``."""
        src = node.inputs[0]
        self.set(node.output, np.tile(self.origin[src], times), np.tile(self.const[src], times))

    def opaque(self, node: Node, why: str, *, unknown: bool = False, barrier: bool = False) -> None:
        """Channels cannot be traced through ``node``: keep the channels into it, and make its
        outputs new required channels. In strict mode an error, unless the layer's handler
        declares it a barrier (its channels are kept whole by design)."""
        if self.strict and not barrier:
            if unknown:
                raise UnknownLayerError(node.op, "shrink", why)
            raise TfcompressError(
                f"shrink cannot trace channels through {type(node.op).__name__} ({why})",
                f"layer {node.name!r}",
                "restructure the model around it, register a handler for it "
                "(tfcompress.core.register_layer), or pass strict=False to keep every channel "
                "that flows into it",
            )
        for t in node.inputs:
            self.require(self.origin[t], f"flows into {node.name} ({type(node.op).__name__}: {why})")
        self.notes.append(f"{node.name} ({type(node.op).__name__}): channels flowing into it are kept ({why})")
        for tid in node.outputs:
            bases = self.new_bases(node.name, self.channels(tid))
            self.set(tid, bases, None)
            self.require(bases, f"an output of {node.name}")

    def producer(self, node: Node, layer, touch: np.ndarray | None, unit: np.ndarray | None,
                 bias: np.ndarray | None, activation: Callable | None, foldable: bool,
                 elementwise_activation: bool, why_not_foldable: str = "") -> None:
        """A layer that creates its output channels from all of its input's (conv, dense).

        Args:
            touch: ``touch[p, o]``: input channel p reaches output o through a non-zero weight.
            unit: ``unit[p, o]``: what a constant 1 on input p adds to output o (no padding).
            bias: the output bias (None: zeros).
            activation: the layer's activation function (applied to constants).
            foldable: a constant input channel adds exactly ``c * sum of its kernel slice``.
            elementwise_activation: False for a channel-mixing activation (softmax).
        """
        src = node.inputs[0]
        count = self.channels(node.output)
        bases = self.new_bases(layer.name, count)
        self.members[layer.name] = bases
        const = np.full(count, np.nan)
        if self.constants and touch is not None:
            origin_in, const_in = self.origin[src], self.const[src]
            reads = touch.any(axis=1)
            exact_const = np.isfinite(const_in) & ((const_in == 0) | foldable)
            for p in np.flatnonzero(reads & ~exact_const):
                base = int(origin_in[p])
                self.blocked.add(base)
                if np.isfinite(const_in[p]):
                    self.blocked_const.setdefault(base, f"{layer.name} reads it {why_not_foldable}")
            gone = np.array([int(b) in self.gone_before for b in origin_in], bool)
            absorbed = gone & (~reads | exact_const)
            bias = np.zeros(count) if bias is None else bias.astype(np.float64)
            folded = np.where(absorbed & np.isfinite(const_in), const_in, 0.0) @ unit
            dead = ~np.any(touch[~absorbed], axis=0)
            pre = np.where(dead, bias + folded, np.nan)
            if elementwise_activation:
                const = eval_elementwise(activation, pre) if activation is not None else pre
        if not elementwise_activation:
            self.require(bases, f"{layer.name}'s activation mixes its units")
        self.set(node.output, bases, const)
        self.apply_keep(layer.name, bases)

    def apply_keep(self, name: str, bases: np.ndarray) -> None:
        if name not in self.keep:
            return
        keep = np.asarray(self.keep[name], bool)
        if keep.shape != bases.shape:
            raise TfcompressError(f"keep[{name!r}] has {keep.size} entries, the layer has {bases.size} channels",
                                  "keep", "pass one boolean per output channel")
        self.kept_by_user.update(bases[keep].tolist())
        self.forced_remove.update(bases[~keep].tolist())

    # ------------------------------------------------------------------ groups
    def root(self, base: int) -> int:
        return self.uf.find(int(base))

    def groups(self) -> dict[int, list[tuple[str, int]]]:
        """``{root: [(layer, channel), ...]}`` over the channels layers create (model inputs left out)."""
        out: dict[int, list[tuple[str, int]]] = {}
        for base, (name, channel) in enumerate(self.base_index):
            if name == "<input>":
                continue
            out.setdefault(self.root(base), []).append((name, channel))
        return out

    def required_roots(self) -> set[int]:
        return {self.root(b) for b in self.required}

    def group_of(self, name: str) -> np.ndarray:
        """The group root of each output channel of layer ``name`` (creator or pass-through)."""
        bases = self.members.get(name, self.creator.get(name))
        if bases is None:
            raise TfcompressError(f"no channels traced for layer {name!r}", name, "")
        return np.array([self.root(b) for b in bases], np.int64)

    # ------------------------------------------------------------------ shrink's decision
    def removed_roots(self) -> set[int]:
        """Roots of the groups to remove: dead everywhere they are read, or forced by ``keep``."""
        find = self.uf.find
        roots = {find(b) for b in range(len(self.base_index))}
        blocked = {find(b) for b in self.blocked} | {find(b) for b in self.kept_by_user}
        required = self.required_roots()
        forced = {find(b) for b in self.forced_remove}
        for root in sorted(forced & required):
            name, channel = self.base_index[root]
            self.notes.append(f"keep asked to remove channel {channel} of {name}, which is a model "
                              "input / output or feeds an untraceable layer: kept")
        return ((roots - blocked) | forced) - required

    def removed_bases(self, removed_roots: set[int]) -> frozenset[int]:
        return frozenset(b for b in range(len(self.base_index)) if self.uf.find(b) in removed_roots)

    def kept_positions(self, tid: int, removed: set[int]) -> np.ndarray:
        return np.array([self.uf.find(int(b)) not in removed for b in self.origin[tid]], bool)

    def explain_kept(self, removed: set[int]) -> None:
        """Notes for the dead channels kept because a reader cannot fold their constant."""
        find = self.uf.find
        dead_everywhere: dict[int, bool] = {}
        for tid, origin in self.origin.items():
            for base, value in zip(origin.tolist(), self.const[tid].tolist(), strict=True):
                root = find(base)
                dead_everywhere[root] = dead_everywhere.get(root, True) and np.isfinite(value)
        by_reason: dict[tuple[str, str], int] = {}
        for base, why in self.blocked_const.items():
            root = find(base)
            if root not in removed and dead_everywhere.get(root, False):
                key = (self.base_index[root][0], why)
                by_reason[key] = by_reason.get(key, 0) + 1
        for (name, why), n in by_reason.items():
            self.notes.append(f"{name}: {n} constant (dead) channel(s) kept: {why}")


def eval_elementwise(fn, values: np.ndarray) -> np.ndarray:
    """``fn`` applied to the finite entries of ``values`` (NaN marks a non-constant channel)."""
    import keras

    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(values.shape, np.nan)
    x = keras.ops.convert_to_tensor(np.where(finite, values, 0.0).astype("float32")[None])
    out = np.asarray(keras.ops.convert_to_numpy(fn(x)), np.float64).reshape(-1)
    if out.size != values.size:
        return np.full(values.shape, np.nan)
    return np.where(finite, out, np.nan)

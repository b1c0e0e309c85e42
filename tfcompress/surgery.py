"""Surgery: physically remove pruned channels and units, so parameters, MACs and latency fall.

:func:`shrink` takes a plain Keras model whose pruned output channels have all-zero kernel
slices (what ``tfcompress.strip`` gives after channel pruning, and what
``tfcompress.bayesian.strip`` gives) and rebuilds it without them, together with everything
tied to them: the consumers' input slices, BatchNormalization statistics, biases, the rows of
a Dense layer after Flatten (one per spatial position), and the channels of every layer in
between.

Channels that must go together are found as in Torch-Pruning's dependency graph (Fang et al.,
CVPR 2023, "DepGraph: Towards Any Structural Pruning", Sec. 3): every tensor position is
traced back to a *base channel* (the output channel of the layer that created it); residual
Add / Subtract / Multiply / Maximum / Minimum / Average merge the base channels of their
inputs into one group; Concatenate lays its inputs' channels side by side (a consumer's input
index maps to a producer's offset); DepthwiseConv and SeparableConv's depthwise part keep the
channels of their input (``depth_multiplier`` copies of each); Flatten repeats each channel
once per spatial position (channels_last: channel ``c`` is feature ``pos * C + c``).

A group is removed only when removing it is exact. Its values leave the group only through
the *producers* that read it (Conv1D / Conv2D / Dense / SeparableConv's pointwise part), so it
is enough that every such reader either has an all-zero kernel slice for it, or reads a value
that is a constant ``c`` per channel and can absorb it: a dead channel (all-zero kernel
slice) is the constant ``act(bias)``, carried through BatchNormalization, activations,
pooling, dropout and merges as a number, and folded into the reader's bias
(``bias += c * sum of the kernel slice``: exact for Dense and for convolutions with
``padding="valid"`` or 1x1 kernels; with ``c == 0`` exact everywhere). A non-zero constant
read by a ``"same"``-padded KxK convolution is not a constant at the borders (zero padding),
so that channel is kept and the report says so. Model inputs and outputs are never cut (the
final layer keeps all its units). The decision is repeated until it is stable, so a channel
whose kernel reads only removed constant channels becomes a constant itself and goes too.
``keep`` overrides the decision for chosen layers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError

logger = logging.getLogger("tfcompress")

__all__ = ["ShrinkReport", "shrink"]

_DENSE = (keras.layers.Dense,)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
# Kept for modules that import it: the layer types whose output channels shrink can remove.
_PRODUCERS = (*_CONV, *_DENSE, *_SEPARABLE)
_ELEMENTWISE_MERGE = (
    keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Maximum,
    keras.layers.Minimum, keras.layers.Average,
)
# Per-channel layers that map a constant channel to the same constant (inference mode).
_CONSTANT_PRESERVING = (
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,  # TF's average pooling leaves padding out of the mean
    keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D,
    keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout,
    keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.UpSampling1D,
    keras.layers.UpSampling2D, keras.layers.Identity,
)
# Zero padding keeps a constant only when it is 0.
_ZERO_PADDING = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D)
# Elementwise activation layers: a constant channel stays a constant, computed by the layer.
_ACTIVATION_LAYERS = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                      keras.layers.ELU, keras.layers.PReLU)
# Elementwise activation functions (softmax, log_softmax, glu, sparsemax mix channels).
_ELEMENTWISE_ACTIVATIONS = {
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish",
    "hard_silu", "hard_swish", "mish", "sigmoid", "hard_sigmoid", "log_sigmoid", "tanh",
    "hard_tanh", "softplus", "softsign", "exponential", "squareplus", "sparse_plus",
    "sparse_sigmoid", "soft_shrink", "hard_shrink", "tanh_shrink",
}
_MERGE_OR_CONCAT = (*_ELEMENTWISE_MERGE, keras.layers.Concatenate)


@dataclass
class ShrinkReport:
    """What `shrink` removed, and what it saved (from `tfcompress.metrics.summarize`).

    ``channels`` maps every producing layer (Conv / Dense / SeparableConv) to its output
    channels ``(before, after)``, in graph order; ``notes`` say what was folded, and which
    dead channels were kept and why. ``str(report)`` is a printable summary.
    """

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer -> (before, after)
    notes: list[str] = field(default_factory=list)

    @property
    def macs_ratio(self) -> float:
        return self.macs_before / max(self.macs_after, 1)

    @property
    def params_ratio(self) -> float:
        return self.params_before / max(self.params_after, 1)

    def structure(self) -> str:
        """``20-50-500-10 -> 9-17-212-10`` over the producing layers."""
        before = "-".join(str(b) for b, _ in self.channels.values())
        after = "-".join(str(a) for _, a in self.channels.values())
        return f"{before} -> {after}"

    def text(self) -> str:
        lines = [
            f"shrink: params {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_ratio:.2f}x fewer), "
            f"MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_ratio:.2f}x fewer)",
            f"  channels {self.structure()}",
        ]
        lines += [f"  {name}: {b} -> {a}" for name, (b, a) in self.channels.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def to_dict(self) -> dict:
        return {"params_before": self.params_before, "params_after": self.params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after,
                "channels": {k: list(v) for k, v in self.channels.items()}, "notes": self.notes,
                "structure": self.structure()}


@dataclass
class _Node:
    layer: Any
    inputs: list[int]  # tensor ids
    output: int
    kwargs: dict


class _UnionFind:
    def __init__(self):
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


def _graph(model, *, inline_nested: bool = False) -> tuple[list[_Node], list[int], list[int], dict[int, Any]]:
    """Nodes in topological order, input and output tensor ids, tensor id -> KerasTensor.

    With ``inline_nested``, a Sequential / Functional model used as a layer is replaced by its
    own nodes (its inputs bound to the outer tensors it was called on); otherwise it is an
    error. ``tfcompress.bayesian`` and ``tfcompress.qat`` use the default.
    """
    tensors: dict[int, Any] = {}
    nodes: dict[int, _Node] = {}
    order: list[int] = []
    alias: dict[int, int] = {}  # tensor of a nested model -> the tensor it stands for
    inlined: set[int] = set()
    inputs = [id(t) for t in model.inputs]
    for t in model.inputs:
        tensors[id(t)] = t

    def canon(tensor) -> int:
        tid = id(tensor)
        while tid in alias:
            tid = alias[tid]
        return tid

    def visit(tensor) -> None:
        tid = canon(tensor)
        if tid in nodes or tid in inputs:
            return
        tensors[tid] = tensor
        op, node_index, tensor_index = tensor._keras_history
        node = op._inbound_nodes[node_index]
        if isinstance(op, keras.Model):
            if not inline_nested:
                raise TfcompressError(
                    f"shrink does not rebuild nested models ({op.name})", op.name,
                    "build the model flat (call the inner model's layers directly), then shrink it",
                )
            if id(op) in inlined:
                raise TfcompressError(f"nested model {op.name} is called more than once", op.name,
                                      "shrink handles models called once")
            inlined.add(id(op))
            outer_inputs = list(node.input_tensors)
            inner_inputs = list(op.inputs)
            if len(outer_inputs) != len(inner_inputs):
                raise TfcompressError(f"cannot match the inputs of nested model {op.name}", op.name,
                                      "call the nested model on as many tensors as it has inputs")
            for parent in outer_inputs:
                visit(parent)
            for inner, outer in zip(inner_inputs, outer_inputs, strict=True):
                alias[id(inner)] = canon(outer)
            for inner_out in op.outputs:
                visit(inner_out)
            for outer_out, inner_out in zip(node.output_tensors, op.outputs, strict=True):
                alias[id(outer_out)] = canon(inner_out)
            return
        if len(node.output_tensors) != 1:
            raise TfcompressError(f"layer {op.name} has several outputs", op.name,
                                  "shrink handles single-output layers")
        for parent in node.input_tensors:
            visit(parent)
        nodes[tid] = _Node(op, [canon(p) for p in node.input_tensors], tid, dict(node.arguments.kwargs))
        order.append(tid)

    for t in model.outputs:
        visit(t)
    seen_layers: set[int] = set()
    for tid in order:
        layer = nodes[tid].layer
        if id(layer) in seen_layers:
            raise TfcompressError(f"layer {layer.name} is used twice (shared weights)", layer.name,
                                  "shrink handles layers called once")
        seen_layers.add(id(layer))
    return [nodes[t] for t in order], inputs, [canon(t) for t in model.outputs], tensors


def _weights(layer) -> dict[str, np.ndarray]:
    return {w.path.split("/")[-1]: keras.ops.convert_to_numpy(w) for w in layer.weights}


def _activation_name(layer) -> str | None:
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    return getattr(act, "__name__", str(act))


def _eval_elementwise(fn, values: np.ndarray) -> np.ndarray:
    """``fn`` applied to the finite entries of ``values`` (NaN marks a non-constant channel)."""
    finite = np.isfinite(values)
    x = keras.ops.convert_to_tensor(np.where(finite, values, 0.0).astype("float32")[None])
    out = np.asarray(keras.ops.convert_to_numpy(fn(x)), np.float64).reshape(-1)
    return np.where(finite, out, np.nan)


def _is_plain(layer, classes) -> bool:
    """Exactly one of ``classes``: a subclass may add weights or change ``call``."""
    return type(layer) in classes


def _kernel_sizes(layer) -> tuple[int, ...]:
    return tuple(int(k) for k in layer.kernel_size)


def _folds_constants(layer) -> bool:
    """A constant input channel ``c`` adds exactly ``c * sum of its kernel slice`` everywhere.

    True for Dense, and for convolutions without padding (``"valid"``, or a 1x1 kernel whose
    ``"same"`` / ``"causal"`` padding is empty); zero padding breaks it at the borders.
    """
    if _is_plain(layer, _DENSE):
        return True
    return layer.padding == "valid" or all(k == 1 for k in _kernel_sizes(layer))


def _contributions(layer, w: dict[str, np.ndarray], zero) -> tuple[np.ndarray, np.ndarray]:
    """For a producer: ``touch[p, o]`` (input channel p reaches output o through a non-zero
    weight) and ``unit[p, o]`` (what a constant 1 on input p adds to output o, no padding)."""
    if _is_plain(layer, _SEPARABLE):
        depthwise, pointwise = w["depthwise_kernel"], w["pointwise_kernel"]
        cin, mult = depthwise.shape[-2:]
        dw = depthwise.reshape(-1, cin, mult)
        pw = pointwise.reshape(cin, mult, -1)  # depthwise output k * mult + j feeds pw row
        touch = np.any(np.any(~zero(dw), axis=0)[:, :, None] & ~zero(pw), axis=1)
        unit = np.einsum("cm,cmf->cf", dw.sum(0, dtype=np.float64), pw.astype(np.float64))
        return touch, unit
    kernel = w["kernel"]
    flat = kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])
    return np.any(~zero(flat), axis=0), flat.sum(0, dtype=np.float64)


class _Planner:
    """Trace base channels and constants through the graph; decide which groups go.

    ``origin[t]`` gives, per channel position of tensor ``t``, its base channel;
    ``const[t]`` its value when it is a per-channel constant (NaN otherwise).
    """

    def __init__(self, nodes, inputs, outputs, tensors, keep, strict, atol, gone_before=frozenset()):
        self.nodes, self.inputs, self.outputs, self.tensors = nodes, inputs, outputs, tensors
        self.keep, self.strict, self.atol = keep or {}, strict, atol
        self.gone_before = gone_before  # base channels removed by the previous round
        self.uf = _UnionFind()
        self.origin: dict[int, np.ndarray] = {}
        self.const: dict[int, np.ndarray] = {}
        self.base_index: list[tuple[str, int]] = []  # base id -> (creating layer, channel)
        self.required: set[int] = set()  # model inputs / outputs, untraceable layers
        self.blocked: set[int] = set()  # read by a producer, not removable exactly
        self.blocked_const: dict[int, str] = {}  # constant but not foldable: why
        self.forced_remove: set[int] = set()
        self.kept_by_user: set[int] = set()
        self.notes: list[str] = []

    def zero(self, a: np.ndarray) -> np.ndarray:
        return np.abs(a) <= self.atol

    def _new_bases(self, name: str, count: int) -> np.ndarray:
        start = len(self.base_index)
        self.base_index += [(name, i) for i in range(count)]
        return np.arange(start, start + count)

    def _channels(self, tid: int) -> int:
        return int(self.tensors[tid].shape[-1])

    def _set(self, tid: int, origin: np.ndarray, const: np.ndarray) -> None:
        self.origin[tid] = np.asarray(origin, np.int64)
        self.const[tid] = np.asarray(const, np.float64)

    def run(self) -> None:
        for tid in self.inputs:
            bases = self._new_bases("<input>", self._channels(tid))
            self._set(tid, bases, np.full(bases.size, np.nan))
            self.required.update(bases.tolist())
        for node in self.nodes:
            self._step(node)
        for tid in self.outputs:
            self.required.update(self.origin[tid].tolist())

    # ----------------------------------------------------------------------------- layers

    def _step(self, node: _Node) -> None:
        layer = node.layer
        src = node.inputs[0] if node.inputs else None
        if isinstance(layer, keras.layers.InputLayer):
            return
        channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
        if _is_plain(layer, _DENSE) and getattr(layer, "lora_enabled", False) is False \
                and getattr(layer, "quantization_mode", None) is None:
            return self._producer(node)
        if _is_plain(layer, (*_CONV, *_SEPARABLE)) and channels_last and getattr(layer, "groups", 1) == 1:
            return self._producer(node)
        if _is_plain(layer, _DEPTHWISE) and channels_last:
            return self._depthwise(node)
        if _is_plain(layer, (keras.layers.BatchNormalization,)) \
                and layer.axis in (-1, len(self.tensors[src].shape) - 1):
            return self._batch_norm(node)
        if _is_plain(layer, _ELEMENTWISE_MERGE):
            return self._merge(node)
        if _is_plain(layer, (keras.layers.Concatenate,)) \
                and layer.axis in (-1, len(self.tensors[node.output].shape) - 1):
            self._set(node.output, np.concatenate([self.origin[t] for t in node.inputs]),
                      np.concatenate([self.const[t] for t in node.inputs]))
            return
        if _is_plain(layer, (keras.layers.Flatten,)) and channels_last:
            shape = self.tensors[src].shape
            if any(d is None for d in shape[1:]):
                return self._opaque(node, "Flatten of an input with unknown dimensions")
            spatial = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
            self._set(node.output, np.tile(self.origin[src], spatial), np.tile(self.const[src], spatial))
            return
        if _is_plain(layer, _CONSTANT_PRESERVING) and channels_last:
            self._set(node.output, self.origin[src], self.const[src])
            return
        if _is_plain(layer, _ZERO_PADDING) and channels_last:
            const = self.const[src]
            self._set(node.output, self.origin[src], np.where(const == 0, 0.0, np.nan))
            return
        if _is_plain(layer, (keras.layers.Softmax,)) or (
                _is_plain(layer, (keras.layers.Activation,))
                and _activation_name(layer) not in _ELEMENTWISE_ACTIVATIONS):
            # mixes channels: every channel into it stays, the output keeps the positions
            self.required.update(self.origin[src].tolist())
            self._set(node.output, self.origin[src], np.full(self._channels(node.output), np.nan))
            return
        if _is_plain(layer, _ACTIVATION_LAYERS):
            if _is_plain(layer, (keras.layers.PReLU,)) and layer.shared_axes is None:
                return self._opaque(node, "PReLU with a slope per position")
            self._set(node.output, self.origin[src], _eval_elementwise(layer, self.const[src]))
            return
        return self._opaque(node, "a layer type shrink does not know")

    def _producer(self, node: _Node) -> None:
        layer, src = node.layer, node.inputs[0]
        w = _weights(layer)
        touch, unit = _contributions(layer, w, self.zero)
        count = touch.shape[1]
        origin_in, const_in = self.origin[src], self.const[src]
        reads = touch.any(axis=1)
        foldable = _folds_constants(layer)
        exact_const = np.isfinite(const_in) & ((const_in == 0) | foldable)
        for p in np.flatnonzero(reads & ~exact_const):
            base = int(origin_in[p])
            self.blocked.add(base)
            if np.isfinite(const_in[p]):
                self.blocked_const.setdefault(
                    base, f"{layer.name} reads it with padding={layer.padding!r} (a non-zero "
                          "constant is not exact at the borders)")
        # rows of channels removed last round no longer count: their constant is in the bias
        gone = np.array([int(b) in self.gone_before for b in origin_in], bool)
        absorbed = gone & (~reads | exact_const)
        bias = w.get("bias", np.zeros(count)).astype(np.float64)
        folded = np.where(absorbed & np.isfinite(const_in), const_in, 0.0) @ unit
        dead = ~np.any(touch[~absorbed], axis=0)
        bases = self._new_bases(layer.name, count)
        activation = _activation_name(layer)
        if activation in _ELEMENTWISE_ACTIVATIONS:
            const = _eval_elementwise(layer.activation, np.where(dead, bias + folded, np.nan))
        else:  # a channel-mixing activation (softmax): removing any unit changes the others
            const = np.full(count, np.nan)
            self.required.update(bases.tolist())
        self._set(node.output, bases, const)
        self._apply_keep(layer.name, bases)

    def _depthwise(self, node: _Node) -> None:
        layer, src = node.layer, node.inputs[0]
        w = _weights(layer)
        kernel = w["kernel"]  # (*kernel_size, cin, mult)
        mult = kernel.shape[-1]
        flat = kernel.reshape(-1, kernel.shape[-2] * mult)  # column k * mult + j
        origin = np.repeat(self.origin[src], mult)
        const_in = np.repeat(self.const[src], mult)
        bias = w.get("bias", np.zeros(origin.size)).astype(np.float64)
        dead = ~np.any(~self.zero(flat), axis=0)
        no_padding = layer.padding == "valid" or all(k == 1 for k in _kernel_sizes(layer))
        pre = np.full(origin.size, np.nan)
        pre[dead] = bias[dead]
        from_const = ~dead & np.isfinite(const_in) & ((const_in == 0) | no_padding)
        pre[from_const] = (const_in * flat.sum(0, dtype=np.float64) + bias)[from_const]
        self._set(node.output, origin, _eval_elementwise(layer.activation, pre))

    def _batch_norm(self, node: _Node) -> None:
        layer, src = node.layer, node.inputs[0]
        w = _weights(layer)
        count = self._channels(node.output)
        gamma = w.get("gamma", np.ones(count)).astype(np.float64)
        beta = w.get("beta", np.zeros(count)).astype(np.float64)
        scale = gamma / np.sqrt(w["moving_variance"].astype(np.float64) + layer.epsilon)
        const = (self.const[src] - w["moving_mean"]) * scale + beta
        self._set(node.output, self.origin[src], const)
        self._apply_keep(layer.name, self.origin[src])

    def _merge(self, node: _Node) -> None:
        layer = node.layer
        origins = [self.origin[t] for t in node.inputs]
        if any(o.size != origins[0].size for o in origins):
            return self._opaque(node, "inputs with different channel counts (broadcasting)")
        for other in origins[1:]:
            for a, b in zip(origins[0], other, strict=True):
                self.uf.union(int(a), int(b))
        consts = np.stack([self.const[t] for t in node.inputs])
        if isinstance(layer, keras.layers.Add):
            const = consts.sum(0)
        elif isinstance(layer, keras.layers.Subtract):
            const = consts[0] - consts[1]
        elif isinstance(layer, keras.layers.Multiply):
            const = np.where((consts == 0).any(0), 0.0, consts.prod(0))  # 0 * anything is 0
        elif isinstance(layer, keras.layers.Maximum):
            const = consts.max(0)
        elif isinstance(layer, keras.layers.Minimum):
            const = consts.min(0)
        else:
            const = consts.mean(0)
        self._set(node.output, origins[0], const)

    def _opaque(self, node: _Node, why: str) -> None:
        layer = node.layer
        if self.strict:
            raise TfcompressError(
                f"shrink cannot trace channels through {type(layer).__name__} ({why})",
                f"layer {layer.name!r}",
                "restructure the model around it, or pass strict=False to keep every channel "
                "that flows into it",
            )
        for t in node.inputs:
            self.required.update(self.origin[t].tolist())
        self.notes.append(f"{layer.name} ({type(layer).__name__}): channels flowing into it are kept")
        count = self._channels(node.output)
        bases = self._new_bases(layer.name, count)
        self._set(node.output, bases, np.full(count, np.nan))
        self.required.update(bases.tolist())

    def _apply_keep(self, name: str, bases: np.ndarray) -> None:
        if name not in self.keep:
            return
        keep = np.asarray(self.keep[name], bool)
        if keep.shape != bases.shape:
            raise TfcompressError(
                f"keep[{name!r}] has {keep.size} entries, the layer has {bases.size} channels",
                "keep", "pass one boolean per output channel")
        self.kept_by_user.update(bases[keep].tolist())
        self.forced_remove.update(bases[~keep].tolist())

    # ----------------------------------------------------------------------------- decision

    def removed_roots(self) -> set[int]:
        """Union-find roots of the base channels to remove."""
        find = self.uf.find
        roots = {find(b) for b in range(len(self.base_index))}
        blocked = {find(b) for b in self.blocked} | {find(b) for b in self.kept_by_user}
        required = {find(b) for b in self.required}
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


def _unique_name(name: str, used: set[str]) -> str:
    candidate, k = name, 1
    while candidate in used:
        candidate, k = f"{name}_{k}", k + 1
    used.add(candidate)
    return candidate


def _rebuild(nodes, inputs, tensors, planner: _Planner, removed: set[int]):
    new_tensors: dict[int, Any] = {}
    new_inputs = []
    used: set[str] = set()
    for tid in inputs:
        t = tensors[tid]
        new = keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=_unique_name(t.name, used))
        new_tensors[tid] = new
        new_inputs.append(new)
    channels: dict[str, tuple[int, int]] = {}
    folds: list[str] = []
    for node in nodes:
        layer = node.layer
        if isinstance(layer, keras.layers.InputLayer):
            continue
        keep_out = planner.kept_positions(node.output, removed)
        keep_in = [planner.kept_positions(t, removed) for t in node.inputs]
        config = layer.get_config()
        config["name"] = _unique_name(layer.name, used)
        weights = _weights(layer)
        new_weights: dict[str, np.ndarray] = dict(weights)
        producer = node.output in planner.origin and planner.base_index[
            int(planner.origin[node.output][0])][0] == layer.name
        if _is_plain(layer, _DEPTHWISE) and not producer:
            new_weights["kernel"] = weights["kernel"][..., keep_in[0], :]
            if "bias" in weights:
                new_weights["bias"] = weights["bias"][keep_out]
        elif _is_plain(layer, (*_DENSE, *_CONV, *_SEPARABLE)) and producer:
            if not keep_out.any():
                # Keras rejects a layer of 0 units / filters; the cause may be a later layer that
                # keeps none of its inputs (a fully pruned Dense cuts every path to the output)
                raise TfcompressError(
                    f"shrink would leave {layer.name!r} with no output channel: none of its channels is "
                    "live and read on a path to the model's output",
                    f"layer {layer.name!r}",
                    "a layer on that path has every channel pruned (zero or masked kernel, or below its "
                    "Bayesian threshold); prune less (a lower sparsity or KL weight), or choose the channels "
                    "to keep per layer (bayesian.prune_to, shrink(keep=...))")
            kin = keep_in[0]
            const_in = planner.const[node.inputs[0]]
            foldable = _folds_constants(layer)
            take = ~kin & np.isfinite(const_in) & (const_in != 0)
            _, unit = _contributions(layer, weights, planner.zero)
            if not foldable:  # only forced removals get here; the borders are not exact
                take &= False
            delta = (np.where(take, const_in, 0.0) @ unit)[keep_out]
            if _is_plain(layer, _SEPARABLE):
                mult = weights["depthwise_kernel"].shape[-1]
                new_weights["depthwise_kernel"] = weights["depthwise_kernel"][..., kin, :]
                pointwise = weights["pointwise_kernel"][..., np.repeat(kin, mult), :]
                new_weights["pointwise_kernel"] = pointwise[..., keep_out]
            else:
                kernel = np.take(weights["kernel"], np.flatnonzero(kin), axis=-2)
                new_weights["kernel"] = kernel[..., keep_out]
            bias = weights["bias"][keep_out].astype(np.float64) if "bias" in weights else None
            if np.any(delta != 0):
                if bias is None:  # the folded constant needs a bias
                    config["use_bias"], bias = True, np.zeros(int(keep_out.sum()))
                bias = bias + delta
                folds.append(f"{layer.name}: folded the constant of {int(take.sum())} removed input "
                             "channel position(s) into the bias")
            if bias is not None:
                new_weights["bias"] = bias.astype(weights.get("bias", np.zeros(1, "float32")).dtype)
            config["units" if _is_plain(layer, _DENSE) else "filters"] = int(keep_out.sum())
            channels[config["name"]] = (keep_out.size, int(keep_out.sum()))
        elif _is_plain(layer, (keras.layers.BatchNormalization,)) and layer.axis in (
                -1, len(tensors[node.output].shape) - 1):
            new_weights = {k: v[keep_out] for k, v in weights.items()}
        elif _is_plain(layer, (keras.layers.PReLU,)) and "alpha" in weights:
            new_weights["alpha"] = weights["alpha"][..., keep_out]
        new_layer = layer.__class__.from_config(config)
        args = [new_tensors[t] for t in node.inputs]
        call_input = args if isinstance(layer, _MERGE_OR_CONCAT) else args[0]
        out = new_layer(call_input, **{k: v for k, v in node.kwargs.items() if k != "mask"})
        if new_layer.weights:
            new_layer.set_weights([new_weights[w.path.split("/")[-1]] for w in new_layer.weights])
        new_tensors[node.output] = out
    return new_inputs, new_tensors, channels, folds


def _all_layers(model) -> list:
    out = []
    for layer in getattr(model, "layers", []):
        out.append(layer)
        out.extend(_all_layers(layer) if isinstance(layer, keras.Model) else [])
    return out


def shrink(model, keep: dict[str, Any] | None = None, *, strict: bool = True, atol: float = 0.0,
           return_report: bool = False):
    """Remove the channels and units that are dead (all-zero kernel slice), and everything tied to them.

    Structured-pruning surgery after Torch-Pruning's dependency graph (Fang et al., CVPR 2023,
    "DepGraph"): coupled channels (residual merges, concatenation, depthwise convolutions,
    BatchNormalization, Flatten into Dense) are removed together, and only when that is exact
    (see the module docstring): a dead channel whose value is a non-zero constant (bias,
    BatchNormalization shift, activation) is folded into the readers' biases.

    Args:
        model: a built Sequential or Functional model; models nested in it as layers are
            inlined. A ``tfcompress.prune`` model is stripped first (``tfcompress.pruning.strip``)
            and a ``tfcompress.bayesian`` model too (``tfcompress.bayesian.strip``).
        keep: optional ``{layer_name: bool array}``: for a producing layer (Conv / Dense /
            SeparableConv) or a BatchNormalization, which output channels to keep; this
            overrides detection both ways (``False`` removes a live channel: not exact).
            The final output layer and the model inputs are never cut.
        strict: raise a `TfcompressError` naming a layer whose channels cannot be traced
            (Reshape, Lambda, custom layers, ...; default). With ``False`` every channel flowing
            into such a layer is kept (the safe choice) and the report notes it.
        atol: kernel entries with ``|w| <= atol`` count as zero. The default 0 gives exact
            removal; a positive value also cuts nearly-dead channels (approximate).
        return_report: also return a `ShrinkReport` (params and MACs before and after).

    Returns:
        The shrunk Functional model (and the report). Its outputs equal the input model's.
    """
    from tfcompress.metrics import summarize

    if any(getattr(layer, "tfcompress_pruning_wrapper", False) for layer in _all_layers(model)):
        try:
            from tfcompress.pruning import strip
        except ImportError as exc:  # pragma: no cover - shipped together
            raise TfcompressError("tfcompress.pruning is not available", "shrink", str(exc)) from None
        model = strip(model)
    if any(getattr(layer, "tfcompress_bayesian", False) for layer in _all_layers(model)):
        try:
            from tfcompress.bayesian import strip as bayes_strip
        except ImportError as exc:  # pragma: no cover - shipped together
            raise TfcompressError("tfcompress.bayesian is not available", "shrink", str(exc)) from None
        model = bayes_strip(model)
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise TfcompressError("shrink needs a built Sequential or Functional model",
                              getattr(model, "name", "model"), "build it with keras.Input first")
    if not (atol >= 0):
        raise TfcompressError(f"atol must be >= 0, got {atol}", "shrink(atol=...)", "pass 0 for exact removal")
    nodes, inputs, outputs, tensors = _graph(model, inline_nested=True)
    if keep:
        names = {node.layer.name for node in nodes}
        missing = sorted(set(keep) - names)
        if missing:
            raise TfcompressError(f"keep names unknown layers {missing}", "keep", f"layers are: {sorted(names)}")
    gone: frozenset[int] = frozenset()
    for _ in range(20):  # each round can only add channels; a handful of rounds suffice
        planner = _Planner(nodes, inputs, outputs, tensors, keep, strict, atol, gone)
        planner.run()
        removed = planner.removed_roots()
        now_gone = planner.removed_bases(removed)
        if now_gone == gone:
            break
        gone = now_gone
    planner.explain_kept(removed)
    new_inputs, new_tensors, channels, folds = _rebuild(nodes, inputs, tensors, planner, removed)
    new_outputs = [new_tensors[t] for t in outputs]
    shrunk = keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs,
                         new_outputs[0] if len(new_outputs) == 1 else new_outputs, name=model.name)
    if not return_report:
        return shrunk
    before, after = summarize(model), summarize(shrunk)
    report = ShrinkReport(before.params, after.params, before.macs, after.macs, channels,
                          folds + planner.notes)
    return shrunk, report

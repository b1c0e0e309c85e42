"""Surgery: physically remove pruned channels and units, so parameters, MACs and latency fall.

:func:`shrink` takes a plain Keras model whose pruned output channels are exactly zero (what
``tfcompress.strip`` gives after channel pruning, and what ``tfcompress.bayesian.strip`` gives)
and rebuilds it without them, together with everything tied to them: the consumers' input
slices, BatchNormalization statistics, biases, the rows of a Dense layer after Flatten (one
per spatial position), and the channels of every layer in between.

Channels that must go together are found as in Torch-Pruning's dependency graph (Fang et al.,
CVPR 2023, "DepGraph: Towards Any Structural Pruning"): every tensor position is traced back
to a *base channel* (the output channel of the layer that created it); residual
Add / Subtract / Multiply / Maximum / Minimum / Average merge the base channels of their
inputs into one group; Concatenate lays its inputs' channels side by side; DepthwiseConv2D
and SeparableConv2D's depthwise part keep the channels of their input (``depth_multiplier``
copies of each); Flatten repeats each channel once per spatial position.

Removal is exact: a base channel is removed only when its value is exactly zero wherever it
flows (zero kernel slice and bias, BatchNormalization mapping 0 to 0, activations with
f(0) = 0, pooling, padding, dropout), so the shrunk model computes what the masked model
computes (tested to 1e-5). Model inputs and outputs are never cut. ``keep`` overrides the
decision for chosen layers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError

logger = logging.getLogger("tfcompress")

_PRODUCERS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense, keras.layers.SeparableConv2D)
_ELEMENTWISE_MERGE = (
    keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Maximum,
    keras.layers.Minimum, keras.layers.Average,
)
_PASS_THROUGH = (
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D, keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D, keras.layers.Dropout, keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D, keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
    keras.layers.ELU, keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.UpSampling2D,
    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.Identity,
)
# f(0) == 0, so a zero channel stays zero
_ZERO_PRESERVING = {"linear", None, "relu", "relu6", "tanh", "leaky_relu", "elu", "selu", "gelu",
                    "silu", "swish", "hard_silu", "hard_swish", "mish"}


@dataclass
class ShrinkReport:
    """What `shrink` removed, and what it saved."""

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
            f"shrink: params {self.params_before:,} -> {self.params_after:,} ({self.params_ratio:.2f}x fewer), "
            f"MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_ratio:.2f}x fewer)",
            f"  channels {self.structure()}",
        ]
        lines += [f"  {name}: {b} -> {a}" for name, (b, a) in self.channels.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

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


def _graph(model) -> tuple[list[_Node], list[int], list[int], dict[int, Any]]:
    """Nodes in topological order, input and output tensor ids, tensor id -> KerasTensor."""
    tensors: dict[int, Any] = {}
    nodes: dict[int, _Node] = {}
    order: list[int] = []
    inputs = [id(t) for t in model.inputs]
    for t in model.inputs:
        tensors[id(t)] = t

    def visit(tensor) -> None:
        tid = id(tensor)
        tensors[tid] = tensor
        if tid in nodes or tid in inputs:
            return
        op, node_index, _ = tensor._keras_history
        if isinstance(op, keras.Model):
            raise TfcompressError(
                f"shrink does not rebuild nested models ({op.name})", op.name,
                "build the model flat (call the inner model's layers directly), then shrink it",
            )
        node = op._inbound_nodes[node_index]
        if len(node.output_tensors) != 1:
            raise TfcompressError(f"layer {op.name} has several outputs", op.name, "shrink handles single-output layers")
        for parent in node.input_tensors:
            visit(parent)
        nodes[tid] = _Node(op, [id(p) for p in node.input_tensors], tid, dict(node.arguments.kwargs))
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
    return [nodes[t] for t in order], inputs, [id(t) for t in model.outputs], tensors


def _weights(layer) -> dict[str, np.ndarray]:
    return {w.path.split("/")[-1]: keras.ops.convert_to_numpy(w) for w in layer.weights}


def _activation_name(layer) -> str | None:
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    return getattr(act, "__name__", str(act))


class _Planner:
    """Trace base channels and zero-ness through the graph."""

    def __init__(self, nodes, inputs, outputs, tensors, keep, strict):
        self.nodes, self.inputs, self.outputs, self.tensors = nodes, inputs, outputs, tensors
        self.keep, self.strict = keep or {}, strict
        self.uf = _UnionFind()
        self.origin: dict[int, np.ndarray] = {}  # tensor -> base channel id per position
        self.zero: dict[int, np.ndarray] = {}  # tensor -> bool per position
        self.base_index: list[tuple[str, int]] = []  # base id -> (producer name, channel)
        self.required: set[int] = set()
        self.forced_remove: set[int] = set()
        self.kept_by_user: set[int] = set()
        self.notes: list[str] = []

    def _new_bases(self, name: str, count: int) -> np.ndarray:
        start = len(self.base_index)
        self.base_index += [(name, i) for i in range(count)]
        return np.arange(start, start + count)

    def _channels(self, tid: int) -> int:
        return int(self.tensors[tid].shape[-1])

    def run(self) -> None:
        for tid in self.inputs:
            bases = self._new_bases("<input>", self._channels(tid))
            self.origin[tid] = bases
            self.zero[tid] = np.zeros(bases.size, bool)
            self.required.update(bases.tolist())
        for node in self.nodes:
            self._step(node)
        for tid in self.outputs:
            self.required.update(self.origin[tid].tolist())

    def _step(self, node: _Node) -> None:
        layer, out = node.layer, node.output
        src = node.inputs[0] if node.inputs else None
        if isinstance(layer, keras.layers.InputLayer):
            return
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            w = _weights(layer)
            kernel = w["kernel"]  # (kh, kw, cin, m)
            mult = kernel.shape[-1]
            origin = np.repeat(self.origin[src], mult)
            dead_kernel = ~np.any(kernel.reshape(-1, kernel.shape[2] * mult) != 0, axis=0)
            bias = w.get("bias", np.zeros(origin.size))
            zero_in = np.repeat(self.zero[src], mult)
            zero = (zero_in | dead_kernel) & (bias == 0)
            self._set(out, origin, self._activate(zero, _activation_name(layer)))
            return
        if isinstance(layer, _PRODUCERS):
            w = _weights(layer)
            kernel = w["pointwise_kernel"] if isinstance(layer, keras.layers.SeparableConv2D) else w["kernel"]
            count = kernel.shape[-1]
            bases = self._new_bases(layer.name, count)
            dead = ~np.any(kernel.reshape(-1, count) != 0, axis=0)
            bias = w.get("bias", np.zeros(count))
            zero = self._activate(dead & (bias == 0), _activation_name(layer))
            nonzero_constant = dead & (bias != 0)
            if nonzero_constant.any():
                self.notes.append(f"{layer.name}: {int(nonzero_constant.sum())} dead channel(s) with a non-zero "
                                  "bias kept (their constant output feeds the next layer)")
            self._set(out, bases, zero)
            self._apply_keep(layer.name, bases)
            return
        if isinstance(layer, keras.layers.BatchNormalization):
            w = _weights(layer)
            eps = layer.epsilon
            gamma = w.get("gamma", np.ones(self._channels(out)))
            beta = w.get("beta", np.zeros(self._channels(out)))
            shift = beta - gamma * w["moving_mean"] / np.sqrt(w["moving_variance"] + eps)
            self._set(out, self.origin[src], self.zero[src] & (np.abs(shift) == 0))
            self._apply_keep(layer.name, self.origin[src])
            return
        if isinstance(layer, _ELEMENTWISE_MERGE):
            first = self.origin[node.inputs[0]]
            for other in node.inputs[1:]:
                for a, b in zip(first, self.origin[other], strict=True):
                    self.uf.union(int(a), int(b))
            zeros = np.stack([self.zero[t] for t in node.inputs])
            zero = zeros.any(axis=0) if isinstance(layer, keras.layers.Multiply) else zeros.all(axis=0)
            self._set(out, first, zero)
            return
        if isinstance(layer, keras.layers.Concatenate):
            if layer.axis not in (-1, len(self.tensors[out].shape) - 1):
                return self._opaque(node, "concatenation along a non-channel axis")
            self._set(out, np.concatenate([self.origin[t] for t in node.inputs]),
                      np.concatenate([self.zero[t] for t in node.inputs]))
            return
        if isinstance(layer, keras.layers.Flatten):
            spatial = int(np.prod(self.tensors[src].shape[1:-1])) if len(self.tensors[src].shape) > 2 else 1
            self._set(out, np.tile(self.origin[src], spatial), np.tile(self.zero[src], spatial))
            return
        if isinstance(layer, _PASS_THROUGH):
            zero = self.zero[src]
            if isinstance(layer, keras.layers.Activation | keras.layers.ELU):
                zero = self._activate(zero, _activation_name(layer) or "elu")
            self._set(out, self.origin[src], zero)
            return
        return self._opaque(node, "a layer type shrink does not know")

    def _activate(self, zero: np.ndarray, activation: str | None) -> np.ndarray:
        return zero if activation in _ZERO_PRESERVING else np.zeros_like(zero)

    def _set(self, tid: int, origin: np.ndarray, zero: np.ndarray) -> None:
        self.origin[tid], self.zero[tid] = np.asarray(origin), np.asarray(zero, bool)

    def _apply_keep(self, name: str, bases: np.ndarray) -> None:
        if name not in self.keep:
            return
        keep = np.asarray(self.keep[name], bool)
        if keep.shape != bases.shape:
            raise TfcompressError(f"keep[{name!r}] has {keep.size} entries, the layer has {bases.size} channels",
                                  "keep", "pass one boolean per output channel")
        self.kept_by_user.update(bases[keep].tolist())
        self.forced_remove.update(bases[~keep].tolist())

    def _opaque(self, node: _Node, why: str) -> None:
        layer = node.layer
        if self.strict:
            raise TfcompressError(
                f"shrink cannot trace channels through {type(layer).__name__} ({why})", layer.name,
                "restructure the model around it, or pass strict=False to keep every channel that flows into it",
            )
        for t in node.inputs:
            self.required.update(self.origin[t].tolist())
        self.notes.append(f"{layer.name} ({type(layer).__name__}): channels flowing into it are kept")
        self._set(node.output, self._new_bases(layer.name, self._channels(node.output)),
                  np.zeros(self._channels(node.output), bool))
        self.required.update(self.origin[node.output].tolist())

    def removed_roots(self) -> set[int]:
        """Union-find roots of the base channels to remove."""
        zero_everywhere: dict[int, bool] = {}
        for tid, origin in self.origin.items():
            for base, zero in zip(origin.tolist(), self.zero[tid].tolist(), strict=True):
                root = self.uf.find(base)
                zero_everywhere[root] = zero_everywhere.get(root, True) and zero
        roots = self.uf.find
        required = {roots(b) for b in self.required}  # model inputs/outputs, untraceable layers
        zero = {r for r, z in zero_everywhere.items() if z}
        removed = (zero - {roots(b) for b in self.kept_by_user}) | {roots(b) for b in self.forced_remove}
        return removed - required

    def kept_positions(self, tid: int, removed: set[int]) -> np.ndarray:
        return np.array([self.uf.find(int(b)) not in removed for b in self.origin[tid]], bool)


def _rebuild(nodes, inputs, tensors, planner: _Planner, removed: set[int], name: str):
    new_tensors: dict[int, Any] = {}
    new_inputs = []
    for tid in inputs:
        t = tensors[tid]
        new = keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=t.name)
        new_tensors[tid] = new
        new_inputs.append(new)
    channels: dict[str, tuple[int, int]] = {}
    for node in nodes:
        layer = node.layer
        if isinstance(layer, keras.layers.InputLayer):
            continue
        keep_out = planner.kept_positions(node.output, removed)
        keep_in = [planner.kept_positions(t, removed) for t in node.inputs]
        config = layer.get_config()
        weights = _weights(layer)
        new_weights: dict[str, np.ndarray] = {}
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kin = keep_in[0]
            new_weights["kernel"] = weights["kernel"][:, :, kin, :]
            if "bias" in weights:
                new_weights["bias"] = weights["bias"][keep_out]
        elif isinstance(layer, keras.layers.SeparableConv2D):
            kin = keep_in[0]
            mult = weights["depthwise_kernel"].shape[-1]
            new_weights["depthwise_kernel"] = weights["depthwise_kernel"][:, :, kin, :]
            new_weights["pointwise_kernel"] = weights["pointwise_kernel"][:, :, np.repeat(kin, mult), :][..., keep_out]
            if "bias" in weights:
                new_weights["bias"] = weights["bias"][keep_out]
            config["filters"] = int(keep_out.sum())
            channels[layer.name] = (keep_out.size, int(keep_out.sum()))
        elif isinstance(layer, _PRODUCERS):
            kernel = weights["kernel"]
            kernel = np.take(kernel, np.flatnonzero(keep_in[0]), axis=-2 if kernel.ndim > 2 else 0)
            new_weights["kernel"] = kernel[..., keep_out]
            if "bias" in weights:
                new_weights["bias"] = weights["bias"][keep_out]
            config["units" if isinstance(layer, keras.layers.Dense) else "filters"] = int(keep_out.sum())
            channels[layer.name] = (keep_out.size, int(keep_out.sum()))
        elif isinstance(layer, keras.layers.BatchNormalization):
            new_weights = {k: v[keep_out] for k, v in weights.items()}
        else:
            new_weights = weights
        new_layer = layer.__class__.from_config(config)
        args = [new_tensors[t] for t in node.inputs]
        call_input = args if isinstance(layer, (*_ELEMENTWISE_MERGE, keras.layers.Concatenate)) else args[0]
        out = new_layer(call_input, **{k: v for k, v in node.kwargs.items() if k not in ("mask",)})
        if new_layer.weights:
            ordered = [new_weights[w.path.split("/")[-1]] for w in new_layer.weights]
            new_layer.set_weights(ordered)
        new_tensors[node.output] = out
    return new_inputs, new_tensors, channels


def shrink(model, keep: dict[str, Any] | None = None, *, strict: bool = True,
           return_report: bool = False):
    """Remove the channels and units that are exactly zero, and everything tied to them.

    Args:
        model: a plain Sequential or Functional model (a pruned model is stripped first).
        keep: optional ``{layer_name: bool array}`` overriding, for a producing layer (or a
            BatchNormalization), which output channels are kept.
        strict: raise on a layer type whose channels cannot be traced (default); with
            ``False`` the channels flowing into it are kept.
        return_report: also return a `ShrinkReport`.

    Returns:
        The shrunk Functional model (and the report). Its outputs equal the input model's.
    """
    from tfcompress.metrics import summarize

    if any(getattr(layer, "tfcompress_pruning_wrapper", False) for layer in _all_layers(model)):
        from tfcompress.pruning import strip

        model = strip(model)
    if any(getattr(layer, "tfcompress_bayesian", False) for layer in _all_layers(model)):
        try:
            from tfcompress.bayesian import strip as bayes_strip
        except ImportError as exc:  # pragma: no cover - shipped together
            raise TfcompressError("tfcompress.bayesian is not available", "shrink", str(exc)) from None
        model = bayes_strip(model)
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise TfcompressError("shrink needs a built Sequential or Functional model", getattr(model, "name", "model"),
                              "build it with keras.Input first")
    if keep:
        names = {layer.name for layer in model.layers}
        missing = sorted(set(keep) - names)
        if missing:
            raise TfcompressError(f"keep names unknown layers {missing}", "keep", f"layers are: {sorted(names)}")
    nodes, inputs, outputs, tensors = _graph(model)
    planner = _Planner(nodes, inputs, outputs, tensors, keep, strict)
    planner.run()
    removed = planner.removed_roots()
    new_inputs, new_tensors, channels = _rebuild(nodes, inputs, tensors, planner, removed, model.name)
    new_outputs = [new_tensors[t] for t in outputs]
    shrunk = keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs,
                         new_outputs[0] if len(new_outputs) == 1 else new_outputs, name=model.name)
    if not return_report:
        return shrunk
    before, after = summarize(model), summarize(shrunk)
    report = ShrinkReport(before.params, after.params, before.macs, after.macs, channels, planner.notes)
    return shrunk, report


def _all_layers(model) -> list:
    out = []
    for layer in getattr(model, "layers", []):
        out.append(layer)
        out.extend(_all_layers(layer) if isinstance(layer, keras.Model) else [])
    return out

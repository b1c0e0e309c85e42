"""Surgery: physically remove pruned channels and units, so parameters, MACs and latency fall.

:func:`shrink` takes a plain Keras model whose pruned output channels have all-zero kernel
slices (what ``tfcompress.strip`` gives after channel pruning, and what
``tfcompress.bayesian.strip`` gives) and rebuilds it without them, together with everything
tied to them: the consumers' input slices, BatchNormalization statistics, biases, the rows of
a Dense layer after Flatten (one per spatial position), and the channels of every layer in
between.

Channels that must go together are the dependency groups of ``tfcompress.core.channels``
(Torch-Pruning's dependency graph, Fang et al., CVPR 2023, "DepGraph", Sec. 3): residual
merges, squeeze-and-excitation multiplies, concatenations, depthwise convolutions, Flatten and
Reshape into Dense. Each layer type's handler (``tfcompress.core.register_layer``) says how its
channels flow and how to cut it, so users' own layer types are shrunk the same way.

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

from tfcompress.core import ChannelFlow, Cut, handler_for, rebuild, trace, weights_by_name
from tfcompress.core.strip import strip_all
from tfcompress.errors import TfcompressError

logger = logging.getLogger("tfcompress")

__all__ = ["ShrinkReport", "shrink"]


@dataclass
class ShrinkReport:
    """What `shrink` removed, and what it saved (from `tfcompress.metrics.summarize`).

    ``channels`` maps every producing layer (Conv / Dense / SeparableConv) to its output
    channels ``(before, after)``, in graph order; ``notes`` say what was folded, and which
    dead channels were kept and why. ``str(report)`` is a printable summary.

    Example:
        >>> import keras
        >>> from tfcompress.pruning import ConstantSparsity, prune, update_masks
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc2")(keras.layers.Dense(8, "relu", name="fc1")(inputs)))
        >>> pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", verbose=0)
        >>> _ = update_masks(pruned, step=0)
        >>> small, report = shrink(pruned, return_report=True)
        >>> report.channels, report.params_before, report.params_after
        ({'fc1': (8, 4), 'fc2': (4, 4)}, 108, 56)
        >>> report.structure()
        '8-4 -> 4-4'
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


def _decide(graph, keep, strict: bool, atol: float) -> tuple[ChannelFlow, set[int]]:
    """Trace constants and groups until the set of removed channels is stable: a channel whose
    kernel reads only removed constant channels becomes a constant itself and goes too."""
    gone: frozenset[int] = frozenset()
    for _ in range(20):  # each round can only add channels; a handful of rounds suffice
        flow = ChannelFlow(graph, constants=True, strict=strict, atol=atol, keep=keep, gone_before=gone)
        flow.run()
        removed = flow.removed_roots()
        now_gone = flow.removed_bases(removed)
        if now_gone == gone:
            break
        gone = now_gone
    flow.explain_kept(removed)
    return flow, removed


def _cut_model(graph, flow: ChannelFlow, removed: set[int]) -> tuple[keras.Model, dict, list[str]]:
    """Rebuild ``graph`` with each layer cut by its handler to the channels that stay."""
    folds: list[str] = []
    shared = {id(layer) for layer in graph.shared_layers()}

    def replace(node, args, kwargs):
        if not node.is_layer:
            return None
        layer = node.op
        keep_out = flow.kept_positions(node.outputs[0], removed)
        keep_in = [flow.kept_positions(t, removed) for t in node.inputs]
        cut = Cut(keep_in, keep_out, weights_by_name(layer), [flow.const[t] for t in node.inputs],
                  layer.name in flow.creator, flow)
        plan = handler_for(layer).cut(layer, cut)
        if plan is None:
            return None  # no channel of it changes: rebuild copies it
        if id(layer) in shared:
            raise TfcompressError(f"layer {layer.name} is used twice (shared weights)", layer.name,
                                  "shrink cuts layers called once")
        config, weights = plan
        folds.extend(cut.notes)
        new = layer.__class__.from_config(config)
        out = new(*args, **kwargs)
        if new.weights:
            new.set_weights([weights[w.path.split("/")[-1]] for w in new.weights])
        return out

    channels: dict[str, tuple[int, int]] = {}
    for node in graph.nodes:
        layer = node.op
        if node.is_layer and layer.name in flow.creator and handler_for(layer).produces_channels(layer):
            kept = flow.kept_positions(node.outputs[0], removed)
            channels[layer.name] = (kept.size, int(kept.sum()))
    return rebuild(graph, replace), channels, folds


def shrink(model, keep: dict[str, Any] | None = None, *, strict: bool = True, atol: float = 0.0,
           return_report: bool = False):
    """Remove the channels and units that are dead (all-zero kernel slice), and everything tied to them.

    Structured-pruning surgery after Torch-Pruning's dependency graph (Fang et al., CVPR 2023,
    "DepGraph"): coupled channels (residual merges, squeeze-and-excitation multiplies,
    concatenation, depthwise convolutions, BatchNormalization, Flatten / Reshape into Dense)
    are removed together, and only when that is exact (see the module docstring): a dead
    channel whose value is a non-zero constant (bias, BatchNormalization shift, activation) is
    folded into the readers' biases.

    Args:
        model: a built Sequential or Functional model; models nested in it as layers are
            inlined. A ``tfcompress.prune`` model is stripped first (``tfcompress.pruning.strip``)
            and a ``tfcompress.bayesian`` model too (``tfcompress.bayesian.strip``).
        keep: optional ``{layer_name: bool array}``: for a producing layer (Conv / Dense /
            SeparableConv) or a BatchNormalization, which output channels to keep; this
            overrides detection both ways (``False`` removes a live channel: not exact).
            The final output layer and the model inputs are never cut.
        strict: raise a `TfcompressError` naming a layer whose channels cannot be traced
            (an unregistered custom layer, a Lambda, ...; default). With ``False`` every channel
            flowing into such a layer is kept (the safe choice) and the report notes it.
        atol: kernel entries with ``|w| <= atol`` count as zero. The default 0 gives exact
            removal; a positive value also cuts nearly-dead channels (approximate).
        return_report: also return a `ShrinkReport` (params and MACs before and after).

    Returns:
        The shrunk Functional model (and the report). Its outputs equal the input model's.

    Example:

    >>> import keras, tfcompress
    >>> x = keras.Input((6,))
    >>> h = keras.layers.Dense(4, activation="relu", name="fc1")(x)
    >>> model = keras.Model(x, keras.layers.Dense(2, name="fc2")(h))
    >>> kernel, bias = model.get_layer("fc1").get_weights()
    >>> kernel[:, :2] = 0; bias[:2] = 0
    >>> model.get_layer("fc1").set_weights([kernel, bias])
    >>> small, report = tfcompress.shrink(model, return_report=True)
    >>> small.get_layer("fc1").units, report.channels["fc1"]
    (2, (4, 2))
    """
    from tfcompress.metrics import summarize

    model = strip_all(model)
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise TfcompressError("shrink needs a built Sequential or Functional model",
                              getattr(model, "name", "model"), "build it with keras.Input first")
    if not (atol >= 0):
        raise TfcompressError(f"atol must be >= 0, got {atol}", "shrink(atol=...)", "pass 0 for exact removal")
    graph = trace(model, where="shrink")
    if keep:
        names = {node.name for node in graph.nodes}
        missing = sorted(set(keep) - names)
        if missing:
            raise TfcompressError(f"keep names unknown layers {missing}", "keep", f"layers are: {sorted(names)}")
    flow, removed = _decide(graph, keep, strict, atol)
    shrunk, channels, folds = _cut_model(graph, flow, removed)
    if not return_report:
        return shrunk
    before, after = summarize(model), summarize(shrunk)
    report = ShrinkReport(before.params, after.params, before.macs, after.macs, channels,
                          folds + flow.notes)
    return shrunk, report

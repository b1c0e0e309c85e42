"""Budgets: limits on what a model costs, and what a model costs in the same terms (issue 22).

A :class:`Budget` holds limits on any of five quantities; :func:`model_cost` reports them for
a Keras model as a :class:`Cost`; ``Budget.check(cost)`` says which limits are met, with the
numbers. Channel pruning reaches a budget by itself: ``tfcompress.prune(model,
budget=Budget(macs=...))`` (`tfcompress.pruning.budget`).

==================  ==========================================================================
``params``          parameters, as ``tfcompress.metrics.summarize`` counts them (every weight,
                    BatchNormalization's moving statistics included, as ``count_params``)
``macs``            multiply-accumulates of one inference on one sample, by
                    ``tfcompress.metrics``' conventions (``ModelSummary.macs``)
``weight_bytes``    the constant bytes of the model's weights in a TFLite file at ``precision``
                    (below); computed from the Keras model, no export
``arena_bytes``     the TFLite Micro tensor arena, measured: the model is exported to int8
                    (``tfcompress.export.to_tflite``) and run by ``to_micro`` (only when asked)
``latency_ms``      the median latency on LiteRT (XNNPACK, one thread), measured with
                    ``tfcompress.export.bench.benchmark`` on the same export (only when asked)
==================  ==========================================================================

Weight bytes follow what the TFLite converter writes (measured on int8 files, see
tests/test_budget.py): every convolution, depthwise convolution and fully connected layer
stores its kernel at the weight precision and one bias per output channel (int32 for int8 and
int4 weights, int64 for int16x8; the converter creates the bias when the layer has none); a
BatchNormalization right after such a layer (its only reader) folds into it and costs nothing,
any other BatchNormalization becomes a MUL and an ADD with one constant per channel each at the
activation precision; any other weight costs one element at the activation precision. (The
converter leaves out a FULLY_CONNECTED bias that is all zero, as a freshly initialised Dense
layer's is; it is counted anyway, a trained model has one.)
``precision`` is ``"int8"`` (default), ``"int16x8"``, ``"int4"`` (4-bit Dense / Conv kernels,
two per byte; depthwise kernels stay int8, as ai-edge-quantizer writes them), ``"float16"``,
``"float32"``, or a per-layer dict ``{layer name: "int4" | "int8"}`` over int8 (the
``precision=`` of ``tfcompress.export.to_tflite``).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError

__all__ = ["QUANTITIES", "Budget", "BudgetCheck", "Cost", "model_cost", "weight_bytes"]

#: the quantities a budget may limit, in the order reports list them
QUANTITIES = ("params", "weight_bytes", "macs", "arena_bytes", "latency_ms")
#: the quantities only an export can measure
MEASURED = ("arena_bytes", "latency_ms")
#: weight precision -> (kernel bits, bias bytes, activation bytes)
PRECISIONS = {
    "int8": (8, 4, 1),
    "int4": (4, 4, 1),
    "int16x8": (8, 8, 2),
    "float16": (16, 2, 2),
    "float32": (32, 4, 4),
}
_LAYER_PRECISIONS = ("int8", "int4")


def check_precision(precision: Any, where: str) -> str | dict[str, str]:
    """``precision`` validated: one of `PRECISIONS` or a ``{layer: "int4" | "int8"}`` dict."""
    if isinstance(precision, str) and precision in PRECISIONS:
        return precision
    if isinstance(precision, Mapping):
        bad = {k: v for k, v in precision.items() if not isinstance(k, str) or v not in _LAYER_PRECISIONS}
        if not bad:
            return dict(precision)
        raise TfcompressError(f"per-layer precision {bad} is not a layer name -> 'int4' / 'int8'", where,
                              "pass e.g. {'fc1': 'int4'} (the other layers stay int8)")
    raise TfcompressError(f"unknown precision {precision!r}", where,
                          f"use one of {sorted(PRECISIONS)} or a dict {{layer name: 'int4' | 'int8'}}")


def _mode(precision: str | dict) -> str:
    return "int8" if isinstance(precision, dict) else precision


def kernel_bits(precision: str | dict, layer_name: str, depthwise: bool = False) -> int:
    """Bits per kernel element of ``layer_name`` at ``precision`` (depthwise kernels stay int8
    under int4: ai-edge-quantizer 0.10 has no int4 DEPTHWISE_CONV_2D)."""
    if isinstance(precision, dict):
        bits = 4 if precision.get(layer_name) == "int4" else 8
    else:
        bits = PRECISIONS[precision][0]
    return 8 if depthwise and bits == 4 else bits


def _inner(layer):
    """A pruning wrapper's layer (the costs are the wrapped layer's)."""
    while getattr(layer, "tfcompress_pruning_wrapper", False) or type(layer).__name__ == "MaskedBatchNormalization":
        layer = layer.layer
    return layer


def layer_role(layer) -> str:
    """``"producer"`` (Conv / Dense), ``"separable"``, ``"depthwise"``, ``"norm"``
    (BatchNormalization) or ``"other"``: what decides the layer's weight bytes and, in
    `tfcompress.pruning.budget`, how its cost depends on its channels."""
    from tfcompress.core.handlers import DepthwiseHandler, ProducerHandler, SeparableHandler
    from tfcompress.core.registry import handler_for

    handler = handler_for(layer, inherit=True)
    if isinstance(handler, SeparableHandler):
        return "separable"
    if isinstance(handler, ProducerHandler) and handler.traceable(layer) is None:
        return "producer"
    if isinstance(handler, DepthwiseHandler):
        return "depthwise"
    if isinstance(layer, keras.layers.BatchNormalization):
        return "norm"
    return "other"


def folded_norms(graph) -> set[int]:
    """Ids of the BatchNormalization layers that fold into the layer before them at export:
    called once, on the output of a Conv / Dense / depthwise layer without activation that
    nothing else reads."""
    folded: set[int] = set()
    for node in graph.nodes:
        if not node.is_layer or layer_role(_inner(node.op)) != "norm" or len(graph.nodes_of(node.op)) != 1:
            continue
        if len(node.inputs) != 1:
            continue
        before = graph.producer(node.inputs[0])
        if before is None or not before.is_layer or layer_role(_inner(before.op)) not in ("producer", "depthwise"):
            continue
        activation = getattr(_inner(before.op), "activation", None)
        if activation is not None and getattr(activation, "__name__", "") != "linear":
            continue  # an activation between them: the normalization stays a MUL and an ADD
        if len(graph.consumers(node.inputs[0])) == 1 and len(graph.nodes_of(before.op)) == 1:
            folded.add(id(node.op))
    return folded


def _weights(layer) -> dict[str, np.ndarray]:
    """The arrays that count as ``layer``'s weights, by short name (masks applied)."""
    if hasattr(layer, "tfcompress_effective_weights") and hasattr(layer, "layer"):
        inner = _inner(layer)
        arrays = layer.tfcompress_effective_weights()
        names = [w.path.split("/")[-1] for w in inner.weights]
        if len(names) == len(arrays):
            return dict(zip(names, (np.asarray(a) for a in arrays), strict=True))
    return {w.path.split("/")[-1]: np.asarray(keras.ops.convert_to_numpy(w)) for w in _inner(layer).weights}


def layer_weight_bytes(layer, precision: str | dict, *, folded: bool, out_channels: int | None) -> float:
    """Bytes ``layer``'s weights take in a TFLite file at ``precision`` (module docstring)."""
    inner = _inner(layer)
    role = layer_role(inner)
    mode = _mode(precision)
    _, bias_bytes, act_bytes = PRECISIONS[mode]
    weights = _weights(layer)
    if role in ("producer", "separable", "depthwise"):
        total = 0.0
        for name, array in weights.items():
            if array.ndim >= 2:
                depthwise = role == "depthwise" or name == "depthwise_kernel"
                total += math.ceil(array.size * kernel_bits(precision, inner.name, depthwise) / 8)
        if role == "separable":  # TFLite: a DEPTHWISE_CONV_2D (with its own bias) and a CONV_2D
            total += bias_bytes * int(inner.depthwise_kernel.shape[-2] * inner.depthwise_kernel.shape[-1])
        return total + bias_bytes * (out_channels or 0)
    if role == "norm":
        if folded:
            return 0.0
        channels = int(next(iter(weights.values())).size) if weights else 0
        return 2.0 * act_bytes * channels
    return float(act_bytes * sum(a.size for a in weights.values()))


def weight_bytes(model, precision: str | Mapping[str, str] = "int8") -> int:
    """The bytes of ``model``'s weights in a TFLite file at ``precision``.

    The converter's layout (module docstring): kernels at the weight precision, one bias per
    output channel of every Conv / Dense / depthwise layer, BatchNormalization folded where it
    follows one of them.

    Example:
        >>> import keras, tfcompress
        >>> x = keras.Input((8,))
        >>> model = keras.Model(x, keras.layers.Dense(4, use_bias=False)(x))
        >>> tfcompress.budget.weight_bytes(model), tfcompress.budget.weight_bytes(model, "int4")
        (48, 32)
    """
    from tfcompress.core import trace

    precision = check_precision(precision, "weight_bytes(precision=...)")
    graph = trace(model, where="weight_bytes")
    folded = folded_norms(graph)
    total = 0.0
    for layer in graph.layers():
        nodes = graph.nodes_of(layer)
        channels = graph.shape(nodes[0].outputs[0])[-1] if nodes and nodes[0].outputs else None
        total += layer_weight_bytes(layer, precision, folded=id(layer) in folded,
                                    out_channels=None if channels is None else int(channels))
    return int(math.ceil(total))


@dataclass
class Cost:
    """What a model costs, in a `Budget`'s terms (:func:`model_cost`).

    ``arena_bytes`` and ``latency_ms`` are None unless measured (they need an export);
    ``precision`` is the precision ``weight_bytes`` was counted at; ``notes`` say how the
    measured quantities were measured.

    Example:
        >>> import keras, tfcompress
        >>> x = keras.Input((8,))
        >>> cost = tfcompress.model_cost(keras.Model(x, keras.layers.Dense(4)(x)), "int4")
        >>> print(cost)
        params 36, weight bytes 32 (int4), MACs 32
    """

    params: int
    weight_bytes: int
    macs: int
    arena_bytes: int | None = None
    latency_ms: float | None = None
    precision: Any = "int8"
    notes: list[str] = field(default_factory=list)

    def get(self, quantity: str):
        return getattr(self, quantity)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        parts = [f"params {self.params:,}", f"weight bytes {self.weight_bytes:,} ({_precision_text(self.precision)})",
                 f"MACs {self.macs:,}"]
        if self.arena_bytes is not None:
            parts.append(f"arena {self.arena_bytes:,} B")
        if self.latency_ms is not None:
            parts.append(f"latency {self.latency_ms:.3f} ms")
        return ", ".join(parts)

    def __str__(self) -> str:
        return self.text()


def _precision_text(precision) -> str:
    return precision if isinstance(precision, str) else f"int8, {precision}"


@dataclass
class BudgetCheck:
    """``Budget.check``'s answer: one row per limited quantity, ``(quantity, limit, value, met)``.

    ``met`` is True when every limit is met; ``str()`` is a printable table.

    Example:
        >>> import tfcompress
        >>> cost = tfcompress.budget.Cost(params=900, weight_bytes=900, macs=5000)
        >>> print(tfcompress.Budget(params=1000, macs=4000).check(cost))
        params                  900 of          1,000 ( 90.0%)  met
        macs                  5,000 of          4,000 (125.0%)  OVER
    """

    rows: list[tuple[str, float, float, bool]]

    @property
    def met(self) -> bool:
        return all(row[3] for row in self.rows)

    @property
    def unmet(self) -> list[str]:
        """The quantities over their limit."""
        return [row[0] for row in self.rows if not row[3]]

    def __bool__(self) -> bool:
        return self.met

    def text(self) -> str:
        lines = []
        for quantity, limit, value, met in self.rows:
            ratio = value / limit if limit else float("inf")
            lines.append(f"{quantity:<13} {_number(value):>14} of {_number(limit):>14} "
                         f"({ratio:6.1%})  {'met' if met else 'OVER'}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def _number(value: float) -> str:
    return f"{value:,.3f}" if isinstance(value, float) and not float(value).is_integer() else f"{int(value):,}"


@keras.saving.register_keras_serializable(package="tfcompress")
class Budget:
    """Limits on what a model may cost: any of parameters, weight bytes, MACs, arena, latency.

    The resource budgets of MorphNet (Gordon et al., CVPR 2018, "MorphNet: Fast & Simple
    Resource-Constrained Structure Learning of Deep Networks", Sec. 3: a FLOP or model-size
    constraint ``F(O) <= zeta``), for the quantities an edge target cares about; each is
    counted as :func:`model_cost` counts it (the module docstring). A limit left None is not a
    limit. ``tfcompress.prune(model, budget=...)`` prunes channels until ``params``,
    ``weight_bytes`` and ``macs`` are met; ``arena_bytes`` and ``latency_ms`` are measured on an
    export, so they can be checked (``check``) but not aimed at by pruning.

    Args:
        params: the most parameters.
        weight_bytes: the most bytes of weights at ``precision``.
        macs: the most MACs per sample.
        arena_bytes: the largest TFLite Micro tensor arena (measured).
        latency_ms: the longest median LiteRT latency in milliseconds (measured).
        precision: the precision ``weight_bytes`` is counted at (``"int8"`` by default, or
            ``"int4"``, ``"int16x8"``, ``"float16"``, ``"float32"``, ``{layer: "int4" | "int8"}``).

    Example:
        >>> import keras, tfcompress
        >>> x = keras.Input((16,))
        >>> model = keras.Model(x, keras.layers.Dense(4)(keras.layers.Dense(32)(x)))
        >>> budget = tfcompress.Budget(params=400, macs=700)
        >>> result = budget.check(tfcompress.model_cost(model))
        >>> result.met, result.unmet
        (False, ['params'])
        >>> tfcompress.Budget.from_config(budget.get_config()) == budget
        True
    """

    def __init__(self, params: int | None = None, weight_bytes: int | None = None, macs: int | None = None,
                 arena_bytes: int | None = None, latency_ms: float | None = None,
                 precision: str | Mapping[str, str] = "int8"):
        values = {"params": params, "weight_bytes": weight_bytes, "macs": macs, "arena_bytes": arena_bytes,
                  "latency_ms": latency_ms}
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
                    or not math.isfinite(float(value)) or value <= 0:
                raise TfcompressError(f"{name}={value!r} is not a positive number", f"Budget({name}=...)",
                                      f"pass a positive limit, or leave {name} out (no limit)")
            if name != "latency_ms" and float(value) < 1:
                raise TfcompressError(f"{name}={value!r} is below one (a count, not a fraction)",
                                      f"Budget({name}=...)",
                                      "for a fraction of a model's cost use Budget.fraction_of(model, "
                                      f"{name}={value!r})")
        if all(value is None for value in values.values()):
            raise TfcompressError("a Budget with no limit", "Budget()",
                                  "pass at least one of " + ", ".join(QUANTITIES))
        self.params = None if params is None else int(params)
        self.weight_bytes = None if weight_bytes is None else int(weight_bytes)
        self.macs = None if macs is None else int(macs)
        self.arena_bytes = None if arena_bytes is None else int(arena_bytes)
        self.latency_ms = None if latency_ms is None else float(latency_ms)
        self.precision = check_precision(precision, "Budget(precision=...)")

    @property
    def limits(self) -> dict[str, float]:
        """``{quantity: limit}`` of the quantities limited, in `QUANTITIES` order."""
        return {q: getattr(self, q) for q in QUANTITIES if getattr(self, q) is not None}

    @property
    def needs_export(self) -> bool:
        """Whether checking it needs an export (an arena or latency limit)."""
        return any(q in self.limits for q in MEASURED)

    @classmethod
    def fraction_of(cls, model_or_cost, *, precision: str | Mapping[str, str] = "int8", **fractions: float) -> Budget:
        """A budget of fractions of a model's (or a `Cost`'s) current cost, e.g. the issue's
        ``Budget.fraction_of(lenet, macs=1/15, params=1/60)``.

        Example:
            >>> import keras, tfcompress
            >>> x = keras.Input((16,))
            >>> model = keras.Model(x, keras.layers.Dense(10)(x))
            >>> tfcompress.Budget.fraction_of(model, macs=0.5).macs
            80
        """
        unknown = sorted(set(fractions) - set(QUANTITIES))
        if unknown or not fractions:
            raise TfcompressError(f"fractions of {unknown or 'nothing'}", "Budget.fraction_of",
                                  "pass fractions of " + ", ".join(QUANTITIES) + ", e.g. macs=0.25")
        for name, value in fractions.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise TfcompressError(f"{name}={value!r} is not a fraction in (0, 1]", "Budget.fraction_of",
                                      f"pass e.g. {name}=0.25")
        cost = model_or_cost if isinstance(model_or_cost, Cost) else model_cost(
            model_or_cost, precision, arena="arena_bytes" in fractions, latency="latency_ms" in fractions)
        limits = {}
        for name, value in fractions.items():
            current = cost.get(name)
            if current is None:
                raise TfcompressError(f"the cost has no {name}", "Budget.fraction_of",
                                      "pass a model, or a Cost measured with model_cost(..., arena=True / latency=True)")
            limits[name] = current * value if name == "latency_ms" else max(1, int(math.floor(current * value)))
        return cls(**limits, precision=precision)

    def check(self, cost: Cost) -> BudgetCheck:
        """Which limits ``cost`` meets, with the numbers (a `BudgetCheck`).

        Example:
            >>> import tfcompress
            >>> check = tfcompress.Budget(macs=1000).check(tfcompress.budget.Cost(params=10, weight_bytes=10, macs=800))
            >>> check.met, check.rows
            (True, [('macs', 1000, 800, True)])
        """
        if not isinstance(cost, Cost):
            raise TfcompressError(f"expected a Cost, got {type(cost).__name__}", "Budget.check",
                                  "pass tfcompress.model_cost(model) (or budget.cost(model))")
        if "weight_bytes" in self.limits and cost.precision != self.precision:
            raise TfcompressError(
                f"the cost counts weight bytes at {_precision_text(cost.precision)}, the budget at "
                f"{_precision_text(self.precision)}", "Budget.check",
                "measure with model_cost(model, precision=budget.precision), or budget.cost(model)")
        rows = []
        for quantity, limit in self.limits.items():
            value = cost.get(quantity)
            if value is None:
                flag = "arena=True" if quantity == "arena_bytes" else "latency=True"
                raise TfcompressError(f"the budget limits {quantity} but the cost has none (not measured)",
                                      "Budget.check", f"measure it: model_cost(model, {flag}), or budget.cost(model)")
            rows.append((quantity, limit, value, bool(value <= limit)))
        return BudgetCheck(rows)

    def cost(self, model, representative_data=None) -> Cost:
        """:func:`model_cost` of ``model`` measuring what this budget limits (an export only for
        an arena or latency limit)."""
        return model_cost(model, self.precision, arena="arena_bytes" in self.limits,
                          latency="latency_ms" in self.limits, representative_data=representative_data)

    def scaled(self, progress: float, start: Mapping[str, float]) -> Budget:
        """The budget ``progress`` of the way from ``start`` (``{quantity: value}``) to this one:
        ``start - progress * (start - limit)`` per limit (the gradual schedule of
        `tfcompress.pruning.budget.BudgetSchedule`); limits ``start`` already meets stay."""
        progress = min(1.0, max(0.0, float(progress)))
        limits: dict[str, float] = {}
        for quantity, limit in self.limits.items():
            begin = start.get(quantity)
            value = limit if begin is None or begin <= limit else begin - progress * (begin - limit)
            limits[quantity] = value if quantity == "latency_ms" else max(1, int(math.floor(value)))
        return Budget(**limits, precision=self.precision)

    def __eq__(self, other) -> bool:
        return isinstance(other, Budget) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(self.get_config()))

    def __repr__(self) -> str:
        parts = [f"{q}={v!r}" for q, v in self.limits.items()]
        if self.precision != "int8":
            parts.append(f"precision={self.precision!r}")
        return f"Budget({', '.join(parts)})"

    def get_config(self) -> dict[str, Any]:
        return {"params": self.params, "weight_bytes": self.weight_bytes, "macs": self.macs,
                "arena_bytes": self.arena_bytes, "latency_ms": self.latency_ms, "precision": self.precision}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Budget:
        return cls(**config)


def _samples(model, representative_data, n: int = 16):
    if representative_data is not None:
        return representative_data
    rng = np.random.default_rng(0)
    shape = tuple(1 if d is None else int(d) for d in model.inputs[0].shape[1:])
    return rng.uniform(0.0, 1.0, (n, *shape)).astype("float32")


def model_cost(model, precision: str | Mapping[str, str] = "int8", *, arena: bool = False, latency: bool = False,
               representative_data=None, shrink: bool = False, latency_runs: int = 50) -> Cost:
    """What ``model`` costs, in the terms of a `Budget`: parameters, weight bytes, MACs, and
    (when asked, by an int8 export) the TFLite Micro arena and the LiteRT latency.

    MACs and parameters are ``tfcompress.metrics.summarize``'s (per sample, batch 1); weight
    bytes the converter's layout at ``precision`` (module docstring). The arena is TFLite
    Micro's ``RecordingMicroAllocator`` figure after a real invocation (``to_micro``; David et
    al., MLSys 2021), the latency the p50 of ``latency_runs`` interleaved LiteRT invocations
    (XNNPACK, one thread, ``tfcompress.export.bench.benchmark``); both on the file
    ``to_tflite`` writes at the mode of ``precision`` (``"int8"``, a per-layer dict, or
    ``"int16x8"``), calibrated on ``representative_data`` (16 uniform random inputs in [0, 1]
    when None: the arena does not depend on the values, the latency hardly).

    Args:
        model: a built Sequential or Functional Keras model.
        precision: the precision weight bytes are counted at (and the export's, when measured).
        arena: also measure the TFLite Micro arena.
        latency: also measure the LiteRT latency.
        representative_data: calibration inputs for the export.
        shrink: count the model after ``tfcompress.shrink`` (pruning wrappers stripped, zero
            channels removed): what a pruned model will cost once it is made small.
        latency_runs: timed invocations for the latency.

    Returns:
        A `Cost`.

    Example:
        >>> import keras, tfcompress
        >>> x = keras.Input((16,))
        >>> model = keras.Model(x, keras.layers.Dense(4)(keras.layers.Dense(32)(x)))
        >>> cost = tfcompress.model_cost(model)
        >>> cost.params, cost.macs, cost.weight_bytes
        (676, 640, 784)
    """
    from tfcompress.metrics import summarize

    if not isinstance(model, keras.Model):
        raise TfcompressError(f"expected a Keras model, got {type(model).__name__}", "model_cost",
                              "pass a built Sequential or Functional keras.Model")
    precision = check_precision(precision, "model_cost(precision=...)")
    if shrink:
        from tfcompress.pruning.surgery import shrink as shrink_model

        model = shrink_model(model)
    summary = summarize(model)
    cost = Cost(params=int(summary.params), weight_bytes=weight_bytes(model, precision), macs=int(summary.macs),
                precision=precision)
    if summary.unknown_macs:
        cost.notes.append("MACs unknown (not counted): " + ", ".join(summary.unknown_macs))
    if arena or latency:
        _measure(model, cost, precision, arena, latency, representative_data, latency_runs)
    return cost


def _measure(model, cost: Cost, precision, arena: bool, latency: bool, representative_data, runs: int) -> None:
    from tfcompress.export.convert import to_tflite

    mode = _mode(precision)
    if mode not in ("int8", "int16x8"):
        raise TfcompressError(f"arena and latency are measured on int8 or int16x8 exports, not {mode}",
                              "model_cost(arena=/latency=)", "measure at precision='int8' (or a per-layer dict)")
    with tempfile.TemporaryDirectory(prefix="tfcompress_cost_") as tmp:
        path = os.path.join(tmp, "model.tflite")
        to_tflite(model, path, mode, _samples(model, representative_data),
                  precision=precision if isinstance(precision, dict) else None)
        if arena:
            from tfcompress.export.micro import to_micro

            report = to_micro(path, os.path.join(tmp, "micro"), name="model")
            cost.arena_bytes = int(report.arena_bytes)
            cost.notes.append(f"arena: TFLite Micro {report.tflm_version}, head {report.arena_head_bytes} + "
                              f"tail {report.arena_tail_bytes} B, {mode} file of {report.model_size_bytes} B")
        if latency:
            from tfcompress.export.bench import benchmark

            bench = benchmark([path], runs=runs, warmup=min(10, runs))
            cost.latency_ms = float(bench.results[0].p50_ms)
            cost.notes.append(f"latency: p50 of {runs} runs, {bench.results[0].runtime.runtime} "
                              f"{bench.results[0].runtime.delegate}, 1 thread")

"""Model metrics: parameters, non-zero parameters, sparsity and MACs, for Keras and TFLite models.

:func:`summarize` walks a built Keras model (Sequential, Functional, and models nested in
them as layers) and counts, per layer and in total, the parameters, the non-zero parameters,
the sparsity and the multiply-accumulates (MACs) of one inference on one sample (batch 1).
:func:`summarize_tflite` gives the matching figures of a ``.tflite`` file, read without an
interpreter, so a Keras model and its export can be compared.

MAC conventions (per sample; a "MAC" is one multiply and one add; bias additions and
activation functions are not counted, as in the MobileNet / MobileNetV2 papers' "Mult-Adds"):

==============================  ==================================================================
Conv1D / Conv2D / Conv3D        ``output elements * prod(kernel_size) * in_channels / groups``
                                (strides, padding and dilation enter through the output size)
DepthwiseConv1D / 2D            ``output elements * prod(kernel_size)``
                                (output channels = in_channels * depth_multiplier)
SeparableConv1D / 2D            depthwise ``spatial * in * dm * prod(kernel_size)`` + pointwise
                                ``spatial * in * dm * filters`` (spatial = output positions)
ConvNDTranspose                 ``input elements * prod(kernel_size) * filters``
Dense                           ``output elements * in_features`` (= ``prod(leading dims) * in * units``
                                on N-D inputs)
Max/AveragePooling              ``output elements * prod(pool_size)`` (one compare / add each)
GlobalMax/AveragePooling        ``input elements``
BatchNormalization              ``output elements`` (one multiply-add per element; it folds into
                                the preceding convolution or dense layer at export, so a TFLite
                                file has no such cost)
Add/Subtract/Multiply/Average/  ``(number of tensor inputs - 1) * output elements`` (at least
Maximum/Minimum                 ``output elements``: ``x * 2.0`` in a Functional graph is one)
Concatenate, reshapes,          0
activations, dropout, ...
anything else with weights      unknown: ``macs`` is ``None``, listed in ``unknown_macs`` and
                                left out of the totals
==============================  ==================================================================

The "linear" MACs (convolutions and dense layers: :attr:`ModelSummary.linear_macs`) are
what :func:`summarize_tflite` counts for ``CONV_2D``, ``DEPTHWISE_CONV_2D``,
``FULLY_CONNECTED`` and ``TRANSPOSE_CONV``, so the two agree for an exported model.

Protocol for tfcompress layers that wrap or reparametrise weights (both methods optional):

``layer.tfcompress_macs(input_shape, output_shape) -> int``
    The layer's MACs for one call. Shapes are Keras shapes with the batch dimension set to 1;
    ``input_shape`` is a tuple for a single-input layer and a list of tuples otherwise (the
    same for ``output_shape``). Without it, a ``keras.layers.Wrapper`` is counted as its
    inner ``layer``.
``layer.tfcompress_effective_weights() -> list[np.ndarray]``
    The arrays that count as the layer's parameters, e.g. ``kernel * mask`` and ``bias``
    for a pruned layer. When present, they alone are counted (parameters and exact zeros)
    and all of the layer's own variables (masks, thresholds, step counters) are considered
    accounted for.

Without the protocol, a layer's parameters are all its weights, trainable and not
(``layer.weights``: BatchNormalization's moving statistics count, as in
``model.count_params()``; random-seed state does not), and non-zero parameters are the
entries that are not exactly 0.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tfcompress.errors import TfcompressError

__all__ = [
    "LayerSummary",
    "ModelSummary",
    "summarize",
    "summarize_tflite",
    "tflite_macs",
]

Shape = tuple[int | None, ...]


@dataclass
class LayerSummary:
    """One layer's figures. ``name`` is its path (``inner/conv`` for a layer of a nested model).

    ``macs`` is per sample and summed over all calls of a shared layer; ``None`` when unknown.
    ``output_shape`` is the first call's output shape (batch dimension ``None``).
    ``kind`` is one of ``conv``, ``dense``, ``pool``, ``norm``, ``elementwise``, ``other``.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
        >>> row = summarize(model).layers[0]
        >>> row.name, row.class_name, row.params, row.macs, row.kind
        ('fc', 'Dense', 36, 32, 'dense')
    """

    name: str
    class_name: str
    params: int
    nonzero_params: int
    sparsity: float
    macs: int | None
    output_shape: Any
    kind: str = "other"
    calls: int = 1


@dataclass
class ModelSummary:
    """Per-layer and total parameters, non-zero parameters, sparsity and MACs of a Keras model.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")], name="tiny")
        >>> _ = model.layers[0].kernel.assign(np.zeros((8, 4), "float32"))      # bias is zero too
        >>> s = summarize(model)
        >>> s.params, s.nonzero_params, round(s.sparsity, 3), s.linear_macs
        (36, 0, 1.0, 32)
        >>> print(s)
        Model "tiny" (MACs per sample, batch 1)
        Layer  Type   Output shape  Params  Non-zero  Sparsity  MACs
        ------------------------------------------------------------
        fc     Dense  (None, 4)         36         0    100.0%    32
        ------------------------------------------------------------
        Total                           36         0    100.0%    32
        MACs by kind: dense 32
    """

    name: str
    layers: list[LayerSummary]
    params: int
    nonzero_params: int
    sparsity: float
    macs: int
    unknown_macs: list[str] = field(default_factory=list)

    def macs_by_kind(self) -> dict[str, int]:
        """Known MACs summed by layer kind (``conv``, ``dense``, ``pool``, ...)."""
        totals: dict[str, int] = {}
        for row in self.layers:
            if row.macs is not None:
                totals[row.kind] = totals.get(row.kind, 0) + row.macs
        return totals

    @property
    def linear_macs(self) -> int:
        """MACs of convolutions and dense layers: what a TFLite export's conv/FC ops compute."""
        by_kind = self.macs_by_kind()
        return by_kind.get("conv", 0) + by_kind.get("dense", 0)

    def to_dict(self) -> dict:
        """JSON-ready dictionary (shapes as lists, ``None`` as null)."""
        out = asdict(self)
        for row in out["layers"]:
            row["output_shape"] = _jsonable_shape(row["output_shape"])
        out["macs_by_kind"] = self.macs_by_kind()
        out["linear_macs"] = self.linear_macs
        return out

    def table(self) -> str:
        """An aligned, printable table of every layer and the totals."""
        header = ("Layer", "Type", "Output shape", "Params", "Non-zero", "Sparsity", "MACs")
        rows = [header]
        for r in self.layers:
            rows.append(
                (
                    r.name,
                    r.class_name,
                    _format_shape(r.output_shape),
                    f"{r.params:,}",
                    f"{r.nonzero_params:,}",
                    f"{r.sparsity:.1%}",
                    "?" if r.macs is None else f"{r.macs:,}" + (f" ({r.calls} calls)" if r.calls > 1 else ""),
                )
            )
        total = ("Total", "", "", f"{self.params:,}", f"{self.nonzero_params:,}", f"{self.sparsity:.1%}", f"{self.macs:,}")
        widths = [max(len(row[i]) for row in [*rows, total]) for i in range(len(header))]
        right = {3, 4, 5, 6}

        def line(row: tuple[str, ...]) -> str:
            cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
            return "  ".join(cells).rstrip()

        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        lines = [f'Model "{self.name}" (MACs per sample, batch 1)', line(header), rule]
        lines += [line(row) for row in rows[1:]]
        lines += [rule, line(total)]
        by_kind = ", ".join(f"{k} {v:,}" for k, v in sorted(self.macs_by_kind().items()) if v)
        if by_kind:
            lines.append(f"MACs by kind: {by_kind}")
        if any(r.kind == "norm" and r.macs for r in self.layers):
            lines.append("BatchNormalization MACs fold into the preceding layer at export.")
        if self.unknown_macs:
            lines.append("MACs unknown (not in the total): " + ", ".join(self.unknown_macs))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _jsonable_shape(shape: Any) -> Any:
    if shape is None:
        return None
    if isinstance(shape, list):
        return [_jsonable_shape(s) for s in shape]
    return list(shape)


def _format_shape(shape: Any) -> str:
    if shape is None:
        return "?"
    if isinstance(shape, list):
        return ", ".join(_format_shape(s) for s in shape)
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


# ---------------------------------------------------------------------------------------------
# Keras models


def summarize(model) -> ModelSummary:
    """Parameters, non-zero parameters, sparsity and MACs per layer and in total.

    Args:
        model: a built ``keras.Model``: Sequential, Functional, or a subclassed model. A
            subclassed model records no graph, so its direct layers are summarised from their
            build shapes: a weightless layer there (pooling, merge) counts 0 MACs, and layers
            called inside another layer's ``call`` are not seen. Models used as layers are recursed into; their rows are
            named ``inner/layer`` (``mid/inner/layer`` deeper down). A layer called several
            times appears once, its parameters counted once and its MACs summed over calls.

    Returns:
        A :class:`ModelSummary`; ``str()`` of it is a printable table.

    Raises:
        TfcompressError: ``model`` is not a Keras model, or is not built.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
        ...                           keras.layers.Flatten(), keras.layers.Dense(2, name="fc")])
        >>> s = summarize(model)
        >>> s.params, s.macs_by_kind()
        (330, {'conv': 1296, 'other': 0, 'dense': 288})
        >>> s.to_dict()["layers"][0]["output_shape"]
        [None, 6, 6, 4]
    """
    import keras

    if not isinstance(model, keras.Model):
        raise TfcompressError(
            f"expected a keras.Model, got {type(model).__name__}",
            "tfcompress.metrics.summarize(model)",
            "pass a Keras 3 model (load a .keras file with keras.models.load_model)",
        )
    if not model.built:
        raise TfcompressError(
            "the model is not built, so its shapes and weights are unknown",
            f"model {model.name!r}",
            "give it an Input layer, call model.build(input_shape), or call it on one batch",
        )
    walker = _Walker()
    graph = _graph_of(model)
    if graph is not None:
        walker.walk(graph, None, "")
    else:
        walker.walk_subclassed(model, "")

    seen: set[int] = set()
    layers: list[LayerSummary] = []
    for row in walker.rows.values():
        layers.append(_layer_summary(row, seen))
    leftover = [v for v in model.weights if id(v) not in seen]
    if leftover:
        arrays = [_to_numpy(v) for v in leftover]
        params, nonzero = _count(arrays)
        layers.append(
            LayerSummary(
                name="(weights owned by models)",
                class_name="",
                params=params,
                nonzero_params=nonzero,
                sparsity=_sparsity(params, nonzero),
                macs=0,
                output_shape=None,
            )
        )
    params = sum(r.params for r in layers)
    nonzero = sum(r.nonzero_params for r in layers)
    return ModelSummary(
        name=model.name,
        layers=layers,
        params=params,
        nonzero_params=nonzero,
        sparsity=_sparsity(params, nonzero),
        macs=sum(r.macs for r in layers if r.macs is not None),
        unknown_macs=[r.name for r in layers if r.macs is None],
    )


@dataclass
class _Row:
    path: str
    op: Any
    calls: list[tuple[list[Shape], list[Shape]]] = field(default_factory=list)


def _graph_of(model) -> Any | None:
    """The Functional graph that runs ``model``, or None for a subclassed model."""
    import keras

    if isinstance(model, keras.Sequential):
        # A built Sequential runs through the Functional model it keeps in `_functional`.
        return getattr(model, "_functional", None)
    if getattr(model, "_nodes_by_depth", None) is not None and hasattr(model, "inputs"):
        return model
    return None


def _shape_of(tensor) -> Shape:
    return tuple(None if d is None else int(d) for d in tensor.shape)


class _Walker:
    """Collects, per (path, layer), the input and output shapes of every call."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], _Row] = {}

    def record(self, prefix: str, op, inputs: list, outputs: list) -> None:
        key = (prefix, id(op))
        if key not in self.rows:
            self.rows[key] = _Row(prefix + op.name, op)
        self.rows[key].calls.append(([_shape_of(t) for t in inputs], [_shape_of(t) for t in outputs]))

    def walk(self, graph, inputs_override: list | None, prefix: str) -> list:
        """Visit the graph's nodes in topological order.

        With ``inputs_override`` (KerasTensors for the graph's inputs), shapes are propagated
        anew with ``compute_output_spec``: a nested model built for ``(None, None, 3)`` and
        called on ``(32, 32, 3)`` gets concrete shapes. Otherwise the shapes recorded in the
        graph's nodes are used, which costs nothing.
        """
        import keras
        from keras import tree

        tensor_map: dict[int, Any] = {}
        if inputs_override is not None:
            for ref, value in zip(graph.inputs, inputs_override, strict=True):
                tensor_map[id(ref)] = value
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                op = node.operation
                if op is None or node.is_input:
                    continue
                if inputs_override is not None:
                    if any(id(x) not in tensor_map for x in node.input_tensors):
                        continue
                    inputs = [tensor_map[id(x)] for x in node.input_tensors]
                else:
                    inputs = list(node.input_tensors)
                sub = _graph_of(op) if isinstance(op, keras.Model) else None
                if sub is not None:
                    refs = list(sub.inputs)
                    same = len(refs) == len(inputs) and all(
                        _shape_of(a)[1:] == _shape_of(b)[1:] for a, b in zip(refs, inputs, strict=True)
                    )
                    override = None if (inputs_override is None and same) else inputs
                    outputs = self.walk(sub, override, f"{prefix}{op.name}/")
                elif inputs_override is not None:
                    args, kwargs = node.arguments.fill_in(tensor_map)
                    outputs = tree.flatten(op.compute_output_spec(*args, **kwargs))
                    self.record(prefix, op, inputs, outputs)
                else:
                    outputs = list(node.outputs)
                    self.record(prefix, op, inputs, outputs)
                if inputs_override is not None:
                    for ref, value in zip(node.outputs, outputs, strict=True):
                        tensor_map[id(ref)] = value
        if inputs_override is not None:
            return [tensor_map[id(x)] for x in graph.outputs]
        return list(graph.outputs)

    def walk_subclassed(self, model, prefix: str) -> None:
        """A subclassed model records no graph: use each layer's build shape."""
        import keras

        for layer in model.layers:
            sub = _graph_of(layer) if isinstance(layer, keras.Model) else None
            if sub is not None:
                self.walk(sub, None, f"{prefix}{layer.name}/")
                continue
            key = (prefix, id(layer))
            self.rows[key] = _Row(prefix + layer.name, layer)
            shapes = getattr(layer, "_build_shapes_dict", None) or {}
            if len(shapes) == 1:
                in_shape = tuple(next(iter(shapes.values())))
                try:
                    out_shape = tuple(layer.compute_output_shape(in_shape))
                except Exception:  # a layer without compute_output_shape: MACs stay unknown
                    continue
                # Build shapes carry whatever batch size built the layer: show it as None.
                self.rows[key].calls.append(([(None, *in_shape[1:])], [(None, *out_shape[1:])]))


def _to_numpy(variable) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable))


def _count(arrays: list[np.ndarray]) -> tuple[int, int]:
    params = sum(int(a.size) for a in arrays)
    nonzero = sum(int(np.count_nonzero(a)) for a in arrays)
    return params, nonzero


def _sparsity(params: int, nonzero: int) -> float:
    return 0.0 if params == 0 else 1.0 - nonzero / params


def _layer_summary(row: _Row, seen: set[int]) -> LayerSummary:
    layer = row.op
    own = [v for v in getattr(layer, "weights", []) if id(v) not in seen]
    if hasattr(layer, "tfcompress_effective_weights"):
        arrays = [np.asarray(a) for a in layer.tfcompress_effective_weights()]
    else:
        arrays = [_to_numpy(v) for v in own]
    seen.update(id(v) for v in getattr(layer, "weights", []))
    params, nonzero = _count(arrays)

    macs: int | None = 0
    for inputs, outputs in row.calls:
        call_macs = layer_macs(layer, _batch1(inputs), _batch1(outputs))
        macs = None if macs is None or call_macs is None else macs + call_macs
    if not row.calls and _has_weights(layer):
        macs = None  # never saw a call: shapes unknown

    output_shape: Any = None
    if row.calls:
        outs = row.calls[0][1]
        output_shape = outs[0] if len(outs) == 1 else list(outs)
    return LayerSummary(
        name=row.path,
        class_name=type(layer).__name__,
        params=params,
        nonzero_params=nonzero,
        sparsity=_sparsity(params, nonzero),
        macs=macs,
        output_shape=output_shape,
        kind=_kind(layer),
        calls=len(row.calls),
    )


def _batch1(shapes: list[Shape]) -> list[Shape]:
    return [((1,) + tuple(s[1:])) if len(s) else tuple(s) for s in shapes]


def _numel(shape: Shape) -> int | None:
    """Elements per sample (batch dimension excluded); None when a dimension is unknown."""
    dims = shape[1:]
    if any(d is None for d in dims):
        return None
    return int(math.prod(dims))


def _has_weights(layer) -> bool:
    return bool(getattr(layer, "weights", None))


def _kind(layer) -> str:
    """The MAC-counting kind of ``layer``, from its handler (``tfcompress.core``)."""
    from tfcompress.core import handler_for

    handler = handler_for(layer, inherit=True)
    if handler.kind == "other" and hasattr(layer, "layer") and not hasattr(layer, "tfcompress_macs"):
        return _kind(layer.layer)  # a wrapper: the wrapped layer's kind
    if handler.kind == "other" and hasattr(layer, "tfcompress_kind"):
        return str(layer.tfcompress_kind)  # a tfcompress layer may name its kind
    return handler.kind


def layer_macs(layer, input_shapes: list[Shape], output_shapes: list[Shape]) -> int | None:
    """MACs of one call of ``layer`` (shapes with batch 1), by the conventions in the module doc:
    each layer type's handler (``tfcompress.core.LayerHandler.macs``) counts its own."""
    from tfcompress.core import handler_for

    if hasattr(layer, "tfcompress_macs"):
        in_arg = input_shapes[0] if len(input_shapes) == 1 else list(input_shapes)
        out_arg = output_shapes[0] if len(output_shapes) == 1 else list(output_shapes)
        return int(layer.tfcompress_macs(in_arg, out_arg))
    if not input_shapes or not output_shapes:
        return 0 if not _has_weights(layer) else None
    handler = handler_for(layer, inherit=True)
    if not handler.known and hasattr(layer, "layer"):  # a Keras wrapper: the wrapped layer's MACs
        return layer_macs(layer.layer, input_shapes, output_shapes)
    return handler.macs(layer, input_shapes, output_shapes)


# ---------------------------------------------------------------------------------------------
# TFLite files


def tflite_macs(tflite_model) -> list[dict]:
    """MACs of each CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and TRANSPOSE_CONV op.

    Computed from tensor shapes (TFLite layouts: CONV_2D filter ``[O, KH, KW, I]``,
    DEPTHWISE_CONV_2D filter ``[1, KH, KW, O]``, FULLY_CONNECTED weights ``[O, I]``,
    TRANSPOSE_CONV weights ``[O, KH, KW, I]``), divided by the batch size of the model's first
    input, so the numbers are per sample like :func:`summarize`'s.

    Each row's ``static`` says whether all of the op's tensors have static shapes. A file
    converted with a dynamic batch stores a placeholder size 1 for the unknown dimension, and
    an op that folds other dimensions into it (a Dense on a 3-D input becomes a
    FULLY_CONNECTED on a ``[-1, features]`` reshape) is then under-counted: export with a
    static batch size (``to_tflite``'s default ``batch_size=1``) for exact numbers.

    Example:
        >>> import keras
        >>> from tfcompress.export import load_tflite, to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> _ = to_tflite(model, "model.tflite", quantization=None)
        >>> [(row["op"], row["weights_shape"], row["macs"]) for row in tflite_macs(load_tflite("model.tflite"))]
        [('FULLY_CONNECTED', [4, 8], 32)]
    """
    tfl = tflite_model
    batch = 1
    if tfl.inputs and tfl.inputs[0].shape and tfl.inputs[0].shape[0] > 0:
        batch = int(tfl.inputs[0].shape[0])
    rows = []
    for op in tfl.ops:
        if op.name not in {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}:
            continue
        tensors = tfl.tensors[op.subgraph]
        out = tensors[op.outputs[0]]
        out_el = math.prod(out.shape)
        if op.name == "CONV_2D":
            kernel = tensors[op.inputs[1]].shape
            macs = out_el * math.prod(kernel[1:])
        elif op.name == "DEPTHWISE_CONV_2D":
            kernel = tensors[op.inputs[1]].shape
            macs = out_el * kernel[1] * kernel[2]
        elif op.name == "FULLY_CONNECTED":
            kernel = tensors[op.inputs[1]].shape
            macs = out_el * kernel[-1]
        else:  # TRANSPOSE_CONV: inputs are (output_shape, weights, input[, bias])
            kernel = tensors[op.inputs[1]].shape
            macs = math.prod(tensors[op.inputs[2]].shape) * kernel[0] * kernel[1] * kernel[2]
        static = all(not tensors[i].dynamic_dims for i in (*op.inputs, *op.outputs) if i >= 0)
        rows.append(
            {
                "index": op.index,
                "op": op.name,
                "output": out.name,
                "output_shape": list(out.shape),
                "weights_shape": list(kernel),
                "macs": int(macs) // batch,
                "static": static,
            }
        )
    return rows


def summarize_tflite(source: str | os.PathLike | bytes) -> dict:
    """Size, gzip size, op counts, int8 coverage, weight zeros and MACs of a ``.tflite`` model.

    ``source`` is a path, the file's bytes, or a ``TFLiteModel`` from
    :func:`tfcompress.export.tflite_file.load_tflite`. The file is validated first (a
    corrupted file raises ``InvalidModelFileError``). ``macs`` counts convolutions and fully
    connected ops per sample (see :func:`tflite_macs`), comparable with
    :attr:`ModelSummary.linear_macs` of the Keras model it came from; ``macs_exact`` is
    False when some of those ops have dynamic shapes (see :func:`tflite_macs`).

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> _ = to_tflite(model, "model.tflite", quantization=None)
        >>> info = summarize_tflite("model.tflite")
        >>> info["macs"], info["macs_by_op"], info["weight_elements"]        # the 8 x 4 kernel
        (32, {'FULLY_CONNECTED': 32}, 32)
    """
    from tfcompress.export.tflite_file import TFLiteModel, load_tflite

    tfl = source if isinstance(source, TFLiteModel) else load_tflite(source)
    out = tfl.summary()
    elements, zeros = out["weight_elements"], out["weight_zeros"]
    out["weight_sparsity"] = round(zeros / elements, 6) if elements else 0.0
    mac_ops = tflite_macs(tfl)
    by_op: dict[str, int] = {}
    for row in mac_ops:
        by_op[row["op"]] = by_op.get(row["op"], 0) + row["macs"]
    out["macs"] = sum(by_op.values())
    out["macs_exact"] = all(row["static"] for row in mac_ops)
    out["macs_by_op"] = by_op
    out["mac_ops"] = mac_ops
    return out

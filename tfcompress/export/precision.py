"""Quantize a float `.tflite` file, and int4 weights (issue 22).

`quantize_tflite` is for users who have only the converted float file:

- ``"int8"`` / ``"int16x8"``: TensorFlow's own post-training calibration and quantization,
  the steps ``TFLiteConverter.convert`` runs after its float conversion
  (``tensorflow.lite.python.optimize.calibrator.Calibrator``: calibrate on the samples, then
  the MLIR quantizer for int8, the calibrator's ``calibrate_and_quantize`` with int16
  activations / int64 biases for 16x8). On the same float file and samples the result has the
  tensors ``to_tflite`` writes from the Keras model: same types, scales, zero points and
  constant values (tests/test_precisions.py checks it).
- ``"int4"``: int8 activations with 4-bit weights, written by Google's ai-edge-quantizer
  (``pip install 'tfcompress[int4]'``; static range quantization, min / max calibration):
  every FULLY_CONNECTED gets per-tensor int4 weights and every CONV_2D per-channel int4
  weights; the other ops stay int8 (ai-edge-quantizer 0.10 has no int4 DEPTHWISE_CONV_2D).
  Per-tensor for FULLY_CONNECTED because TFLite Micro refuses per-channel int4 fully connected
  weights (``fully_connected_common.cc``: int4 filters must be per-tensor); with these choices
  the file runs on LiteRT (builtin and reference kernels) and on TFLite Micro. TFLite Micro
  unpacks int4 weights into an int8 scratch buffer of its arena at every invocation: on
  LeNet-5-Caffe with int4 fc1 the file is 222,944 bytes instead of 450,464 but the measured arena
  401,312 + 2,800 bytes instead of 14,400 + 6,864 (the report's notes say how much). The ranges
  are calibrated as the converter calibrates them (global min / max, not ai-edge-quantizer's
  moving average), so the int8 ops of such a file are ``to_tflite``'s int8 ones. Buffers stored
  after the flatbuffer (ai-edge-quantizer's layout past 256 KiB) are moved inside
  (`tfcompress.export.buffers.inline_buffers`), so TFLite Micro reads the weights.
- ``"int4_weight_only"``: ai-edge-quantizer's weight-only recipe, per-channel int4 weights that
  DEQUANTIZE ops turn back into float32 for float kernels: the smallest file with float
  accuracy, for LiteRT only (TFLite Micro's DEQUANTIZE takes no int4; dynamic-range int4, the
  other float-activation form, is refused by TFLite Micro too: "Hybrid models are not supported").

Per-layer precision, the base of mixed precision: ``precision={"name": "int4" | "int8"}``
overrides the default weight precision of named ops (``quantization="int8"`` or ``"int4"``).
In ``to_tflite`` the names are Keras layer names (a Dense / Conv2D layer found in the file by
its kernel values); in ``quantize_tflite`` they are the TFLite names of the op's output or
weight tensor (`tfcompress.export.load_tflite` lists them). A name that matches nothing, an op
that cannot take int4 weights, or a value other than "int4" / "int8" is an error.

Example:
    >>> import numpy as np, keras, tempfile, os
    >>> from tfcompress.export import to_tflite, quantize_tflite
    >>> x = keras.Input((4,))
    >>> model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(3, name="fc1")(x)))
    >>> d = tempfile.mkdtemp()
    >>> _ = to_tflite(model, os.path.join(d, "float.tflite"), None)
    >>> report = quantize_tflite(os.path.join(d, "float.tflite"), os.path.join(d, "int8.tflite"),
    ...                          np.ones((8, 4), "float32"), "int8")
    >>> report.int8_coverage
    1.0
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
import types
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tfcompress._io import write_bytes_atomic
from tfcompress.errors import (
    ConversionError,
    FloatFallbackError,
    InvalidModelFileError,
    TfcompressError,
)
from tfcompress.export.calibration import converter_dataset, representative_samples
from tfcompress.export.tflite_file import FLOAT_TYPES, TFLiteModel, load_tflite

#: the modes `quantize_tflite` writes
FILE_QUANTIZATIONS = ("int8", "int16x8", "int4", "int4_weight_only")
#: the weight precisions a ``precision`` dict may name
PRECISIONS = ("int8", "int4")
#: ops whose weights ai-edge-quantizer 0.10 writes as int4 with int8 activations, and how
INT4_OPS = {"FULLY_CONNECTED": "per-tensor", "CONV_2D": "per-channel"}
#: the model I/O type of each mode (ai-edge-quantizer's static recipe quantizes the I/O)
_IO = {"int8": ("int8", "uint8", "float32"), "int16x8": ("int16", "float32"), "int4": ("int8",),
       "int4_weight_only": ("float32",)}
#: why TFLite Micro cannot run a weight-only int4 file (measured, benchmarks/NOTES.md)
WEIGHT_ONLY_TFLM = ("LiteRT only: TFLite Micro's DEQUANTIZE takes no int4 input "
                    "(dequantize_common.cc: int8 / int16 / uint8 only)")


class PrecisionError(TfcompressError):
    """A ``precision`` dict names no op, an op that cannot take the precision, or a bad value.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
        >>> to_tflite(model, "m.tflite", "int8", np.ones((4, 8), "float32"), precision={"fc": "int3"})
        Traceback (most recent call last):
        ...
        tfcompress.export.precision.PrecisionError: precision: unknown precision 'int3' for 'fc' Fix: use one of ...
    """


def _require_quantizer():
    try:
        from ai_edge_quantizer import qtyping, quantizer
    except ImportError as exc:
        raise TfcompressError(
            f"int4 weights need ai-edge-quantizer, which is not installed ({exc})",
            "quantization='int4'",
            "pip install 'tfcompress[int4]' (ai-edge-quantizer==0.10.0)",
        ) from None
    return quantizer, qtyping


def _file_specs(model: TFLiteModel):
    """A stand-in with ``inputs`` as `representative_samples` reads them from a Keras model."""
    return types.SimpleNamespace(inputs=[
        types.SimpleNamespace(shape=(None, *t.shape[1:]), dtype="float32", name=t.name) for t in model.inputs
    ])


def _check_float_file(model: TFLiteModel) -> None:
    where = model.path or "<bytes>"
    quantized = [t.name for tensors in model.tensors for t in tensors
                 if not t.constant and t.quantization is not None and t.dtype not in FLOAT_TYPES]
    if quantized:
        raise InvalidModelFileError(
            f"the file is already quantized ({len(quantized)} integer activation tensor(s), e.g. {quantized[0]!r})",
            where,
            "pass the float .tflite file (to_tflite(model, path, quantization=None) or the converter "
            "without optimizations)",
        )
    if any(t.dtype not in FLOAT_TYPES for t in model.inputs):
        raise InvalidModelFileError(
            f"input {model.inputs[0].name!r} is {model.inputs[0].dtype}, not float", where,
            "pass the float .tflite file")


def _check_target(path: str | os.PathLike) -> Path:
    target = Path(path)
    if not target.parent.is_dir():
        raise TfcompressError("output directory does not exist", str(target.parent), "create it first")
    if target.is_dir():
        raise TfcompressError("the output path is a directory", str(target), "pass a file name, e.g. model.tflite")
    return target


def weight_ops(model: TFLiteModel) -> list[tuple[int, str, str, str]]:
    """(op index, op name, output tensor name, weight tensor name) of every op of the main
    subgraph with a constant float kernel as input 1 (rank >= 2), in file order.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> keras_model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
        ...                                 keras.layers.Flatten(), keras.layers.Dense(2, name="fc1")])
        >>> _ = to_tflite(keras_model, "float.tflite", quantization=None)
        >>> [op for _, op, _, _ in weight_ops(load_tflite("float.tflite"))]
        ['CONV_2D', 'FULLY_CONNECTED']
    """
    found = []
    for op in model.ops:
        if op.subgraph != 0 or len(op.inputs) < 2 or op.inputs[1] < 0 or not op.outputs:
            continue
        weight = model.tensor(op.inputs[1])
        if weight.constant and weight.dtype in FLOAT_TYPES and len(weight.shape) >= 2:  # a kernel, not a shape
            found.append((op.index, op.name, model.tensor(op.outputs[0]).name, weight.name))
    return found


def _check_precision_values(precision: Mapping[str, str]) -> None:
    if not isinstance(precision, Mapping):
        raise PrecisionError(f"precision must be a dict of name -> precision, got {type(precision).__name__}",
                             "precision", 'pass e.g. precision={"fc1": "int4"}')
    for name, value in precision.items():
        if value not in PRECISIONS:
            raise PrecisionError(f"unknown precision {value!r} for {name!r}", "precision",
                                 f"use one of {PRECISIONS}")


def ops_by_tensor_name(model: TFLiteModel, precision: Mapping[str, str]) -> dict[int, str]:
    """``precision`` keyed by TFLite tensor names (an op's output or weight tensor) -> by op index.

    Raises:
        PrecisionError: a name matches no op with weights.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> keras_model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
        ...                                 keras.layers.Flatten(), keras.layers.Dense(2, name="fc1")])
        >>> _ = to_tflite(keras_model, "float.tflite", quantization=None)
        >>> model = load_tflite("float.tflite")
        >>> index, op, output, weight = weight_ops(model)[0]
        >>> index, op, "conv" in output                # an inner op's output is named after its layer
        (0, 'CONV_2D', True)
        >>> ops_by_tensor_name(model, {output: "int4"}) == ops_by_tensor_name(model, {weight: "int4"}) == {0: "int4"}
        True
        >>> ops_by_tensor_name(model, {"no/such/tensor": "int4"})
        Traceback (most recent call last):
        ...
        tfcompress.export.precision.PrecisionError: precision: no op with weights has an output or weight tensor named 'no/such/tensor'...
    """
    _check_precision_values(precision)
    ops = weight_ops(model)
    resolved: dict[int, str] = {}
    for name, value in precision.items():
        hits = [index for index, _, out, weight in ops if name in (out, weight)]
        if not hits:
            listed = ", ".join(repr(out) for _, _, out, _ in ops[:8])
            raise PrecisionError(
                f"no op with weights has an output or weight tensor named {name!r}", "precision",
                f"name an op's output or weight tensor (load_tflite(FILE) lists them; ops with weights: {listed})")
        resolved.update(dict.fromkeys(hits, value))
    return resolved


def ops_by_keras_layer(keras_model, model: TFLiteModel, precision: Mapping[str, str]) -> dict[int, str]:
    """``precision`` keyed by Keras layer names -> by op index of ``model`` (its float file).

    A Dense / Conv2D layer is found by its kernel: the op whose constant weight input equals
    the kernel in TFLite's layout (FULLY_CONNECTED ``(out, in)``, CONV_2D ``(out, kh, kw, in)``).

    Raises:
        PrecisionError: no such layer, a layer without a kernel, or a kernel the file does not
            hold as it is (a BatchNormalization folded into it).

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> keras_model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
        ...                                 keras.layers.Flatten(), keras.layers.Dense(2, name="fc1")])
        >>> _ = to_tflite(keras_model, "float.tflite", quantization=None)
        >>> ops_by_keras_layer(keras_model, load_tflite("float.tflite"), {"fc1": "int4", "conv": "int8"})
        {2: 'int4', 0: 'int8'}
    """
    from tfcompress.core import iter_layers

    _check_precision_values(precision)
    layers = {layer.name: layer for layer in iter_layers(keras_model, models=False, wrapped=True)}
    ops = weight_ops(model)
    resolved: dict[int, str] = {}
    for name, value in precision.items():
        layer = layers.get(name)
        if layer is None:
            raise PrecisionError(f"the model has no layer named {name!r}", "precision",
                                 f"use layer names of the model ({', '.join(list(layers)[:10])} ...)")
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            raise PrecisionError(f"layer {name!r} ({type(layer).__name__}) has no kernel to quantize", "precision",
                                 "name Dense or Conv2D layers")
        k = np.asarray(kernel)
        layouts = [k.T] if k.ndim == 2 else [np.transpose(k, (3, 0, 1, 2))] if k.ndim == 4 else []
        hits = []
        for index, _, _, _ in ops:
            weight = model.constant_values(model.tensor(model.ops[index].inputs[1]))
            if weight is not None and any(w.shape == weight.shape and np.array_equal(w, weight) for w in layouts):
                hits.append(index)
        if not hits:
            raise PrecisionError(
                f"layer {name!r}'s kernel is not a weight of the converted file (its weights change in "
                "conversion, e.g. a BatchNormalization folded into it)", "precision",
                "name the op's TFLite tensor instead: to_tflite(model, 'float.tflite', None), then "
                "quantize_tflite('float.tflite', out, data, precision={tensor_name: ...})")
        resolved.update(dict.fromkeys(hits, value))
    return resolved


def _int4_plan(model: TFLiteModel, quantization: str, by_op: Mapping[int, str]) -> dict[int, str]:
    """The ops that get int4 weights: all of `INT4_OPS` for ``"int4"``, those ``by_op`` names."""
    plan = {index: "int4" for index, op, _, _ in weight_ops(model) if op in INT4_OPS} if quantization == "int4" else {}
    for index, value in by_op.items():
        op = model.ops[index].name
        if value == "int4" and op not in INT4_OPS:
            raise PrecisionError(
                f"{op}#{index} ({model.tensor(model.ops[index].outputs[0]).name}) cannot take int4 weights",
                "precision", f"int4 weights go on {', '.join(INT4_OPS)} ops (ai-edge-quantizer 0.10); keep it int8")
        if value == "int4":
            plan[index] = "int4"
        else:
            plan.pop(index, None)
    return plan


#: how int4 weight ranges are chosen: "mse" (clip each range to its least-squares threshold) or
#: "max" (ai-edge-quantizer's own: the largest magnitude)
INT4_CLIPPING = ("mse", "max")


def mse_clip_threshold(weights: np.ndarray, bits: int = 4, axis: int | None = None, grid: int = 100) -> np.ndarray:
    """The clipping threshold ``c`` that minimizes the squared error of symmetric ``bits``-bit
    quantization of ``weights``, per slice along ``axis`` (None: one for the whole tensor).

    Banner, Nahshan and Soudry, "Post training 4-bit quantization of convolutional networks
    for rapid-deployment" (NeurIPS 2019, sec. 3, eq. 5): clipping trades the rounding noise
    ``Delta^2 / 12`` of a wider range, ``Delta = c / (2^(M-1) - 1)``, against the clipping
    noise of the weights beyond ``c``; with 4 bits the optimum is well inside the largest
    magnitude. Here the error is measured, not modelled: ``c`` is searched on the grid
    ``max|w| * k / grid`` (k = 1..grid) with the quantizer ai-edge-quantizer applies to a
    range ``[-c, c]``: scale ``c / (2^(bits-1) - 1)``, round to nearest, clamp.

    Example:
        >>> w = np.random.default_rng(0).laplace(size=(4, 1000)).astype("float32")
        >>> c = mse_clip_threshold(w, 4, axis=0)
        >>> c.shape, bool(np.all(c < np.abs(w).max(axis=1)))         # clipped inside the largest weight
        ((4,), True)
        >>> def mse(c):
        ...     s = c / 7
        ...     return float(np.mean((w - np.clip(np.round(w / s), -7, 7) * s) ** 2))
        >>> mse(c[:, None]) < mse(np.abs(w).max(axis=1, keepdims=True))
        True
    """
    w = np.asarray(weights, np.float64)
    w = w.reshape(1, -1) if axis is None else np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    top = np.abs(w).max(axis=1)
    levels = 2 ** (bits - 1) - 1
    best, best_error = top.copy(), np.full(len(w), np.inf)
    for k in range(1, grid + 1):
        c = top * (k / grid)
        scale = np.where(c > 0, c / levels, 1.0)[:, None]
        error = np.sum((w - np.clip(np.round(w / scale), -levels, levels) * scale) ** 2, axis=1)
        better = error < best_error
        best[better], best_error[better] = c[better], error[better]
    return best.astype(np.float32) if axis is not None else best[:1].astype(np.float32)


def _clip_int4_weights(model: TFLiteModel, plan: Mapping[int, str]) -> bytes:
    """The float file with each int4 op's weights clipped to `mse_clip_threshold` (per output
    channel where the op's int4 weights are per-channel): ai-edge-quantizer then takes the
    clipped largest magnitude as the range. Same size, patched in place."""
    data = bytearray(model.data)
    base = np.frombuffer(model.data, np.uint8).ctypes.data
    for index in plan:
        weight = model.tensor(model.ops[index].inputs[1])
        values = model.constant_values(weight)
        if values is None or weight.dtype != "FLOAT32" or weight.buffer in model.external_buffers:
            continue
        per_channel = INT4_OPS[model.ops[index].name] == "per-channel"
        c = mse_clip_threshold(values, 4, axis=0 if per_channel else None)
        c = c.reshape((-1,) + (1,) * (values.ndim - 1)) if per_channel else c[0]
        clipped = np.clip(values, -c, c).astype("<f4")
        offset = np.frombuffer(model._buffers[weight.buffer], np.uint8).ctypes.data - base
        data[offset:offset + clipped.nbytes] = clipped.tobytes()
    return bytes(data)


def _quantize_int4(model: TFLiteModel, samples, plan: Mapping[int, str], clipping: str = "max") -> bytes:
    """int8 activations, int8 weights, int4 weights on the ops of ``plan`` (ai-edge-quantizer)."""
    quantizer, qtyping = _require_quantizer()
    from ai_edge_litert.interpreter import Interpreter

    where = model.path or "<bytes>"
    signatures = Interpreter(model_content=model.data).get_signature_list()
    if len(signatures) != 1:
        raise InvalidModelFileError(
            f"ai-edge-quantizer calibrates one signature; the file has {len(signatures)}", where,
            "convert the model with one serving signature (to_tflite does)")
    key, signature = next(iter(signatures.items()))
    names = signature["inputs"]
    op_name = qtyping.TFLOperationName
    if clipping == "mse":
        model = load_tflite(_clip_int4_weights(model, plan))
    q = quantizer.Quantizer(bytearray(model.data))
    q.add_static_config(".*", op_name.ALL_SUPPORTED, 8, 8)
    for index in sorted(plan):
        op = model.ops[index]
        # ai-edge-quantizer matches the regex against the op's scope: its output tensor names
        # joined by ";", with a trailing ";" (utils/tfl_flatbuffer_utils.get_op_scope)
        scope = "".join(model.tensor(o).name + ";" for o in op.outputs if o >= 0)
        regex = "^" + re.escape(scope) + "$"
        granularity = (qtyping.QuantGranularity.TENSORWISE if INT4_OPS[op.name] == "per-tensor"
                       else qtyping.QuantGranularity.CHANNELWISE)
        q.add_static_config(regex, getattr(op_name, op.name), 8, 4, granularity)
    batch = model.inputs[0].shape[0] if model.inputs[0].shape else 1
    calibration = {key: [dict(zip(names, sample, strict=True))
                         for sample in converter_dataset(samples, batch)()]}
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    # Calibrated as TensorFlow's converter calibrates: each tensor's min and max over all samples.
    # (Quantizer.calibrate keeps a moving average of per-sample ranges, smoothing 0.95: on
    # LeNet-5-Caffe its int8 ranges were up to 2x narrower than the converter's and clipped,
    # worst op SNR 13.7 dB against 42.6 dB; benchmarks/NOTES.md.)
    recipe = recipe_manager.RecipeManager()
    recipe.load_quantization_recipe(q.get_quantization_recipe())
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        calibrate = calibrator.Calibrator(bytearray(model.data), num_threads=1,
                                          qsv_update_func=qsv_utils.min_max_update)
        calibrate.calibrate(calibration, recipe)
        return bytes(q.quantize(calibrate.get_model_qsvs(), enable_progress_report=False).quantized_model)


def _quantize_weight_only(model: TFLiteModel) -> bytes:
    """int4 per-channel weights on every op ai-edge-quantizer supports, dequantized to float32
    before the op (its weight-only recipe): no calibration, float compute."""
    quantizer, qtyping = _require_quantizer()
    q = quantizer.Quantizer(bytearray(model.data))
    q.add_weight_only_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 4)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return bytes(q.quantize(None, enable_progress_report=False).quantized_model)


def _quantize_calibrator(model: TFLiteModel, samples, quantization: str, io_dtype: str,
                         allow_float: bool) -> bytes:
    """TensorFlow's post-training quantization of a float flatbuffer, as the converter runs it."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tf_convert
    from tensorflow.lite.python.optimize import calibrator

    batch = model.inputs[0].shape[0] if model.inputs[0].shape else 1
    dataset = converter_dataset(samples, batch)
    io_type = {"int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16, "float32": tf.float32}[io_dtype]
    calibrate = calibrator.Calibrator(calibrator.add_intermediate_tensors(model.data))
    if quantization == "int8":  # the converter's default: calibrate, then the MLIR quantizer
        calibrated = calibrate.calibrate(dataset)
        return bytes(tf_convert.mlir_quantize(calibrated, False, input_data_type=io_type,
                                              output_data_type=io_type))
    return bytes(calibrate.calibrate_and_quantize(dataset, io_type, io_type, allow_float, tf.int16, tf.int64))


def quantize_tflite(
    float_tflite: str | os.PathLike | bytes,
    out_path: str | os.PathLike,
    representative_data,
    quantization: str = "int8",
    *,
    io_dtype: str | None = None,
    precision: Mapping[str, str] | None = None,
    calibration_samples: int = 500,
    allow_float_fallback: bool = False,
    int4_clipping: str = "max",
    _keras_model=None,
):
    """Quantize a float `.tflite` file: int8, int16x8 or int4 weights (see the module docstring).

    Implements TensorFlow's post-training full-integer quantization (Jacob et al., CVPR 2018,
    ``r = S (q - Z)`` with ranges calibrated on samples; Krishnamoorthi 2018 per-channel
    weights) on an already converted file, and ai-edge-quantizer's static int8 / int4 recipes.

    Args:
        float_tflite: the float file (path or bytes), validated by `load_tflite`.
        out_path: the `.tflite` file to write (atomically).
        representative_data: float calibration inputs, as for ``to_tflite``.
        quantization: ``"int8"``, ``"int16x8"`` (int16 activations, int8 weights), ``"int4"``
            (int8 activations, int4 FULLY_CONNECTED / CONV_2D weights) or ``"int4_weight_only"``
            (per-channel int4 weights dequantized to float32 in the graph, float compute, no
            calibration: ``representative_data`` may be None; LiteRT only, TFLite Micro refuses it).
        io_dtype: model I/O type: int8 (default) / uint8 / float32 for int8, int16 (default) /
            float32 for int16x8, int8 for int4, float32 for int4_weight_only.
        precision: per-op weight precision ``{tensor name: "int4" | "int8"}`` over the mode's
            default (``"int8"`` or ``"int4"`` only).
        calibration_samples: use at most this many samples.
        allow_float_fallback: accept ops left in float instead of raising `FloatFallbackError`.
        int4_clipping: the range of int4 weights: ``"max"`` (default) ai-edge-quantizer's
            largest magnitude; ``"mse"`` clips each per-tensor / per-channel range to the
            threshold of least squared error (`mse_clip_threshold`, Banner et al. 2019). On
            LeNet-5-Caffe the two give the same accuracy within 0.1 point (benchmarks/NOTES.md),
            so the quantizer's own stays the default.

    Returns:
        An `ExportReport` (``notes`` say how many weights are int4; ``layers`` names the ops
        TFLite Micro refuses in int16).

    Raises:
        InvalidModelFileError: not a valid float `.tflite`.
        CalibrationDataError: samples missing or shaped wrong.
        PrecisionError: a bad ``precision`` dict.
        FloatFallbackError: ops left in float.
        ConversionError: the quantizer failed.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> _ = to_tflite(model, "float.tflite", quantization=None)
        >>> x_calib = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
        >>> report = quantize_tflite("float.tflite", "int16x8.tflite", x_calib, "int16x8")
        >>> report.inputs[0].dtype, report.ops
        ('int16', {'FULLY_CONNECTED': 1})
    """
    from tfcompress.export.export_report import check_io_dtype, export_report

    if quantization not in FILE_QUANTIZATIONS:
        raise TfcompressError(f"unknown quantization {quantization!r}", "quantization",
                              f"use one of {FILE_QUANTIZATIONS}")
    model = load_tflite(float_tflite)
    where = model.path or "<bytes>"
    _check_float_file(model)
    io_dtype = check_io_dtype(quantization, io_dtype)
    if precision and quantization not in ("int8", "int4"):
        raise PrecisionError(f"per-layer precision goes with quantization='int8' or 'int4', not {quantization!r}",
                             "precision", "use quantization='int8' with precision={name: 'int4'}")
    if int4_clipping not in INT4_CLIPPING:
        raise PrecisionError(f"unknown int4_clipping {int4_clipping!r}", "int4_clipping",
                             f"use one of {INT4_CLIPPING}")
    target = _check_target(out_path)
    by_op = {}
    if precision:
        by_op = (ops_by_keras_layer(_keras_model, model, precision) if _keras_model is not None
                 else ops_by_tensor_name(model, precision))
    weight_only = quantization == "int4_weight_only"
    samples = [] if weight_only else representative_samples(representative_data, _file_specs(model),
                                                             calibration_samples)
    plan = _int4_plan(model, quantization, by_op) if quantization == "int4" or precision else None
    started = time.perf_counter()
    try:
        if weight_only:
            data = _quantize_weight_only(model)
        elif plan is not None:
            data = _quantize_int4(model, samples, plan, int4_clipping)
        else:
            data = _quantize_calibrator(model, samples, quantization, io_dtype, allow_float_fallback)
    except TfcompressError:
        raise
    except Exception as exc:
        message = str(exc).strip().splitlines()
        raise ConversionError(
            f"quantizing the float file failed: {message[0][:400] if message else type(exc).__name__}", where,
            "check that every op has an integer kernel in this mode (allow_float_fallback=True keeps the rest "
            "in float)") from None
    seconds = time.perf_counter() - started
    parsed = load_tflite(data)
    float_ops = [] if weight_only else [f"{op.name}#{op.index}" for op in parsed.float_ops()]
    if float_ops and not allow_float_fallback:
        raise FloatFallbackError(float_ops, str(target), mode=quantization)
    notes = []
    if parsed.external_buffers:
        from tfcompress.export.buffers import inline_buffers

        notes.append(f"moved {len(parsed.external_buffers)} buffer(s) stored after the flatbuffer inside it "
                     "(TFLite Micro reads only those)")
        parsed = inline_buffers(data, target)
    else:
        write_bytes_atomic(target, data)
        parsed = load_tflite(target)
    if weight_only:
        int4 = sum(t.dtype == "INT4" for t in parsed.tensors[0])
        notes += [f"{int4} weight tensor(s) int4, dequantized to float32 by DEQUANTIZE ops; float compute",
                  WEIGHT_ONLY_TFLM]
    if plan is not None:
        int4 = [t for t in parsed.tensors[0] if t.dtype == "INT4"]
        notes.append(f"{len(int4)} weight tensor(s) int4 (ai-edge-quantizer), the rest int8")
        if int4:
            largest = max(int(np.prod(t.shape)) for t in int4)
            notes.append(f"TFLite Micro unpacks int4 weights to int8 in its tensor arena when it runs: the largest "
                         f"int4 tensor adds up to {largest:,} bytes of arena (flash shrinks, RAM grows)")
    return export_report(parsed, str(target), "int4" if plan else quantization, io_dtype, len(samples),
                         seconds, notes, float_ops)

"""Keras 3 model -> TFLite flatbuffer, with full-int8 as a contract rather than a hope.

The TFLite converter silently keeps ops in float when it cannot quantize them
(with ``TFLITE_BUILTINS`` allowed) or fails with an MLIR dump (without). For a
microcontroller or an Edge TPU a single float op means the model does not run,
so ``to_tflite(..., quantization="int8")`` checks the written graph op by op and
names every op that is not integer, unless the caller accepts float fallback.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

from tfcompress._backend import require_tensorflow_backend
from tfcompress._io import write_bytes_atomic
from tfcompress.errors import (
    ConversionError,
    FloatFallbackError,
    InvalidModelFileError,
    TfcompressError,
)
from tfcompress.export.calibration import converter_dataset, representative_samples
from tfcompress.export.export_report import (  # noqa: F401  (re-exported: the names' old home)
    DEFAULT_CALIBRATION_SAMPLES,
    FILE_MODES,
    INTEGER_MODES,
    IO_DTYPES,
    MODE_IO_DTYPES,
    QUANTIZATION_MODES,
    ExportReport,
    TensorQuantization,
    _describe_float_ops,
    _tensor_quantization,
    check_io_dtype,
    export_report,
    layer_report,
)
from tfcompress.export.tflite_file import load_tflite


def load_keras_model(path: str | os.PathLike):
    """Load a `.keras` file with tfcompress' custom layers registered, with clear errors.

    Example:
        >>> import keras
        >>> keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]).save("model.keras")
        >>> load_keras_model("model.keras").output_shape
        (None, 4)
        >>> load_keras_model("missing.keras")
        Traceback (most recent call last):
        ...
        tfcompress.errors.InvalidModelFileError: missing.keras: file not found Fix: check the path
    """
    import zipfile

    import keras

    import tfcompress  # noqa: F401  (registers the serializable tfcompress objects)

    p = Path(path)
    if not p.exists():
        raise InvalidModelFileError("file not found", str(p), "check the path")
    if p.suffix != ".keras" or not zipfile.is_zipfile(p):
        raise TfcompressError(
            "not a Keras 3 .keras model file",
            str(p),
            "save the model with model.save('model.keras') (Keras 3 format)",
        )

    tfcompress.register_all()  # the tfcompress layers a saved model may use
    try:
        return keras.saving.load_model(p)
    except Exception as exc:
        if "safe_mode" in str(exc):  # a Lambda's Python code: Keras refuses to run it from a file
            raise TfcompressError(
                "the model holds Python code (a Lambda layer's function), which Keras does not load "
                "from a file by default", str(p),
                "if you trust the file, load it with keras.saving.load_model(path, safe_mode=False) "
                "and pass the model object; or replace the Lambda by a registered layer class",
            ) from None
        raise TfcompressError(
            f"cannot load the Keras model ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
            str(p),
            "check that it was saved by Keras 3 and that the packages defining its custom layers are installed",
        ) from None


def uses_fake_quant(model) -> bool:
    """True for a QAT model whose learned ranges replace calibration."""
    return any(getattr(layer, "tfcompress_fake_quant", False) for layer in _walk_layers(model))


def _materialize(model):
    """Replace layers whose weights are computed from other weights (binary, ternary, hashed)
    by plain layers holding the computed weights, so the converter sees constants."""
    layers = list(_walk_layers(model))
    count = sum(1 for layer in layers if getattr(layer, "tfcompress_quantized_kernel", False))
    count_hashed = sum(1 for layer in layers if getattr(layer, "tfcompress_hashed", False))
    if count:
        from tfcompress.layers.binary import materialize

        model = materialize(model)
    if count_hashed:
        from tfcompress.layers.hashed import materialize as materialize_hashed

        model = materialize_hashed(model)
    return model, count + count_hashed


def _walk_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk_layers(layer)


def _concrete_function(model, batch_size: int | None):
    import tensorflow as tf

    specs = [
        tf.TensorSpec([batch_size, *tuple(t.shape)[1:]], t.dtype, name=t.name.split(":")[0])
        for t in model.inputs
    ]
    single = len(specs) == 1

    @tf.function
    def serve(*args):
        return model(args[0] if single else list(args), training=False)

    return serve.get_concrete_function(*specs)


def _convert(model, quantization, samples, io_dtype, allow_float, batch_size) -> bytes:
    import tensorflow as tf

    function = _concrete_function(model, batch_size)
    try:
        # Frozen here, the variables become constants of the function, and the converter's
        # SavedModel lowering has no variables to save: a QAT MobileNetV3Small converts 2.5x
        # faster to the same bytes (its save / restore functions traced one per variable).
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        frozen = convert_variables_to_constants_v2(function)
        structure = function.structured_outputs

        @tf.function
        def serve_frozen(*args):  # the frozen function returns a flat list: keep the output names
            return tf.nest.pack_sequence_as(structure, frozen(*args))

        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [serve_frozen.get_concrete_function(*function.structured_input_signature[0])], tf.Module())
    except Exception:  # e.g. a graph past protobuf's 2 GiB: let the converter freeze it
        # The converter freezes the variables a trackable object holds; a Keras 3 model
        # does not expose its tf.Variables that way, so hand them over in a tf.Module.
        holder = tf.Module()
        holder.variables_to_freeze = [getattr(v, "value", v) for v in model.variables]
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)
    if quantization in INTEGER_MODES:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if samples is not None:
            converter.representative_dataset = converter_dataset(samples, batch_size)
        # TFLite's 16x8 mode: int16 activations (symmetric, zero point 0), int8 per-channel weights,
        # int64 biases (tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8)
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if quantization == "int8"
               else tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        if allow_float:
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        if samples is not None:
            # (a QAT graph is integer through its fake-quant ops; the converter's check for a
            # representative dataset does not see them when the op set is restricted, and
            # to_tflite verifies the result is all int8 anyway)
            converter.target_spec.supported_ops = ops
        io_type = {"int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16, "float32": tf.float32}[io_dtype]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    elif quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def _refuse_before_calibration(model, where: str) -> None:
    """Layers whose full-integer conversion would crash TensorFlow (or cannot work) are refused
    by name here, before calibration starts (their handler's ``int8_refusal``)."""
    from tfcompress.core import handler_for, iter_layers

    for layer in iter_layers(model, models=False, wrapped=True):
        reason = handler_for(layer, inherit=True).int8_refusal
        if reason:
            raise ConversionError(f"cannot export {type(layer).__name__} layer {layer.name!r} to full int8",
                                  where, reason)


def to_tflite(
    model,
    path: str | os.PathLike,
    quantization: str | None = "int8",
    representative_data=None,
    io_dtype: str | None = None,
    *,
    allow_float_fallback: bool = False,
    batch_size: int | None = 1,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    dense_as_conv: bool = False,
    precision: Mapping[str, str] | None = None,
    int4_clipping: str = "max",
) -> ExportReport:
    """Convert a Keras 3 model to a `.tflite` file and check what came out.

    Args:
        model: a Keras 3 model (or the path of a `.keras` file).
        path: where to write the `.tflite` file (written atomically).
        quantization: ``"int8"`` full-integer (int8 activations, per-channel int8
            weights, int32 biases); ``"int16x8"`` TFLite's 16x8 mode (int16 activations,
            symmetric, per-channel int8 weights, int64 biases; post-training only: a QAT
            model is refused); ``"int4"`` int8 activations with int4 FULLY_CONNECTED
            (per-tensor) and CONV_2D (per-channel) weights, written by ai-edge-quantizer
            (`tfcompress.export.precision`; needs ``tfcompress[int4]``); ``"int4_weight_only"``
            int4 per-channel weights dequantized to float32 in the graph (no calibration;
            LiteRT only, TFLite Micro refuses it); ``"float16"``
            weights; ``"dynamic"`` int8 weights with float activations; ``None`` float32.
        representative_data: calibration inputs for ``"int8"``: a NumPy array
            (N, *input_shape), a list of arrays for multi-input models, a
            ``tf.data.Dataset`` or a generator. Not needed for QAT models
            (``tfcompress.quantize``), whose learned ranges are used.
        io_dtype: model input/output type for ``"int8"``: ``"int8"`` (default),
            ``"uint8"`` or ``"float32"`` (float I/O around an integer graph); for
            ``"int16x8"``: ``"int16"`` (default) or ``"float32"``; ``"int8"`` for ``"int4"``.
        allow_float_fallback: with ``"int8"``, accept ops the converter keeps in
            float instead of raising `FloatFallbackError`.
        batch_size: static batch size of the exported graph (1 by default, which
            TFLite Micro and the Edge TPU need); ``None`` keeps it dynamic.
        calibration_samples: use at most this many representative samples.
        dense_as_conv: with ``"int8"`` or ``"int16x8"``, write each Dense on a 2-D input as a 1x1 CONV_2D
            (`tfcompress.export.dense_as_conv`): TFLite Micro's FULLY_CONNECTED rounds twice,
            LiteRT's reference kernel once, and they differ by 1 LSB on a few outputs in a
            thousand; both compute CONV_2D alike, so the file runs bit-exactly on both.
        precision: per-layer weight precision over the mode's default, ``{keras layer name:
            "int4" | "int8"}`` (Dense / Conv2D layers, found in the file by their kernels),
            with ``quantization="int8"`` or ``"int4"``: e.g. ``precision={"fc1": "int4"}``
            keeps every other layer int8. The base the mixed-precision search builds on.
        int4_clipping: how int4 weight ranges are chosen: ``"max"`` (default) the largest
            magnitude, as ai-edge-quantizer does; ``"mse"`` the threshold of least squared error
            per range (`tfcompress.export.precision.mse_clip_threshold`).

    For ``"int16x8"`` the report's ``notes`` and ``layers`` name the ops TFLite Micro refuses
    in int16 or runs with other numbers (`tfcompress.export.micro.tflm_int16_problems`).

    Returns:
        An `ExportReport`.

    Raises:
        CalibrationDataError: representative data missing, empty or shaped wrong.
        FloatFallbackError: ``"int8"`` left float ops and ``allow_float_fallback`` is False.
        ConversionError: the converter failed.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
        ...                           keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        >>> report = to_tflite(model, "model_int8.tflite", "int8", representative_data=x)
        >>> report.int8_coverage, report.inputs[0].dtype, report.outputs[0].dtype, report.num_ops
        (1.0, 'int8', 'int8', 2)
        >>> float_report = to_tflite(model, "model_float.tflite", quantization=None)
        >>> float_report.size_bytes > report.size_bytes                 # int8 weights: a quarter of the bytes
        True
    """
    require_tensorflow_backend("TFLite export")
    if isinstance(model, str | os.PathLike):
        model = load_keras_model(model)
    if quantization not in QUANTIZATION_MODES:
        raise TfcompressError(
            f"unknown quantization {quantization!r}", "quantization", f"use one of {QUANTIZATION_MODES}"
        )
    io_dtype = check_io_dtype(quantization, io_dtype)
    if batch_size is not None and batch_size < 1:
        raise TfcompressError(f"batch_size must be >= 1 or None, got {batch_size}", "batch_size")
    if not getattr(model, "inputs", None):
        raise TfcompressError(
            "the model has no defined inputs (a subclassed or unbuilt model)",
            type(model).__name__,
            "build a Functional or Sequential model with keras.Input, or call the model on data first",
        )
    target = Path(path)
    if not target.parent.is_dir():
        raise TfcompressError("output directory does not exist", str(target.parent), "create it first")
    # found before the conversion, not after it (and not as an error naming the temporary file)
    if target.is_dir():
        raise TfcompressError("the output path is a directory", str(target), "pass a file name, e.g. model.tflite")
    if not os.access(target.parent, os.W_OK):
        raise TfcompressError("the output directory is not writable", str(target.parent),
                              "choose a directory you can write to")

    if (quantization in FILE_MODES or precision) and uses_fake_quant(model):
        raise ConversionError(
            "quantization-aware training to int4 weights is not supported: the QAT model simulates int8 "
            "weights, and int4 weights are written by ai-edge-quantizer from the float model",
            str(target),
            "export the float model (before tfcompress.quantize) with quantization='int4' and representative_data",
        )
    if precision and quantization not in ("int8", "int4"):
        raise TfcompressError(f"precision= goes with quantization='int8' or 'int4', not {quantization!r}",
                              "precision", "pass quantization='int8' with precision={layer_name: 'int4'}")
    if quantization == "int16x8" and uses_fake_quant(model):
        raise ConversionError(
            "quantization-aware training to int16x8 is not supported: the QAT model simulates int8 "
            "activations (its learned ranges are 8-bit ranges), and the 16x8 file needs 16-bit ones",
            str(target),
            "export the float model (before tfcompress.quantize) with quantization='int16x8' and "
            "representative_data (post-training 16x8), or export this QAT model with quantization='int8'",
        )
    if quantization in INTEGER_MODES:
        _refuse_before_calibration(model, str(target))
    samples = None
    notes: list[str] = []
    rewritten_layers = [(layer.name, type(layer).__name__) for layer in _walk_layers(model)
                        if getattr(layer, "tfcompress_quantized_kernel", False) or getattr(layer, "tfcompress_hashed", False)]
    model, materialized = _materialize(model)
    if materialized:
        notes.append(f"materialized {materialized} quantized/hashed layer(s) into plain Dense/Conv2D weights")
    if dense_as_conv and quantization in INTEGER_MODES and not uses_fake_quant(model):
        from tfcompress.export.dense_as_conv import dense_as_conv as _dense_as_conv

        model, rewritten = _dense_as_conv(model)
        if rewritten:
            notes.append(f"wrote {rewritten} Dense layer(s) as 1x1 CONV_2D (dense_as_conv=True)")
    if quantization in FILE_MODES or precision:
        # the float file, then int8 activations with int4 weights (tfcompress.export.precision)
        from tfcompress.export.precision import quantize_tflite

        try:
            flatbuffer = _convert(model, None, None, "float32", False, batch_size)
        except Exception as exc:
            message = str(exc).strip().splitlines()
            raise ConversionError(
                f"the TFLite converter failed: {message[0][:400] if message else type(exc).__name__}",
                str(target), "check that every layer has a TFLite builtin equivalent") from None
        report = quantize_tflite(flatbuffer, target, representative_data, quantization, io_dtype=io_dtype,
                                 precision=precision, calibration_samples=calibration_samples,
                                 allow_float_fallback=allow_float_fallback, int4_clipping=int4_clipping,
                                 _keras_model=model)
        report.notes = notes + report.notes
        return report
    if quantization in INTEGER_MODES:
        if representative_data is None and uses_fake_quant(model):
            notes.append("ranges taken from quantization-aware training (no calibration); the file equals the "
                         "QAT model on TFLM and LiteRT's reference kernels, and on XNNPACK with the model inside "
                         "tfcompress.quantization.kernel_arithmetic('xnnpack')")
        else:
            samples = representative_samples(representative_data, model, calibration_samples)

    started = time.perf_counter()
    try:
        if uses_fake_quant(model):
            # a QAT model is traced with float weights: the converter quantizes them per channel
            # with the formula the fake quantization simulated (see tfcompress.quantization.qat)
            from tfcompress.layers.fake_quant import export_mode

            with export_mode(model):
                flatbuffer = _convert(model, quantization, samples, io_dtype, allow_float_fallback, batch_size)
        else:
            flatbuffer = _convert(model, quantization, samples, io_dtype, allow_float_fallback, batch_size)
    except Exception as exc:
        if quantization in INTEGER_MODES and not allow_float_fallback:
            # Find out which ops could not be made integer, to name them.
            try:
                fallback = _convert(model, quantization, samples, io_dtype, True, batch_size)
            except Exception:
                fallback = None
            if fallback is not None:
                float_ops = _describe_float_ops(load_tflite(fallback))
                if float_ops:
                    raise FloatFallbackError(float_ops, str(target), mode=quantization) from None
        unsupported = sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op", str(exc))))
        if unsupported:
            raise ConversionError(
                f"the model uses TensorFlow ops with no TFLite builtin: {', '.join(unsupported)}",
                str(target),
                "replace the layers that use them with layers built from TFLite-supported ops",
            ) from None
        message = str(exc).strip().splitlines()
        raise ConversionError(
            f"the TFLite converter failed: {message[0][:400] if message else type(exc).__name__}",
            str(target),
            "check that every layer has a TFLite builtin equivalent",
        ) from None
    seconds = time.perf_counter() - started

    parsed = load_tflite(flatbuffer)
    float_ops = _describe_float_ops(parsed)
    if quantization in INTEGER_MODES and float_ops and not allow_float_fallback:
        raise FloatFallbackError(float_ops, str(target), mode=quantization)
    if quantization in INTEGER_MODES and float_ops:
        notes.append(f"{len(float_ops)} op(s) kept in float (allow_float_fallback=True)")

    write_bytes_atomic(target, flatbuffer)
    return export_report(parsed, str(target), quantization, io_dtype, len(samples) if samples is not None else 0,
                         seconds, notes, float_ops, rewritten_layers)

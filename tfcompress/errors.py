"""Errors raised by tfcompress.

Every error says what is wrong, where, and how to fix it, so the CLI can print
it as one line and exit non-zero without a traceback.
"""

from __future__ import annotations


class TfcompressError(ValueError):
    """Base class of every error tfcompress raises on bad input.

    Args:
        what: what is wrong.
        where: the file, layer, argument or op concerned.
        fix: how to fix it.

    Example:
        >>> error = TfcompressError("sparsity must be in [0, 1), got 1.5", "prune", "for example sparsity=0.5")
        >>> str(error)
        'prune: sparsity must be in [0, 1), got 1.5 Fix: for example sparsity=0.5'
        >>> error.where, isinstance(error, ValueError)
        ('prune', True)
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        parts = [what if where is None else f"{where}: {what}"]
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts))


class InvalidModelFileError(TfcompressError):
    """A file is not a valid `.tflite` / `.keras` model (missing, truncated, corrupted).

    Example:
        >>> from tfcompress.export import load_tflite
        >>> _ = open("broken.tflite", "wb").write(b"not a flatbuffer")
        >>> load_tflite("broken.tflite")
        Traceback (most recent call last):
        ...
        tfcompress.errors.InvalidModelFileError: broken.tflite: ...
    """


class ConversionError(TfcompressError):
    """The TFLite converter failed or produced a model that breaks the requested contract.

    Example:
        >>> issubclass(FloatFallbackError, ConversionError)
        True
        >>> raise ConversionError("the converter returned no model", "to_tflite", "check the converter's log")
        Traceback (most recent call last):
        ...
        tfcompress.errors.ConversionError: to_tflite: the converter returned no model Fix: check the converter's log
    """


class FloatFallbackError(ConversionError):
    """Full-int8 conversion left some ops in float.

    Attributes:
        float_ops: the ops (``"OP_NAME (tensor name)"``) that are not int8.

    Example:
        >>> error = FloatFallbackError(["LOGISTIC (dense/Sigmoid)"], "model.tflite")
        >>> error.float_ops
        ['LOGISTIC (dense/Sigmoid)']
        >>> print(error)
        model.tflite: full-int8 conversion left 1 op(s) in float: LOGISTIC (dense/Sigmoid) Fix: ...allow_float_fallback=True...
    """

    def __init__(self, float_ops: list[str], where: str | None = None, mode: str = "int8"):
        self.float_ops = list(float_ops)
        super().__init__(
            f"full-{mode} conversion left {len(float_ops)} op(s) in float: " + ", ".join(float_ops),
            where,
            "replace or remove those layers, or pass allow_float_fallback=True to accept float ops",
        )


class CalibrationDataError(TfcompressError):
    """Representative / calibration data do not match the model's input.

    Example:
        >>> raise CalibrationDataError("samples of shape (10, 3) for an input of shape (None, 8)", "representative_data")
        Traceback (most recent call last):
        ...
        tfcompress.errors.CalibrationDataError: representative_data: samples of shape (10, 3) for an input of shape (None, 8)
    """


class DelegateError(TfcompressError):
    """A LiteRT delegate could not be loaded.

    Example:
        >>> error = DelegateError("libedgetpu.so.1 not found", "delegate", "install the Edge TPU runtime")
        >>> isinstance(error, TfcompressError), error.what
        (True, 'libedgetpu.so.1 not found')
    """


class BackendError(TfcompressError):
    """Keras runs on a backend other than TensorFlow where TensorFlow is required.

    Example:
        >>> BackendError("keras runs on jax", "to_tflite", "set KERAS_BACKEND=tensorflow").fix
        'set KERAS_BACKEND=tensorflow'
    """


class DistillationError(TfcompressError):
    """A student, its teacher ensemble or a distillation setting does not fit (shapes, heads, schedules).

    Example:
        >>> issubclass(DistillationError, TfcompressError)
        True
    """

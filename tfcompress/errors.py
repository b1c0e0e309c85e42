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
    """A file is not a valid `.tflite` / `.keras` model (missing, truncated, corrupted)."""


class ConversionError(TfcompressError):
    """The TFLite converter failed or produced a model that breaks the requested contract."""


class FloatFallbackError(ConversionError):
    """Full-int8 conversion left some ops in float.

    Attributes:
        float_ops: the ops (``"OP_NAME (tensor name)"``) that are not int8.
    """

    def __init__(self, float_ops: list[str], where: str | None = None, mode: str = "int8"):
        self.float_ops = list(float_ops)
        super().__init__(
            f"full-{mode} conversion left {len(float_ops)} op(s) in float: " + ", ".join(float_ops),
            where,
            "replace or remove those layers, or pass allow_float_fallback=True to accept float ops",
        )


class CalibrationDataError(TfcompressError):
    """Representative / calibration data do not match the model's input."""


class DelegateError(TfcompressError):
    """A LiteRT delegate could not be loaded."""


class BackendError(TfcompressError):
    """Keras runs on a backend other than TensorFlow where TensorFlow is required."""


class DistillationError(TfcompressError):
    """A student, its teacher ensemble or a distillation setting does not fit (shapes, heads, schedules)."""

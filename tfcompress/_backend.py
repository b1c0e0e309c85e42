"""Backend checks: export and the TF-specific pieces need Keras on TensorFlow."""

from __future__ import annotations

from tfcompress.errors import BackendError


def require_tensorflow_backend(feature: str) -> None:
    """Raise a clear error when Keras is not running on the TensorFlow backend."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise BackendError(
            f"{feature} requires the TensorFlow backend, but Keras runs on '{backend}'",
            "KERAS_BACKEND",
            "set KERAS_BACKEND=tensorflow before importing keras (TFLite conversion is TensorFlow-only)",
        )

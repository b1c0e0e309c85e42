"""Representative (calibration) data for full-integer conversion.

The converter calls a generator once per calibration sample; a sample whose
shape or dtype does not fit the model fails deep inside the MLIR quantizer
with an unreadable message. We therefore normalise every accepted source
(NumPy array, list of arrays for multi-input models, `tf.data.Dataset`,
generator or generator factory) to per-sample float32 arrays and check each
one against the model's input signature *before* conversion starts.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from tfcompress.errors import CalibrationDataError

Sample = list[np.ndarray]


def input_specs(model) -> list[tuple[tuple[int | None, ...], str, str]]:
    """(shape without batch, dtype, name) of each model input."""
    specs = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape)[1:]
        specs.append((shape, str(getattr(tensor.dtype, "name", tensor.dtype)), tensor.name))
    return specs


def _check_sample(sample: Sample, specs, where: str, position: int) -> Sample:
    if len(sample) != len(specs):
        raise CalibrationDataError(
            f"sample {position} has {len(sample)} input array(s), the model has {len(specs)} input(s)",
            where,
            "give one array per model input (a list or tuple of arrays for multi-input models)",
        )
    checked = []
    for array, (shape, _dtype, name) in zip(sample, specs, strict=True):
        array = np.asarray(array)
        if array.dtype.kind not in "fiub":
            raise CalibrationDataError(
                f"sample {position} for input '{name}' has dtype {array.dtype}, expected numbers",
                where,
                "pass float arrays scaled as in training",
            )
        if array.ndim != len(shape) or any(
            want is not None and have != want for have, want in zip(array.shape, shape, strict=True)
        ):
            raise CalibrationDataError(
                f"sample {position} for input '{name}' has shape {tuple(array.shape)}, "
                f"the model expects {tuple(shape)} per sample (batch dimension excluded)",
                where,
                "reshape the calibration data to the model's input shape",
            )
        if not np.all(np.isfinite(array)):
            raise CalibrationDataError(
                f"sample {position} for input '{name}' contains NaN or inf", where, "clean the calibration data"
            )
        checked.append(array.astype(np.float32, copy=False))
    return checked


def _features(element, n_inputs: int) -> list:
    """Keep the model inputs of a dataset / generator element.

    Elements may be ``x``, ``[x]`` (the converter's own convention), ``(x, y)``,
    ``(x, y, w)``, a dict of inputs, or for multi-input models ``((x1, x2), y)``.
    """
    if isinstance(element, dict):
        return list(element.values())
    if isinstance(element, tuple | list):
        first = element[0]
        if n_inputs == 1:
            return list(first) if isinstance(first, tuple | list) else [first]
        if isinstance(first, tuple | list | dict):
            return list(first.values()) if isinstance(first, dict) else list(first)
        return list(element)
    return [element]


def _iter_samples(source, specs) -> Iterator[Sample]:
    """Yield unbatched samples, whatever batching the source uses."""
    rank = len(specs[0][0])
    for element in source:
        arrays = [np.asarray(a) for a in _features(element, len(specs))]
        if arrays and arrays[0].ndim == rank + 1:  # a batch: split it
            for row in range(arrays[0].shape[0]):
                yield [a[row] for a in arrays]
        else:
            yield arrays


def representative_samples(
    data, model, max_samples: int | None = None, where: str = "representative_data"
) -> list[Sample]:
    """Normalise ``data`` to a validated list of per-sample arrays.

    Args:
        data: a NumPy array shaped (N, ...input shape), a list/tuple of such arrays
            (one per input), a ``tf.data.Dataset`` (batched or not, elements ``x``
            or ``(x, y)``), a generator or iterable of samples, or a callable
            returning one (as the TFLite converter takes).
        model: the Keras model the data calibrates.
        max_samples: keep at most this many samples (the converter's usual 100-500
            is plenty; more only costs time).

    Raises:
        CalibrationDataError: empty data, or a sample whose shape/dtype does not fit.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> samples = representative_samples(np.zeros((10, 8)), model, max_samples=4)
        >>> len(samples), [a.shape for a in samples[0]], samples[0][0].dtype
        (4, [(8,)], dtype('float32'))
        >>> representative_samples(np.zeros((10, 3)), model)
        Traceback (most recent call last):
        ...
        tfcompress.errors.CalibrationDataError: ...
    """
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int | np.integer)
                                    or max_samples < 1):
        raise CalibrationDataError(f"calibration_samples must be a positive integer, got {max_samples!r}",
                                   "calibration_samples", "pass e.g. calibration_samples=200, or None for all")
    specs = input_specs(model)
    if data is None:
        raise CalibrationDataError(
            "full-int8 conversion needs representative data to calibrate activation ranges",
            where,
            "pass representative_data=<a few hundred training inputs> (a NumPy array, tf.data.Dataset or generator)",
        )
    if isinstance(data, np.ndarray | list | tuple) and _is_array_source(data, len(specs)):
        arrays = [np.asarray(data)] if isinstance(data, np.ndarray) else [np.asarray(a) for a in data]
        counts = {a.shape[0] if a.ndim else 0 for a in arrays}
        if len(counts) != 1:
            raise CalibrationDataError(
                f"the input arrays hold different numbers of samples: {sorted(counts)}",
                where,
                "give every input the same number of samples",
            )
        n = counts.pop()
        if n == 0:
            raise CalibrationDataError("no calibration samples (the array is empty)", where, "pass at least one sample")
        single_sample = arrays[0].ndim == len(specs[0][0]) and all(
            want is None or have == want for have, want in zip(arrays[0].shape, specs[0][0], strict=True)
        )
        if single_sample:
            raise CalibrationDataError(
                f"got one array of shape {arrays[0].shape}: missing the sample dimension",
                where,
                f"pass an array shaped (N, {', '.join(str(d) for d in specs[0][0])})",
            )
        n = n if max_samples is None else min(n, max_samples)
        return [_check_sample([a[i] for a in arrays], specs, where, i) for i in range(n)]

    if callable(data) and not hasattr(data, "element_spec"):
        data = data()
    if not isinstance(data, Iterable):
        raise CalibrationDataError(
            f"unsupported representative data of type {type(data).__name__}",
            where,
            "pass a NumPy array, a list of arrays, a tf.data.Dataset or a generator",
        )
    samples: list[Sample] = []
    iterator = _iter_samples(data, specs)
    if max_samples is not None:
        iterator = itertools.islice(iterator, max_samples)
    i = -1
    try:
        for i, sample in enumerate(iterator):
            samples.append(_check_sample(sample, specs, where, i))
    except CalibrationDataError:
        raise
    except Exception as exc:  # a tf.data pipeline or generator failing mid-way (TF's UnknownError...)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CalibrationDataError(
            f"the representative data failed after {i + 1} sample(s): {type(exc).__name__}: {message[:300]}",
            where, "fix the data pipeline (its error is above), or pass a NumPy array of samples") from None
    if not samples:
        raise CalibrationDataError("no calibration samples (the source yielded nothing)", where, "pass at least one sample")
    return samples


def _is_array_source(data, n_inputs: int) -> bool:
    if isinstance(data, np.ndarray):
        return True
    return len(data) == n_inputs and all(isinstance(a, np.ndarray) for a in data)


def converter_dataset(
    samples: Sequence[Sample], batch_size: int | None = 1
) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The zero-argument generator factory the TFLite converter expects.

    A graph exported with a static batch size B is calibrated with batches of exactly B
    samples (the last, incomplete batch is dropped unless it is the only one, then padded by
    repetition); a dynamic batch (None) is calibrated one sample at a time.
    """
    size = batch_size or 1

    def generate() -> Iterator[list[np.ndarray]]:
        items = list(samples)
        if len(items) < size:
            items = [items[i % len(items)] for i in range(size)]
        for start in range(0, len(items) - size + 1, size):
            batch = items[start : start + size]
            yield [np.stack([s[k] for s in batch]) for k in range(len(batch[0]))]

    return generate


def load_calibration_file(path: str | os.PathLike, samples: int | None = None) -> np.ndarray | list[np.ndarray]:
    """Read calibration inputs from a `.npz` (key ``x``, else every array in file order) or `.npy`.

    Raises:
        CalibrationDataError: missing, unreadable or empty file.

    Example:
        >>> np.savez("calib.npz", x=np.zeros((10, 8), "float32"))
        >>> load_calibration_file("calib.npz").shape, load_calibration_file("calib.npz", samples=4).shape
        ((10, 8), (4, 8))
        >>> load_calibration_file("missing.npz")
        Traceback (most recent call last):
        ...
        tfcompress.errors.CalibrationDataError: missing.npz: calibration file not found Fix: ...
    """
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise CalibrationDataError("calibration file not found", where, "check the path (a .npz with key 'x' or a .npy)")
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise CalibrationDataError(
            f"cannot read calibration file ({type(exc).__name__}: {exc})",
            where,
            "save it with numpy.savez(path, x=inputs) or numpy.save",
        ) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            if not keys:
                raise CalibrationDataError("calibration file holds no arrays", where, "save it with numpy.savez(path, x=inputs)")
            arrays = [loaded["x"]] if "x" in keys else [loaded[k] for k in keys]
    else:
        arrays = [loaded]
    for a in arrays:
        if a.size == 0:
            raise CalibrationDataError("calibration array is empty", where, "save at least one sample")
    if samples is not None:
        arrays = [a[:samples] for a in arrays]
    return arrays[0] if len(arrays) == 1 else arrays

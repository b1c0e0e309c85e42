"""Mixed int4 / int8 weights to a file-size budget (issue 22).

`mixed_precision` writes the int8 file that fits ``file_bytes`` (or a fraction of the plain
int8 file) with the least output error, choosing which FULLY_CONNECTED / CONV_2D ops take int4
weights. The method is ZeroQ's (Cai et al., "ZeroQ: A Novel Zero Shot Quantization Framework",
CVPR 2020, sec. 3.3): measure each layer's sensitivity ``Omega_i(4)`` alone (their eq. 3),
assume the sensitivities add, and pick the configuration of least total sensitivity under the
size constraint (their eq. 4, ``min sum_i Omega_i(k_i)  s.t.  sum_i size_i(k_i) <= S``),
solved here exactly as a 0/1 knapsack over the measured byte savings.

Two choices differ from the paper, both for edge files:

- ``Omega_i`` is the output noise-to-signal ratio on LiteRT, ``||y_i - y||^2 / ||y - mean(y)||^2``
  against the float file's outputs ``y`` (mean over samples and output elements), not a KL
  divergence of softmax outputs: it applies to logits, probabilities and regression outputs alike.
- Sizes are the measured bytes of files written with one op int4 (not parameter counts), and
  the chosen file is measured again: when the savings do not add exactly (alignment), the op
  of least sensitivity per byte among the others is added until the file fits.

Example:
    >>> import keras, numpy as np
    >>> from tfcompress.export import mixed_precision, to_tflite
    >>> keras.utils.set_random_seed(0)
    >>> x = keras.Input((8, 8, 1))
    >>> h = keras.layers.Flatten()(keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x))
    >>> model = keras.Model(x, keras.layers.Dense(10, name="fc2")(keras.layers.Dense(64, activation="relu", name="fc1")(h)))
    >>> data = np.random.default_rng(0).normal(size=(64, 8, 8, 1)).astype("float32")
    >>> int8 = to_tflite(model, "int8.tflite", "int8", data).size_bytes
    >>> report = mixed_precision(model, "mixed.tflite", data, fraction_of_int8=0.7)
    >>> report.file_bytes <= 0.7 * int8, report.file_bytes == report.export.size_bytes
    (True, True)
    >>> sorted(row["op"] for row in report.layers if row["int4"])          # the big FULLY_CONNECTED
    ['FULLY_CONNECTED#...']
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfcompress._io import write_bytes_atomic
from tfcompress.export.calibration import representative_samples
from tfcompress.export.export_report import ExportReport
from tfcompress.export.precision import (
    INT4_OPS,
    PrecisionError,
    _file_specs,
    quantize_tflite,
    weight_ops,
)
from tfcompress.export.tflite_file import load_tflite


@dataclass
class MixedPrecisionReport:
    """What `mixed_precision` chose and measured.

    Attributes:
        precision: ``{TFLite tensor name: "int4"}`` of the ops given int4 weights (the
            ``precision=`` of `quantize_tflite` that rewrites the same file from the float one).
        layers: one row per candidate op: ``op`` ("CONV_2D#3"), ``tensor`` (its output's
            name), ``saving_bytes`` (int8 file bytes minus the file with this op alone int4),
            ``sensitivity`` (output noise-to-signal ratio with this op alone int4), ``int4``.
        int8_bytes: the plain int8 file's size; target_bytes: the budget; file_bytes: the
            written file's size.
        int8_noise, predicted_noise, measured_noise: the output noise-to-signal ratio of the
            int8 file, the sum the search minimized (int8's plus the chosen ops' increases),
            and that of the written file.
        export: the written file's `ExportReport`.
        seconds: the whole search, every quantization included.

    Example:
        >>> report = MixedPrecisionReport(precision={"fc1/MatMul": "int4"}, int8_bytes=450_464,
        ...                               target_bytes=225_232, file_bytes=223_192)
        >>> report.file_bytes <= report.target_bytes, round(report.file_bytes / report.int8_bytes, 4)
        (True, 0.4955)
    """

    precision: dict[str, str]
    layers: list[dict] = field(default_factory=list)
    int8_bytes: int = 0
    target_bytes: int = 0
    file_bytes: int = 0
    int8_noise: float = 0.0
    predicted_noise: float = 0.0
    measured_noise: float = 0.0
    export: ExportReport | None = None
    seconds: float = 0.0


def output_noise(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Noise-to-signal ratio of ``outputs`` against ``reference``: the mean squared difference
    over the variance of the reference (per output element, around its mean over samples).

    Example:
        >>> y = np.array([[0.0, 2.0], [2.0, 0.0]])
        >>> output_noise(y + 0.1, y)          # 0.01 / variance 1
        0.01
    """
    reference = np.asarray(reference, np.float64)
    signal = float(np.mean((reference - reference.mean(axis=0)) ** 2))
    noise = float(np.mean((np.asarray(outputs, np.float64) - reference) ** 2))
    return round(noise / signal, 12) if signal > 0 else noise


def choose_int4(savings: list[int], sensitivities: list[float], needed: int, resolution: int = 2000) -> list[int]:
    """The indices whose savings reach ``needed`` bytes at the least total sensitivity: the
    0/1 knapsack of ZeroQ's eq. 4, solved by dynamic programming over savings rounded down to
    ``needed / resolution`` bytes (so a chosen set saves at least ``needed`` in truth).

    Raises:
        PrecisionError: even every index together saves less than ``needed``.

    Example:
        >>> choose_int4([100, 60, 50], [1.0, 0.2, 0.3], needed=100)   # 60 + 50 costs 0.5 < 1.0
        [1, 2]
    """
    if needed <= 0:
        return []
    if sum(savings) < needed:
        raise PrecisionError(f"every int4 candidate together saves {sum(savings):,} bytes, {needed:,} are needed",
                             "mixed_precision", "raise the budget, or prune the model first")
    unit = max(1.0, needed / resolution)
    capacity = int(np.ceil(needed / unit))
    # best[c]: least sensitivity of a set whose (rounded-down) savings reach at least c units
    best = np.full(capacity + 1, np.inf)
    best[0] = 0.0
    taken = np.zeros((len(savings), capacity + 1), bool)
    for i, (saving, cost) in enumerate(zip(savings, sensitivities, strict=True)):
        units = int(saving // unit)
        if units <= 0:
            continue
        reach = np.maximum(np.arange(capacity + 1) - units, 0)
        candidate = best[reach] + cost
        better = candidate < best
        best = np.where(better, candidate, best)
        taken[i] = better
    if not np.isfinite(best[capacity]):
        # rounding every saving down lost the last few units: take the rest greedily below
        capacity = int(np.max(np.nonzero(np.isfinite(best))[0]))
    chosen, c = [], capacity
    for i in range(len(savings) - 1, -1, -1):
        if c > 0 and taken[i, c]:
            chosen.append(i)
            c = max(c - int(savings[i] // unit), 0)
    return sorted(chosen)


def _outputs(data: bytes, x: np.ndarray) -> np.ndarray:
    from tfcompress.export.runtime import ModelRunner

    runner = ModelRunner(data, delegate="none")
    out = runner.predict(x)
    if isinstance(out, list | tuple):
        return np.concatenate([np.asarray(o).reshape(len(x), -1) for o in out], axis=1)
    return np.asarray(out).reshape(len(x), -1)


def mixed_precision(
    source,
    out_path: str | os.PathLike,
    representative_data,
    *,
    file_bytes: int | None = None,
    fraction_of_int8: float | None = None,
    sensitivity_samples: int = 64,
    calibration_samples: int = 500,
    int4_clipping: str = "max",
    dense_as_conv: bool = False,
) -> MixedPrecisionReport:
    """Write the int8 file with int4 weights on the ops that fit it in ``file_bytes`` with the
    least output error (ZeroQ's sensitivity and Pareto choice; see the module docstring).

    Args:
        source: a Keras model (converted to float first) or a float `.tflite` file / bytes.
        out_path: the file to write (atomically).
        representative_data: calibration inputs, as for ``to_tflite``; the first
            ``sensitivity_samples`` of them also measure each op's sensitivity.
        file_bytes: the largest file size in bytes; or ``fraction_of_int8``: that fraction of
            the plain int8 file's size (exactly one of the two).
        sensitivity_samples: inputs the sensitivities are measured on.
        calibration_samples: at most this many calibration samples.
        int4_clipping: the int4 weight range (``quantize_tflite``'s ``int4_clipping``).
        dense_as_conv: write each Dense on a 2-D input as a 1x1 CONV_2D first (a Keras
            ``source`` only; ``to_tflite``'s ``dense_as_conv``): its int4 weights are then
            per-channel instead of per-tensor, and TFLite Micro computes the file bit-exactly
            as LiteRT's reference kernels (a FULLY_CONNECTED can differ by 1 LSB there), at the
            cost of per-channel scales and two RESHAPE ops per Dense in the file.

    Returns:
        A `MixedPrecisionReport`; ``report.export`` is the written file's `ExportReport`.

    Raises:
        PrecisionError: no budget, both, or one that int4 weights on every candidate op
            cannot reach (the message gives the smallest reachable size).

    One quantization per candidate op: a few seconds each for a small net (needs
    ``tfcompress[int4]``, ai-edge-quantizer).

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, name="fc1"),
        ...                           keras.layers.Dense(4, name="fc2")])
        >>> data = np.random.default_rng(1).normal(size=(32, 16)).astype("float32")
        >>> report = mixed_precision(model, "fc_mixed.tflite", data, fraction_of_int8=0.9)
        >>> [row["int4"] for row in report.layers], report.file_bytes <= report.target_bytes
        ([True, False], True)
    """
    started = time.perf_counter()
    if (file_bytes is None) == (fraction_of_int8 is None):
        raise PrecisionError("give exactly one of file_bytes and fraction_of_int8", "mixed_precision",
                             "e.g. mixed_precision(model, path, data, fraction_of_int8=0.5)")
    if fraction_of_int8 is not None and not 0 < float(fraction_of_int8) <= 1:
        raise PrecisionError(f"fraction_of_int8={fraction_of_int8!r} is not in (0, 1]", "mixed_precision",
                             "pass e.g. fraction_of_int8=0.5")
    if file_bytes is not None and (isinstance(file_bytes, bool) or int(file_bytes) <= 0):
        raise PrecisionError(f"file_bytes={file_bytes!r} is not a positive size", "mixed_precision",
                             "pass the largest file size in bytes")
    with tempfile.TemporaryDirectory(prefix="tfcompress_mixed_") as tmp:
        work = Path(tmp)
        keras_model = None
        if isinstance(source, str | bytes | os.PathLike):
            float_data = load_tflite(source).data
        else:
            keras_model = source
            from tfcompress.export.convert import to_tflite

            if dense_as_conv:
                from tfcompress.export.dense_as_conv import dense_as_conv as rewrite

                source, _ = rewrite(source)

            to_tflite(source, work / "float.tflite", None)
            float_data = (work / "float.tflite").read_bytes()
        model = load_tflite(float_data)
        candidates = [(index, op, out) for index, op, out, _ in weight_ops(model) if op in INT4_OPS]
        if not candidates:
            raise PrecisionError("the model has no FULLY_CONNECTED or CONV_2D op to take int4 weights",
                                 "mixed_precision", "use quantization='int8'")
        if len(model.inputs) != 1:
            raise PrecisionError(f"mixed_precision measures single-input models; this one has {len(model.inputs)}",
                                 "mixed_precision", "pass precision={tensor name: 'int4'} to quantize_tflite by hand")
        samples = np.stack([s[0] for s in representative_samples(representative_data, _file_specs(model),
                                                                 calibration_samples)])
        probe = samples[:sensitivity_samples]
        reference = _outputs(float_data, probe)

        def write(precision: Mapping[str, str], name: str) -> tuple[bytes, float, ExportReport]:
            path = work / name
            report = quantize_tflite(float_data, path, samples, "int8", precision=dict(precision) or None,
                                     calibration_samples=calibration_samples, int4_clipping=int4_clipping)
            data = path.read_bytes()
            return data, output_noise(_outputs(data, probe), reference), report

        if keras_model is not None:
            # the int8 file the user compares with: to_tflite's (the same tensors as the float
            # file's quantize_tflite, a few bytes of signature names apart)
            to_tflite(keras_model, work / "int8.tflite", "int8", samples, calibration_samples=calibration_samples,
                      dense_as_conv=dense_as_conv)
            data = (work / "int8.tflite").read_bytes()
            int8_bytes, int8_noise = len(data), output_noise(_outputs(data, probe), reference)
        else:
            data, int8_noise, _ = write({}, "int8.tflite")
            int8_bytes = len(data)
        target = int(file_bytes) if file_bytes is not None else int(np.floor(float(fraction_of_int8) * int8_bytes))
        rows = []
        for index, op, out in candidates:
            data, noise, _ = write({out: "int4"}, f"op{index}.tflite")
            rows.append({"op": f"{op}#{index}", "tensor": out, "saving_bytes": int8_bytes - len(data),
                         "sensitivity": max(noise - int8_noise, 0.0), "int4": False})
        chosen = set(choose_int4([r["saving_bytes"] for r in rows], [r["sensitivity"] for r in rows],
                                 int8_bytes - target)) if target < int8_bytes else set()
        while True:
            precision = {rows[i]["tensor"]: "int4" for i in sorted(chosen)}
            data, noise, report = write(precision, "mixed.tflite")
            size = len(data)
            if size <= target:
                break
            rest = [i for i in range(len(rows)) if i not in chosen and rows[i]["saving_bytes"] > 0]
            if not rest:
                raise PrecisionError(
                    f"the file is {size:,} bytes with int4 weights on every candidate op, over the budget of "
                    f"{target:,}", "mixed_precision", "raise the budget, or prune the model first")
            chosen.add(min(rest, key=lambda i: rows[i]["sensitivity"] / rows[i]["saving_bytes"]))
        for i in chosen:
            rows[i]["int4"] = True
        write_bytes_atomic(out_path, data)
    report.path = str(out_path)
    return MixedPrecisionReport(
        precision=precision, layers=rows, int8_bytes=int8_bytes, target_bytes=target, file_bytes=size,
        int8_noise=int8_noise, predicted_noise=int8_noise + sum(rows[i]["sensitivity"] for i in chosen),
        measured_noise=noise, export=report, seconds=round(time.perf_counter() - started, 2))


__all__ = ["MixedPrecisionReport", "choose_int4", "mixed_precision", "output_noise"]

"""Per-layer error of an integer `.tflite` file against its float reference (issue 22).

`compare` runs the quantized file and a float reference (a float `.tflite`, or a Keras
model converted to one with ``to_tflite(model, path, quantization=None)``) on the same
float samples, keeping every intermediate tensor (LiteRT's
``experimental_preserve_all_tensors``), and for each op output of the quantized file that
has a counterpart in the reference reports, over all samples together, with ``r`` the
reference values, ``q`` the dequantized values ``scale * (x - zero_point)`` and ``e = q - r``:

- SNR in dB: ``10 log10(sum r^2 / sum e^2)`` (infinite when ``e`` is all zeros);
- cosine similarity: ``sum r q / (||r|| ||q||)`` (1 when both are all zeros, 0 when one is);
- max and mean ``|e|`` in LSB, i.e. divided by the quantized tensor's scale (per channel
  for a per-channel tensor), and the max ``|e|`` in real units.

Counterparts are found by tensor name (the converter names an op's output after the Keras
layers it computes, and both conversions of one model use the same names); tensors left
over are paired in op order with the next unpaired reference output of the same op type
and shape. Boundary QUANTIZE / DEQUANTIZE ops of a float-I/O model are not compared (the
tensor they dequantize is, under the model output's name). The interpreters run LiteRT's
builtin kernels without a delegate (XNNPACK fuses ops and keeps no intermediate tensors),
or its reference kernels (``reference_kernels=True``, what TFLite Micro is written against).

Example:
    >>> import keras, numpy as np
    >>> from tfcompress.export import compare, to_tflite
    >>> keras_model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
    ...                                 keras.layers.Dense(4)])
    >>> x_calib = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    >>> _ = to_tflite(keras_model, "model_int8.tflite", "int8", representative_data=x_calib)
    >>> report = compare(keras_model, "model_int8.tflite", x_calib[:16])
    >>> [layer.op for layer in report.worst(2)]
    ['FULLY_CONNECTED', 'FULLY_CONNECTED']
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfcompress.errors import TfcompressError
from tfcompress.export.isolation import run_isolated
from tfcompress.export.tflite_file import FLOAT_TYPES, TensorInfo, TFLiteModel, load_tflite

INTEGER_TYPES = frozenset({"INT8", "UINT8", "INT16"})


class CompareError(TfcompressError):
    """The quantized file, its reference or the samples cannot be compared."""


@dataclass(frozen=True)
class LayerError:
    """The error of one op output of the quantized file against its float counterpart.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        >>> _ = to_tflite(model, "int8.tflite", "int8", representative_data=x)
        >>> error = compare(model, "int8.tflite", x[:8]).layers[-1]
        >>> error.op, error.dtype, error.shape, error.cosine > 0.99
        ('FULLY_CONNECTED', 'int8', (1, 4), True)
    """

    op: str
    op_index: int
    tensor: str
    reference_tensor: str
    matched_by: str  # "name" or "order"
    dtype: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    snr_db: float
    cosine: float
    max_abs_error_lsb: float
    mean_abs_error_lsb: float
    max_abs_error: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        for key in ("snr_db", "cosine"):
            if not math.isfinite(d[key]):
                d[key] = str(d[key])  # "inf" / "-inf" / "nan": JSON has no infinities
        return d


@dataclass
class ComparisonReport:
    """`compare`'s answer: one `LayerError` per compared tensor, in op order.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        >>> _ = to_tflite(model, "int8.tflite", "int8", representative_data=x)
        >>> report = compare(model, "int8.tflite", x[:8])
        >>> report.num_samples, len(report.layers), report.unmatched
        (8, 1, [])
        >>> "FULLY_CONNECTED" in report.text()
        True
    """

    model_path: str
    reference: str
    num_samples: int
    kernels: str
    layers: list[LayerError]
    unmatched: list[str] = field(default_factory=list)

    def worst(self, n: int = 5) -> list[LayerError]:
        """The ``n`` layers with the lowest SNR (ties: larger max LSB error first)."""
        return sorted(self.layers, key=_badness)[: max(0, int(n))]

    def to_dict(self) -> dict:
        return {
            "model_path": self.model_path,
            "reference": self.reference,
            "num_samples": self.num_samples,
            "kernels": self.kernels,
            "layers": [layer.to_dict() for layer in self.layers],
            "unmatched": list(self.unmatched),
        }

    def text(self) -> str:
        """A table, worst layers first."""
        lines = [
            f"per-layer error of {self.model_path} against {self.reference} on {self.num_samples} "
            f"sample(s), {self.kernels}; worst first",
            f"  {'op':<26} {'tensor':<44} {'SNR dB':>8} {'cosine':>8} {'max LSB':>8} {'mean LSB':>8} match",
        ]
        for layer in self.worst(len(self.layers)):
            name = layer.tensor if len(layer.tensor) <= 44 else "..." + layer.tensor[-41:]
            lines.append(
                f"  {f'#{layer.op_index} {layer.op}':<26} {name:<44} {layer.snr_db:>8.2f} {layer.cosine:>8.5f} "
                f"{layer.max_abs_error_lsb:>8.2f} {layer.mean_abs_error_lsb:>8.3f} {layer.matched_by}"
            )
        if self.unmatched:
            lines.append(f"  no counterpart in the reference: {', '.join(self.unmatched)}")
        return "\n".join(lines)


def _badness(layer: LayerError) -> tuple[float, float]:
    snr = layer.snr_db if not math.isnan(layer.snr_db) else -math.inf
    return snr, -layer.max_abs_error_lsb


def compare(
    reference,
    int8_tflite: str | os.PathLike | bytes,
    samples: np.ndarray | Sequence[np.ndarray],
    *,
    reference_kernels: bool = False,
    isolate: bool = False,
) -> ComparisonReport:
    """SNR, cosine and LSB errors of every op output of ``int8_tflite`` against ``reference``.

    Args:
        reference: the float model: a Keras model, a `.keras` file (both converted with
            ``to_tflite(model, path, quantization=None)``), or a float `.tflite` file / bytes.
        int8_tflite: the quantized `.tflite` file (or its bytes).
        samples: float inputs ``(N, *input_shape[1:])``; a list for several inputs.
        reference_kernels: run LiteRT's reference kernels instead of its builtin ones.
        isolate: run the interpreters in a child process (`tfcompress.export.isolation`).

    Returns:
        A `ComparisonReport` (``text()``, ``worst(n)``, ``to_dict()``).

    Raises:
        CompareError: the reference is not a float model, the quantized file has no
            integer tensors, no tensor has a counterpart, or the samples do not fit.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
        >>> _ = to_tflite(model, "float.tflite", quantization=None)
        >>> _ = to_tflite(model, "int8.tflite", "int8", representative_data=x)
        >>> report = compare("float.tflite", "int8.tflite", x[:32])
        >>> report.worst(1)[0].snr_db > 20
        True
    """
    model = load_tflite(int8_tflite)
    ref_data, ref_where = _reference_bytes(reference)
    where = model.path or "<bytes>"
    args = (model.data, where, ref_data, ref_where, samples)
    kwargs = {"reference_kernels": reference_kernels}
    if isolate:
        return run_isolated("tfcompress.export.compare:compare_files", args, kwargs, where=where,
                            models={where: model.data, ref_where: ref_data})
    return compare_files(*args, **kwargs)


def _reference_bytes(reference) -> tuple[bytes, str]:
    """The float reference as `.tflite` bytes and a label for messages."""
    if isinstance(reference, TFLiteModel):
        return reference.data, reference.path or "<reference bytes>"
    if isinstance(reference, bytes | bytearray | memoryview):
        return load_tflite(bytes(reference)).data, "<reference bytes>"
    if isinstance(reference, str | os.PathLike):
        if Path(reference).suffix != ".keras":
            return load_tflite(reference).data, str(reference)
        from tfcompress.export.convert import load_keras_model

        label = f"{reference} (converted to float32 .tflite)"
        reference = load_keras_model(reference)
    else:
        label = f"Keras model {getattr(reference, 'name', '?')!r} (converted to float32 .tflite)"
    if not hasattr(reference, "predict"):
        raise CompareError(
            f"reference of type {type(reference).__name__} is neither a Keras model nor a .tflite file",
            "reference", "pass the Keras model, its .keras file or its float .tflite file",
        )
    from tfcompress.export.convert import to_tflite

    with tempfile.TemporaryDirectory(prefix="tfcompress_compare_") as tmp:
        path = Path(tmp) / "reference_float32.tflite"
        to_tflite(reference, path, quantization=None)
        return path.read_bytes(), label


# ----------------------------------------------------------------------------- matching


def _op_outputs(model: TFLiteModel, kinds: frozenset[str], skip_boundary: bool):
    """(op, output position, tensor) of subgraph 0's ops whose output type is in ``kinds``."""
    for op in model.ops:
        if op.subgraph != 0 or (skip_boundary and model.is_boundary_op(op)):
            continue
        for position, index in enumerate(op.outputs):
            if index < 0:
                continue
            t = model.tensor(index, 0)
            if t.dtype in kinds and not t.constant:
                yield op, position, t


def _aliases(model: TFLiteModel, t: TensorInfo) -> list[str]:
    """``t``'s name, and the model output's name when a boundary DEQUANTIZE turns ``t`` into it."""
    names = [t.name]
    for op in model.ops:
        if op.name == "DEQUANTIZE" and model.is_boundary_op(op) and t.index in op.inputs:
            names += [model.tensor(o, 0).name for o in op.outputs if o >= 0]
    return names


def match_tensors(model: TFLiteModel, reference: TFLiteModel) -> tuple[list[tuple], list[str]]:
    """Pairs (op, quantized tensor, reference tensor, "name" | "order") in op order, and the
    names of the quantized op outputs left without a counterpart."""
    quantized = [(op, pos, t) for op, pos, t in _op_outputs(model, INTEGER_TYPES, True) if t.quantization]
    floats = list(_op_outputs(reference, FLOAT_TYPES, False))
    if not quantized:
        raise CompareError("the file has no quantized integer op outputs to compare", model.path or "<bytes>",
                           "pass the int8 (or int16) .tflite file as the second argument")
    if not floats:
        raise CompareError("the reference has no float op outputs", "reference",
                           "pass the float model: the Keras model or its float32 .tflite file")
    by_name: dict[str, list[int]] = {}
    for k, (_, _, t) in enumerate(floats):
        by_name.setdefault(t.name, []).append(k)
    pairs: dict[int, tuple[int, str]] = {}  # quantized position -> (float position, how)
    taken: set[int] = set()
    for j, (_, _, t) in enumerate(quantized):
        for name in _aliases(model, t):
            hits = [k for k in by_name.get(name, []) if k not in taken and floats[k][2].shape == t.shape]
            if len(hits) == 1:
                pairs[j] = (hits[0], "name")
                taken.add(hits[0])
                break
    last = -1  # op order: after the float counterpart of the previous paired tensor
    for j, (op, pos, t) in enumerate(quantized):
        if j in pairs:
            last = pairs[j][0]
            continue
        for k in range(last + 1, len(floats)):
            f_op, f_pos, f_t = floats[k]
            if k not in taken and f_op.name == op.name and f_pos == pos and f_t.shape == t.shape:
                pairs[j] = (k, "order")
                taken.add(k)
                last = k
                break
    matched = [(quantized[j][0], quantized[j][2], floats[k][2], how) for j, (k, how) in sorted(pairs.items())]
    unmatched = [f"{quantized[j][2].name} ({quantized[j][0].name}#{quantized[j][0].index})"
                 for j in range(len(quantized)) if j not in pairs]
    if not matched:
        raise CompareError("no op output of the file has a counterpart in the reference", model.path or "<bytes>",
                           "pass the float model this file was converted from")
    return matched, unmatched


# ----------------------------------------------------------------------------- measuring


class _Accumulator:
    """Sums over all samples of one tensor pair (streaming: no sample is kept)."""

    def __init__(self, t: TensorInfo):
        q = t.quantization
        self.scales = np.asarray(q.scales, dtype=np.float64)
        self.zero_points = np.asarray(q.zero_points, dtype=np.float64)
        self.axis = q.quantized_dimension
        self.rr = self.ee = self.rq = self.qq = self.abs_lsb = 0.0
        self.max_lsb = self.max_abs = 0.0
        self.count = 0

    def _per_element(self, values: np.ndarray, ndim: int) -> np.ndarray:
        if values.size == 1:
            return values.reshape(())
        shape = [1] * ndim
        shape[self.axis] = values.size
        return values.reshape(shape)

    def add(self, raw: np.ndarray, reference: np.ndarray) -> None:
        scale = self._per_element(self.scales, raw.ndim)
        q = (raw.astype(np.float64) - self._per_element(self.zero_points, raw.ndim)) * scale
        r = reference.astype(np.float64).reshape(q.shape)
        e = np.abs(q - r)
        lsb = e / scale
        self.rr += float(np.sum(r * r))
        self.ee += float(np.sum(e * e))
        self.rq += float(np.sum(r * q))
        self.qq += float(np.sum(q * q))
        self.abs_lsb += float(np.sum(lsb))
        self.max_lsb = max(self.max_lsb, float(lsb.max(initial=0.0)))
        self.max_abs = max(self.max_abs, float(e.max(initial=0.0)))
        self.count += e.size

    def snr_db(self) -> float:
        if self.ee == 0.0:
            return math.inf
        if self.rr == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.rr / self.ee)

    def cosine(self) -> float:
        if self.rr == 0.0 and self.qq == 0.0:
            return 1.0
        if self.rr == 0.0 or self.qq == 0.0:
            return 0.0
        return self.rq / math.sqrt(self.rr * self.qq)


def _check_samples(samples, runner, where: str) -> list[np.ndarray]:
    arrays = [np.asarray(samples)] if isinstance(samples, np.ndarray) else [np.asarray(a) for a in samples]
    details = runner.input_details
    if len(arrays) != len(details):
        raise CompareError(f"got {len(arrays)} input array(s), the model has {len(details)}", "samples",
                           "pass one array per model input")
    for i, (a, d) in enumerate(zip(arrays, details, strict=True)):
        expected = tuple(int(s) for s in d["shape"][1:])
        if a.ndim == 0 or tuple(a.shape[1:]) != expected:
            raise CompareError(f"samples[{i}] shaped {tuple(a.shape)} do not fit the input (N, *{expected})",
                               where, "pass float inputs shaped like the model input, with a sample axis first")
        if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
            raise CompareError(f"samples[{i}] hold non-numeric, NaN or infinite values", "samples")
    if arrays[0].shape[0] == 0 or any(a.shape[0] != arrays[0].shape[0] for a in arrays):
        raise CompareError("the sample arrays are empty or hold different numbers of samples", "samples")
    return [a.astype(np.float32) for a in arrays]


def _batches(runner, arrays: list[np.ndarray]):
    """(rows, typed inputs) per interpreter batch; the last partial batch is padded."""
    n, step = arrays[0].shape[0], max(1, runner.batch_size)
    for start in range(0, n, step):
        chunk = [a[start : start + step] for a in arrays]
        rows = chunk[0].shape[0]
        if rows < step:
            chunk = [np.concatenate([c, np.repeat(c[-1:], step - rows, axis=0)]) for c in chunk]
        yield rows, [runner.quantize_input(c, i) for i, c in enumerate(chunk)]


def compare_files(data: bytes, where: str, reference_data: bytes, reference_where: str,
                  samples: np.ndarray | Sequence[np.ndarray], *, reference_kernels: bool = False) -> ComparisonReport:
    """`compare` on two `.tflite` files given as bytes (what `compare` runs, in a child with
    ``isolate=True``); ``where`` / ``reference_where`` name them in the report."""
    from tfcompress.export.runtime import ModelRunner

    model = load_tflite(data)
    reference = load_tflite(reference_data)
    pairs, unmatched = match_tensors(model, reference)
    options = {"reference_kernels": True} if reference_kernels else {"delegate": "none"}
    runner = ModelRunner(model, preserve_all_tensors=True, runtime="litert", **options)
    ref_runner = ModelRunner(reference, preserve_all_tensors=True, runtime="litert", **options)
    if runner.batch_size != ref_runner.batch_size:
        raise CompareError(f"the file runs batches of {runner.batch_size}, the reference of {ref_runner.batch_size}",
                           reference_where, "export both with the same batch size (to_tflite's batch_size)")
    arrays = _check_samples(samples, runner, where)
    _check_samples(arrays, ref_runner, reference_where)
    accumulators = [_Accumulator(t) for _, t, _, _ in pairs]
    for (rows, inputs), (_, ref_inputs) in zip(_batches(runner, arrays), _batches(ref_runner, arrays), strict=True):
        runner.invoke_raw(inputs)
        ref_runner.invoke_raw(ref_inputs)
        for acc, (_, t, r, _) in zip(accumulators, pairs, strict=True):
            acc.add(runner.interpreter.get_tensor(t.index)[:rows], ref_runner.interpreter.get_tensor(r.index)[:rows])
    layers = [
        LayerError(
            op=op.name, op_index=op.index, tensor=t.name, reference_tensor=r.name, matched_by=how,
            dtype=t.dtype.lower(), shape=t.shape, scale=float(t.quantization.scales[0]),
            zero_point=int(t.quantization.zero_points[0]), snr_db=acc.snr_db(), cosine=acc.cosine(),
            max_abs_error_lsb=acc.max_lsb, mean_abs_error_lsb=acc.abs_lsb / max(acc.count, 1),
            max_abs_error=acc.max_abs,
        )
        for (op, t, r, how), acc in zip(pairs, accumulators, strict=True)
    ]
    kernels = "LiteRT reference kernels" if reference_kernels else "LiteRT builtin kernels, no delegate"
    return ComparisonReport(model_path=where, reference=reference_where, num_samples=int(arrays[0].shape[0]),
                            kernels=kernels, layers=layers, unmatched=unmatched)

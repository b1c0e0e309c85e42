"""What a written `.tflite` file is, as a report: `ExportReport`, its I/O quantization and its
layer-by-layer `CompressionReport`; the quantization modes and the I/O types each one takes.

Shared by `to_tflite` (tfcompress.export.convert) and `quantize_tflite`
(tfcompress.export.precision), which both build their reports here, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tfcompress.errors import TfcompressError
from tfcompress.export.tflite_file import TFLiteModel
from tfcompress.report import SKIPPED, CompressionReport, logger

QUANTIZATION_MODES = ("int8", "int16x8", "int4", "int4_weight_only", "float16", "dynamic", None)
IO_DTYPES = ("int8", "uint8", "int16", "float32")
#: the full-integer modes: calibrated activations, every op integer (checked op by op)
INTEGER_MODES = ("int8", "int16x8")
#: the I/O types each full-integer mode can take
MODE_IO_DTYPES = {"int8": ("int8", "uint8", "float32"), "int16x8": ("int16", "float32"), "int4": ("int8",)}
#: the modes written by tfcompress.export.precision.quantize_tflite from the float file
FILE_MODES = ("int4", "int4_weight_only")
DEFAULT_CALIBRATION_SAMPLES = 500


@dataclass
class TensorQuantization:
    name: str
    dtype: str
    shape: list[int]
    scale: float | None
    zero_point: int | None


@dataclass
class ExportReport:
    """What `to_tflite` wrote: sizes, ops, int8 coverage and I/O quantization.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> report = to_tflite(model, "model.tflite", "int8", representative_data=np.ones((4, 8), "float32"))
        >>> report.ops, report.int8_coverage, report.float_ops, report.calibration_samples
        ({'FULLY_CONNECTED': 1}, 1.0, [], 4)
        >>> report.to_dict()["inputs"][0]["dtype"]
        'int8'
        >>> "FULLY_CONNECTED" in report.text()
        True
    """

    path: str
    quantization: str | None
    io_dtype: str
    size_bytes: int
    gzip_size_bytes: int
    num_ops: int
    ops: dict[str, int]
    int8_coverage: float
    float_ops: list[str]
    inputs: list[TensorQuantization]
    outputs: list[TensorQuantization]
    calibration_samples: int
    conversion_seconds: float
    notes: list[str] = field(default_factory=list)
    #: what the conversion did, layer by layer and op by op (`layer_report`)
    layers: CompressionReport | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = self.layers.to_dict() if self.layers is not None else None
        return data

    def text(self) -> str:
        lines = [
            f"wrote {self.path}",
            f"  quantization   {self.quantization or 'none (float32)'}   I/O {self.io_dtype}",
            f"  size           {self.size_bytes:,} bytes (gzip {self.gzip_size_bytes:,})",
            f"  ops            {self.num_ops}: "
            + ", ".join(f"{k} x{v}" for k, v in sorted(self.ops.items())),
            f"  int8 coverage  {self.int8_coverage:.1%}"
            + (f"  (float: {', '.join(self.float_ops)})" if self.float_ops else ""),
        ]
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            for t in tensors:
                q = f" scale={t.scale:.6g} zero_point={t.zero_point}" if t.scale else ""
                lines.append(f"  {kind:<14} {t.name} {t.dtype}{t.shape}{q}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _tensor_quantization(t) -> TensorQuantization:
    q = t.quantization
    return TensorQuantization(
        name=t.name,
        dtype=t.dtype.lower(),
        shape=list(t.shape),
        scale=q.scales[0] if q else None,
        zero_point=q.zero_points[0] if q else None,
    )


def check_io_dtype(quantization: str | None, io_dtype: str | None) -> str:
    """The model I/O type for ``quantization`` (its default when ``io_dtype`` is None), or a
    `TfcompressError` naming the types the mode takes.

    Example:
        >>> check_io_dtype("int16x8", None), check_io_dtype("int8", "float32")
        ('int16', 'float32')
    """
    if io_dtype is None:
        return {"int8": "int8", "int16x8": "int16", "int4": "int8"}.get(quantization, "float32")
    if io_dtype not in IO_DTYPES:
        raise TfcompressError(f"unknown io_dtype {io_dtype!r}", "io_dtype", f"use one of {IO_DTYPES}")
    allowed = MODE_IO_DTYPES.get(quantization, ("float32",))
    if io_dtype not in allowed:
        needs = next((m for m, types in MODE_IO_DTYPES.items() if io_dtype in types), None)
        raise TfcompressError(
            f"io_dtype={io_dtype!r} does not go with quantization={quantization!r}",
            "io_dtype",
            f"use io_dtype in {allowed}" + (f", or quantization={needs!r}" if needs else ""),
        )
    return io_dtype


def export_report(parsed: TFLiteModel, path: str, quantization: str | None, io_dtype: str, samples: int,
                  seconds: float, notes: list[str], float_ops: list[str],
                  materialized: list[tuple[str, str]] = ()) -> ExportReport:
    """The `ExportReport` of a written file (``to_tflite``, ``quantize_tflite``); for int16x8 a
    note names the ops TFLite Micro refuses in int16 (`tfcompress.export.micro.tflm_int16_problems`).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import load_tflite, to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=np.ones((4, 8), "float32"))
        >>> parsed = load_tflite("model.tflite")
        >>> report = export_report(parsed, parsed.path, "int8", "int8", 500, 1.2, [], [])
        >>> report.ops, report.int8_coverage, report.calibration_samples, report.conversion_seconds
        ({'FULLY_CONNECTED': 1}, 1.0, 500, 1.2)
    """
    from tfcompress.export.micro import tflm_int16_problems

    problems = tflm_int16_problems(parsed) if quantization == "int16x8" else {}
    if problems:
        note = "TFLite Micro will not run this file as it is: " + "; ".join(
            f"{op}: {why}" for op, why in sorted(problems.items()))
        notes = [*notes, note]
        logger.warning("%s: %s", path, note)  # once per export, as CompressionReport warns
    return ExportReport(
        path=path,
        quantization=quantization,
        io_dtype=io_dtype,
        size_bytes=parsed.size_bytes,
        gzip_size_bytes=parsed.gzip_size_bytes,
        num_ops=len(parsed.ops),
        ops=parsed.op_counts(),
        int8_coverage=round(parsed.int8_coverage(), 4),
        float_ops=float_ops,
        inputs=[_tensor_quantization(t) for t in parsed.inputs],
        outputs=[_tensor_quantization(t) for t in parsed.outputs],
        calibration_samples=samples,
        conversion_seconds=round(seconds, 3),
        notes=notes,
        layers=layer_report(parsed, quantization, float_ops, materialized, problems),
    )


def layer_report(parsed: TFLiteModel, quantization: str | None, float_ops: list[str],
                 materialized: list[tuple[str, str]] = (), tflm_problems: dict[str, str] | None = None
                 ) -> CompressionReport:
    """`to_tflite`'s `CompressionReport`: the layers materialized into plain weights, one row per
    TFLite op kind with how it is computed, and each op the int8 conversion left in float
    (``skipped``, with what to do).

    Example:

    >>> import keras, numpy as np, tempfile, os
    >>> from tfcompress.export import to_tflite
    >>> x = keras.Input((4,))
    >>> model = keras.Model(x, keras.layers.Dense(2, activation="softmax")(keras.layers.Dense(3)(x)))
    >>> path = os.path.join(tempfile.mkdtemp(), "m.tflite")
    >>> report = to_tflite(model, path, "int8", representative_data=np.ones((8, 4), "float32"))
    >>> [(row.layer, row.action) for row in report.layers.rows]
    [('FULLY_CONNECTED x2', 'int8'), ('SOFTMAX x1', 'int8')]
    """
    report = CompressionReport("to_tflite")
    for name, kind in materialized:
        report.add(name, kind, "materialized", "its computed weights written into a plain Dense / Conv2D")
    left: dict[str, list[str]] = {}
    for described in float_ops if quantization in INTEGER_MODES else ():
        left.setdefault(described.split("#")[0], []).append(described)
    int4_ops: dict[str, int] = {}  # op kind -> ops with int4 weights
    for op in parsed.ops:
        if any(t.dtype == "INT4" for t in parsed.op_tensors(op)):
            int4_ops[op.name] = int4_ops.get(op.name, 0) + 1
    mode = {"int8": "int8", "int16x8": "int16 activations, int8 weights", "int4": "int8",
            "int4_weight_only": "float32 (int4 weights dequantized)",
            "float16": "float16 weights", "dynamic": "int8 weights, float activations",
            None: "float32"}[quantization]
    problems = tflm_problems or {}
    for kind, count in sorted(parsed.op_counts().items()):
        done = count - len(left.get(kind, []))
        if done and kind in problems:
            report.add(f"{kind} x{done}", kind, mode, f"TFLite Micro: {problems[kind]}",
                       "keep this op out of a model for TFLite Micro in int16x8 (or export int8)", important=True)
        elif done:
            four = int4_ops.get(kind, 0)
            if four:
                report.add(f"{kind} x{four} int4", kind, "int8 activations, int4 weights")
            if done - four:
                report.add(f"{kind} x{done - four}", kind, mode)
    for kind, ops in sorted(left.items()):
        for described in ops:
            report.add(described, kind, SKIPPED,
                       "kept in float: the converter has no int8 kernel for it here (allow_float_fallback=True)",
                       "replace or remove the layer it comes from, or accept the float op", important=True)
    return report


def _describe_float_ops(parsed: TFLiteModel) -> list[str]:
    described = []
    for op in parsed.float_ops():
        outputs = [parsed.tensor(i, op.subgraph).name for i in op.outputs if i >= 0]
        described.append(f"{op.name}#{op.index} ({outputs[0] if outputs else '?'})")
    return described

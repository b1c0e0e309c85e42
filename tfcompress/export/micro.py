"""TensorFlow Lite for Microcontrollers export: C sources, a measured tensor arena, a verified model.

`to_micro` turns a validated `.tflite` file into what a firmware project needs:

- ``NAME_model_data.h`` / ``NAME_model_data.cc``: the flatbuffer as a 16-byte aligned
  ``const unsigned char`` array (``xxd -i`` layout, 12 bytes a line) and its length;
- ``NAME_op_resolver.h``: a ``tflite::MicroMutableOpResolver<N>`` registering exactly the
  ops the model uses, and ``kTensorArenaSize``;
- ``NAME_report.json``: the `MicroReport`.

The arena size is not estimated: the model runs in the real TFLM interpreter
(``tflite-micro``) whose ``RecordingMicroAllocator`` reports what it took. TFLM
(David et al., "TensorFlow Lite Micro: Embedded Machine Learning for TinyML Systems",
MLSys 2021) allocates from one arena used as two stacks: the *head* holds the
non-persistent, memory-planned activation buffers and the *tail* the persistent
structures (tensor metadata, op data); ``total = head + tail``.

The model is then checked: TFLM's kernels are written against TFLite's reference
kernels, so on the same int8 inputs TFLM and LiteRT with ``BUILTIN_REF`` must give
bit-identical int8 outputs. When they do not, both interpreters are rerun keeping
every intermediate tensor and the ops whose outputs differ are named with their
difference in LSB (units of the output tensor's quantization step).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import keyword
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfcompress._io import atomic_write
from tfcompress.errors import TfcompressError
from tfcompress.export.buffers import OffsetBuffer, offset_buffers
from tfcompress.export.isolation import phase, run_isolated
from tfcompress.export.tflite_file import TensorInfo, TFLiteModel, load_tflite

# TFLite builtin op -> tflite::MicroMutableOpResolver method. Checked against
# tflite-micro's tensorflow/lite/micro/micro_mutable_op_resolver.h and the op list
# of python/tflite_micro/python_ops_resolver.cc (what the Python interpreter,
# which measures the arena here, registers).
TFLM_BUILTIN_OPS: dict[str, str] = {
    "ABS": "AddAbs",
    "ADD": "AddAdd",
    "ADD_N": "AddAddN",
    "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable",
    "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo",
    "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast",
    "CEIL": "AddCeil",
    "CONCATENATION": "AddConcatenation",
    "CONV_2D": "AddConv2D",
    "COS": "AddCos",
    "CUMSUM": "AddCumSum",
    "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize",
    "DIV": "AddDiv",
    "ELU": "AddElu",
    "EQUAL": "AddEqual",
    "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims",
    "FILL": "AddFill",
    "FLOOR": "AddFloor",
    "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod",
    "FULLY_CONNECTED": "AddFullyConnected",
    "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd",
    "GREATER": "AddGreater",
    "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish",
    "IF": "AddIf",
    "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D",
    "LEAKY_RELU": "AddLeakyRelu",
    "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog",
    "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot",
    "LOGICAL_OR": "AddLogicalOr",
    "LOGISTIC": "AddLogistic",
    "LOG_SOFTMAX": "AddLogSoftmax",
    "MAXIMUM": "AddMaximum",
    "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean",
    "MINIMUM": "AddMinimum",
    "MIRROR_PAD": "AddMirrorPad",
    "MUL": "AddMul",
    "NEG": "AddNeg",
    "NOT_EQUAL": "AddNotEqual",
    "PACK": "AddPack",
    "PAD": "AddPad",
    "PADV2": "AddPadV2",
    "PRELU": "AddPrelu",
    "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable",
    "REDUCE_MAX": "AddReduceMax",
    "RELU": "AddRelu",
    "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape",
    "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor",
    "ROUND": "AddRound",
    "RSQRT": "AddRsqrt",
    "SELECT_V2": "AddSelectV2",
    "SHAPE": "AddShape",
    "SIN": "AddSin",
    "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit",
    "SPLIT_V": "AddSplitV",
    "SQRT": "AddSqrt",
    "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub",
    "SUM": "AddSum",
    "SVDF": "AddSvdf",
    "TANH": "AddTanh",
    "TRANSPOSE": "AddTranspose",
    "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "UNPACK": "AddUnpack",
    "VAR_HANDLE": "AddVarHandle",
    "WHILE": "AddWhile",
    "ZEROS_LIKE": "AddZerosLike",
}
# Custom ops TFLM ships kernels for (registered by name with AddCustom inside these methods).
TFLM_CUSTOM_OPS: dict[str, str] = {
    "CUSTOM:TFLite_Detection_PostProcess": "AddDetectionPostprocess",
    "CUSTOM:CIRCULAR_BUFFER": "AddCircularBuffer",
}
TFLM_OPS: dict[str, str] = {**TFLM_BUILTIN_OPS, **TFLM_CUSTOM_OPS}

# TFLite's 16x8 mode (int16 activations) on TFLite Micro, measured op by op with the real
# interpreter (benchmarks/probe_int16x8.py, tflite-micro 0.dev20261023182759): these ops have a
# TFLM kernel, but not for int16 (the message is TFLM's own); TILE has no TFLM kernel at all.
TFLM_INT16_REFUSED: dict[str, str] = {
    "EXP": "no int16 kernel (exp.cc: input->type != kTfLiteFloat32)",
    "REDUCE_MAX": "no int16 kernel ('Only float32 and int8 types are supported')",
    "RESIZE_BILINEAR": "no int16 kernel ('Output type is 7, requires float or int8')",
}
# int16 kernels TFLM runs whose outputs differ from LiteRT's reference kernels (and from the
# float model) on the probe's tiny models, in LSB of the int16 output: LiteRT's int16 RELU6 is
# within 1.1 LSB of float, TFLM's 4574 LSB away; SUM is wrong on both (LiteRT's int16 SUM is as
# far from float as the float values are large).
TFLM_INT16_DIFFERENT: dict[str, str] = {
    "RELU6": "TFLM's int16 kernel differs from LiteRT's reference by up to 4574 LSB",
    "SUM": "int16 SUM differs from float on LiteRT and TFLM (by up to 54854 LSB between them)",
    "RSQRT": "TFLM's int16 kernel differs from LiteRT's reference by up to 414 LSB",
}

DEFAULT_ARENA_MARGIN = 1024
ARENA_ALIGNMENT = 16
BYTES_PER_LINE = 12
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# C++ keywords Python's `keyword` module does not know (C ones are a subset).
_CPP_KEYWORDS = frozenset(
    "alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t "
    "char32_t class compl concept const consteval constexpr constinit const_cast continue co_await "
    "co_return co_yield decltype default delete do double dynamic_cast else enum explicit export "
    "extern false float for friend goto if inline int long mutable namespace new noexcept not "
    "not_eq nullptr operator or or_eq private protected public register reinterpret_cast requires "
    "restrict return short signed sizeof static static_assert static_cast struct switch template "
    "this thread_local throw true try typedef typeid typename union unsigned using virtual void "
    "volatile wchar_t while xor xor_eq".split()
)
# Phrases TFLM prints when the arena is too small (as opposed to a kernel rejecting the model).
_ARENA_TOO_SMALL = ("Failed to allocate", "Failed to resize buffer", "missing:", "Arena size is too small")
_ALLOCATION_LINE = re.compile(r"\[RecordingMicroAllocator\] Arena allocation (total|head|tail) (\d+) bytes")
_MAX_ARENA = 1 << 30
# Float64 bytes make_samples may draw in all (num_samples x input elements x 8).
_MAX_SAMPLE_BYTES = 1 << 30


class MicroError(TfcompressError):
    """The model cannot be exported to, or run on, TensorFlow Lite for Microcontrollers."""


class UnsupportedOpError(MicroError):
    """The model uses ops TFLM has no kernel for.

    Attributes:
        ops: the unsupported op names.
    """

    def __init__(self, ops: Sequence[str], where: str, dtype: str | None = None):
        self.ops = list(ops)
        if dtype:
            super().__init__(
                f"TFLite Micro has no {dtype} kernel for op(s) {', '.join(self.ops)} "
                f"({'; '.join(TFLM_INT16_REFUSED.get(op, '') for op in self.ops)})",
                where,
                "export the model with quantization='int8', or replace the layers that produce them "
                "(tfcompress.export.micro.TFLM_INT16_REFUSED lists the measured ops)",
            )
            return
        super().__init__(
            f"TFLite Micro has no kernel for op(s) {', '.join(self.ops)}",
            where,
            "replace the layers that produce them (TFLM supports the builtins listed in "
            "tfcompress.export.micro.TFLM_OPS)",
        )


class OffsetBuffersError(MicroError):
    """The file stores constant buffers after the flatbuffer (``Buffer.offset``), which TFLite
    Micro does not read (`tfcompress.export.buffers`).

    Attributes:
        buffers: the `OffsetBuffer` s.
    """

    def __init__(self, buffers: Sequence[OffsetBuffer], where: str):
        self.buffers = list(buffers)
        listed = "; ".join(str(b) for b in self.buffers[:6]) + ("; ..." if len(self.buffers) > 6 else "")
        super().__init__(
            f"{len(self.buffers)} buffer(s), {sum(b.size for b in self.buffers):,} bytes, are stored after the "
            f"flatbuffer by offset, which TFLite Micro does not read (it would run with wrong weights): {listed}",
            where,
            "rewrite the file with its buffers inside: tfcompress.export.inline_buffers(FILE, OUT), or re-export "
            "with tfcompress.export.to_tflite (ai-edge-quantizer stores buffers by offset once they reach 256 KiB "
            "and has no option to keep them inside)",
        )


class MicroVerificationError(MicroError):
    """TFLM's outputs differ from LiteRT's reference kernels (raised with ``strict=True``).

    Attributes:
        report: the `MicroReport` with the per-op differences.
    """

    def __init__(self, report: MicroReport):
        self.report = report
        differing = ", ".join(str(d) for d in report.op_differences) or "no single op isolated"
        super().__init__(
            f"TFLM outputs differ from LiteRT reference kernels by up to {report.max_diff_reference} "
            f"{report.diff_unit} ({differing})",
            report.model_path,
            "report the ops above; pass strict=False to write the sources anyway",
        )


@dataclass(frozen=True)
class OpDifference:
    """How far one op's output differs between TFLM and LiteRT's reference kernels.

    ``max_lsb`` is in units of the output tensor's quantization step (int outputs);
    ``max_abs`` is in real units (dequantized for int outputs).
    """

    op: str
    index: int
    tensor: str
    max_lsb: int | None
    max_abs: float
    first: bool = False

    def __str__(self) -> str:
        amount = f"{self.max_lsb} LSB" if self.max_lsb is not None else f"{self.max_abs:.3g}"
        origin = " (first to differ)" if self.first else ""
        return f"{self.op}#{self.index}: max |diff| = {amount}{origin}"


@dataclass
class MicroReport:
    """What `to_micro` wrote and measured.

    ``identical`` means TFLM equals LiteRT's reference kernels on every sample: bit
    for bit for integer outputs, within ``float_tolerance`` for float outputs.
    ``max_diff_*`` are in LSB for integer outputs and in real units for float ones
    (``diff_unit`` says which).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten()])
        >>> x = np.random.default_rng(0).random((8, 8, 8, 1)).astype("float32")
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=x)
        >>> report = to_micro("model.tflite", "out", samples=x[:2])
        >>> report.ops, report.identical, report.diff_unit, report.samples_compared
        (['CONV_2D', 'RESHAPE'], True, 'LSB', 2)
    """

    model_path: str
    name: str
    out_dir: str
    files: list[str]
    model_size_bytes: int
    model_sha256: str
    ops: list[str]
    resolver_methods: list[str]
    resolver_size: int
    arena_total_bytes: int
    arena_head_bytes: int
    arena_tail_bytes: int
    arena_margin_bytes: int
    recommended_arena_bytes: int
    output_dtype: str
    samples_compared: int
    identical: bool
    diff_unit: str
    max_diff_reference: float
    max_diff_default: float
    default_kernels: str
    max_abs_error_reference: float
    max_abs_error_default: float
    op_differences: list[OpDifference] = field(default_factory=list)
    tflm_version: str = ""
    litert_version: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def arena_bytes(self) -> int:
        """The measured tensor arena (head + tail) on the TFLM reference kernels."""
        return self.arena_total_bytes

    def to_dict(self) -> dict:
        data = asdict(self)
        data["op_differences"] = [str(d) for d in self.op_differences]
        return data

    def text(self) -> str:
        status = "IDENTICAL" if self.identical else "DIFFERENT"
        if self.diff_unit == "LSB":
            ref = f"max diff {int(self.max_diff_reference)} LSB"
            default = f"max diff {int(self.max_diff_default)} LSB"
        else:
            ref = f"max abs error {self.max_diff_reference:.3g}"
            default = f"max abs error {self.max_diff_default:.3g}"
        lines = [
            f"TFLite Micro export of {self.model_path}",
            f"  model          {self.model_size_bytes} bytes, sha256 {self.model_sha256[:16]}...",
            f"  ops            {', '.join(self.ops)}",
            f"  op resolver    tflite::MicroMutableOpResolver<{self.resolver_size}>",
            f"  tensor arena   {self.arena_total_bytes} bytes measured "
            f"(head {self.arena_head_bytes} + tail {self.arena_tail_bytes})",
            f"  kTensorArenaSize {self.recommended_arena_bytes} "
            f"(+{self.arena_margin_bytes} margin, rounded up to {ARENA_ALIGNMENT})",
            f"  TFLM vs LiteRT reference kernels: {status} on {self.samples_compared} sample(s), "
            f"{ref} ({self.output_dtype} outputs)",
            f"  TFLM vs LiteRT default kernels [{self.default_kernels}]: {default}",
        ]
        if self.op_differences:
            lines.append("  ops whose outputs differ:")
            lines += [f"    {d}" for d in self.op_differences]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("  files:")
        lines += [f"    {f}" for f in self.files]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers


def check_c_identifier(name: str) -> str:
    """Return ``name`` if it can prefix C/C++ identifiers, else raise `MicroError`."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise MicroError(
            f"name {name!r} is not a valid C identifier",
            "name",
            "use letters, digits and underscores, not starting with a digit (e.g. 'lenet')",
        )
    if name in _CPP_KEYWORDS or keyword.iskeyword(name):
        raise MicroError(f"name {name!r} is a C++ keyword", "name", "choose another name, e.g. 'model'")
    if name.startswith("__") or re.match(r"^_[A-Z]", name):
        raise MicroError(
            f"name {name!r} is reserved for the C++ implementation",
            "name",
            "do not start it with two underscores or an underscore and a capital letter",
        )
    return name


def round_up(value: int, multiple: int = ARENA_ALIGNMENT) -> int:
    return -(-int(value) // multiple) * multiple


def recommended_arena_size(measured: int, margin: int = DEFAULT_ARENA_MARGIN) -> int:
    """``kTensorArenaSize``: the measured arena plus ``margin``, rounded up to 16 bytes."""
    return round_up(measured + margin, ARENA_ALIGNMENT)


def _int16_ops(model: TFLiteModel) -> set[str]:
    """Ops of the file with an int16 activation (input or output, constants aside)."""
    return {op.name for op in model.ops
            if any(t.dtype == "INT16" and not t.constant for t in model.op_tensors(op))}


def tflm_int16_problems(model: TFLiteModel) -> dict[str, str]:
    """The ops of an int16x8 file TFLite Micro refuses (no kernel, or none for int16) or runs with
    other numbers than LiteRT's reference kernels: op name -> what was measured.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> x = keras.Input((8,))
        >>> model = keras.Model(x, keras.ops.exp(keras.layers.Dense(4)(x)))
        >>> _ = to_tflite(model, "int16x8.tflite", "int16x8", np.ones((4, 8), "float32"))
        >>> tflm_int16_problems(load_tflite("int16x8.tflite"))
        {'EXP': 'no int16 kernel (exp.cc: input->type != kTfLiteFloat32)'}
    """
    int16 = _int16_ops(model)
    found = {op: why for op, why in {**TFLM_INT16_REFUSED, **TFLM_INT16_DIFFERENT}.items() if op in int16}
    found.update({op: "no TFLite Micro kernel" for op in int16 if op not in TFLM_OPS})
    return found


def resolver_methods(model: TFLiteModel) -> list[tuple[str, str]]:
    """The (op, ``MicroMutableOpResolver`` method) pairs the model needs, sorted by op.

    Raises:
        UnsupportedOpError: an op has no TFLM kernel.
    """
    names = sorted({op.name for op in model.ops})
    unsupported = [n for n in names if n not in TFLM_OPS]
    if unsupported:
        raise UnsupportedOpError(unsupported, model.path or "<bytes>")
    no_int16 = sorted(TFLM_INT16_REFUSED.keys() & _int16_ops(model))
    if no_int16:
        raise UnsupportedOpError(no_int16, model.path or "<bytes>", dtype="int16")
    return [(n, TFLM_OPS[n]) for n in names]


@contextlib.contextmanager
def capture_native_stderr() -> Iterator[list[str]]:
    """Collect what C/C++ code writes to file descriptor 2 while the block runs.

    TFLM reports allocations and errors with ``MicroPrintf`` on the process's
    stderr, below Python's ``sys.stderr``; redirecting fd 2 is the only way to read it.
    The lines are appended to the yielded list when the block exits.
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())


def parse_allocations(lines: Sequence[str]) -> dict[str, int]:
    """Read ``total`` / ``head`` / ``tail`` from ``RecordingMicroAllocator`` output."""
    found: dict[str, int] = {}
    for line in lines:
        match = _ALLOCATION_LINE.search(line)
        if match:
            found[match.group(1)] = int(match.group(2))
    return found


def _tflm_runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as exc:
        raise MicroError(
            f"tflite-micro is not installed ({exc})",
            "tflite_micro",
            "pip install 'tfcompress[micro]' (or pip install tflite-micro)",
        ) from None
    return runtime


def _tflm_version() -> str:
    try:
        from tflite_micro.python.tflite_micro import _version

        return str(_version.__version__)
    except Exception:  # the version module is packaging detail, not API
        return "unknown"


def _tflm_failure(lines: Sequence[str]) -> str:
    useful = [ln.strip() for ln in lines if ln.strip() and "RecordingMicroAllocator" not in ln]
    return " / ".join(useful[-3:]) if useful else "no message"


def make_tflm_interpreter(data: bytes, arena_size: int, preserve_all_tensors: bool = False,
                          where: str | None = None):
    """Create a TFLM interpreter (``AllocateTensors`` runs in the constructor).

    Raises:
        MicroError: TFLM rejected the model or the arena is too small; the message
            carries what TFLM printed.
    """
    runtime = _tflm_runtime()
    config = (
        runtime.InterpreterConfig.kPreserveAllTensors
        if preserve_all_tensors
        else runtime.InterpreterConfig.kAllocationRecording
    )
    with capture_native_stderr() as lines:
        try:
            phase("allocate", "tflm", where)
            return runtime.Interpreter.from_bytes(data, arena_size=int(arena_size), intrepreter_config=config)
        except (RuntimeError, ValueError) as exc:
            error = exc
    message = _tflm_failure(lines)
    arena_small = any(p in ln for ln in lines for p in _ARENA_TOO_SMALL)
    raise _TFLMAllocationError(
        f"TFLite Micro could not allocate the model ({error}: {message})", arena_small
    )


class _TFLMAllocationError(MicroError):
    def __init__(self, what: str, arena_too_small: bool):
        self.arena_too_small = arena_too_small
        super().__init__(
            what,
            "TFLM AllocateTensors",
            "use a larger arena" if arena_too_small else "the model uses a kernel or type TFLM does not support",
        )


def _activation_bytes(model: TFLiteModel) -> int:
    return sum(
        int(np.prod(t.shape, dtype=np.int64)) * np.dtype(_numpy_dtype(t)).itemsize
        for tensors in model.tensors
        for t in tensors
        if not t.constant and _numpy_dtype(t) is not None
    )


def _numpy_dtype(t: TensorInfo):
    try:
        return np.dtype(t.dtype.lower())
    except TypeError:
        return None


def _generous_interpreter(model: TFLiteModel, preserve_all_tensors: bool = False):
    """A TFLM interpreter with an arena large enough, found by doubling from an upper estimate."""
    # TFLM cannot resize: it would run on the placeholder sizes a dynamic signature stands for,
    # which the file verifier leaves unchecked (the ops' shapes need not agree).
    dynamic = next((t for tensors in model.tensors for t in tensors if t.dynamic_dims), None)
    if dynamic is not None:
        raise MicroError(
            f"tensor {dynamic.name!r} has dynamic dimensions {list(dynamic.shape_signature)}; TFLM needs static shapes",
            model.path or "<bytes>",
            "export with a fixed batch size (to_tflite(..., batch_size=1))",
        )
    activations = _activation_bytes(model)
    if activations > _MAX_ARENA // 2:
        raise MicroError(
            f"the model's activation tensors take {activations:,} bytes; TFLite Micro runs models whose "
            f"tensor arena fits in {_MAX_ARENA:,} bytes",
            model.path or "<bytes>",
            "shrink the model (smaller inputs, fewer channels) for a microcontroller",
        )
    size = min(round_up(2 * activations + 64 * 1024), _MAX_ARENA)
    while True:
        try:
            return make_tflm_interpreter(model.data, size, preserve_all_tensors, model.path), size
        except _TFLMAllocationError as exc:
            if not exc.arena_too_small or size >= _MAX_ARENA:
                raise MicroError(exc.what, model.path or "<bytes>", exc.fix) from None
            size *= 2


# ----------------------------------------------------------------------------- samples


def _quantize(x: np.ndarray, dtype: np.dtype, t: TensorInfo) -> np.ndarray:
    """``q = clip(round(r / S) + Z)``, Jacob et al. 2018, eq. (1) ``r = S (q - Z)`` inverted."""
    if t.quantization is None or not np.issubdtype(dtype, np.integer):
        return np.asarray(x).astype(dtype)
    scale, zero_point = t.quantization.scales[0], t.quantization.zero_points[0]
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def _real_range(t: TensorInfo, dtype: np.dtype) -> tuple[float, float]:
    """The real values an input tensor can represent (Jacob et al. 2018, eq. (1))."""
    if np.issubdtype(dtype, np.integer) and t.quantization is not None:
        info = np.iinfo(dtype)
        scale, zero_point = t.quantization.scales[0], t.quantization.zero_points[0]
        return scale * (info.min - zero_point), scale * (info.max - zero_point)
    return 0.0, 1.0


def make_samples(
    model: TFLiteModel,
    samples: np.ndarray | Sequence[np.ndarray] | None,
    num_samples: int,
    seed: int,
) -> list[list[np.ndarray]]:
    """Typed model inputs, one list (one array per model input) per invocation.

    Without ``samples``, values are drawn uniformly over each input's real range
    (from its quantization parameters; ``[0, 1)`` for float inputs) and quantized.
    ``samples`` are float arrays shaped ``(N, *input_shape[1:])``, quantized with
    the input's scale and zero point.
    """
    where = model.path or "<bytes>"
    dtypes = [_numpy_dtype(t) for t in model.inputs]
    for t, dtype in zip(model.inputs, dtypes, strict=True):
        if dtype is None or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise MicroError(f"input {t.name!r} has type {t.dtype}, which to_micro cannot feed", where)
        if t.dynamic_dims:
            raise MicroError(
                f"input {t.name!r} has dynamic dimensions {t.shape_signature}; TFLM needs static shapes",
                where,
                "export with a fixed batch size (to_tflite(..., batch_size=1))",
            )
    batches = [t.shape[0] if t.shape else 1 for t in model.inputs]
    if samples is None:
        if num_samples < 1:
            raise MicroError(f"num_samples must be >= 1, got {num_samples}", "num_samples")
        needed = num_samples * sum(math.prod(t.shape) for t in model.inputs) * 8
        if needed > _MAX_SAMPLE_BYTES:
            raise MicroError(
                f"{num_samples} random sample(s) of the inputs {[list(t.shape) for t in model.inputs]} take "
                f"{needed:,} bytes, more than {_MAX_SAMPLE_BYTES:,}",
                where,
                "pass fewer samples (--samples), or samples= of your own",
            )
        rng = np.random.default_rng(seed)
        runs = []
        for _ in range(num_samples):
            run = []
            for t, dtype in zip(model.inputs, dtypes, strict=True):
                low, high = _real_range(t, dtype)
                run.append(_quantize(rng.uniform(low, high, t.shape), dtype, t))
            runs.append(run)
        return runs

    arrays = [samples] if isinstance(samples, np.ndarray) else list(samples)
    if len(arrays) != len(model.inputs):
        raise MicroError(
            f"got {len(arrays)} sample array(s) for a model with {len(model.inputs)} input(s)",
            "samples",
            "pass one float array per model input",
        )
    counts = set()
    for i, (a, t) in enumerate(zip(arrays, model.inputs, strict=True)):
        a = np.asarray(a)
        expected = tuple(t.shape[1:])
        if a.ndim != len(t.shape) or tuple(a.shape[1:]) != expected:
            raise MicroError(
                f"samples[{i}] shaped {a.shape} do not fit input {t.name!r} {tuple(t.shape)}",
                "samples",
                f"pass an array shaped (N, {', '.join(map(str, expected))})",
            )
        if a.shape[0] == 0 or a.shape[0] % batches[i]:
            raise MicroError(
                f"samples[{i}] hold {a.shape[0]} rows; the model runs batches of {batches[i]}",
                "samples",
                f"pass a non-zero multiple of {batches[i]} rows",
            )
        if not np.all(np.isfinite(a.astype(np.float64))):
            raise MicroError(f"samples[{i}] contain NaN or infinite values", "samples")
        counts.add(a.shape[0] // batches[i])
        arrays[i] = a
    if len(counts) != 1:
        raise MicroError("the sample arrays hold different numbers of samples", "samples")
    runs = []
    for k in range(counts.pop()):
        runs.append(
            [
                _quantize(a[k * b : (k + 1) * b], dtype, t)
                for a, t, dtype, b in zip(arrays, model.inputs, dtypes, batches, strict=True)
            ]
        )
    return runs


# ----------------------------------------------------------------------------- running


def _run_tflm(interpreter, inputs: list[np.ndarray], n_outputs: int, where: str | None = None) -> list[np.ndarray]:
    for i, x in enumerate(inputs):
        interpreter.set_input(x, i)
    phase("invoke", "tflm", where)
    interpreter.invoke()
    return [np.array(interpreter.get_output(i)) for i in range(n_outputs)]


def check_shapes(model: TFLiteModel, runner) -> None:
    """Every tensor of the main subgraph has the shape LiteRT computed for it when preparing.

    TFLite Micro's kernels do not resize their outputs: a shape in the file that is not what
    the op computes (an edited dimension, a wrong output shape) makes them write past the
    tensor. LiteRT's kernels compute the shapes in ``Prepare`` (run by ``allocate_tensors``).

    Raises:
        MicroError: naming the op that writes the first tensor whose shapes differ.
    """
    writer = {o: op for op in model.ops if op.subgraph == 0 for o in op.outputs}
    for detail in runner.interpreter.get_tensor_details():
        index = int(detail["index"])
        if index >= len(model.tensors[0]):
            continue
        t = model.tensor(index, 0)
        computed = tuple(int(d) for d in detail["shape"])
        if computed != tuple(t.shape):
            op = writer.get(index)
            who = f"{op.name}#{op.index} writes" if op is not None else "the model has"
            raise MicroError(
                f"{who} tensor {index} ({t.name!r}) as {list(t.shape)} in the file, but LiteRT computes "
                f"{list(computed)} from its inputs; TFLite Micro would write past it",
                model.path or "<bytes>",
                "re-export the model: its shapes are inconsistent",
            )


def _litert_runner(model: TFLiteModel, **kwargs):
    from tfcompress.export.runtime import ModelRunner

    return ModelRunner(model, num_threads=1, runtime="litert", **kwargs)


def _output_diff(model: TFLiteModel, a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    """(max diff in LSB or real units, max abs error in real units) over all outputs."""
    diff = abs_err = 0.0
    for t, x, y in zip(model.outputs, a, b, strict=True):
        lsb, real = _tensor_diff(t, x, y)
        diff = max(diff, lsb if lsb is not None else real)
        abs_err = max(abs_err, real)
    return diff, abs_err


def _tensor_diff(t: TensorInfo, x: np.ndarray, y: np.ndarray) -> tuple[int | None, float]:
    x64, y64 = np.asarray(x).astype(np.float64), np.asarray(y).astype(np.float64)
    if x64.shape != y64.shape:
        x64, y64 = x64.reshape(-1), y64.reshape(-1)
    if x64.size == 0:
        return (0 if np.issubdtype(np.asarray(x).dtype, np.integer) else None), 0.0
    delta = np.abs(x64 - y64)
    if np.issubdtype(np.asarray(x).dtype, np.integer):
        scale = t.quantization.scales if t.quantization else (1.0,)
        if len(scale) > 1:
            shape = [1] * delta.ndim
            axis = t.quantization.quantized_dimension
            shape[axis] = len(scale)
            real = delta * np.asarray(scale).reshape(shape)
        else:
            real = delta * scale[0]
        return int(delta.max()), float(real.max())
    return None, float(np.nan_to_num(delta, nan=np.inf).max())


def per_op_differences(
    model: TFLiteModel,
    tflm_inputs: Sequence[list[np.ndarray]],
    reference_inputs: Sequence[list[np.ndarray]] | None = None,
) -> list[OpDifference]:
    """Every op of the main subgraph whose output differs between TFLM and LiteRT reference.

    Both interpreters run keeping all intermediate tensors (TFLM ``kPreserveAllTensors``,
    LiteRT ``experimental_preserve_all_tensors``) and each op's output tensors are
    compared over all samples. The first op in execution order that differs is marked:
    later ones may only inherit its difference. ``reference_inputs`` defaults to
    ``tflm_inputs``.
    """
    reference_inputs = tflm_inputs if reference_inputs is None else reference_inputs
    tflm, _ = _generous_interpreter(model, preserve_all_tensors=True)
    litert = _litert_runner(model, reference_kernels=True, preserve_all_tensors=True)
    ops = [op for op in model.ops if op.subgraph == 0]
    worst: dict[int, tuple[int | None, float, str]] = {}  # op index -> (LSB, real, tensor)
    for t_in, r_in in zip(tflm_inputs, reference_inputs, strict=True):
        _run_tflm(tflm, t_in, len(model.outputs), model.path)
        litert.invoke_raw(r_in)
        for op in ops:
            for out in (o for o in op.outputs if o >= 0):
                t = model.tensor(out, 0)
                tflm_value = np.asarray(tflm.GetTensor(out, 0)["tensor_data"])
                lsb, real = _tensor_diff(t, tflm_value, litert.interpreter.get_tensor(out))
                if not lsb and real == 0.0:
                    continue
                old_lsb, old_real, _ = worst.get(op.index, (None, 0.0, t.name))
                if lsb is not None:
                    lsb = max(lsb, old_lsb or 0)
                worst[op.index] = (lsb, max(real, old_real), t.name)
    result = []
    for position, op in enumerate(o for o in ops if o.index in worst):
        lsb, real, tensor_name = worst[op.index]
        result.append(OpDifference(op.name, op.index, tensor_name, lsb, real, first=position == 0))
    return result


# ----------------------------------------------------------------------------- sources


def _banner(source: str, model: TFLiteModel, sha256: str) -> str:
    return (
        f"// Generated by tfcompress (tfcompress.export.micro.to_micro). Do not edit.\n"
        f"// Source: {source}, {model.size_bytes} bytes, sha256 {sha256}\n"
    )


def model_data_header(name: str, banner: str) -> str:
    guard = f"TFCOMPRESS_{name.upper()}_MODEL_DATA_H_"
    return (
        f"{banner}\n"
        f"#ifndef {guard}\n#define {guard}\n\n"
        f"// The .tflite flatbuffer, 16-byte aligned as TFLM requires; pass it to tflite::GetModel().\n"
        f"extern const unsigned char {name}_model_data[];\n"
        f"extern const unsigned int {name}_model_data_len;\n\n"
        f"#endif  // {guard}\n"
    )


def model_data_source(name: str, banner: str, data: bytes) -> str:
    rows = []
    for start in range(0, len(data), BYTES_PER_LINE):
        chunk = data[start : start + BYTES_PER_LINE]
        rows.append("  " + ", ".join(f"0x{b:02x}" for b in chunk))
    # Including the header first gives the const array external linkage in C++.
    return (
        f"{banner}\n"
        f'#include "{name}_model_data.h"\n\n'
        f"alignas({ARENA_ALIGNMENT}) const unsigned char {name}_model_data[] = {{\n"
        + ",\n".join(rows)
        + f"\n}};\nconst unsigned int {name}_model_data_len = {len(data)};\n"
    )


def op_resolver_header(
    name: str, banner: str, methods: Sequence[tuple[str, str]], measured: dict[str, int], recommended: int, margin: int
) -> str:
    guard = f"TFCOMPRESS_{name.upper()}_OP_RESOLVER_H_"
    namespace = f"{name}_micro"
    op_lines = "\n".join(f"//   {op:<28} -> {method}()" for op, method in methods)
    add_lines = "\n".join(
        f"  if (resolver.{method}() != kTfLiteOk) return kTfLiteError;" for _, method in methods
    )
    return (
        f"{banner}\n"
        f"#ifndef {guard}\n#define {guard}\n\n"
        f"#include <cstddef>\n\n"
        f'#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n\n'
        f"// Usage:\n"
        f"//   static {namespace}::OpResolver resolver;\n"
        f"//   {namespace}::RegisterOps(resolver);\n"
        f"//   alignas(16) static uint8_t tensor_arena[{namespace}::kTensorArenaSize];\n"
        f"//   tflite::MicroInterpreter interpreter(tflite::GetModel({name}_model_data), resolver,\n"
        f"//                                        tensor_arena, {namespace}::kTensorArenaSize);\n"
        f"namespace {namespace} {{\n\n"
        f"// The ops the model uses (TFLite builtin -> MicroMutableOpResolver method):\n"
        f"{op_lines}\n"
        f"constexpr unsigned int kOpCount = {len(methods)};\n"
        f"using OpResolver = tflite::MicroMutableOpResolver<kOpCount>;\n\n"
        f"// Tensor arena measured by running the model in the TFLM interpreter (reference\n"
        f"// kernels, 64-bit host): total {measured['total']} bytes = head {measured['head']} "
        f"+ tail {measured['tail']}.\n"
        f"// Suggested size: measured + {margin} bytes margin (optimized kernels such as CMSIS-NN\n"
        f"// may need scratch buffers), rounded up to {ARENA_ALIGNMENT}. 32-bit targets usually need less.\n"
        f"constexpr size_t kTensorArenaSize = {recommended};\n\n"
        f"// Registers exactly the ops above; returns kTfLiteError if one fails to register.\n"
        f"inline TfLiteStatus RegisterOps(OpResolver& resolver) {{\n"
        f"{add_lines}\n"
        f"  return kTfLiteOk;\n"
        f"}}\n\n"
        f"}}  // namespace {namespace}\n\n"
        f"#endif  // {guard}\n"
    )


def _write_all(out_dir: Path, contents: dict[str, str]) -> list[str]:
    """Write every file to a temporary name first and rename them only once all are written.

    A failure while writing leaves none of the new files (and the old ones untouched).
    Targets that cannot be replaced (a directory in the way) are found before anything
    is written, so the renames at the end do not stop half way.
    """
    blocked = [f for f in contents if (out_dir / f).is_dir()]
    if blocked:
        raise MicroError(
            f"cannot write {', '.join(blocked)}: a directory of that name is in the way",
            str(out_dir),
            "remove it or choose another name / output directory",
        )
    # Each atomic_write renames its temporary file when its context exits; all of them
    # exit only after every file has been written, and on an error none renames.
    with contextlib.ExitStack() as stack:
        handles = {
            file_name: stack.enter_context(atomic_write(out_dir / file_name, "w"))
            for file_name in contents
        }
        for file_name, text in contents.items():
            handles[file_name].write(text)
    return [str(out_dir / f) for f in contents]


# ----------------------------------------------------------------------------- to_micro


def to_micro(
    path: str | os.PathLike | bytes,
    out_dir: str | os.PathLike,
    name: str = "model",
    *,
    samples: np.ndarray | Sequence[np.ndarray] | None = None,
    num_samples: int = 8,
    seed: int = 0,
    arena_margin: int = DEFAULT_ARENA_MARGIN,
    float_tolerance: float = 1e-5,
    strict: bool = False,
    isolate: bool = False,
) -> MicroReport:
    """Write TFLite Micro sources for a `.tflite` model and verify it on the TFLM interpreter.

    The tensor arena is measured, not estimated: TFLM's ``RecordingMicroAllocator``
    reports the head (memory-planned activations) and tail (persistent data) of its
    two-stack arena after a real invocation (David et al., MLSys 2021). Integer
    inputs are drawn over the real range the input's quantization can represent,
    ``r = S (q - Z)`` (Jacob et al., CVPR 2018, eq. (1)).

    Args:
        path: the `.tflite` file (or its bytes); validated before any interpreter sees it.
        out_dir: directory for the sources; created if missing (its parent must exist).
        name: C identifier prefix of the generated symbols and files.
        samples: float inputs ``(N, *input_shape[1:])`` (a list for several inputs),
            quantized with the input scale / zero point; default: ``num_samples``
            random inputs.
        num_samples: how many random inputs to compare on when ``samples`` is None.
        seed: seed of the random inputs.
        arena_margin: bytes added to the measured arena in ``kTensorArenaSize``.
        float_tolerance: for float outputs, the largest absolute difference (relative
            to the largest reference magnitude, at least 1) still counted as equal.
        strict: raise `MicroVerificationError` (and write nothing) when TFLM and
            LiteRT's reference kernels differ, instead of reporting ``identical=False``.
        isolate: run the interpreters in a child process (`tfcompress.export.isolation`, the
            default of ``tfcompress micro``): a native crash raises `InterpreterCrashError`
            naming the file and the op instead of ending this process.

    Before TFLM sees the model, LiteRT's reference kernels prepare it and every tensor shape
    they compute must equal the file's: TFLM's kernels trust the file's output shapes and
    write where they say.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
        ...                           keras.layers.Flatten(), keras.layers.Dense(2)])
        >>> x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=x, dense_as_conv=True)
        >>> os.makedirs("firmware", exist_ok=True)
        >>> report = to_micro("model.tflite", "firmware/model", name="lenet", samples=x[:4])
        >>> report.identical, report.recommended_arena_bytes > 0     # TFLM = LiteRT's reference kernels
        (True, True)
        >>> sorted(os.path.basename(f) for f in report.files)
        ['lenet_model_data.cc', 'lenet_model_data.h', 'lenet_op_resolver.h', 'lenet_report.json']

    Returns:
        A `MicroReport`; also written as ``NAME_report.json``.

    Raises:
        InvalidModelFileError: the file is missing or not a valid flatbuffer.
        OffsetBuffersError: the file stores buffers after the flatbuffer, by offset.
        UnsupportedOpError: an op has no TFLM kernel.
        MicroError: bad ``name`` / ``out_dir`` / ``samples``, or TFLM cannot run the model.
        MicroVerificationError: with ``strict=True``, TFLM differs from the reference.
    """
    check_c_identifier(name)
    if int(arena_margin) < 0:
        raise MicroError(f"arena_margin must be >= 0, got {arena_margin}", "arena_margin")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MicroError("output path exists and is not a directory", str(out), "choose a directory")
    if not out.parent.is_dir():
        raise MicroError(
            "the parent of the output directory does not exist", str(out.parent), "create it first"
        )
    model = load_tflite(path)
    where = model.path or "<bytes>"
    if model.external_buffers:
        raise OffsetBuffersError(offset_buffers(model), where)
    methods = resolver_methods(model)
    if isolate:
        source = model.path if model.path else model.data
        kwargs = {"name": name, "samples": samples, "num_samples": num_samples, "seed": seed,
                  "arena_margin": arena_margin, "float_tolerance": float_tolerance, "strict": strict}
        return run_isolated("tfcompress.export.micro:to_micro", (source, str(out_dir)), kwargs, where=where,
                            models={where: model.data})
    runs = make_samples(model, samples, num_samples, seed)
    n_out = len(model.outputs)

    # 0. LiteRT's reference kernels prepare the model: the shapes they compute must be the file's.
    reference = _litert_runner(model, reference_kernels=True)
    check_shapes(model, reference)

    # 1. Measure the arena on the allocation-recording interpreter and collect TFLM outputs.
    recording, _ = _generous_interpreter(model)
    with capture_native_stderr() as lines:
        tflm_outputs = []
        try:
            for run in runs:
                tflm_outputs.append(_run_tflm(recording, run, n_out, model.path))
        except (RuntimeError, ValueError) as exc:
            failure: Exception | None = exc
        else:
            failure = None
            recording.print_allocations()
    if failure is not None:
        raise MicroError(
            f"TFLite Micro failed to run the model ({failure}: {_tflm_failure(lines)})",
            where,
            "check that every op and tensor type is supported by TFLM",
        )
    measured = parse_allocations(lines)
    if set(measured) != {"total", "head", "tail"} or measured["total"] <= 0:
        raise MicroError(
            "could not read the arena size from TFLM's RecordingMicroAllocator output",
            where,
            "check the tflite-micro version (print_allocations output changed?)",
        )
    recommended = recommended_arena_size(measured["total"], int(arena_margin))

    # 2. Compare with LiteRT: reference kernels (must match) and default kernels (XNNPACK).
    default = _litert_runner(model, delegate="xnnpack")
    ref_outputs = [reference.invoke_raw(run) for run in runs]
    default_outputs = [default.invoke_raw(run) for run in runs]
    diff_ref = err_ref = diff_def = err_def = 0.0
    for t_out, r_out, d_out in zip(tflm_outputs, ref_outputs, default_outputs, strict=True):
        d, e = _output_diff(model, t_out, r_out)
        diff_ref, err_ref = max(diff_ref, d), max(err_ref, e)
        d, e = _output_diff(model, t_out, d_out)
        diff_def, err_def = max(diff_def, d), max(err_def, e)
    integer_outputs = all(np.issubdtype(_numpy_dtype(t), np.integer) for t in model.outputs)
    if integer_outputs:
        identical = diff_ref == 0
    else:
        magnitude = max(max(float(np.max(np.abs(o))) if o.size else 0.0 for o in out) for out in ref_outputs)
        identical = err_ref <= float_tolerance * max(1.0, magnitude)
    notes = [f"{op} in int16: {why}" for op, why in sorted(TFLM_INT16_DIFFERENT.items()) if op in _int16_ops(model)]
    differences: list[OpDifference] = []
    if not identical:
        differences = per_op_differences(model, runs)
        if not differences:
            notes.append("outputs differ but no single op output differs in the preserved-tensor rerun")

    sha256 = hashlib.sha256(model.data).hexdigest()
    source_name = Path(model.path).name if model.path else "<bytes>"
    report = MicroReport(
        model_path=where,
        name=name,
        out_dir=str(out),
        files=[],
        model_size_bytes=model.size_bytes,
        model_sha256=sha256,
        ops=[op for op, _ in methods],
        resolver_methods=[m for _, m in methods],
        resolver_size=len(methods),
        arena_total_bytes=measured["total"],
        arena_head_bytes=measured["head"],
        arena_tail_bytes=measured["tail"],
        arena_margin_bytes=int(arena_margin),
        recommended_arena_bytes=recommended,
        output_dtype=",".join(t.dtype.lower() for t in model.outputs),
        samples_compared=len(runs),
        identical=bool(identical),
        diff_unit="LSB" if integer_outputs else "abs",
        max_diff_reference=int(diff_ref) if integer_outputs else float(diff_ref),
        max_diff_default=int(diff_def) if integer_outputs else float(diff_def),
        default_kernels=f"LiteRT {default.info.version}, delegate {default.info.delegate}",
        max_abs_error_reference=float(err_ref),
        max_abs_error_default=float(err_def),
        op_differences=differences,
        tflm_version=_tflm_version(),
        litert_version=reference.info.version,
        notes=notes,
    )
    if strict and not identical:
        raise MicroVerificationError(report)

    # 3. Write the sources (all or nothing).
    banner = _banner(source_name, model, sha256)
    contents = {
        f"{name}_model_data.h": model_data_header(name, banner),
        f"{name}_model_data.cc": model_data_source(name, banner, model.data),
        f"{name}_op_resolver.h": op_resolver_header(name, banner, methods, measured, recommended, int(arena_margin)),
    }
    report_name = f"{name}_report.json"
    report.files = [str(out / f) for f in (*contents, report_name)]
    contents[report_name] = json.dumps(report.to_dict(), indent=2) + "\n"
    out.mkdir(exist_ok=True)
    _write_all(out, contents)
    return report

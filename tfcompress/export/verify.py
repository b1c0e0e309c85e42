"""Semantic verification of a TFLite model: what the interpreters trust and do not check.

`tfcompress.export.flatbuffer.verify_flatbuffer` makes sure every byte the model's tables
point at exists; this module makes sure the values are ones the interpreters can run on. LiteRT
and TFLite Micro index tensors, buffers and op codes with the file's numbers, size buffers from
the file's shapes and build kernels from its quantization parameters and options, mostly without
checking them (TFLite Micro trusts even the output shapes, and writes where they say). The rules,
each with the interpreter behaviour that makes it necessary:

- ``graph``: op-code, tensor, buffer and subgraph indices in range; -1 (an absent tensor) only
  where the op's schema has an optional input; every op input produced by an earlier op, a
  constant, a variable or a subgraph input, every output written once and never a constant or a
  subgraph input (TFLite's own ``tflite::Verify``; the interpreters dereference an absent filter
  and write into read-only constants); subgraph outputs that something produces; subgraph calls
  (IF / WHILE / CALL_ONCE and StableHLO bodies) without cycles;
- ``tensors``: known types, at most `MAX_RANK` dimensions (XNNPACK overruns its shape arrays
  beyond 9), dimensions >= 1 (0 for constants), at most 2^31 - 1 bytes, constant data exactly
  as large as shape and type say, sparse tensors counted as TFLite's verifier counts them,
  string tensors with consistent offsets;
- ``quantization``: scales finite and > 0, zero points inside the type's range, per-channel
  arrays as long as their dimension (the kernels divide by scales and index by channel);
- ``op codes``: known builtin codes, the deprecated 8-bit code consistent with the 32-bit one
  (equal below 127, 127 above, or left at 0);
- ``ops``: input / output counts, the options table the op reads (a missing one means zeros:
  stride 0, Softmax beta 0), options inside their documented domains (strides and filter sizes
  >= 1, Softmax beta > 0, known enum values, finite floats) and, for the common ops of CNNs and
  MLPs, types and shapes consistent with what the kernel computes (see `check_op_shapes`);
- ``strings`` that the interpreters hand to Python (tensor names, custom op codes, signature
  keys) valid UTF-8;
- ``limits`` on work proportional to the file: the bytes of constant data reachable through
  tensors (a tensor may share another's buffer) at most `CONSTANT_BYTES_PER_FILE_BYTE` times
  the file (or `CONSTANT_BYTES_FLOOR`), the bytes of activations at most
  `ACTIVATION_BYTES_PER_FILE_BYTE` times the file (or `ACTIVATION_BYTES_FLOOR`).

Every failure is an `InvalidModelFileError` naming the subgraph, op (``CONV_2D#1``, the index
`tfcompress inspect` shows) or tensor and what is wrong.

Example:
    >>> from tfcompress.export.verify import dimension_after_window
    >>> dimension_after_window(28, filter_size=5, stride=1, dilation=1, padding="VALID")
    24
    >>> dimension_after_window(28, filter_size=5, stride=2, dilation=1, padding="SAME")
    14
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from tfcompress.errors import InvalidModelFileError

SCHEMA_VERSION = 3
MAX_RANK = 8
MAX_TENSOR_BYTES = 2**31 - 1
CONSTANT_BYTES_PER_FILE_BYTE = 16
CONSTANT_BYTES_FLOOR = 64 * 2**20
ACTIVATION_BYTES_PER_FILE_BYTE = 256
ACTIVATION_BYTES_FLOOR = 2**30
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127
_FLOAT32_MIN_NORMAL = float(np.finfo(np.float32).tiny)

ITEMSIZE = {
    "FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1, "INT16": 2,
    "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16, "UINT64": 8, "UINT32": 4,
    "UINT16": 2, "BFLOAT16": 2, "INT4": 1, "UINT4": 1, "INT2": 1,
}
# Zero points a tensor of each integer type can hold.
_ZERO_POINT_RANGE = {
    "INT8": (-128, 127), "UINT8": (0, 255), "INT16": (-32768, 32767), "UINT16": (0, 65535),
    "INT4": (-8, 7), "UINT4": (0, 15), "INT2": (-2, 1), "INT32": (-(2**31), 2**31 - 1),
}
_QUANTIZED_ACTIVATIONS = frozenset({"INT8", "UINT8", "INT16"})


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


@cache
def enum_names(enum_name: str) -> dict[int, str]:
    """``{value: name}`` of one of the schema's enums (``BuiltinOperator``, ``TensorType``...)."""
    enum = getattr(_schema(), enum_name)
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


# ----------------------------------------------------------------------------- op specs


@dataclass(frozen=True)
class OpSpec:
    """What one builtin op takes: input / output counts, optional inputs, its options table.

    ``optional``: the input positions that may be -1 (``"any"``: every position but the first,
    for the recurrent ops whose many weights are each optional). ``options``: the
    ``BuiltinOptions`` member the kernel reads, and ``needs_options`` when a missing table
    (all fields zero) is invalid for it.

    Example:
        >>> spec = op_specs()["FULLY_CONNECTED"]
        >>> spec.inputs, 2 in spec.optional, spec.options                 # the bias input may be -1
        ((2, 3), True, 'FullyConnectedOptions')
    """

    inputs: tuple[int, int | None]
    outputs: tuple[int, int | None] = (1, 1)
    optional: frozenset[int] | str = frozenset()
    options: str | None = None
    needs_options: bool = False
    check: Callable | None = field(default=None, compare=False)


def _spec(inputs, outputs=(1, 1), optional=(), options=None, needs=False, check=None) -> OpSpec:
    opt = optional if isinstance(optional, str) else frozenset(optional)
    return OpSpec(inputs, outputs, opt, options, needs, check)


_UNARY = ("ABS", "CEIL", "COS", "ELU", "EXP", "FLOOR", "GELU", "HARD_SWISH", "LOG", "LOGICAL_NOT",
          "LOGISTIC", "NEG", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "ROUND", "RSQRT", "SIGN",
          "SIN", "SQRT", "SQUARE", "TANH", "ZEROS_LIKE", "LEAKY_RELU", "L2_NORMALIZATION",
          "LOCAL_RESPONSE_NORMALIZATION", "LOG_SOFTMAX", "SOFTMAX", "QUANTIZE", "DEQUANTIZE", "CAST",
          "SHAPE", "SQUEEZE", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "MAX_POOL_2D", "AVERAGE_POOL_2D",
          "L2_POOL_2D", "RANK", "REAL", "IMAG", "COMPLEX_ABS", "BITCAST")
_BINARY = ("ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "POW", "FLOOR_DIV",
           "FLOOR_MOD", "EQUAL", "NOT_EQUAL", "GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL",
           "LOGICAL_AND", "LOGICAL_OR", "PRELU", "RESHAPE", "EXPAND_DIMS", "TRANSPOSE", "PAD",
           "MIRROR_PAD", "MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "REDUCE_ANY",
           "REDUCE_ALL", "GATHER", "GATHER_ND", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
           "BATCH_MATMUL", "ARG_MAX", "ARG_MIN", "FILL", "BROADCAST_TO", "BROADCAST_ARGS", "CUMSUM",
           "TILE", "SPLIT", "RIGHT_SHIFT", "ATAN2", "BITWISE_XOR", "EMBEDDING_LOOKUP")


def _op_specs() -> dict[str, OpSpec]:
    specs: dict[str, OpSpec] = {}
    for name in _UNARY:
        specs[name] = _spec((1, 1))
    for name in _BINARY:
        specs[name] = _spec((2, 2))
    specs.update({
        "CONV_2D": _spec((2, 3), optional=(2,), options="Conv2DOptions", needs=True),
        "DEPTHWISE_CONV_2D": _spec((2, 3), optional=(2,), options="DepthwiseConv2DOptions", needs=True),
        "CONV_3D": _spec((2, 3), optional=(2,), options="Conv3DOptions", needs=True),
        "FULLY_CONNECTED": _spec((2, 3), (1, 2), optional=(2,), options="FullyConnectedOptions"),
        "TRANSPOSE_CONV": _spec((3, 4), optional=(3,), options="TransposeConvOptions", needs=True),
        "MAX_POOL_2D": _spec((1, 1), options="Pool2DOptions", needs=True),
        "AVERAGE_POOL_2D": _spec((1, 1), options="Pool2DOptions", needs=True),
        "L2_POOL_2D": _spec((1, 1), options="Pool2DOptions", needs=True),
        "SOFTMAX": _spec((1, 1), options="SoftmaxOptions", needs=True),
        "RESHAPE": _spec((1, 2), options="ReshapeOptions"),
        "SQUEEZE": _spec((1, 1), options="SqueezeOptions"),
        "CONCATENATION": _spec((1, None), options="ConcatenationOptions"),
        "PACK": _spec((1, None), options="PackOptions"),
        "UNPACK": _spec((1, 1), (1, None), options="UnpackOptions"),
        "SPLIT": _spec((2, 2), (1, None), options="SplitOptions"),
        "SPLIT_V": _spec((3, 3), (1, None), options="SplitVOptions"),
        "ADD_N": _spec((1, None)),
        "PADV2": _spec((3, 3)),
        "STRIDED_SLICE": _spec((4, 4), options="StridedSliceOptions"),
        "SLICE": _spec((3, 3)),
        "SELECT": _spec((3, 3)),
        "SELECT_V2": _spec((3, 3)),
        "SPACE_TO_BATCH_ND": _spec((3, 3)),
        "BATCH_TO_SPACE_ND": _spec((3, 3)),
        "SPACE_TO_DEPTH": _spec((1, 1), options="SpaceToDepthOptions", needs=True),
        "DEPTH_TO_SPACE": _spec((1, 1), options="DepthToSpaceOptions", needs=True),
        "LEAKY_RELU": _spec((1, 1), options="LeakyReluOptions"),
        "ADD": _spec((2, 2), options="AddOptions"),
        "SUB": _spec((2, 2), options="SubOptions"),
        "MUL": _spec((2, 2), options="MulOptions"),
        "DIV": _spec((2, 2), options="DivOptions"),
        "MEAN": _spec((2, 2), options="ReducerOptions"),
        "SUM": _spec((2, 2), options="ReducerOptions"),
        "REDUCE_MAX": _spec((2, 2), options="ReducerOptions"),
        "REDUCE_MIN": _spec((2, 2), options="ReducerOptions"),
        "REDUCE_PROD": _spec((2, 2), options="ReducerOptions"),
        "GATHER": _spec((2, 2), options="GatherOptions"),
        "SVDF": _spec((4, 5), optional=(3,), options="SVDFOptions", needs=True),
        "LSTM": _spec((20, 24), (1, 4), optional="any", options="LSTMOptions"),
        "UNIDIRECTIONAL_SEQUENCE_LSTM": _spec((20, 24), (1, 3), optional="any",
                                              options="UnidirectionalSequenceLSTMOptions"),
        "BIDIRECTIONAL_SEQUENCE_LSTM": _spec((48, 48), (1, 2), optional="any",
                                             options="BidirectionalSequenceLSTMOptions"),
        "RNN": _spec((5, 5), optional="any", options="RNNOptions"),
        "UNIDIRECTIONAL_SEQUENCE_RNN": _spec((5, 5), optional="any", options="SequenceRNNOptions"),
        "BIDIRECTIONAL_SEQUENCE_RNN": _spec((12, 12), (1, 2), optional="any",
                                            options="BidirectionalSequenceRNNOptions"),
        "LSH_PROJECTION": _spec((2, 3), optional=(2,), options="LSHProjectionOptions"),
        "VAR_HANDLE": _spec((0, 0), options="VarHandleOptions"),
        "READ_VARIABLE": _spec((1, 1)),
        "ASSIGN_VARIABLE": _spec((2, 2), (0, 0)),
        "CALL_ONCE": _spec((0, 0), (0, 0), options="CallOnceOptions", needs=True),
        "IF": _spec((1, None), (0, None), options="IfOptions", needs=True),
        "WHILE": _spec((0, None), (0, None), options="WhileOptions", needs=True),
    })
    for name, check in _SHAPE_CHECKS.items():
        specs[name] = OpSpec(specs[name].inputs, specs[name].outputs, specs[name].optional,
                             specs[name].options, specs[name].needs_options, check)
    return specs


# ----------------------------------------------------------------------------- the model view


@dataclass
class _Tensor:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    constant: bool
    variable: bool
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    quantized_dimension: int
    sparse: bool
    dynamic: bool = False  # some dimension is -1 in the shape signature: its stored size is a placeholder


class _Checker:
    def __init__(self, model_t, data: bytes, where: str, buffer_bytes: dict[int, memoryview]):
        self.m = model_t
        self.data = data
        self.where = where
        self.buffer_bytes = buffer_bytes
        self.op_names: list[str] = []
        self.tensors: list[list[_Tensor]] = []
        self.op_index = 0
        self.specs = op_specs()

    def fail(self, what: str, fix: str | None = None) -> InvalidModelFileError:
        return InvalidModelFileError(
            what, self.where, fix or "re-export the model with tfcompress.export.to_tflite or `tfcompress convert`"
        )

    # ------------------------------------------------------------------ op codes

    def op_codes(self) -> None:
        builtin_names = enum_names("BuiltinOperator")
        for c, code in enumerate(self.m.operatorCodes or []):
            b, d = int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0)
            if b < 0 or d < 0:
                raise self.fail(f"operator code {c} has a negative builtin code ({b}, deprecated {d})")
            # GetBuiltinCode reads max(builtin, deprecated): a writer may leave either at its default 0
            if 0 < d < _PLACEHOLDER_FOR_GREATER_OP_CODES and b not in (0, d):
                raise self.fail(f"operator code {c} has builtin code {b} but deprecated builtin code {d}; "
                                "they must agree below 127")
            if d == _PLACEHOLDER_FOR_GREATER_OP_CODES and b < _PLACEHOLDER_FOR_GREATER_OP_CODES:
                raise self.fail(f"operator code {c} has deprecated builtin code 127 (see builtin_code) "
                                f"but builtin code {b}")
            builtin = max(b, d)
            if builtin not in builtin_names:
                raise self.fail(f"operator code {c} has builtin code {builtin}, which this TFLite schema "
                                "does not know", "re-export the model, or upgrade ai-edge-litert if it is newer")
            if int(code.version) < 1:
                raise self.fail(f"operator code {c} ({builtin_names[builtin]}) has version {code.version}")
            name = builtin_names[builtin]
            if name == "CUSTOM":
                custom = self.text(code.customCode, f"operator code {c}'s custom code")
                if not custom:
                    raise self.fail(f"operator code {c} is a custom op without a name")
                name = f"CUSTOM:{custom}"
            self.op_names.append(name)

    def text(self, value, what: str) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not UTF-8 text ({bytes(value)[:24]!r}: {exc.reason} at byte "
                            f"{exc.start})") from None

    # ------------------------------------------------------------------ buffers and tensors

    def tensors_of(self, s: int, sg) -> list[_Tensor]:
        type_names = enum_names("TensorType")
        buffers = self.m.buffers or []
        out = []
        for i, t in enumerate(sg.tensors or []):
            where = f"subgraph {s} tensor {i}"
            name = self.text(t.name, f"{where}'s name")
            where = f"{where} ({name!r})" if name else where
            if t.type not in type_names:
                raise self.fail(f"{where} has unknown type {t.type}")
            dtype = type_names[t.type]
            raw_shape = t.shape if t.shape is not None and not isinstance(t.shape, int) else ()
            if len(raw_shape) > MAX_RANK:
                raise self.fail(f"{where} has {len(raw_shape)} dimensions; TFLite kernels handle at most "
                                f"{MAX_RANK} (XNNPACK and the reference kernels overrun beyond)")
            shape = tuple(int(d) for d in raw_shape)
            if not 0 <= int(t.buffer) < max(len(buffers), 1):
                raise self.fail(f"{where} refers to buffer {t.buffer}, but the model has {len(buffers)}")
            raw = self.buffer_bytes.get(int(t.buffer))
            constant = raw is not None
            low = 0 if constant else 1
            if any(d < low for d in shape):
                kind = "negative" if any(d < 0 for d in shape) else "zero"
                raise self.fail(f"{where} has a {kind} dimension in its shape {shape}")
            signature = t.shapeSignature if t.shapeSignature is not None and not isinstance(t.shapeSignature, int) else None
            if signature is not None and len(signature) > 0:
                if len(signature) != len(shape) or any(int(g) != d and int(g) != -1 for g, d in zip(signature, shape, strict=False)):
                    raise self.fail(f"{where} has shape signature {[int(g) for g in signature]} that does not "
                                    f"match its shape {list(shape)} (each entry the dimension or -1)")
            elements = math.prod(shape)
            itemsize = ITEMSIZE.get(dtype, 0)
            if elements > MAX_TENSOR_BYTES or elements * itemsize > MAX_TENSOR_BYTES:
                raise self.fail(f"{where} of shape {list(shape)} ({dtype.lower()}) would take "
                                f"{elements * max(itemsize, 1):,} bytes; TFLite tensors hold at most "
                                f"{MAX_TENSOR_BYTES:,} (2^31 - 1)")
            if constant:
                if t.isVariable:
                    raise self.fail(f"{where} is a variable with constant data")
                self.check_data(where, t, dtype, shape, raw)
            scales, zps, qdim = self.quantization(where, t, dtype, shape)
            dynamic = signature is not None and any(int(g) == -1 for g in signature)
            out.append(_Tensor(i, name, dtype, shape, constant, bool(t.isVariable), scales, zps, qdim,
                               t.sparsity is not None, dynamic))
        return out

    def check_data(self, where: str, t, dtype: str, shape: tuple[int, ...], raw: memoryview) -> None:
        nbytes = len(raw)
        if dtype == "STRING":
            self.check_strings(where, raw)
            return
        if dtype not in ITEMSIZE:
            return  # RESOURCE / VARIANT: no fixed layout
        if t.sparsity is not None:
            count = self.sparse_elements(where, t.sparsity, shape)
            expected = count * ITEMSIZE[dtype]
        elif dtype in ("INT4", "UINT4"):
            if nbytes in ((math.prod(shape) + 1) // 2, math.prod(shape)):
                return
            expected = (math.prod(shape) + 1) // 2
        elif dtype == "INT2":
            if nbytes in ((math.prod(shape) + 3) // 4, math.prod(shape)):
                return
            expected = (math.prod(shape) + 3) // 4
        else:
            expected = math.prod(shape) * ITEMSIZE[dtype]
        if expected != nbytes:
            raise self.fail(f"{where} holds {nbytes} bytes but its shape {shape} ({dtype.lower()}"
                            f"{', sparse' if t.sparsity is not None else ''}) needs {expected}")

    def check_strings(self, where: str, raw: memoryview) -> None:
        """The layout of lite/string_util.h, as TFLite's verifier checks it."""
        size = len(raw)
        if size < 4:
            raise self.fail(f"{where} is a string tensor with an empty buffer")
        count = int(np.frombuffer(raw, "<u4", 1)[0])
        header = (count + 2) * 4
        if count > size // 4 or header > size:
            raise self.fail(f"{where} is a string tensor declaring {count} strings in {size} bytes")
        offsets = np.frombuffer(raw, "<u4", count + 1, 4).astype(np.int64)
        if offsets[0] != header or offsets[-1] != size or np.any(np.diff(offsets) < 0):
            raise self.fail(f"{where} is a string tensor whose offsets are not increasing from {header} "
                            f"to {size}")

    def sparse_elements(self, where: str, sparsity, shape: tuple[int, ...]) -> int:
        """How many values a sparse tensor stores (TFLite verifier's VerifyAndCountSparseElements)."""
        bad = self.fail(f"{where} has invalid sparsity parameters")
        order = [int(v) for v in (sparsity.traversalOrder if sparsity.traversalOrder is not None else [])]
        dims = sparsity.dimMetadata or []
        rank, total = len(shape), len(order)
        if total < rank or total > 2 * MAX_RANK or len(dims) != total:
            raise bad
        block_map = [int(v) for v in (sparsity.blockMap if sparsity.blockMap is not None else [])]
        if total - rank != len(block_map) or sorted(order[:rank]) != list(range(rank)) or \
                sorted(order[rank:]) != list(range(rank, total)):
            raise bad
        sizes = list(shape) + [0] * (total - rank)
        for k in range(total - rank):
            block = int(dims[k + rank].denseSize)
            target = block_map[k]
            if block <= 0 or not 0 <= target < rank or sizes[target] % block:
                raise bad
            sizes[order[k + rank]] = block
            sizes[target] //= block
        count = 1
        for level in range(total):
            meta = dims[level]
            size = sizes[order[level]]
            if meta.format == _schema().DimensionType.DENSE:
                if int(meta.denseSize) != size:
                    raise bad
                count *= size
                continue
            segments = _index_vector(meta.arraySegments)
            indices = _index_vector(meta.arrayIndices)
            if segments is None or indices is None or len(segments) != count + 1 or \
                    np.any(segments < 0) or np.any(np.diff(segments) < 0) or int(segments[-1]) != len(indices) or \
                    np.any(indices < 0) or np.any(indices >= size):
                raise bad
            count = len(indices)
        return count

    def quantization(self, where: str, t, dtype: str, shape) -> tuple[tuple[float, ...], tuple[int, ...], int]:
        q = t.quantization
        if q is None or q.scale is None or isinstance(q.scale, int) or len(q.scale) == 0:
            if q is not None and q.zeroPoint is not None and not isinstance(q.zeroPoint, int) and len(q.zeroPoint):
                raise self.fail(f"{where} has zero points but no scales")
            return (), (), 0
        scales = [float(v) for v in np.asarray(q.scale, dtype=np.float64).tolist()]
        zps = ([int(v) for v in np.asarray(q.zeroPoint, dtype=np.int64).tolist()]
               if q.zeroPoint is not None and not isinstance(q.zeroPoint, int) else [0] * len(scales))
        qdim = int(q.quantizedDimension)
        if len(scales) > 1 and not 0 <= qdim < len(shape):
            raise self.fail(f"{where} has {len(scales)} per-channel scales along dimension "
                            f"{qdim}, outside its shape {list(shape)}")
        if len(scales) > 1 and shape[qdim] != len(scales):
            raise self.fail(f"{where} has {len(scales)} per-channel scales that do not match dimension "
                            f"{qdim} of shape {list(shape)}")
        if len(zps) != len(scales):
            raise self.fail(f"{where} has {len(scales)} scales but {len(zps)} zero points")
        for scale in scales:
            if not (math.isfinite(scale) and scale >= _FLOAT32_MIN_NORMAL):
                raise self.fail(f"{where} has quantization scale {scale:g}; scales must be finite and > 0 "
                                "(normal float32 numbers)")
        low, high = _ZERO_POINT_RANGE.get(dtype, (-(2**63), 2**63 - 1))
        for zp in zps:
            if not low <= zp <= high:
                raise self.fail(f"{where} ({dtype.lower()}) has zero point {zp}, outside [{low}, {high}]")
        return tuple(scales), tuple(zps), qdim

    # ------------------------------------------------------------------ ops and graphs

    def subgraph(self, s: int, sg, calls: dict[int, set[int]]) -> None:
        tensors = self.tensors[s]
        n = len(tensors)
        inputs = self.index_list(sg.inputs, f"subgraph {s} inputs", n)
        outputs = self.index_list(sg.outputs, f"subgraph {s} outputs", n)
        if len(set(inputs)) != len(inputs):
            raise self.fail(f"subgraph {s} lists an input tensor twice ({inputs})")
        for i in inputs:
            if tensors[i].constant:
                raise self.fail(f"subgraph {s} input {tensor_label(tensors[i])} holds constant data")
        produced = set(inputs)
        produced.update(t.index for t in tensors if t.constant or t.variable)
        for o_index, op in enumerate(sg.operators or []):
            self.op(s, o_index, op, tensors, produced, calls)
        for o in outputs:
            if o not in produced:
                raise self.fail(f"subgraph {s} output {tensor_label(tensors[o])} is not produced by any op, "
                                "nor an input or a constant")

    def index_list(self, values, what: str, n: int, allow_absent: bool = False) -> list[int]:
        if values is None or isinstance(values, int):
            return []
        out = [int(v) for v in values]
        for k, v in enumerate(out):
            if not (allow_absent and v == -1) and not 0 <= v < n:
                raise self.fail(f"{what}[{k}] refers to tensor {v}, but the subgraph has {n}")
        return out

    def op(self, s: int, o_index: int, op, tensors: list[_Tensor], produced: set[int],
           calls: dict[int, set[int]]) -> None:
        n = len(tensors)
        code = int(op.opcodeIndex)
        if not 0 <= code < len(self.op_names):
            raise self.fail(f"subgraph {s} op {o_index} refers to operator code {code}, but the model has "
                            f"{len(self.op_names)}")
        name = self.op_names[code]
        label = f"{name}#{self.op_index}" + (f" (subgraph {s})" if s else "")
        self.op_index += 1
        spec = self.specs.get(name)
        ins = self.index_list(op.inputs, f"{label} inputs", n, allow_absent=True)
        outs = self.index_list(op.outputs, f"{label} outputs", n)
        self.index_list(op.intermediates, f"{label} intermediates", n)
        if spec is not None:
            self.counts(label, "input", len(ins), spec.inputs)
            self.counts(label, "output", len(outs), spec.outputs)
        for k, i in enumerate(ins):
            if i == -1:
                optional = spec.optional if spec is not None else "any" if name.startswith("CUSTOM") else ()
                if not (optional == "any" and k > 0) and (optional == "any" or k not in optional):
                    raise self.fail(f"{label} input {k} is -1 (absent), but {name} requires it")
            elif i not in produced:
                raise self.fail(f"{label} reads {tensor_label(tensors[i])} before any op writes it "
                                "(it is not a constant, a variable or a subgraph input): the ops are "
                                "out of order or the graph has a cycle")
        for o in outs:
            t = tensors[o]
            if t.constant or t.variable:
                raise self.fail(f"{label} writes {tensor_label(t)}, which is a {'constant' if t.constant else 'variable'}")
            if o in produced:
                raise self.fail(f"{label} writes {tensor_label(t)}, which an input or an earlier op already "
                                "provides (a tensor has one producer)")
            produced.add(o)
        options = self.options(label, name, op, spec)
        self.subgraph_calls(label, s, options, calls)
        self.subgraph_calls(label, s, op.builtinOptions2, calls)
        dynamic = any(tensors[i].dynamic for i in (*ins, *outs) if i != -1)
        # A converter with a dynamic batch stores 1 for each -1 of the shape signature, so the stored
        # shapes of such an op need not agree; the interpreters' Prepare recomputes them on resize
        # (TFLM, which cannot resize, refuses dynamic inputs in make_tflm_interpreter).
        if spec is not None and spec.check is not None and not dynamic:
            args = [None if i == -1 else tensors[i] for i in ins]
            problem = spec.check(args, [tensors[o] for o in outs], options, self)
            if problem:
                raise self.fail(f"{label}: {problem}")

    def counts(self, label: str, what: str, count: int, bounds: tuple[int, int | None]) -> None:
        low, high = bounds
        if count < low or (high is not None and count > high):
            expected = f"{low}" if low == high else f"{low} to {high}" if high is not None else f"at least {low}"
            raise self.fail(f"{label} has {count} {what}(s), {expected} expected")

    def options(self, label: str, name: str, op, spec: OpSpec | None):
        union = enum_names("BuiltinOptions")
        kind = union.get(int(op.builtinOptionsType or 0))
        options = op.builtinOptions
        if op.builtinOptionsType and kind is None:
            raise self.fail(f"{label} has unknown builtin options type {op.builtinOptionsType}")
        if spec is not None and spec.options is not None:
            if kind not in (None, "NONE", spec.options):
                raise self.fail(f"{label} carries {kind}, but {name} reads {spec.options}")
            if spec.needs_options and options is None:
                raise self.fail(f"{label} has no {spec.options} (its strides, sizes or factors would be 0)")
        if options is not None:
            self.option_domains(label, options)
        return options

    def option_domains(self, label: str, options) -> None:
        """Generic domains, by field name: enums, finite floats, strides / sizes / factors >= 1."""
        for key, value in vars(options).items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, float | np.floating):
                if not math.isfinite(float(value)):
                    raise self.fail(f"{label} option {_snake(key)} is {value}")
                continue
            if not isinstance(value, int | np.integer):
                continue
            value = int(value)
            enum = _OPTION_ENUMS.get(key)
            if enum is not None and value not in enum_names(enum):
                raise self.fail(f"{label} option {_snake(key)} = {value} is not a {enum} value")
            if key.startswith(_AT_LEAST_ONE) and value < 1:
                raise self.fail(f"{label} option {_snake(key)} = {value}; it must be >= 1")
        if type(options).__name__ == "SoftmaxOptionsT" and not options.beta > 0:
            raise self.fail(f"{label} option beta = {options.beta}; Softmax needs beta > 0")

    def subgraph_calls(self, label: str, s: int, options, calls: dict[int, set[int]]) -> None:
        if options is None:
            return
        count = len(self.m.subgraphs)
        for key, value in vars(options).items():
            if key.endswith("SubgraphIndex") and isinstance(value, int | np.integer):
                if not 0 <= int(value) < count:
                    raise self.fail(f"{label} option {_snake(key)} = {value}, but the model has {count} subgraph(s)")
                calls.setdefault(s, set()).add(int(value))

    def call_cycles(self, calls: dict[int, set[int]]) -> None:
        state: dict[int, int] = {}

        def visit(node: int, path: list[int]) -> None:
            state[node] = 1
            for callee in sorted(calls.get(node, ())):
                if state.get(callee) == 1:
                    cycle = " -> ".join(str(x) for x in [*path, callee])
                    raise self.fail(f"subgraphs call each other in a cycle ({cycle}); the interpreters "
                                    "would recurse without end")
                if callee not in state:
                    visit(callee, [*path, callee])
            state[node] = 2

        for start in sorted(calls):
            if start not in state:
                visit(start, [start])

    # ------------------------------------------------------------------ the whole model

    def run(self) -> None:
        m = self.m
        if m.version != SCHEMA_VERSION:
            raise self.fail(f"unsupported TFLite schema version {m.version} (expected {SCHEMA_VERSION})")
        if not m.subgraphs:
            raise self.fail("model has no subgraph")
        self.op_codes()
        n = len(self.data)
        constant_refs = activation_bytes = 0
        for s, sg in enumerate(m.subgraphs):
            self.text(sg.name, f"subgraph {s}'s name")
            tensors = self.tensors_of(s, sg)
            self.tensors.append(tensors)
            for t in tensors:
                if t.constant:
                    constant_refs += len(self.buffer_bytes[self.raw_buffer(s, t)])
                else:
                    activation_bytes += math.prod(t.shape) * ITEMSIZE.get(t.dtype, 8)
        constant_limit = max(CONSTANT_BYTES_PER_FILE_BYTE * n, CONSTANT_BYTES_FLOOR)
        if constant_refs > constant_limit:
            raise self.fail(f"its tensors reach {constant_refs:,} bytes of constant data through shared "
                            f"buffers, more than {constant_limit:,} for a {n:,}-byte file")
        activation_limit = max(ACTIVATION_BYTES_PER_FILE_BYTE * n, ACTIVATION_BYTES_FLOOR)
        if activation_bytes > activation_limit:
            raise self.fail(f"its activation tensors declare {activation_bytes:,} bytes, more than the "
                            f"{activation_limit:,} allowed for a {n:,}-byte file (shapes this large in so "
                            "small a file exhaust memory rather than describe a model)")
        calls: dict[int, set[int]] = {}
        for s, sg in enumerate(m.subgraphs):
            self.subgraph(s, sg, calls)
        self.call_cycles(calls)
        main = m.subgraphs[0]
        if not self.index_list(main.inputs, "inputs", len(self.tensors[0])) or \
                not self.index_list(main.outputs, "outputs", len(self.tensors[0])):
            raise self.fail("the main subgraph has no inputs or no outputs")
        self.signatures_and_metadata()

    def raw_buffer(self, s: int, t: _Tensor) -> int:
        return int(self.m.subgraphs[s].tensors[t.index].buffer)

    def signatures_and_metadata(self) -> None:
        m = self.m
        buffers = len(m.buffers or [])
        for k, meta in enumerate(m.metadata or []):
            self.text(meta.name, f"metadata {k}'s name")
            if not 0 <= int(meta.buffer) < buffers:
                raise self.fail(f"metadata {k} refers to buffer {meta.buffer}, but the model has {buffers}")
        for b in (m.metadataBuffer if m.metadataBuffer is not None and not isinstance(m.metadataBuffer, int) else []):
            if not 0 <= int(b) < buffers:
                raise self.fail(f"metadata_buffer refers to buffer {b}, but the model has {buffers}")
        for k, sig in enumerate(m.signatureDefs or []):
            self.text(sig.signatureKey, f"signature {k}'s key")
            if not 0 <= int(sig.subgraphIndex) < len(m.subgraphs):
                raise self.fail(f"signature {k} refers to subgraph {sig.subgraphIndex}, but the model has "
                                f"{len(m.subgraphs)}")
            n = len(self.tensors[int(sig.subgraphIndex)])
            for kind, maps in (("input", sig.inputs), ("output", sig.outputs)):
                for tensor_map in maps or []:
                    self.text(tensor_map.name, f"signature {k} {kind} name")
                    if not 0 <= int(tensor_map.tensorIndex) < n:
                        raise self.fail(f"signature {k} {kind} refers to tensor {tensor_map.tensorIndex}, but "
                                        f"its subgraph has {n}")


def _index_vector(vector) -> np.ndarray | None:
    if vector is None or getattr(vector, "values", None) is None or isinstance(vector.values, int):
        return None
    return np.asarray(vector.values, dtype=np.int64)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def tensor_label(t: _Tensor) -> str:
    """How an error names a tensor: its index, and its name when it has one.

    Example:
        >>> from types import SimpleNamespace
        >>> tensor_label(SimpleNamespace(index=3, name="dense/MatMul")), tensor_label(SimpleNamespace(index=4, name=""))
        ("tensor 3 ('dense/MatMul')", 'tensor 4')
    """
    return f"tensor {t.index} ({t.name!r})" if t.name else f"tensor {t.index}"


# Option fields (object API names) that hold enum values, and the enum.
_OPTION_ENUMS = {
    "padding": "Padding",
    "fusedActivationFunction": "ActivationFunctionType",
    "weightsFormat": "FullyConnectedOptionsWeightsFormat",
    "quantizedBiasType": "TensorType",
    "outputType": "TensorType",
    "outType": "TensorType",
    "inDataType": "TensorType",
    "outDataType": "TensorType",
    "idxOutType": "TensorType",
    "combiner": "CombinerType",
    "mode": "MirrorPadMode",
    "type": "LSHProjectionType",
}
# Option fields (by prefix) that count steps or sizes: 0 divides by zero, negatives index backwards.
_AT_LEAST_ONE = ("stride", "dilation", "filterWidth", "filterHeight", "blockSize", "numSplits", "num_splits")


# ----------------------------------------------------------------------------- shapes


def dimension_after_window(size: int, filter_size: int, stride: int, dilation: int, padding: str) -> int:
    """Output length of a convolution or pooling window along one axis (TFLite's padding rules).

    ``SAME``: ``ceil(size / stride)``; ``VALID``: ``ceil((size - effective + 1) / stride)`` with
    ``effective = (filter_size - 1) * dilation + 1`` (lite/kernels/padding.h).

    Example:
        >>> dimension_after_window(28, 5, 1, 1, "VALID"), dimension_after_window(28, 3, 2, 1, "SAME")
        (24, 14)
    """
    effective = (filter_size - 1) * dilation + 1
    if padding == "SAME":
        return (size + stride - 1) // stride
    return (size - effective + stride) // stride


def _padding(options) -> str:
    return enum_names("Padding").get(int(options.padding), "?")


def _same_type(tensors: Sequence[_Tensor | None]) -> str | None:
    kinds = {t.dtype for t in tensors if t is not None}
    return None if len(kinds) <= 1 else f"mixes tensor types {', '.join(sorted(k.lower() for k in kinds))}"


def _needs_quantization(tensors: Sequence[_Tensor | None]) -> str | None:
    for t in tensors:
        if t is not None and t.dtype in _QUANTIZED_ACTIVATIONS and not t.scales:
            return f"{tensor_label(t)} is {t.dtype.lower()} without quantization parameters"
    return None


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def _expect_shape(t: _Tensor, expected: Sequence[int], what: str = "output") -> str | None:
    if tuple(t.shape) != tuple(expected):
        return (f"{what} {tensor_label(t)} is {_shape_text(t.shape)} in the file, but the op computes "
                f"{_shape_text(expected)} from its inputs")
    return None


def _bias_problem(bias: _Tensor | None, channels: int, data: _Tensor) -> str | None:
    if bias is None:
        return None
    if math.prod(bias.shape) != channels or len(bias.shape) != 1:
        return f"bias {tensor_label(bias)} is {_shape_text(bias.shape)}, {channels} values expected"
    allowed = {"INT8": {"INT32"}, "UINT8": {"INT32"}, "INT16": {"INT32", "INT64"},
               "FLOAT32": {"FLOAT32"}}.get(data.dtype)
    if allowed is not None and bias.dtype not in allowed:
        return f"bias {tensor_label(bias)} is {bias.dtype.lower()} for {data.dtype.lower()} data"
    return None


def _filter_type_problem(data: _Tensor, weights: _Tensor) -> str | None:
    allowed = {"INT8": {"INT8", "INT4"}, "UINT8": {"UINT8"}, "INT16": {"INT8"},
               "FLOAT32": {"FLOAT32", "INT8", "UINT8", "FLOAT16", "INT4"}}.get(data.dtype)
    if allowed is None:
        return f"{tensor_label(data)} has type {data.dtype.lower()}, which the kernel does not take"
    if weights.dtype not in allowed:
        return f"weights {tensor_label(weights)} are {weights.dtype.lower()} for {data.dtype.lower()} data"
    return None


def _quantized_problem(data: _Tensor, weights: _Tensor, out: _Tensor) -> str | None:
    if data.dtype not in _QUANTIZED_ACTIVATIONS:
        return None
    problem = _needs_quantization([data, weights, out])
    if problem:
        return problem
    if out.dtype != data.dtype:
        return f"output {tensor_label(out)} is {out.dtype.lower()} for {data.dtype.lower()} input"
    return None


def _check_windowed(ins, outs, options, depthwise: bool) -> str | None:
    """CONV_2D (filter OHWI) and DEPTHWISE_CONV_2D (filter 1HW(C*multiplier)): NHWC in and out."""
    data, weights, bias = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    out = outs[0]
    for t, what in ((data, "input"), (weights, "filter"), (out, "output")):
        if len(t.shape) != 4:
            return f"{what} {tensor_label(t)} is {_shape_text(t.shape)}, a 4-D tensor expected"
    problem = _filter_type_problem(data, weights) or _quantized_problem(data, weights, out)
    if problem:
        return problem
    if data.dtype == "FLOAT32" and weights.dtype == "FLOAT32" and out.dtype != "FLOAT32":
        return f"output {tensor_label(out)} is {out.dtype.lower()} for float32 input"
    n, h, w, c = data.shape
    if depthwise:
        one, kh, kw, oc = weights.shape
        if one != 1 or oc % c:
            return f"filter {_shape_text(weights.shape)} does not fit {c} input channels (1xHxWx(C*multiplier))"
    else:
        oc, kh, kw, kc = weights.shape
        if c % kc:
            return f"input has {c} channels, not a multiple of the filter's {kc}"
        if oc % (c // kc):
            return f"filter has {oc} output channels, not a multiple of the {c // kc} groups"
    padding = _padding(options)
    oh = dimension_after_window(h, kh, options.strideH, options.dilationHFactor, padding)
    ow = dimension_after_window(w, kw, options.strideW, options.dilationWFactor, padding)
    if oh < 1 or ow < 1:
        return f"a {kh}x{kw} filter does not fit the {h}x{w} input"
    return _expect_shape(out, (n, oh, ow, oc)) or _bias_problem(bias, oc, data)


def _check_conv(ins, outs, options, checker) -> str | None:
    return _check_windowed(ins, outs, options, depthwise=False)


def _check_depthwise(ins, outs, options, checker) -> str | None:
    return _check_windowed(ins, outs, options, depthwise=True)


def _check_fully_connected(ins, outs, options, checker) -> str | None:
    data, weights, bias = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    out = outs[0]
    if options is not None and int(options.weightsFormat) != 0:
        return None  # shuffled uint8 weights: a layout of their own
    if len(weights.shape) != 2:
        return f"weights {tensor_label(weights)} are {_shape_text(weights.shape)}, a 2-D tensor expected"
    problem = _filter_type_problem(data, weights) or _quantized_problem(data, weights, out)
    if problem:
        return problem
    units, depth = weights.shape
    elements = math.prod(data.shape)
    if not data.shape or depth == 0 or elements % depth:
        return f"input {tensor_label(data)} of {elements} values does not split into rows of {depth}"
    keep = bool(options is not None and options.keepNumDims)
    if keep:
        if data.shape[-1] != depth:
            return f"input's last dimension is {data.shape[-1]}, the weights take {depth}"
        expected = (*data.shape[:-1], units)
    else:
        expected = (elements // depth, units)
    if tuple(out.shape) != expected and not (not keep and math.prod(out.shape) == math.prod(expected)
                                              and out.shape[-1] == units):
        return _expect_shape(out, expected)
    return _bias_problem(bias, units, data)


def _check_pool(ins, outs, options, checker) -> str | None:
    data, out = ins[0], outs[0]
    for t, what in ((data, "input"), (out, "output")):
        if len(t.shape) != 4:
            return f"{what} {tensor_label(t)} is {_shape_text(t.shape)}, a 4-D tensor expected"
    problem = _same_type([data, out]) or _needs_quantization([data, out])
    if problem:
        return problem
    n, h, w, c = data.shape
    padding = _padding(options)
    oh = dimension_after_window(h, options.filterHeight, options.strideH, 1, padding)
    ow = dimension_after_window(w, options.filterWidth, options.strideW, 1, padding)
    if oh < 1 or ow < 1:
        return f"a {options.filterHeight}x{options.filterWidth} window does not fit the {h}x{w} input"
    return _expect_shape(out, (n, oh, ow, c))


def _check_same_shape(ins, outs, options, checker) -> str | None:
    data, out = ins[0], outs[0]
    problem = _same_type([data, out]) or _needs_quantization([data, out])
    return problem or _expect_shape(out, data.shape)


def _check_softmax(ins, outs, options, checker) -> str | None:
    data, out = ins[0], outs[0]
    if not data.shape:
        return f"input {tensor_label(data)} is a scalar"
    allowed = {"FLOAT32": {"FLOAT32"}, "INT8": {"INT8", "INT16"}, "UINT8": {"UINT8"}, "INT16": {"INT16"}}
    if out.dtype not in allowed.get(data.dtype, set()):
        return f"{data.dtype.lower()} input with {out.dtype.lower()} output"
    problem = _needs_quantization([data, out]) or _expect_shape(out, data.shape)
    if problem:
        return problem
    if data.dtype in ("INT8", "UINT8") and not options.beta * data.scales[0] * 2**26 > 1:
        # PreprocessSoftmaxScaling: QuantizeMultiplierGreaterThanOne(beta * scale * 2^26) aborts below 1
        return (f"beta {options.beta:g} times the input scale {data.scales[0]:g} is too small for the "
                f"{data.dtype.lower()} kernel (beta * scale * 2^26 must exceed 1)")
    return None


def _check_quantize(ins, outs, options, checker) -> str | None:
    data, out = ins[0], outs[0]
    if data.dtype not in ("FLOAT32", "FLOAT16", "INT8", "UINT8", "INT16", "INT32"):
        return f"input {tensor_label(data)} is {data.dtype.lower()}"
    if out.dtype not in ("INT8", "UINT8", "INT16", "INT32", "INT4"):
        return f"output {tensor_label(out)} is {out.dtype.lower()}, not a quantized type"
    if not out.scales:
        return f"output {tensor_label(out)} has no quantization parameters"
    return _needs_quantization([data]) or _expect_shape(out, data.shape)


def _check_dequantize(ins, outs, options, checker) -> str | None:
    data, out = ins[0], outs[0]
    if data.dtype not in ("INT8", "UINT8", "INT16", "FLOAT16", "INT4"):
        return f"input {tensor_label(data)} is {data.dtype.lower()}"
    if out.dtype != "FLOAT32":
        return f"output {tensor_label(out)} is {out.dtype.lower()}, float32 expected"
    if data.dtype != "FLOAT16" and not data.scales:
        return f"input {tensor_label(data)} has no quantization parameters"
    return _expect_shape(out, data.shape)


def _check_reshape(ins, outs, options, checker) -> str | None:
    data, out = ins[0], outs[0]
    problem = _same_type([data, out])
    if problem:
        return problem
    if len(ins) > 1 and ins[1] is not None:
        shape = ins[1]
        if shape.dtype not in ("INT32", "INT64") or len(shape.shape) > 1:
            return f"shape input {tensor_label(shape)} is {shape.dtype.lower()} {_shape_text(shape.shape)}, a 1-D int32 expected"
    if math.prod(data.shape) != math.prod(out.shape):
        return (f"output {tensor_label(out)} {_shape_text(out.shape)} holds {math.prod(out.shape)} values, "
                f"the input {_shape_text(data.shape)} {math.prod(data.shape)}")
    return None


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    out = []
    for x, y in zip(reversed((1,) * (len(b) - len(a)) + tuple(a)), reversed((1,) * (len(a) - len(b)) + tuple(b)),
                    strict=True):
        if x != y and 1 not in (x, y):
            return None
        out.append(max(x, y))
    return tuple(reversed(out))


def _check_elementwise(ins, outs, options, checker) -> str | None:
    a, b, out = ins[0], ins[1], outs[0]
    problem = _same_type([a, b, out]) or _needs_quantization([a, b, out])
    if problem:
        return problem
    shape = _broadcast(a.shape, b.shape)
    if shape is None:
        return f"inputs {_shape_text(a.shape)} and {_shape_text(b.shape)} do not broadcast"
    if len(shape) > 6:
        return f"broadcasting {len(shape)}-D tensors (the kernels take up to 6)"
    return _expect_shape(out, shape)


def _check_concatenation(ins, outs, options, checker) -> str | None:
    out = outs[0]
    problem = _same_type([*ins, out]) or _needs_quantization([*ins, out])
    if problem:
        return problem
    rank = len(ins[0].shape)
    axis = int(options.axis) if options is not None else 0
    if not -rank <= axis < rank:
        return f"axis {axis} is outside the inputs' {rank} dimensions"
    axis %= rank
    total = 0
    for t in ins:
        if len(t.shape) != rank or any(d != e for k, (d, e) in enumerate(zip(t.shape, ins[0].shape, strict=True))
                                       if k != axis):
            return f"input {tensor_label(t)} {_shape_text(t.shape)} does not fit {_shape_text(ins[0].shape)}"
        total += t.shape[axis]
    expected = list(ins[0].shape)
    expected[axis] = total
    return _expect_shape(out, expected)


_SHAPE_CHECKS: dict[str, Callable] = {
    "CONV_2D": _check_conv,
    "DEPTHWISE_CONV_2D": _check_depthwise,
    "FULLY_CONNECTED": _check_fully_connected,
    "MAX_POOL_2D": _check_pool,
    "AVERAGE_POOL_2D": _check_pool,
    "SOFTMAX": _check_softmax,
    "QUANTIZE": _check_quantize,
    "DEQUANTIZE": _check_dequantize,
    "RESHAPE": _check_reshape,
    "ADD": _check_elementwise,
    "SUB": _check_elementwise,
    "MUL": _check_elementwise,
    "CONCATENATION": _check_concatenation,
    **{name: _check_same_shape for name in ("RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LOGISTIC",
                                            "TANH", "HARD_SWISH", "LEAKY_RELU", "ABS", "NEG", "ELU")},
}


@cache
def op_specs() -> dict[str, OpSpec]:
    """The builtin ops this verifier knows the inputs, outputs and options of."""
    return _op_specs()


def verify_model(model_t, data: bytes, where: str, buffer_bytes: dict[int, memoryview]) -> list[str]:
    """Check a parsed model (``schema_py_generated.ModelT``) against the rules above.

    Args:
        model_t: the model as the object API reads it (after `verify_flatbuffer`).
        data: the file's bytes (its size sets the work limits).
        where: the file, for the errors.
        buffer_bytes: ``{buffer index: data}`` for the buffers that hold data.

    Returns:
        The op names, indexed by operator code (``CUSTOM:name`` for custom ops).

    Raises:
        InvalidModelFileError: the first rule the model breaks.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> from tfcompress.export.flatbuffer import read_flatbuffer
        >>> _ = to_tflite(keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]), "model.tflite", quantization=None)
        >>> data = open("model.tflite", "rb").read()
        >>> model_t = read_flatbuffer(data)
        >>> buffers = {i: memoryview(b.data) for i, b in enumerate(model_t.buffers) if b.data is not None and len(b.data)}
        >>> verify_model(model_t, data, "model.tflite", buffers)
        ['FULLY_CONNECTED']
        >>> model_t.subgraphs[0].operators[0].inputs = np.array([0, 99, -1], np.int32)   # past the tensors
        >>> verify_model(model_t, data, "model.tflite", buffers)
        Traceback (most recent call last):
        ...
        tfcompress.errors.InvalidModelFileError: model.tflite: ...
    """
    checker = _Checker(model_t, data, where, buffer_bytes)
    checker.run()
    return checker.op_names
